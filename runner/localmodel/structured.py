"""Structured outputs of the local model: a JSON instance of the request's JSON schema.

This module owns ``json_schema`` output (chat's ``response_format``, the Responses API's
``text.format``): the schema is checked when the request is read (:func:`parse_schema`,
an invalid one is a 400 naming it), and each reply is an instance of it built from the
drawn text (:func:`instance`): string fields take the generated words in order, numbers,
booleans and enum choices come from a generator seeded by that text, so a seeded request
gives the same JSON in every process. Objects carry every property (as OpenAI's strict
mode requires), arrays ``minItems`` items (at least one), ``$ref`` to ``$defs`` resolves.

Invalid outputs on demand: a reply longer than ``max_tokens`` / ``max_output_tokens`` is
cut there, as a real model's is, so its JSON is broken (finish reason ``length``, or an
``incomplete`` response). That is how structured outputs fail in practice, and what
seed-runner's ``schema_valid`` check exists to catch.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from typing import Any

__all__ = ["instance", "parse_schema"]

MAX_DEPTH = 16


def parse_schema(value: object, param: str) -> tuple[str | None, dict[str, Any]]:
    """(problem, schema) of a ``json_schema`` format; the problem names what is wrong."""
    from jsonschema import exceptions, validators

    if not isinstance(value, Mapping):
        return f"Invalid type for '{param}': expected an object.", {}
    schema = value.get("schema")
    if not isinstance(schema, dict):
        return f"Missing required parameter: '{param}.schema'.", {}
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return f"Missing required parameter: '{param}.name'.", {}
    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as exc:
        return f"Invalid schema for '{param}': {exc.message}", {}
    return None, schema


class _Words:
    """The drawn text, handed out a few words at a time for string fields."""

    def __init__(self, text: str) -> None:
        self._words = text.split() or ["text"]
        self._at = 0

    def take(self, count: int) -> str:
        words = [self._words[(self._at + i) % len(self._words)] for i in range(count)]
        self._at += count
        return " ".join(words)


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        node = node.get(part, {}) if isinstance(node, Mapping) else {}
    return node if isinstance(node, Mapping) else {}


def _string(schema: Mapping[str, Any], words: _Words) -> str:
    text = words.take(4)
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if isinstance(high, int):
        text = text[:high]
    if isinstance(low, int) and len(text) < low:
        text = text + "." * (low - len(text))
    return text


def _number(schema: Mapping[str, Any], rng: random.Random, integer: bool) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
    high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100))
    if integer:
        return rng.randint(
            int(low) + ("exclusiveMinimum" in schema), int(high) - ("exclusiveMaximum" in schema)
        )
    return round(rng.uniform(float(low), float(high)), 3)


def _first_option(schema: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The branch of an ``anyOf`` / ``oneOf`` / ``allOf`` to follow (not ``null``'s)."""
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            real = [o for o in options if isinstance(o, Mapping) and o.get("type") != "null"]
            first = (real or options)[0]
            return first if isinstance(first, Mapping) else {}
    return None


class _Maker:
    """Builds an instance of one schema from one drawn text."""

    def __init__(self, root: Mapping[str, Any], text: str) -> None:
        self.root = root
        self.words = _Words(text)
        self.rng = random.Random(hashlib.sha256(text.encode()).digest())

    def build(self, schema: Mapping[str, Any], depth: int = 0) -> Any:
        schema = _resolve(schema, self.root)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        if (option := _first_option(schema)) is not None:
            return self.build(option, depth + 1)
        kind = schema.get("type", "string")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind in ("object", "array"):
            return None if depth >= MAX_DEPTH else self.container(kind, schema, depth)
        if kind in ("integer", "number"):
            return _number(schema, self.rng, kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return _string(schema, self.words)

    def container(self, kind: str, schema: Mapping[str, Any], depth: int) -> Any:
        if kind == "object":
            properties = schema.get("properties") or {}
            return {name: self.build(sub, depth + 1) for name, sub in properties.items()}
        items = schema.get("items") or {}
        count = max(int(schema.get("minItems", 1)), 1)
        if isinstance(schema.get("maxItems"), int):
            count = min(count, schema["maxItems"])
        return [self.build(items, depth + 1) for _ in range(count)]


def instance(schema: Mapping[str, Any], text: str) -> str:
    """A JSON document of ``schema`` made from the drawn ``text`` (the same text, the same
    document: its other choices come from a generator seeded by that text)."""
    return json.dumps(_Maker(schema, text).build(schema), ensure_ascii=False)
