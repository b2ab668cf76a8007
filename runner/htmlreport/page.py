"""The report as one self-contained HTML page: no network, no CDN.

The page inlines its style, uPlot (``vendor/``: a small, dependency-free canvas chart
library, about 50 KB minified, that draws 100 rounds of several series instantly), its
own script (``report.js``) and the document ``data.gather`` made, as gzip-compressed
JSON in base64 (``pack``) that the script inflates with the browser's own
DecompressionStream. Nothing a user, a model or
a server wrote is ever put into the HTML as markup.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
from functools import cache
from importlib import resources
from typing import Any


@cache
def _asset(name: str) -> str:
    return (resources.files("runner.htmlreport") / name).read_text(encoding="utf-8")


def _script(code: str) -> str:
    """Our own script, safe inside a <script> element: it cannot close it early."""
    return re.sub("</(script)", r"<\\/\1", code, flags=re.IGNORECASE)


# Before anything else runs: errors and console.error land on <html data-errors>, so a
# headless browser's DOM dump tells whether the page ran cleanly.
_ERRORS = """window.__errors = [];
function __record(message) {
  window.__errors.push(String(message));
  document.documentElement.dataset.errors = JSON.stringify(window.__errors);
}
window.addEventListener("error", (e) => __record(e.message));
window.addEventListener("unhandledrejection", (e) => __record(e.reason));
const __consoleError = console.error;
console.error = (...args) => { __record(args.join(" ")); __consoleError.apply(console, args); };"""


def pack(document: dict[str, Any]) -> str:
    """The document as gzip-compressed JSON in base64: the page inflates it with the
    browser's own DecompressionStream. Outputs and run columns compress 4-5 times, and
    base64 holds nothing that could end a <script> element."""
    data = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    packed = gzip.compress(data.encode("utf-8"), compresslevel=6, mtime=0)
    return base64.b64encode(packed).decode("ascii")


def unpack(page: str) -> dict[str, Any]:
    """The document a report page carries (for tests and tools)."""
    found = re.search(r'<script id="report-data"[^>]*>([^<]*)</script>', page)
    if found is None:
        raise ValueError("not a seed-runner report page: no report-data element")
    loaded: dict[str, Any] = json.loads(gzip.decompress(base64.b64decode(found.group(1))))
    return loaded


def render(document: dict[str, Any], *, live: str | None = None) -> str:
    """The HTML page of a report document. ``live``: the data's version, for a page
    served by ``runner report --serve``: it asks the server for the version and reloads
    when it moved."""
    data = pack(document)
    title = html.escape(f"{document['batch']['name']} (batch {document['batch']['id']})")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}: seed-runner report</title>
<script>{_ERRORS}</script>
<style>{_asset("vendor/uPlot.min.css")}</style>
<style>{_asset("report.css")}</style>
</head>
<body{f' data-live="{html.escape(live)}"' if live else ""}>
<header>
<h1 id="title">{title}</h1>
<dl id="facts"></dl>
</header>
<section id="timeline">
<h2>Timeline</h2>
<div id="charts"></div>
</section>
<section id="rounds">
<h2>Rounds</h2>
<table id="round-table"><thead><tr><th>round</th><th>trigger</th><th>when</th>
<th>runs by state</th><th>exact match</th><th>p-value</th><th>fingerprints</th>
<th>drift</th></tr></thead><tbody></tbody></table>
<div id="round-detail"></div>
</section>
<section id="jobs">
<h2>Jobs</h2>
<div class="jobs">
<div><input id="search" type="search" placeholder="filter jobs by key" aria-label="filter jobs">
<p id="job-count" class="note"></p><select id="job-list" size="20"></select></div>
<div id="job-detail"></div>
</div>
</section>
<script id="report-data" type="application/octet-stream">{data}</script>
<script>/* uPlot 1.6.32, MIT licence (c) Leon Sorokin */
{_script(_asset("vendor/uPlot.iife.min.js"))}</script>
<script>{_script(_asset("report.js"))}</script>
</body>
</html>
"""
