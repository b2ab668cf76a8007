"""``runner report --serve``: one batch's report over HTTP on 127.0.0.1, read-only, live.

``GET /`` builds the page afresh from the database (the same page ``runner report``
writes, marked live); ``GET /version`` is a token of the batch's rounds and run counts
that changes when a run finishes or a round is added: the live page asks for it every
few seconds and reloads when it moved. Nothing else is served; other methods get 501,
and the server only ever reads (it listens on 127.0.0.1 only).

The database is read from one event loop in a thread of its own (an anyio blocking
portal); the HTTP server's threads hand their reads to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio.from_thread
from sqlalchemy.ext.asyncio import AsyncEngine

from runner.config import Price
from runner.db import engine as db
from runner.errors import RunnerError
from runner.htmlreport.data import gather
from runner.htmlreport.page import render
from runner.report import resolve_batch, round_ids_of, rounds_progress

log = logging.getLogger("runner.htmlreport.serve")
HOST = "127.0.0.1"


async def version(engine: AsyncEngine, batch_ref: str) -> str:
    """A token that changes when a round is added or one of its runs changes state."""
    async with engine.connect() as conn:
        batch = await resolve_batch(conn, batch_ref)
        try:
            ids = await round_ids_of(conn, batch, None)
        except RunnerError:  # no round yet
            ids = []
        progress = await rounds_progress(conn, ids) if ids else []
    seen = [(p.round_number, sorted(p.counts.items())) for p in progress]
    return hashlib.sha256(json.dumps([batch.id, seen]).encode()).hexdigest()[:16]


async def page(engine: AsyncEngine, batch_ref: str, prices: Mapping[str, Price]) -> str:
    """The live page; its version is taken first, so a run finished meanwhile reloads it."""
    token = await version(engine, batch_ref)
    async with engine.connect() as conn:
        document = await gather(conn, batch_ref, prices=prices)
    return render(document, live=token)


def _handler(portal: Any, engine: AsyncEngine, batch_ref: str, prices: Mapping[str, Price]) -> Any:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: str, kind: str) -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/":
                    self._send(200, portal.call(page, engine, batch_ref, prices), "text/html")
                elif path == "/version":
                    self._send(200, portal.call(version, engine, batch_ref), "text/plain")
                else:
                    self._send(404, "not found: / is the report, /version its version\n",
                               "text/plain")  # fmt: skip
            except RunnerError as exc:
                self._send(500, exc.message + "\n", "text/plain")

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return Handler


@contextmanager
def serving(
    url: str, batch_ref: str, *, port: int = 0, prices: Mapping[str, Price] | None = None
) -> Iterator[str]:
    """Serve ``batch_ref``'s report until the block ends; yields the page's URL.

    An unknown batch fails here, before anything listens.
    """
    with anyio.from_thread.start_blocking_portal() as portal:
        engine = portal.call(lambda: _engine(url))
        try:
            portal.call(version, engine, batch_ref)
            server = ThreadingHTTPServer((HOST, port), _handler(portal, engine, batch_ref,
                                                                 prices or {}))  # fmt: skip
            thread = threading.Thread(target=server.serve_forever, name="report-http")
            thread.start()
            try:
                yield f"http://{HOST}:{server.server_address[1]}/"
            finally:
                server.shutdown()
                server.server_close()
                thread.join()
        finally:
            portal.call(engine.dispose)


async def _engine(url: str) -> AsyncEngine:
    return db.create_engine_async(url)
