"""Embeddings jobs on both backends: vectors stored as float32 bytes, compared by exact
equality and cosine similarity, exported with their vectors back in the API's form."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest
from openai.types import CreateEmbeddingResponse

from runner.localmodel.embeddings import embed
from tests.helpers import sql
from tests.replaykit import invoke


def _line(key: str, body: dict[str, object]) -> str:
    return json.dumps({"custom_id": key, "method": "POST", "url": "/v1/embeddings", "body": body})


def _write(tmp_path: Path, name: str, mars: str) -> Path:
    path = tmp_path / name
    lines = [
        _line("pair", {"model": "e", "input": [mars, "ocean tides"], "dimensions": 16}),
        _line("b64", {"model": "e", "input": "bread", "encoding_format": "base64"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_embeddings_are_stored_compared_and_exported(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = _write(tmp_path, "vectors.jsonl", "the red planet Mars")
    code, _, err = invoke(db_url, "run", str(first), "--endpoint", "local", "--quiet")
    assert code == 0, err
    ((blob, dims, outputs, api),) = sql(
        db_url,
        "SELECT embedding, embedding_dimensions, outputs, api FROM runs JOIN jobs"
        " ON jobs.id = runs.job_id WHERE jobs.key = 'pair'",
    )
    assert api == "embeddings" and dims == 16 and outputs is None
    stored = struct.unpack("<32f", bytes(blob))  # 2 vectors x 16 float32: 128 bytes
    assert list(stored) == embed("the red planet Mars", 16) + embed("ocean tides", 16)

    # The same requests again: the same bytes, cosine 1.
    code, _, err = invoke(db_url, "replay", "vectors", "--work")
    assert code == 0, err
    code, out, err = invoke(db_url, "compare", "vectors", "--format", "json")
    items = {item["key"]: item for item in json.loads(out)["items"]}
    assert items["pair"]["exact_match"] is True
    assert items["pair"]["similarity"] == pytest.approx(1.0)
    assert items["pair"]["fingerprint"] == "unknown"

    # Another text for the first input: not equal, cosine between 0 and 1 (mean of rows).
    other = _write(tmp_path, "moved.jsonl", "the red planet Mars and its two moons")
    code, _, err = invoke(db_url, "run", str(other), "--endpoint", "local", "--quiet")
    assert code == 0, err
    code, out, err = invoke(db_url, "compare", "vectors", "moved", "--format", "json")
    assert code == 0, err
    items = {item["key"]: item for item in json.loads(out)["items"]}
    assert items["pair"]["exact_match"] is False
    assert 0.5 < items["pair"]["similarity"] < 1.0
    assert items["b64"]["exact_match"] is True
    code, out, err = invoke(db_url, "compare", "vectors", "moved")
    assert "2 embeddings" in out

    code, out, err = invoke(db_url, "export", "moved", "--format", "openai-batch")
    assert code == 0, err
    lines = {line["custom_id"]: line for line in map(json.loads, out.splitlines())}
    pair = CreateEmbeddingResponse.model_validate(lines["pair"]["response"]["body"])
    assert pair.data[1].embedding == embed("ocean tides", 16)
    b64 = lines["b64"]["response"]["body"]["data"][0]["embedding"]
    assert base64.b64decode(b64) == struct.pack("<256f", *embed("bread", 256))  # its bytes
    code, out, err = invoke(db_url, "show", "moved", "pair")
    assert "--- embedding: 2 vector(s) x 16 dimensions (float32, 128 bytes) ---" in out
