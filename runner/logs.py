"""Logging setup: text or JSON lines on stderr, with secrets scrubbed from every record.

Lines about one run carry ``batch``, ``round``, ``key`` and ``run_id`` (as words in
text lines, as fields in JSON lines): use ``run_context(run)`` as ``extra``.
API keys are removed from every message before it is written, whatever logged it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

RUN_FIELDS = ("batch", "round", "key", "run_id")


def run_context(run: Any) -> dict[str, Any]:
    """The ``extra`` of a log call about a claimed run."""
    return {"batch": run.batch_id, "round": run.round_number, "key": run.key, "run_id": run.run_id}


class SecretFilter(logging.Filter):
    """Replaces every known secret in a record's final message with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
            if record.exc_info and record.exc_text is None:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                for secret in self.secrets:
                    record.exc_text = record.exc_text.replace(secret, "***")
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in RUN_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info or record.exc_text:
            entry["error"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(entry, ensure_ascii=False, default=str)


def secrets_from(env: Mapping[str, str], key_envs: Iterable[str | None]) -> list[str]:
    return [env[name] for name in key_envs if name and env.get(name)]


def setup_logging(level: str, fmt: str, key_envs: Iterable[str | None]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(SecretFilter(secrets_from(os.environ, key_envs)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if level.lower() != "debug":
        # The SDK and HTTP client log every request at INFO; ours are enough.
        for name in ("httpx", "httpx2", "openai", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
