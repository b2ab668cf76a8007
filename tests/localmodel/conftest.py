"""Fixtures for the local model tests: one service, one HTTP server, SDK clients over both."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import httpx2
import openai
import pytest

from runner.localmodel.server import ServerOptions, running_server
from runner.localmodel.service import LocalModelService
from runner.localmodel.transport import LOCAL_BASE_URL, LocalTransport


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def service() -> LocalModelService:
    return LocalModelService()


@pytest.fixture(scope="session")
def server_url(service: LocalModelService) -> Iterator[str]:
    with running_server(ServerOptions(port=0, log_level="warning"), service) as url:
        yield url


def _inprocess_client(service: LocalModelService) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=LOCAL_BASE_URL,
        api_key="local",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=LocalTransport(service)),
    )


def _http_client(base_url: str, timeout: float = 30.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0, timeout=timeout)


@pytest.fixture
def make_inprocess_client() -> Callable[[LocalModelService], openai.AsyncOpenAI]:
    """Factory: an SDK client over LocalTransport for a given service (close it yourself)."""
    return _inprocess_client


@pytest.fixture
def make_http_client() -> Callable[..., openai.AsyncOpenAI]:
    """Factory: an SDK client for a base URL, ``timeout`` in seconds (close it yourself)."""
    return _http_client


@pytest.fixture(params=["inprocess", "http"])
async def client(
    request: pytest.FixtureRequest, service: LocalModelService
) -> AsyncIterator[openai.AsyncOpenAI]:
    """The real openai SDK, once through LocalTransport and once over HTTP."""
    if request.param == "inprocess":
        sdk = _inprocess_client(service)
    else:
        sdk = _http_client(request.getfixturevalue("server_url"))
    async with sdk:
        yield sdk
