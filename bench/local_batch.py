"""The local Batch API at scale: one big batch through ``runner serve``, the server's memory.

Writes an OpenAI Batch file of N seeded requests, uploads it to a ``runner serve`` of its
own (limits raised to take it in one batch), polls until the batch completes, downloads
the output streaming and checks every custom_id came back once. Prints the time of each
phase, lines/s, and the server's peak RSS (VmHWM): it must not grow with the batch.

    python bench/local_batch.py --lines 1000000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RUNNER, free_port, machine, write_jobs


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = write_jobs(Path(tmp) / "in.jsonl", args.lines, max_tokens=args.max_tokens)
        size = source.stat().st_size
        port = free_port()
        flags = ["--batch-max-requests", str(args.lines), "--batch-max-bytes", str(1 << 40)]
        proc = subprocess.Popen(
            [*RUNNER, "serve", "--port", str(port), "--batch-dir", tmp, *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.models.list()
                    break
                except openai.APIConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            idle = peak_rss_mb(proc.pid)
            start = time.monotonic()
            with source.open("rb") as handle:
                uploaded = client.files.create(file=handle, purpose="batch")
            upload_s = time.monotonic() - start
            batch = client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            start = time.monotonic()
            while batch.status not in ("completed", "failed", "expired", "cancelled"):
                time.sleep(0.5)
                batch = client.batches.retrieve(batch.id)
            run_s = time.monotonic() - start
            assert batch.status == "completed", batch
            start = time.monotonic()
            seen = set()
            with client.files.with_streaming_response.content(batch.output_file_id or "") as r:
                for line in r.iter_lines():
                    if line:
                        seen.add(line.split('"custom_id":"', 1)[1].split('"', 1)[0])
            download_s = time.monotonic() - start
            assert len(seen) == args.lines
            peak = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    print(machine(), f"| load {os.getloadavg()[0]:.1f}")
    print(f"{args.lines:,} lines ({size / 1e6:.0f} MB), max_tokens {args.max_tokens}")
    rate = args.lines / run_s
    print(f"upload {upload_s:.1f} s | validate + run {run_s:.1f} s ({rate:,.0f} lines/s)")
    print(f"download + map back {download_s:.1f} s")
    print(f"server peak RSS: {idle:.0f} MB idle, {peak:.0f} MB after the batch")


if __name__ == "__main__":
    main()
