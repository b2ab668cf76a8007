"""How much an embeddings run's vectors cost to store: float32 bytes against JSON text.

Makes N rows of embedding vectors (unit vectors of float32 normal draws, seeded, the
shape of OpenAI's text-embedding-3 output) and stores them into two SQLite files, once
as float32 blobs (what ``runs.embedding`` holds) and once as the JSON text of the floats
as an API returns them (each float32 printed at its shortest round-trip form, as OpenAI's
responses are). Prints payload bytes per vector and the file sizes after VACUUM.

    python bench/embedding_storage.py --rows 2000 --dimensions 1536
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
from pathlib import Path

import numpy as np


def _json_text(row: np.ndarray) -> str:
    values = ",".join(np.format_float_positional(v, unique=True, trim="-") for v in row)
    return f"[{values}]"


def _file_size(rows: list[bytes] | list[str], kind: str, folder: Path) -> int:
    path = folder / f"{kind}.db"
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE runs (id INTEGER PRIMARY KEY, value {kind})")
        db.executemany("INSERT INTO runs (value) VALUES (?)", [(row,) for row in rows])
    with sqlite3.connect(path) as db:
        db.execute("VACUUM")
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--dimensions", type=int, default=1536)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    vectors = rng.standard_normal((args.rows, args.dimensions))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype("<f4")
    blobs = [row.tobytes() for row in vectors]
    texts = [_json_text(row) for row in vectors]
    blob_bytes = sum(map(len, blobs)) / args.rows
    text_bytes = sum(len(t.encode()) for t in texts) / args.rows
    with tempfile.TemporaryDirectory() as folder:
        blob_file = _file_size(blobs, "BLOB", Path(folder))
        text_file = _file_size(texts, "TEXT", Path(folder))
    print(f"{args.rows} vectors x {args.dimensions} dimensions (float32)")
    print(
        f"payload per vector: float32 {blob_bytes:,.0f} B, JSON text {text_bytes:,.0f} B "
        f"({text_bytes / blob_bytes:.2f}x)"
    )
    print(
        f"SQLite file after VACUUM: float32 {blob_file / 1e6:.1f} MB, "
        f"JSON text {text_file / 1e6:.1f} MB ({text_file / blob_file:.2f}x)"
    )
    assert np.float32(json.loads(texts[0])[0]) == vectors[0][0]  # the text round-trips


if __name__ == "__main__":
    main()
