"""The HTML report (`runner report`, `schedule add --report`) on both backends, checked in
headless Chromium: the page runs without a console error, has one timeline point per
round, and its fingerprint band changes colour where the backend changed."""

from __future__ import annotations

import html as html_text
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.analysis.diff import diff_job
from runner.analysis.similarity import word_diff
from runner.errors import NotFoundError
from runner.htmlreport.page import render, unpack
from runner.htmlreport.serve import serving
from runner.scheduling import schedule
from runner.submit import submit
from tests.helpers import scalar
from tests.replaykit import invoke, work
from tests.reportkit import CREATED, browse, job_file, scheduled_history, screenshot
from tests.schedulekit import schedule_settings

pytestmark = pytest.mark.anyio


def document(html: Path) -> dict:
    """The data a report page carries."""
    return unpack(html.read_text(encoding="utf-8"))


async def cli(db_url: str, *args: str) -> tuple[int, str, str]:
    """The CLI in a thread: it runs its own event loop."""
    return await anyio.to_thread.run_sync(lambda: invoke(db_url, *args))


async def report(db_url: str, batch: str, path: Path, *args: str) -> None:
    code, out, err = await cli(db_url, "report", batch, "-o", str(path), *args)
    assert code == 0, err
    assert f"written to {path}" in out


async def test_a_scheduled_history_with_a_backend_update_renders_in_chromium(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    # Round 1 (submit), then three nights; the second night runs the v2 variant behind the
    # same endpoint, as a provider's backend update would.
    batch = await scheduled_history(engine, db_url, tmp_path, [None, "v2", "v2"])
    html = tmp_path / "report.html"
    await report(db_url, str(batch), html)
    page = browse(html, tmp_path)
    assert page.errors == [] and page.console == []
    assert page.attribute("data-ready") == "1"
    assert page.attribute("data-timeline-points") == "4"
    bands = page.cells("fingerprint")
    assert [r for r, _, _ in bands] == [1, 2, 3, 4]
    (_, before, colour_1), (_, _, colour_2), (_, after, colour_3), (_, _, colour_4) = bands
    assert before != after and before.startswith("fp_") and after.startswith("fp_")
    assert colour_1 == colour_2 != colour_3 == colour_4  # the band changes at round 3
    markers = re.findall(r'class="marker" data-round="(\d+)" data-value="(\w+)"', page.dom)
    assert markers == [("2", "stable"), ("3", "fingerprint_changed"), ("4", "stable")]
    png = tmp_path / "report.png"
    screenshot(html, png, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    data = document(html)
    assert [r["exact_match_rate"] for r in data["rounds"]] == [None, 1.0, 0.0, 1.0]
    assert data["batch"]["schedules"][0]["name"] == "nightly"
    assert data["batch"]["seeds"] == "1 distinct: 42"

    # Up to the changed round: the page opens on its most changed job, and its word diff
    # between rounds 2 and 3 is the one `runner diff` computes.
    upto = tmp_path / "upto3.html"
    await report(db_url, str(batch), upto, "--rounds", "..3")
    page = browse(upto, tmp_path)
    assert page.errors == [] and page.attribute("data-timeline-points") == "3"
    shown = re.search(r'id="diff" data-a="2" data-b="3" data-pieces="([^"]*)"', page.dom)
    key = re.search(r'id="job-detail" data-job="([^"]*)"', page.dom)
    assert shown is not None and key is not None
    expected = await diff_job(engine, str(batch), html_text.unescape(key.group(1)), (2, 3))
    pieces = json.loads(html_text.unescape(shown.group(1)))
    assert pieces == [[p.op.value, p.text] for p in expected.pieces]
    assert {op for op, _ in pieces} >= {"equal", "delete", "insert"}


async def test_an_unworked_a_one_round_and_an_empty_range_give_sensible_pages(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = schedule_settings(db_url)
    sub = await submit(engine, job_file(tmp_path, 3), settings, now=CREATED)
    queued = tmp_path / "queued.html"
    await report(db_url, "nightly", queued)  # round 1 is still queued: nothing finished yet
    page = browse(queued, tmp_path)
    assert page.errors == [] and page.attribute("data-timeline-points") == "1"
    assert [v for _, v, _ in page.cells("fingerprint")] == [""]

    await work(engine, settings, [sub.round_id])
    one = tmp_path / "one.html"
    await report(db_url, "nightly", one)
    page = browse(one, tmp_path)
    assert page.errors == [] and page.attribute("data-timeline-points") == "1"
    ((_, value, _),) = page.cells("fingerprint")
    assert value.startswith("fp_")
    assert 'id="diff" data-a="1" data-b="1" data-pieces=' in page.dom  # one round: itself

    none = tmp_path / "none.html"
    await report(db_url, "nightly", none, "--rounds", "5..9")
    page = browse(none, tmp_path)
    assert page.errors == [] and page.attribute("data-ready") == "1"
    assert "This batch has no rounds in this report." in page.dom
    assert document(none)["rounds"] == []


async def test_a_schedule_rewrites_its_report_after_each_drift_report(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "reports"
    out.mkdir()
    template = str(out / "nightly-{date}-r{round}.html")
    await scheduled_history(engine, db_url, tmp_path, [None, "v2"], jobs=2, report=template)
    written = sorted(p.name for p in out.iterdir())
    assert written == ["nightly-2026-11-21-r2.html", "nightly-2026-11-22-r3.html"]  # no temp
    assert [len(document(out / n)["rounds"]) for n in written] == [2, 3]
    assert document(out / written[1])["rounds"][-1]["drift"] == "fingerprint_changed"
    code, out_text, _ = await cli(db_url, "schedule", "list", "--format", "json")
    assert code == 0 and json.loads(out_text)[0]["report"] == template


async def test_a_report_that_cannot_be_written_is_logged_not_fatal(
    engine: AsyncEngine, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-such-folder" / "r{round}.html"
    await scheduled_history(engine, db_url, tmp_path, [None], jobs=1, report=str(missing))
    assert "could not write its report" in caplog.text
    assert await scalar(engine, "SELECT count(*) FROM drift_reports") == 1


async def test_bad_report_flags_are_one_line_errors_and_write_nothing(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = schedule_settings(db_url)
    await submit(engine, job_file(tmp_path, 1), settings, now=CREATED)
    target = tmp_path / "r.html"
    for args, code in (
        (["report", "nightly", "-o", str(target), "--rounds", "3..1"], 2),
        (["report", "nightly", "-o", str(target), "--rounds", "x"], 2),
        (["report", "nightly"], 2),  # neither -o nor --serve
        (["report", "nightly", "--serve", "-o", str(target)], 2),
        (["report", "nope", "-o", str(target)], 1),
        (["report", "nightly", "-o", str(tmp_path / "missing" / "r.html")], 1),
        (["schedule", "add", "n", "nightly", "--cron", "@daily", "--report", "{nope}.html"], 2),
        (["schedule", "add", "n", "nightly", "--cron", "@daily", "--report", "{round"], 2),
    ):
        got, out, err = await cli(db_url, *args)
        assert got == code, (args, out, err)
        # One line saying what is wrong (click's usage lines may come before it).
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err, err
        assert any(w in last for w in ("round", "batch", "folder", "{", "-o")), err
    assert not target.exists()
    assert await scalar(engine, "SELECT count(*) FROM schedules") == 0
    with pytest.raises(Exception, match="only use the placeholders"):
        await schedule.add_schedule(engine, "n", "nightly", cron="@daily", report="{x}")


HOSTILE = '<img src=x onerror="document.title=1"></script><b>bold'


def test_the_pages_word_diff_is_runner_diffs_on_awkward_texts(tmp_path: Path) -> None:
    """The page's port of the word diff gives Python's pieces on texts made to differ (and
    a batch name and job key made of markup show as text)."""
    pairs = [
        ("", ""),
        ("", "one word"),
        ("  leading space kept", "leading space kept  "),
        ("tabs\tand\nnew lines\r\n", "tabs and\n\nnew  lines"),
        ("no\u00a0break and\u2009thin", "no break and\u2009thin\u00a0"),
        ("file\x1cseparators\x1dare\x1espace\x85to python", "file separators are\x85space"),
        ("zero\ufeffwidth no-break is not a space", "zero width no-break is not a space"),
        ("emoji 🚀 and accents: café", "emoji 🚀🚀 and accents: cafe\u0301"),
        ("the the the the cat the the", "the cat the the the the the"),
        (" ".join(["a", "b"] * 150), " ".join(["b", "a"] * 150)),
        ("A < B && C > D </script>", "A <= B & C >= D <!-- x -->"),
    ]
    document = {
        "format": 1, "generated_at": None, "states": ["succeeded"], "rounds": [], "runs": [],
        "strings": [], "jobs": {"keys": [HOSTILE], "seeds": [None]},
        "batch": {"id": 1, "name": HOSTILE, "source_path": "-", "source_format": "yaml",
                  "source_sha256": "-", "submitted_at": None, "job_count": 0, "endpoints": [],
                  "models": [], "seeds": "-", "schedules": []},
    }  # fmt: skip
    check = (
        "<script>const pairs = " + json.dumps(pairs).replace("<", "\\u003c") + ";\n"
        "const box = document.createElement('pre'); box.id = 'diffs';\n"
        "box.textContent = JSON.stringify(pairs.map(([a, b]) => wordDiff(a, b)));\n"
        "document.body.append(box);</script></body>"
    )
    html = tmp_path / "pairs.html"
    html.write_text(render(document).replace("</body>", check), encoding="utf-8")
    page = browse(html, tmp_path)
    assert page.errors == [] and page.attribute("data-ready") == "1"
    found = re.search(r'<pre id="diffs">(.*?)</pre>', page.dom, re.DOTALL)
    assert found is not None
    text = html_text.unescape(found.group(1))
    expected = [[[p.op.value, p.text] for p in word_diff(a, b)] for a, b in pairs]
    assert json.loads(text) == expected
    # Names and keys are text, never markup: the page holds no element they spelled.
    assert "<img" not in page.dom and "&lt;img src=x onerror" in page.dom


async def test_serve_shows_the_live_report_read_only_and_its_version_moves(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = schedule_settings(db_url)
    sub = await submit(engine, job_file(tmp_path, 2), settings, now=CREATED)
    with pytest.raises(NotFoundError), serving(db_url, "nope"):
        pass  # an unknown batch fails before anything listens
    with serving(db_url, "nightly") as url:
        assert url.startswith("http://127.0.0.1:")
        page = fetch(url)
        assert unpack(page)["rounds"][0]["counts"] == {"queued": 2}
        before = fetch(url + "version")
        assert f'data-live="{before}"' in page
        await work(engine, settings, [sub.round_id])
        after = fetch(url + "version")
        assert after != before  # the open page reloads itself
        assert unpack(fetch(url))["rounds"][0]["counts"] == {"succeeded": 2}
        shown = browse(url, tmp_path)
        assert shown.errors == [] and shown.attribute("data-ready") == "1"
        assert refused(url, "POST") == refused(url, "DELETE") == 501  # it only reads
        assert refused(url + "x", "GET") == 404
    assert await scalar(engine, "SELECT count(*) FROM runs WHERE state = 'succeeded'") == 2


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as response:
        return str(response.read().decode("utf-8"))


def refused(url: str, method: str) -> int:
    """The status of a request the server refuses."""
    with pytest.raises(urllib.error.HTTPError) as refusal:
        urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=60)
    refusal.value.close()
    return refusal.value.code


async def test_a_job_files_schedule_can_name_its_report(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    path = job_file(tmp_path, 1)
    template = str(tmp_path / "r-{round}.html")
    path.write_text(path.read_text() + f"schedule:\n  cron: '@daily'\n  report: '{template}'\n")
    await submit(engine, path, schedule_settings(db_url), now=CREATED)
    assert await scalar(engine, "SELECT report FROM schedules") == template
