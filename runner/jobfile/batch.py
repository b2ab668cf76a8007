"""OpenAI Batch API input files (``.jsonl``): one request per line, taken as it is.

Lines for ``/v1/chat/completions``, ``/v1/responses`` and ``/v1/embeddings``, mixed as
OpenAI takes them: each line's ``url`` is its job's kind (``runner.kinds``), and its body
is checked for that kind. The file is read as a stream: a million-line file is never held
in memory, and each line is checked (``values``) before its job is built.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.errors import JobFileError
from runner.hashing import canonical_json, request_hash
from runner.jobfile.spec import JobFile, JobSpec
from runner.jobfile.values import (
    MAX_DEPTH,
    dotted,
    max_jobs_problem,
    name_problem,
    parse_problem,
    text_problem,
    value_problem,
)
from runner.kinds import BATCH_URLS, Api, api_for_url
from runner.kinds.params import check_kind_body

BATCH_LINE_KEYS = {"custom_id", "method", "url", "body"}


def _parse(path: str, number: int, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        problem = f"invalid JSON: nested more than {MAX_DEPTH} levels deep"
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: JSONDecodeError, huge ints
        problem = f"invalid JSON: {parse_problem(exc)}"
    raise JobFileError(path, number, None, problem)


def _batch_record(path: str, number: int, raw: bytes) -> dict[str, Any]:
    """The envelope of one Batch line: custom_id, method, url, body."""
    record = _parse(path, number, raw)
    if not isinstance(record, dict):
        raise JobFileError(path, number, None, "each line must be a JSON object")
    problem: tuple[str, str] | None = None
    unknown = sorted(set(record) - BATCH_LINE_KEYS)
    if unknown:
        problem = unknown[0], "unknown key (a Batch line has custom_id, method, url, body)"
    elif not isinstance(record.get("custom_id"), str) or not record["custom_id"]:
        problem = "custom_id", "must be a non-empty string"
    elif bad_id := text_problem(record["custom_id"]):
        problem = "custom_id", bad_id
    elif record.get("method") != "POST":
        problem = "method", f'must be "POST", got {record.get("method")!r}'
    elif api_for_url(record.get("url")) is None:
        problem = (
            "url",
            f"unsupported url {record.get('url')!r}: use one of {', '.join(BATCH_URLS)}",
        )
    elif not isinstance(record.get("body"), dict):
        problem = "body", "must be a JSON object"
    elif raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:  # else it cannot nest that deep
        problem = _body_problem(record["body"])
    if problem:
        raise JobFileError(path, number, problem[0], problem[1])
    return record


def _body_problem(body: dict[str, Any]) -> tuple[str, str] | None:
    """Where in ``body`` a value cannot be stored or sent (see ``values``), and why.

    Walking every body would double the cost of reading a file, so this runs only when
    a cheap test says there may be something to find."""
    bad = value_problem(body, json=True)
    return (dotted(("body", *bad[0])), bad[1]) if bad else None


def _canonical(path: str, number: int, body: dict[str, Any]) -> tuple[str, str]:
    """The body's canonical JSON and hash; NaN, Infinity or a lone surrogate, which
    canonical JSON and UTF-8 refuse, are found and named."""
    try:
        text = canonical_json(body)
        return text, request_hash(text)
    except (ValueError, UnicodeEncodeError) as exc:
        problem = _body_problem(body) or ("body", str(exc))
        raise JobFileError(path, number, problem[0], problem[1]) from None


def _batch_line(path: str, number: int, raw: bytes) -> tuple[str, Api, dict[str, Any]]:
    record = _batch_record(path, number, raw)
    body: dict[str, Any] = record["body"]
    api = BATCH_URLS[record["url"]]
    problem: tuple[str, str] | None = None
    if not isinstance(body.get("model"), str) or not body["model"]:
        problem = "model", "must be a non-empty string"
    elif bad_model := name_problem(body["model"]):
        problem = "model", bad_model
    else:
        problem = check_kind_body(api, body)
    if problem:
        raise JobFileError(path, number, f"body.{problem[0]}", problem[1])
    return str(record["custom_id"]), api, body


def _jsonl_jobs(path: Path, endpoint: str, sha: Any, max_jobs: int | None) -> Iterator[JobSpec]:
    count = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            sha.update(raw)
            if not raw.strip():
                continue
            if max_jobs is not None and count >= max_jobs:
                raise JobFileError(str(path), number, None, max_jobs_problem(max_jobs))
            custom_id, api, body = _batch_line(str(path), number, raw)
            text, digest = _canonical(str(path), number, body)
            seed = body.get("seed")
            count += 1
            yield JobSpec(
                key=custom_id,
                endpoint=endpoint,
                model=body["model"],
                body=text,
                request_hash=digest,
                seed=seed,
                line=number,
                api=api.value,
            )
    if count == 0:
        raise JobFileError(str(path), None, None, "file is empty: no request lines")


def load_jsonl(path: Path, endpoint: str | None, name: str | None, max_jobs: int | None) -> JobFile:
    sha = hashlib.sha256()
    endpoint = endpoint or "openai"
    name = name or path.stem
    if problem := name_problem(name):
        raise JobFileError(str(path), None, "name", problem)
    return JobFile(
        path=path,
        format="openai-batch",
        name=name,
        endpoint=endpoint,
        max_attempts=None,
        _jobs=_jsonl_jobs(path, endpoint, sha, max_jobs),
        _sha=sha,
    )
