"""The local Batch API through the stock openai SDK: in-process and over HTTP.

Every test runs once with the SDK on ``LocalTransport`` and once against the HTTP server
(the one ``runner serve`` runs) on 127.0.0.1; batches turn around in a few milliseconds.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import openai
import pytest
from openai.types import Batch

from runner.config import load_settings
from runner.endpoints.client import EndpointClient
from runner.errors import ConfigError
from runner.localmodel.batches import BatchOptions
from runner.localmodel.server import ServerOptions, running_server
from runner.localmodel.service import MODEL_ID, LocalModelService
from runner.localmodel.transport import LOCAL_BASE_URL, LocalTransport
from tests.helpers import in_process, write_endpoint

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
DONE = ("completed", "failed", "expired", "cancelled")
FAST = {"turnaround_ms": 10.0}


@pytest.fixture(params=["inprocess", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def served(
    transport: str, noise_seed: int | None = 7, **batch: Any
) -> AsyncIterator[openai.AsyncOpenAI]:
    """An SDK client of a fresh local model whose Batch API has the options ``batch``."""
    options = BatchOptions(**(FAST | batch))
    if transport == "inprocess":
        service = LocalModelService(noise_seed=noise_seed, batches=options)
        http = httpx2.AsyncClient(transport=LocalTransport(service))
        try:
            async with openai.AsyncOpenAI(
                base_url=LOCAL_BASE_URL, api_key="local", max_retries=0, http_client=http
            ) as client:
                yield client
        finally:
            service.close()
    else:
        server = ServerOptions(port=0, log_level="warning", noise_seed=noise_seed, batches=options)
        with running_server(server) as url:
            async with openai.AsyncOpenAI(base_url=url, api_key="local", max_retries=0) as client:
                yield client


def chat_line(index: int, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"run-{index}",
        "method": "POST",
        "url": CHAT,
        "body": {
            "model": MODEL_ID,
            "seed": index,
            "max_tokens": 12,
            "messages": [{"role": "user", "content": f"news about Mars, part {index}"}],
        }
        | body,
    }


def jsonl(lines: list[Any]) -> bytes:
    return "".join(
        (line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines
    ).encode()


async def submit(client: openai.AsyncOpenAI, lines: list[Any], endpoint: str = CHAT) -> Batch:
    uploaded = await client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch"
    )
    return await client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata={"round": "r1", "chunk": "0"},
    )


async def finish(client: openai.AsyncOpenAI, batch: Batch) -> Batch:
    with anyio.fail_after(60):
        while batch.status not in DONE:
            await anyio.sleep(0.01)
            batch = await client.batches.retrieve(batch.id)
    return batch


async def lines_of(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


async def test_round_trip_matches_synchronous_calls(transport: str) -> None:
    requests = [chat_line(i) for i in range(30)]
    async with served(transport) as client:
        batch = await submit(client, requests)
        assert batch.status == "validating"
        assert batch.metadata == {"round": "r1", "chunk": "0"}
        done = await finish(client, batch)
        output = await lines_of(client, done.output_file_id)
        synchronous = {
            line["custom_id"]: await client.chat.completions.create(**line["body"])
            for line in requests
        }
    assert done.status == "completed"
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": 30, "completed": 30, "failed": 0}
    assert done.error_file_id is None and done.errors is None
    assert done.model == MODEL_ID
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
    # OpenAI does not keep the input order; lines map back by custom_id.
    order = [line["custom_id"] for line in output]
    assert sorted(order) == sorted(synchronous) and order != [r["custom_id"] for r in requests]
    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"].startswith("req_")
        expected = synchronous[line["custom_id"]]
        body = response["body"]
        assert body["choices"][0]["message"]["content"] == expected.choices[0].message.content
        assert body["usage"] == expected.usage.model_dump(exclude_none=True) | body["usage"]
        assert body["system_fingerprint"] == expected.system_fingerprint


async def test_files_routes(transport: str) -> None:
    async with served(transport) as client:
        first = await client.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
        second = await client.files.create(file=("b.jsonl", io.BytesIO(b"[]\n")), purpose="batch")
        assert (first.object, first.purpose, first.bytes, first.filename) == (
            "file",
            "batch",
            3,
            "a.jsonl",
        )
        assert (await client.files.retrieve(first.id)).model_dump() == first.model_dump()
        assert (await client.files.content(second.id)).content == b"[]\n"
        listed = [f.id async for f in client.files.list()]
        assert listed == [second.id, first.id]
        deleted = await client.files.delete(first.id)
        assert deleted.deleted and deleted.id == first.id
        assert [f.id async for f in client.files.list()] == [second.id]
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(first.id)
        with pytest.raises(openai.BadRequestError, match="purpose"):
            await client.files.create(file=("c.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve("batch_nothing")
        with pytest.raises(openai.BadRequestError, match="endpoint"):
            await client.batches.create(
                input_file_id=second.id, endpoint="/v1/completions", completion_window="24h"
            )
        with pytest.raises(openai.NotFoundError):
            await client.batches.create(
                input_file_id=first.id, endpoint=CHAT, completion_window="24h"
            )


async def test_list_batches_pages_newest_first(transport: str) -> None:
    async with served(transport) as client:
        made = [await submit(client, [chat_line(i)]) for i in range(3)]
        for batch in made:
            await finish(client, batch)
        page = await client.batches.list(limit=2)
        assert [b.id for b in page.data] == [made[2].id, made[1].id] and page.has_more
        assert [b.id async for b in client.batches.list(limit=2)] == [b.id for b in made[::-1]]


async def test_embeddings_batch(transport: str) -> None:
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": MODEL_ID, "input": f"text {i}"},
        }
        for i in range(4)
    ]
    async with served(transport) as client:
        done = await finish(client, await submit(client, lines, "/v1/embeddings"))
        output = {line["custom_id"]: line for line in await lines_of(client, done.output_file_id)}
        direct = await client.embeddings.create(model=MODEL_ID, input="text 2")
    assert done.status == "completed" and sorted(output) == ["e0", "e1", "e2", "e3"]
    assert output["e2"]["response"]["body"]["data"][0]["embedding"] == direct.data[0].embedding


async def test_a_rejected_request_goes_to_the_error_file(transport: str) -> None:
    lines = [chat_line(0), chat_line(1, temperature=7), chat_line(2)]
    async with served(transport) as client:
        done = await finish(client, await submit(client, lines))
        errors = await lines_of(client, done.error_file_id)
        output = await lines_of(client, done.output_file_id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    assert sorted(line["custom_id"] for line in output) == ["run-0", "run-2"]
    [error] = errors
    assert error["custom_id"] == "run-1" and error["error"] is None
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "temperature"


VALIDATION_CASES = {
    "bad_json": (["{not json"], "invalid_json_line", 2),
    "duplicate": ([chat_line(0)], "duplicate_custom_id", 2),
    "wrong_url": ([chat_line(5) | {"url": "/v1/embeddings"}], "url_mismatch", 2),
    "other_model": ([chat_line(5, model="gpt-4o")], "model_mismatch", 2),
    "too_many": ([chat_line(i) for i in range(1, 4)], "too_many_tasks", None),
}


@pytest.mark.parametrize("case", VALIDATION_CASES)
async def test_validation_failures(transport: str, case: str) -> None:
    extra, code, line = VALIDATION_CASES[case]
    async with served(transport, max_requests=3) as client:
        done = await finish(client, await submit(client, [chat_line(0), *extra]))
    assert done.status == "failed" and done.failed_at is not None
    assert done.output_file_id is None and done.error_file_id is None
    assert done.errors is not None and done.errors.data is not None
    [error] = done.errors.data
    assert (error.code, error.line) == (code, line)
    assert error.message


async def test_size_limit_and_forced_validation_failure(transport: str) -> None:
    async with served(transport, max_bytes=100) as client:
        big = await finish(client, await submit(client, [chat_line(0)]))
    async with served(transport, fail_validation="empty_file: nothing to do") as client:
        forced = await finish(client, await submit(client, [chat_line(0)]))
    assert big.status == forced.status == "failed"
    assert big.errors and big.errors.data and big.errors.data[0].code == "file_too_large"
    assert forced.errors and forced.errors.data
    assert (forced.errors.data[0].code, forced.errors.data[0].message) == (
        "empty_file",
        "nothing to do",
    )


async def test_expired_batch_keeps_its_done_part(transport: str) -> None:
    async with served(transport, expire_fraction=0.3) as client:
        done = await finish(client, await submit(client, [chat_line(i) for i in range(10)]))
        output = await lines_of(client, done.output_file_id)
        errors = await lines_of(client, done.error_file_id)
    assert done.status == "expired" and done.expired_at is not None
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": 10, "completed": 7, "failed": 0}
    assert len(output) == 7 and len(errors) == 3
    assert {line["custom_id"] for line in output + errors} == {f"run-{i}" for i in range(10)}
    for line in errors:
        assert line["response"] is None and line["error"]["code"] == "batch_expired"


async def test_line_errors_are_seeded_by_noise_seed(transport: str) -> None:
    failed = []
    for _ in range(2):
        async with served(transport, noise_seed=3, line_error_rate=0.5) as client:
            done = await finish(client, await submit(client, [chat_line(i) for i in range(20)]))
            errors = await lines_of(client, done.error_file_id)
            output = await lines_of(client, done.output_file_id)
        assert done.status == "completed" and done.request_counts is not None
        assert done.request_counts.failed == len(errors) and 0 < len(errors) < 20
        assert done.request_counts.completed == len(output) == 20 - len(errors)
        for line in errors:
            assert line["response"]["status_code"] == 500
            assert line["response"]["body"]["error"]["type"] == "server_error"
        failed.append(sorted(line["custom_id"] for line in errors))
    assert failed[0] == failed[1]


async def test_cancel_stops_the_batch(transport: str) -> None:
    async with served(transport, turnaround_ms=60_000) as client:
        batch = await submit(client, [chat_line(i) for i in range(5)])
        with anyio.fail_after(30):
            while batch.status != "in_progress":
                batch = await client.batches.retrieve(batch.id)
        cancelling = await client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled")
        assert cancelling.cancelling_at is not None
        done = await finish(client, cancelling)
        again = await client.batches.cancel(batch.id)  # idempotent
        errors = await lines_of(client, done.error_file_id)
        failed = await finish(client, await submit(client, []))  # empty_file
        with pytest.raises(openai.ConflictError):
            await client.batches.cancel(failed.id)
    assert done.status == again.status == "cancelled" and done.cancelled_at is not None
    # Cancelled before the first half of the turnaround: no line ran.
    assert done.output_file_id is None and done.request_counts is not None
    assert done.request_counts.completed == 0
    assert sorted(line["error"]["code"] for line in errors) == ["batch_cancelled"] * 5


async def test_closing_the_service_stops_running_batches() -> None:
    service = LocalModelService(batches=BatchOptions(turnaround_ms=600_000))
    http = httpx2.AsyncClient(transport=LocalTransport(service))
    async with openai.AsyncOpenAI(
        base_url=LOCAL_BASE_URL, api_key="local", max_retries=0, http_client=http
    ) as client:
        await submit(client, [chat_line(0)])
    with anyio.fail_after(10):
        await anyio.to_thread.run_sync(service.close, abandon_on_cancel=True)


async def test_batch_log_names_every_executed_line_once(transport: str, tmp_path: Path) -> None:
    log = tmp_path / "batch.log"
    async with served(transport, log=str(log), dir=str(tmp_path / "files")) as client:
        first = await finish(client, await submit(client, [chat_line(i) for i in range(6)]))
        second = await finish(client, await submit(client, [chat_line(i) for i in range(3)]))
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((e["batch_id"], e["custom_id"]) for e in entries) == sorted(
        [(first.id, f"run-{i}") for i in range(6)] + [(second.id, f"run-{i}") for i in range(3)]
    )
    assert list((tmp_path / "files" / "files").glob("*.data"))  # files kept in batch_dir


async def test_the_endpoint_config_drives_the_in_process_batch_api(tmp_path: Path) -> None:
    log = tmp_path / "executed.jsonl"
    write_endpoint(
        tmp_path,
        "batchy",
        "noise_seed = 5",
        "batch_turnaround_ms = 5",
        "batch_expire_fraction = 0.5",
        "batch_max_requests = 4",
        "batch_max_bytes = 100000",
        f'batch_dir = "{tmp_path / "store"}"',
        f'batch_log = "{log}"',
    )
    config = load_settings(env={}, cwd=tmp_path).endpoint("batchy")
    assert (config.batch_max_requests, config.batch_expire_fraction) == (4, 0.5)
    client = EndpointClient(config)
    try:
        done = await finish(client.sdk, await submit(client.sdk, [chat_line(i) for i in range(4)]))
        output = await lines_of(client.sdk, done.output_file_id)
        refused = await finish(
            client.sdk, await submit(client.sdk, [chat_line(i) for i in range(5)])
        )
    finally:
        await client.aclose()
    assert done.status == "expired" and len(output) == 2
    assert (
        refused.errors and refused.errors.data and refused.errors.data[0].code == "too_many_tasks"
    )
    logged = sorted(json.loads(line)["custom_id"] for line in log.read_text().splitlines())
    assert logged == sorted(line["custom_id"] for line in output)
    assert list((tmp_path / "store" / "files").glob("*.data"))


@pytest.mark.parametrize(
    ("lines", "etype", "message"),
    [
        (["batch_expire_fraction = 1.5"], "local", "batchy.batch_expire_fraction: must be"),
        (['batch_line_error_rate = "x"'], "local", "batchy.batch_line_error_rate: must be"),
        (["batch_turnaround_ms = -1"], "local", "batchy.batch_turnaround_ms: must be"),
        (["batch_max_requests = 0"], "local", "batchy.batch_max_requests: must be an integer"),
        (['batch_log = ""'], "local", "batchy.batch_log: must be a non-empty string"),
        (['batch_fail_validation = ": no code"'], "local", "batchy.batch_fail_validation: must"),
        (['batch_dir = "/tmp"'], "openai", "batchy.batch_dir: only a type = 'local'"),
    ],
)
def test_bad_batch_keys_are_config_errors(
    tmp_path: Path, lines: list[str], etype: str, message: str
) -> None:
    write_endpoint(tmp_path, "batchy", *lines, etype=etype)
    with pytest.raises(ConfigError, match=message):
        load_settings(env={}, cwd=tmp_path)


def test_the_batch_limits_apply_to_any_endpoint(tmp_path: Path) -> None:
    write_endpoint(
        tmp_path, "batchy", "batch_max_requests = 10", "batch_max_bytes = 2000", etype="openai"
    )
    config = load_settings(env={}, cwd=tmp_path).endpoint("batchy")
    assert (config.batch_max_requests, config.batch_max_bytes) == (10, 2000)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--batch-expire-fraction", "2"], "Invalid value for '--batch-expire-fraction'"),
        (["--batch-max-requests", "0"], "Invalid value for '--batch-max-requests'"),
        (["--batch-fail-validation", ":oops"], "batch_fail_validation must start with"),
    ],
)
def test_bad_serve_batch_flags_exit_2(tmp_path: Path, args: list[str], error: str) -> None:
    result = in_process("serve", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert error in result.stderr


@asynccontextmanager
async def sdk_of(service: LocalModelService) -> AsyncIterator[openai.AsyncOpenAI]:
    http = httpx2.AsyncClient(transport=LocalTransport(service))
    async with openai.AsyncOpenAI(
        base_url=LOCAL_BASE_URL, api_key="local", max_retries=0, http_client=http
    ) as client:
        yield client


async def test_a_shared_batch_dir_hands_batches_between_processes(tmp_path: Path) -> None:
    """Two services on one batch_dir stand for two processes (flocks of two open files
    exclude each other even in one process): the other one sees a batch, cancels it
    through its owner, and takes over one whose owner stopped."""
    slow = BatchOptions(dir=str(tmp_path), turnaround_ms=600_000)
    owner = LocalModelService(noise_seed=1, batches=slow)
    other = LocalModelService(
        noise_seed=1, batches=BatchOptions(dir=str(tmp_path), turnaround_ms=5)
    )
    try:
        async with sdk_of(owner) as first, sdk_of(other) as second:
            cancelled = await submit(first, [chat_line(i) for i in range(3)])
            orphan = await submit(first, [chat_line(i) for i in range(4)])
            seen = await second.batches.retrieve(cancelled.id)
            assert seen.status in ("validating", "in_progress")
            assert (await second.batches.cancel(cancelled.id)).status == "cancelling"
            assert (await finish(first, cancelled)).status == "cancelled"
            assert (await finish(second, seen)).status == "cancelled"
            await anyio.to_thread.run_sync(owner.close)  # the owner's process ends
            done = await finish(second, orphan)
            output = await lines_of(second, done.output_file_id)
    finally:
        owner.close()
        other.close()
    assert done.status == "completed"
    assert sorted(line["custom_id"] for line in output) == [f"run-{i}" for i in range(4)]
