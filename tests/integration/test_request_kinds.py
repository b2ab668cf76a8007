"""Request kinds end to end on both backends: a Batch file mixing chat, responses and
embeddings lines runs (in-process and over `runner serve`'s HTTP), replays, compares
and exports; seed on a responses job is refused at submit with nothing stored; an
incomplete response says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from runner.localmodel.server import running_server
from tests.helpers import sql
from tests.replaykit import invoke, remote, write_config

LINES = [
    {
        "custom_id": "chat-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Write about Mars."}],
            "seed": 7,
            "max_tokens": 30,
        },
    },
    {
        "custom_id": "resp-cut",
        "method": "POST",
        "url": "/v1/responses",
        "body": {
            "model": "gpt-4o-mini",
            "instructions": "Be brief.",
            "input": "Write about the ocean tides.",
            "temperature": 0,  # greedy: its text runs on past 16 tokens, every time
            "max_output_tokens": 16,
        },
    },
    {
        "custom_id": "resp-greedy",
        "method": "POST",
        "url": "/v1/responses",
        "body": {
            "model": "gpt-4o-mini",
            "input": [{"role": "user", "content": "Write about bread baking."}],
            "temperature": 0,
            "max_output_tokens": 40,
        },
    },
    {
        "custom_id": "vectors",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": ["Mars", "tides"], "dimensions": 8},
    },
]


def _file(tmp_path: Path, lines: list[dict[str, object]], name: str = "mixed.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return path


def _run_replay_compare_export(db_url: str, path: Path, endpoint: str) -> None:
    code, out, err = invoke(db_url, "run", str(path), "--endpoint", endpoint, "--quiet")
    assert code == 0, err
    code, out, err = invoke(db_url, "replay", "mixed", "--work")
    assert code == 0, err

    rows = sql(
        db_url,
        "SELECT job_key, api, round_number, state, response_status, incomplete_details,"
        " system_fingerprint, prompt_tokens, cached_tokens, reasoning_tokens, service_tier"
        " FROM run_results ORDER BY round_number, job_key",
    )
    assert len(rows) == 8
    by_key = {(r[0], r[2]): r for r in rows}
    for number in (1, 2):
        chat = by_key[("chat-1", number)]
        cut = by_key[("resp-cut", number)]
        greedy = by_key[("resp-greedy", number)]
        assert chat[1] == "chat" and chat[4] is None and chat[6] is not None
        assert cut[1:2] == ("responses",) and cut[3] == "succeeded"
        assert cut[4] == "incomplete"
        assert json.loads(cut[5]) == {"reason": "max_output_tokens"}
        assert cut[6] is None and greedy[6] is None  # no fingerprint in this API: never made up
        assert greedy[4] == "incomplete"  # greedy text runs on past 40 tokens
        assert cut[7] and cut[8] == 0 and cut[9] == 0 and cut[10] == "default"

    code, out, err = invoke(db_url, "status", "mixed")
    assert code == 0, err
    assert "requests: 1 chat, 1 embeddings, 2 responses" in out
    assert "incomplete: 2 responses cut short" in out

    code, out, err = invoke(db_url, "show", "mixed", "resp-cut")
    assert code == 0, err
    assert "api: responses" in out
    assert "seed: null  system_fingerprint: null" in out
    assert 'response status: incomplete  incomplete_details: {"reason": "max_output_tokens"}' in out

    code, out, err = invoke(db_url, "compare", "mixed", "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    items = {item["key"]: item for item in report["items"]}
    assert items["chat-1"]["exact_match"] is True  # seeded chat: byte-identical
    assert items["resp-greedy"]["exact_match"] is True  # temperature 0: greedy
    assert items["resp-cut"]["api"] == "responses"
    assert items["resp-cut"]["status_a"] == items["resp-cut"]["status_b"] == "incomplete"
    assert items["resp-cut"]["fingerprint"] == "unknown"
    assert report["summary"]["kinds"] == {"chat": 1, "embeddings": 1, "responses": 2}
    assert items["vectors"]["exact_match"] is True and items["vectors"]["similarity"] == 1.0
    assert report["summary"]["incomplete_a"] == report["summary"]["incomplete_b"] == 2
    code, out, err = invoke(db_url, "compare", "mixed")
    assert "incomplete" in out and "1 chat, 1 embeddings, 2 responses" in out

    code, out, err = invoke(db_url, "export", "mixed", "--format", "openai-batch")
    assert code == 0, err
    lines = {line["custom_id"]: line for line in map(json.loads, out.splitlines())}
    ChatCompletion.model_validate(lines["chat-1"]["response"]["body"], strict=False)
    CreateEmbeddingResponse.model_validate(lines["vectors"]["response"]["body"])
    response = Response.model_validate(lines["resp-cut"]["response"]["body"])
    assert response.status == "incomplete" and response.output_text
    code, out, err = invoke(db_url, "export", "mixed", "--format", "jsonl")
    exported = {row["job_key"]: row for row in map(json.loads, out.splitlines())}
    assert exported["resp-cut"]["api"] == "responses"
    assert exported["resp-cut"]["response_status"] == "incomplete"


def test_mixed_batch_file_in_process(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _run_replay_compare_export(db_url, _file(tmp_path, LINES), "local")


def test_mixed_batch_file_over_runner_serve(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with running_server() as url:
        write_config(tmp_path, remote("served", url))
        _run_replay_compare_export(db_url, _file(tmp_path, LINES), "served")


@pytest.mark.parametrize(
    ("text", "suffix", "where"),
    [
        (
            "\n".join(
                [
                    json.dumps(LINES[0]),
                    json.dumps({**LINES[1], "body": {**LINES[1]["body"], "seed": 1}}),
                ]  # type: ignore[dict-item]
            ),
            "jsonl",
            ":2: body.seed:",
        ),
        ("api: responses\nmodel: m\ninput: Hello\nseeds: [1, 2]\n", "yaml", ":4: seeds:"),
    ],
)
def test_seed_on_a_responses_job_is_refused_at_submit(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, suffix: str, where: str
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"seeded.{suffix}"
    path.write_text(text, encoding="utf-8")
    code, _, err = invoke(db_url, "submit", str(path), "--endpoint", "local")
    assert code == 2
    assert err.startswith(f"error: {path}{where}")
    assert "Responses API has no seed" in err and "api: chat" in err
    assert len(err.strip().splitlines()) == 1
    assert sql(db_url, "SELECT count(*) FROM batches")[0][0] == 0
    assert sql(db_url, "SELECT count(*) FROM jobs")[0][0] == 0
