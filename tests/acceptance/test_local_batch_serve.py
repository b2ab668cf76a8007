"""``runner serve``'s Batch API in a process of its own: flags, and a batch that survives a
kill -9 of the server (a restart on the same --batch-dir takes it over)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai

RUNNER = [sys.executable, "-m", "runner"]
CHAT = "/v1/chat/completions"


def completed(client: openai.OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    return 0 if counts is None else counts.completed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(tmp_path: Path, port: int, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*RUNNER, "serve", "--port", str(port), *flags],
        cwd=tmp_path,
        env={**os.environ, "RUNNER_SERVE_BATCH_LOG": str(tmp_path / "executed.jsonl")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def connect(port: int) -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.models.list()
            return client
        except openai.APIConnectionError:
            assert time.monotonic() < deadline, "runner serve did not start"
            time.sleep(0.1)


def requests(count: int) -> bytes:
    return "".join(
        json.dumps(
            {
                "custom_id": f"run-{i}",
                "method": "POST",
                "url": CHAT,
                "body": {
                    "model": "m",
                    "seed": i,
                    "max_tokens": 4,
                    "messages": [{"role": "user", "content": f"Mars {i}"}],
                },
            }
        )
        + "\n"
        for i in range(count)
    ).encode()


def wait(client: openai.OpenAI, batch_id: str) -> openai.types.Batch:
    deadline = time.monotonic() + 120
    batch = client.batches.retrieve(batch_id)
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
        batch = client.batches.retrieve(batch_id)
    return batch


def test_serve_batch_flags_shape_the_batches(tmp_path: Path) -> None:
    port = free_port()
    flags = ["--batch-turnaround-ms", "5", "--batch-expire-fraction", "0.25"]
    proc = serve(tmp_path, port, *flags, "--batch-line-error-rate", "0.25", "--noise-seed", "1")
    try:
        client = connect(port)
        upload = client.files.create(file=("in.jsonl", io.BytesIO(requests(8))), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint=CHAT, completion_window="24h"
        )
        done = wait(client, batch.id)
        output = client.files.content(done.output_file_id or "").text.splitlines()
        errors = [
            json.loads(x)
            for x in client.files.content(done.error_file_id or "").text.split("\n")
            if x
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert done.status == "expired" and done.request_counts is not None
    assert done.request_counts.total == 8
    assert (
        done.request_counts.completed + done.request_counts.failed
        == 6
        == len(output) + sum(1 for e in errors if e["response"] is not None)
    )
    assert sorted(e["error"]["code"] for e in errors if e["error"]) == ["batch_expired"] * 2
    logged = [json.loads(x) for x in (tmp_path / "executed.jsonl").read_text().splitlines()]
    assert len(logged) == 6 and {e["batch_id"] for e in logged} == {batch.id}


def test_a_batch_survives_a_killed_server(tmp_path: Path) -> None:
    """kill -9 while a batch runs; a server on the same --batch-dir takes it over and ends
    it: every line in the output exactly once, and no line logged as executed twice."""
    port, count = free_port(), 1000
    flags = ["--batch-dir", str(tmp_path / "store"), "--batch-turnaround-ms", "0"]
    proc = serve(tmp_path, port, *flags)
    try:
        client = connect(port)
        upload = client.files.create(
            file=("in.jsonl", io.BytesIO(requests(count))), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=upload.id, endpoint=CHAT, completion_window="24h"
        )
        deadline = time.monotonic() + 60
        while completed(client, batch.id) < 30:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    # The kill came mid-run: some lines were executed (and logged), others not yet.
    assert 0 < len((tmp_path / "executed.jsonl").read_text().splitlines()) < count
    port = free_port()
    proc = serve(tmp_path, port, *flags)
    try:
        client = connect(port)
        done = wait(client, batch.id)
        output = [
            json.loads(x) for x in client.files.content(done.output_file_id or "").text.splitlines()
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == count
    assert sorted(line["custom_id"] for line in output) == sorted(f"run-{i}" for i in range(count))
    logged = [
        json.loads(x)["custom_id"] for x in (tmp_path / "executed.jsonl").read_text().splitlines()
    ]
    # Each line is logged after its result is written: a kill between the two leaves at
    # most one line unlogged (it is not executed again), never one logged twice.
    assert len(logged) == len(set(logged)) >= count - 1
