"""The one maker of rich consoles: text is printed as written, never read as markup.

Names, keys, errors, outputs and fingerprints come from users and servers, and may hold
``[bold]``, ``[/data/x.jsonl]``, ``[link=http://x]y[/link]`` or ``:smile:``. A default
rich Console reads a plain ``str`` (a printed line, a table cell, a title) as markup and
emoji codes: a MarkupError for an unmatched tag, words that silently vanish for a known
one, an emoji for a code. Every console made here has markup, emoji codes and
highlighting off, so any ``str`` prints exactly as written, whoever wrote it. Our own
styling is given as styles (``Text(..., style="bold")``, ``header_style=``,
``print(..., style="dim")``), which still work. Ruff (TID251) keeps ``rich.console.Console``
out of every other module, so a new command cannot forget.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

from rich.console import Console, RenderableType


def console(**options: Any) -> Console:
    """A rich Console (``options`` as rich takes them) that never interprets text."""
    return Console(markup=False, emoji=False, highlight=False, **options)


def render(parts: Iterable[RenderableType], *, color: bool, width: int) -> str:
    """Renderables drawn as text, in colour only when asked (a terminal): piped output stays
    plain. Trailing spaces and the last newline are removed; the CLI prints the result."""
    buffer = io.StringIO()
    out = console(file=buffer, force_terminal=color, no_color=not color, width=width)
    for part in parts:
        out.print(part)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())
