"""A scriptable OpenAI-compatible HTTP server on 127.0.0.1 that records what it receives.

It stands in for a remote provider (OpenAI, vLLM...) so tests can check the exact
bytes our client sends and make the server fail in chosen ways. It is not a model:
the built-in local model is tested through its own server elsewhere.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON; str -> sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def completion(body: dict[str, Any], *, fingerprint: str | None = None) -> dict[str, Any]:
    text = f"echo: {body['messages'][-1]['content']} (seed {body.get('seed')})"
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": body["model"] + "-2024-01-01",
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
    }


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class FakeServer:
    def __init__(self, script: Callable[[Received, int], Reply] | None = None) -> None:
        self.received: list[Received] = []
        self.script = script or (lambda req, n: Reply(body=completion(req.json)))
        self._lock = threading.Lock()
        self.base_url = ""

    def handle(self, request: Received) -> Reply:
        with self._lock:
            self.received.append(request)
            count = len(self.received)
        return self.script(request, count)


@contextmanager
def fake_server(script: Callable[[Received, int], Reply] | None = None) -> Iterator[FakeServer]:
    server = FakeServer(script)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = Received(self.path, headers, self.rfile.read(length))
            reply = server.handle(request)
            if reply.delay:
                time.sleep(reply.delay)
            payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
            data = payload.encode()
            self.send_response(reply.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            if "x-request-id" not in reply.headers:  # a reply may name its own
                self.send_header("x-request-id", f"req_{len(server.received)}")
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # clients hanging up mid-response is what some tests do on purpose

    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
