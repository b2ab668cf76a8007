"""What a job file's values must be to be stored and sent: bounded, JSON, storable text.

Everything here is refused before a job is built, so none of it can reach canonical
JSON, the database or a request: nesting deeper than ``MAX_DEPTH`` (recursive parsers
and serialisers would overflow), NaN and Infinity (not JSON), values JSON has no type
for, lone surrogates (not Unicode text: neither database can store them), NUL in text
the database keeps as text (PostgreSQL's text cannot hold it), and seeds outside the
64-bit signed range of OpenAI's ``seed`` and of ``jobs.seed``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

MAX_DEPTH = 100  # lists and mappings nested in one another, in any value
INT32_MAX = 2**31 - 1  # integer columns (max_attempts) on PostgreSQL
NAME_MAX = 200  # characters of batches.name and jobs.model (VARCHAR(200) on PostgreSQL)

Where = tuple[str | int, ...]
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(text: str, *, nul: bool = True) -> str | None:
    """Why ``text`` cannot be stored as text (``nul``: a NUL counts too), or None."""
    found = _SURROGATE.search(text)
    if found:
        return (
            f"contains a lone surrogate (\\u{ord(found.group()):04x}), which is not "
            "Unicode text: it cannot be stored or sent"
        )
    if nul and "\x00" in text:
        return "contains a NUL character (\\u0000), which the database cannot store as text"
    return None


def name_problem(text: str) -> str | None:
    """Why ``text`` cannot be a batch name or a model name, or None."""
    if len(text) > NAME_MAX:
        return f"must be at most {NAME_MAX} characters, got {len(text)}"
    return text_problem(text)


def value_problem(value: Any, *, json: bool, nul: bool = False) -> tuple[Where, str] | None:
    """The first place in ``value`` (in document order) that cannot be stored, and why.

    Always refused: nesting deeper than ``MAX_DEPTH``, text with a lone surrogate (in
    keys too); ``nul``: text with a NUL. ``json``: the value is sent as a request's JSON,
    so NaN, Infinity, mapping keys that are not strings and values that are not JSON
    (dates, bytes, sets) are refused too.
    """
    for where, item in _walk(value):
        problem = _problem(item, len(where), json=json, nul=nul)
        if problem:
            return where, problem
    return None


def _problem(value: Any, depth: int, *, json: bool, nul: bool) -> str | None:
    if isinstance(value, str):
        return text_problem(value, nul=nul)
    if isinstance(value, Mapping | list):
        if depth >= MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep"
        keys = value.keys() if isinstance(value, Mapping) else ()
        for key in keys:
            if json and not isinstance(key, str):
                return f"mapping keys must be strings, got {_short(key)}"
            if isinstance(key, str) and (problem := text_problem(key, nul=nul)):
                return f"key {_short(key)} {problem}"
        return None
    if not json or value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return f"{value!r} is not a JSON number (NaN and Infinity cannot be sent)"
    return f"a {type(value).__name__} is not a JSON value (quote it to make it a string)"


def _walk(value: Any) -> Iterator[tuple[Where, Any]]:
    """Every value inside ``value`` with where it is, in document order, iteratively."""
    stack: list[tuple[Where, Any]] = [((), value)]
    while stack:
        where, item = stack.pop()
        yield where, item
        if len(where) >= MAX_DEPTH:  # refused by its caller: no need to go deeper
            continue
        if isinstance(item, Mapping):
            children = [((*where, str(k)), v) for k, v in item.items()]
        elif isinstance(item, list):
            children = [((*where, i), v) for i, v in enumerate(item)]
        else:
            continue
        stack.extend(reversed(children))


def _short(value: Any) -> str:
    """``repr`` of a value a user wrote, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_problem(exc: ValueError) -> str:
    """A parser's ValueError as a user reads it (Python's advice on digits left out)."""
    return str(exc).split("; use sys.set_int_max_str_digits()")[0]


def dotted(where: Where) -> str:
    """``messages[0].content`` from ``("messages", 0, "content")``."""
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in where).replace(".[", "[")


def max_jobs_problem(max_jobs: int, count: int | None = None) -> str:
    """What to say of a file with more jobs (``count``, if known) than one submit takes."""
    what = f"expands into {count:,} jobs, more than" if count is not None else "more jobs than"
    return (
        f"{what} max_jobs ({max_jobs:,}) allows in one submit: split the file, or raise "
        "the limit (--max-jobs, RUNNER_MAX_JOBS, or max_jobs in [submit] of runner.toml)"
    )
