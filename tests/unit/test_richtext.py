"""rich consoles print user text as written, and our own styles still apply."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from runner.richtext import render

HOSTILE = "[/data/x.jsonl] [bold]b[/bold] [link=http://x]y[/link] [red] ] [ :smile: :cross_mark:"


def test_text_in_lines_cells_and_titles_is_never_markup_or_an_emoji_code() -> None:
    table = Table("job", title=HOSTILE)  # a plain str cell, header and title, as rich allows
    table.add_row(HOSTILE)
    for color in (False, True):
        out = render([HOSTILE, table], color=color, width=200)
        assert out.count(HOSTILE) == 3, out
        assert "\N{CROSS MARK}" not in out


def test_our_own_styles_still_colour_a_terminal_and_nothing_else() -> None:
    part = Text.assemble(("bold", "bold"), " ", ("red", "red"))
    assert render([part], color=True, width=80) == "\x1b[1mbold\x1b[0m \x1b[31mred\x1b[0m"
    assert render([part], color=False, width=80) == "bold red"
