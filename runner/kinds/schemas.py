"""Structured outputs: does a run's output follow the JSON schema its request asked for?

A job asks for one with ``response_format: {type: json_schema, json_schema: {schema}}``
(chat) or ``text: {format: {type: json_schema, schema}}`` (responses). Every output of its
runs is checked with ``jsonschema`` (the validator its ``$schema`` names, Draft 2020-12 by
default): the verdict is ``runs.schema_valid``, true only when every sample parses as
JSON and is valid. An invalid output is still a stored success, never a retry: the
endpoint answered, and how often it breaks the schema is what there is to measure.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["schema_of", "verdict"]


def schema_of(api: str, body: str) -> dict[str, Any] | None:
    """The JSON schema a canonical request body asks its outputs to follow, if any."""
    if '"json_schema"' not in body:  # canonical JSON: the common case costs a search
        return None
    data = json.loads(body)
    if api == "chat":
        fmt = data.get("response_format")
        holder = fmt.get("json_schema") if isinstance(fmt, dict) else None
    elif api == "responses":
        text = data.get("text")
        holder = text.get("format") if isinstance(text, dict) else None
    else:
        return None
    if not isinstance(holder, dict) or (api == "responses" and holder.get("type") != "json_schema"):
        return None
    schema = holder.get("schema")
    return schema if isinstance(schema, dict) else None


@functools.lru_cache(maxsize=64)
def _validator(schema_text: str) -> Any:
    """A validator of the schema (built once per schema), or None if it is not one."""
    from jsonschema import exceptions, validators

    schema = json.loads(schema_text)
    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError:
        return None
    return cls(schema)


def verdict(api: str, body: str, outputs: Sequence[str | None]) -> bool | None:
    """Whether every output is valid under the body's schema; None when it asks for none
    (or its schema is itself invalid: there is nothing to judge by)."""
    schema = schema_of(api, body)
    if schema is None:
        return None
    validator = _validator(json.dumps(schema, sort_keys=True))
    if validator is None:
        return None
    for output in outputs:
        try:
            document = json.loads(output or "")
        except ValueError:
            return False
        if not validator.is_valid(document):
            return False
    return True
