"""Canonical JSON and versioned request hashes.

A job's request body is stored as canonical JSON (sorted keys, no whitespace,
UTF-8 kept as is) and identified by ``request_hash`` = ``"v1:" + sha256(body)``.
The prefix names the canonical form, so a future change of form is detectable
instead of silently mismatching old hashes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

HASH_PREFIX = "v1:"


def canonical_json(value: Any) -> str:
    """Serialise ``value`` deterministically: the same data always gives the same text."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def request_hash(canonical_body: str) -> str:
    """The versioned hash of an already canonical request body."""
    return HASH_PREFIX + hashlib.sha256(canonical_body.encode("utf-8")).hexdigest()
