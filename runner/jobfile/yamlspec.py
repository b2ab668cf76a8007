"""YAML job specs (``.yaml``/``.yml``): one request template expanded into many.

models x items x vars (cartesian) x seeds x repeat, in that order. The document is
composed by a loader that refuses aliases and deep nesting as it reads, before any
value is built or walked (an alias "bomb" of a few hundred bytes would otherwise
expand into billions of nodes); every value is then checked (``values``) before a
job is built, and a file that would expand into more than ``max_jobs`` jobs is
refused before the first one is.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import yaml

from runner.errors import JobFileError
from runner.hashing import canonical_json, request_hash
from runner.jobfile.prompts import PROMPT_KEYS, Prompt, parse_api, parse_prompt
from runner.jobfile.spec import JobFile, JobSpec
from runner.jobfile.values import (
    INT32_MAX,
    MAX_DEPTH,
    dotted,
    max_jobs_problem,
    name_problem,
    parse_problem,
    value_problem,
)
from runner.kinds import Api
from runner.kinds.params import NO_SEED, params_for, rejected_for
from runner.params import MAX_SAMPLES, Check, check_seed
from runner.scheduling.cron import ScheduleSpec, parse_schedule_block

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
YAML_KEYS = {
    "name",
    "description",
    "endpoint",
    "model",
    "models",
    *PROMPT_KEYS,
    "vars",
    "items",
    "seed",
    "seeds",
    "repeat",
    "samples",
    "params",
    "extra_params",
    "key",
    "max_attempts",
    "schedule",
}
# Keys of an item that are not variables: per-item overrides of the top-level ones.
ITEM_RESERVED = ("seed", "params")

Path_ = tuple[str | int, ...]


class _Lines:
    """Line numbers of every key and item of a YAML document, by path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: dict[Path_, int] = {}

    def walk(self, node: yaml.Node, at: Path_ = ()) -> None:
        self.lines.setdefault(at, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    self.fail((*at, key), "duplicate key", key_node.start_mark.line + 1)
                seen.add(key)
                self.lines[(*at, key)] = key_node.start_mark.line + 1
                self.walk(value_node, (*at, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.walk(item, (*at, index))

    def line(self, at: Path_) -> int | None:
        while at not in self.lines and at:
            at = at[:-1]
        return self.lines.get(at)

    def fail(self, at: Path_, problem: str, line: int | None = None) -> NoReturn:
        raise JobFileError(self.path, line or self.line(at), dotted(at) or None, problem)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases and deep nesting as it composes.

    An alias (``*name``) makes a node appear again wherever it is used, so nine nested
    aliases of nine make a few hundred bytes into billions of nodes for any walk over
    the document. Refused at the first one, before it is expanded (anchors alone are
    harmless). Composing recurses once per level, so nesting is bounded here too.
    """

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            problem = f"aliases (*{event.anchor}) are not supported: write the value out"
            raise yaml.composer.ComposerError(None, None, problem, mark)
        if self.depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_DEPTH} levels deep", mark
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except ValueError as exc:  # e.g. an integer of more than 4,300 digits
            problem = parse_problem(exc)
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


def _read_yaml(path: Path) -> tuple[Any, _Lines, bytes]:
    raw = path.read_bytes()
    lines = _Lines(str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobFileError(str(path), None, None, f"not UTF-8 text: {exc}") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise JobFileError(str(path), 1, None, "file is empty")
        lines.walk(node)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise JobFileError(str(path), line, None, f"invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise JobFileError(str(path), None, None, f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return data, lines, raw


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _placeholders(template: str) -> list[str]:
    return [m.group(1) for m in PLACEHOLDER.finditer(template) if m.group(1)]


def _fill(template: str, values: Mapping[str, Any]) -> str:
    def sub(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return _render(values[match.group(1)])

    return PLACEHOLDER.sub(sub, template)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


@dataclass(frozen=True)
class _Item:
    """One entry of ``items``: variable values plus optional per-item seed and params."""

    values: dict[str, Any]
    params: dict[str, Any]
    seeds: list[int | None] | None
    # Its own seed goes into its default key: another item with its own seed has the same
    # variables (they differ only by seed, and would get the same key without it).
    seed_in_key: bool = False


@dataclass(frozen=True)
class _Spec:
    name: str
    endpoint: str
    models: list[str]
    prompt: Prompt
    items: list[_Item]
    vars: dict[str, list[Any]]
    seeds: list[int | None]
    repeat: int
    params: dict[str, Any]
    key: str | None
    max_attempts: int | None


def _string(data: Mapping[str, Any], key: str, lines: _Lines, *, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value.strip():
        lines.fail((key,), f"must be a non-empty string, got {value!r}")
    return str(value)


def _positive_int(data: Mapping[str, Any], key: str, lines: _Lines) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INT32_MAX:
        lines.fail((key,), f"must be an integer from 1 to {INT32_MAX}, got {value!r}")
    return int(value)


def _one_or_many(
    data: Mapping[str, Any], one: str, many: str, lines: _Lines, check: Check
) -> list[Any] | None:
    """``one: value`` or ``many: [values]``; ``check`` says what is wrong with a value."""
    if one in data and many in data:
        lines.fail((many,), f"give {one!r} or {many!r}, not both")
    if one in data:
        if problem := check(data[one]):
            lines.fail((one,), problem)
        return [data[one]]
    if many in data:
        values = data[many]
        if not isinstance(values, list) or not values:
            lines.fail((many,), "must be a non-empty list")
        for index, value in enumerate(values):
            if problem := check(value):
                lines.fail((many, index), problem)
        if len(set(map(repr, values))) != len(values):
            lines.fail((many,), "has duplicate values")
        return list(values)
    return None


def _model_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return f"has the wrong type: {value!r}"
    return name_problem(value)


def _variables(data: Mapping[str, Any], lines: _Lines) -> dict[str, list[Any]]:
    variables = data.get("vars", {})
    if not isinstance(variables, Mapping):
        lines.fail(("vars",), "must map variable names to lists of values")
    for var, values in variables.items():
        if var in ITEM_RESERVED:
            lines.fail(("vars", var), f"{var!r} is reserved; use the top-level {var!r} key")
        if not isinstance(values, list) or not values:
            lines.fail(("vars", var), "must be a non-empty list of values")
        for index, value in enumerate(values):
            if not _is_scalar(value):
                lines.fail(("vars", var, index), "must be a string, number or boolean")
    return {str(k): list(v) for k, v in variables.items()}


def _items(
    data: Mapping[str, Any], variables: Mapping[str, Any], lines: _Lines, api: Api
) -> list[_Item]:
    items = data.get("items", [{}])
    if not isinstance(items, list) or not items:
        lines.fail(("items",), "must be a non-empty list of variable mappings")
    result = []
    for index, item in enumerate(items):
        at: Path_ = ("items", index)
        if not isinstance(item, Mapping):
            lines.fail(at, "must be a mapping of variable names to values")
        for var, value in item.items():
            if var in ITEM_RESERVED:
                continue
            if not _is_scalar(value):
                lines.fail((*at, var), "must be a string, number or boolean")
            if var in variables:
                lines.fail((*at, var), f"variable {var!r} is also defined in vars")
        seed = item.get("seed")
        if "seed" in item and api in NO_SEED:
            lines.fail((*at, "seed"), NO_SEED[api])
        if "seed" in item and (problem := check_seed(seed)):
            lines.fail((*at, "seed"), problem)
        result.append(
            _Item(
                values={k: v for k, v in item.items() if k not in ITEM_RESERVED},
                params=_check_params(item.get("params", {}), (*at, "params"), lines, api),
                seeds=[seed] if "seed" in item else None,
            )
        )
    return _seeds_in_keys(result)


def _seeds_in_keys(items: list[_Item]) -> list[_Item]:
    """Mark the items told apart only by their own seed (see ``_Item.seed_in_key``).

    Only such items change: they gave duplicate keys before, so no key a file could be
    submitted with moves.
    """
    own = Counter(_key_values(i.values) for i in items if i.seeds is not None)
    twins = {values for values, count in own.items() if count > 1}
    return [
        replace(i, seed_in_key=True)
        if i.seeds is not None and _key_values(i.values) in twins
        else i
        for i in items
    ]


def _key_values(values: Mapping[str, Any]) -> str:
    """The part of a default key that names variable values, e.g. ``topic=mars/lang=en``."""
    return "/".join(f"{k}={_render(v)}" for k, v in values.items())


def _check_json(value: Any, at: Path_, lines: _Lines) -> None:
    """Refuse what cannot go into a request's JSON body (NaN, dates, ...)."""
    bad = value_problem(value, json=True)
    if bad:
        lines.fail((*at, *bad[0]), bad[1])


def _check_params(params: Any, at: Path_, lines: _Lines, api: Api) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        lines.fail(at, "must be a mapping of request parameters")
    _check_json(params, at, lines)
    known, rejected = params_for(api), rejected_for(api)
    for name, value in params.items():
        if name in rejected:
            lines.fail((*at, name), rejected[name])
        if name not in known:
            lines.fail(
                (*at, name),
                f"unknown parameter of api: {api.value} (put server-specific ones under "
                f"extra_params; known: {', '.join(sorted(known))})",
            )
        problem = known[name](value)
        if problem:
            lines.fail((*at, name), problem)
    if "max_tokens" in params and "max_completion_tokens" in params:
        lines.fail((*at, "max_tokens"), "give max_tokens or max_completion_tokens, not both")
    return dict(params)


def _params(data: Mapping[str, Any], lines: _Lines, api: Api) -> dict[str, Any]:
    params = dict(_check_params(data.get("params", {}), ("params",), lines, api))
    if "samples" in data:
        samples = data["samples"]
        if api is not Api.CHAT and samples != 1:
            lines.fail(
                ("samples",),
                f"samples (the body's n) exist only for api: chat; run an api: {api.value} "
                "job several times with runner verify FILE --times K",
            )
        if not (type(samples) is int and 1 <= samples <= MAX_SAMPLES):
            lines.fail(("samples",), f"must be an integer from 1 to {MAX_SAMPLES}, got {samples!r}")
        if "n" in params:
            lines.fail(("samples",), "samples and params.n say the same thing: keep one")
        if samples > 1:
            params["n"] = samples
    extra = data.get("extra_params", {})
    if not isinstance(extra, Mapping):
        lines.fail(("extra_params",), "must be a mapping")
    _check_json(extra, ("extra_params",), lines)
    for name in extra:
        if name in rejected_for(api) or name in params_for(api):
            lines.fail(("extra_params", name), "is a known parameter: put it under params")
    return {**params, **extra}


def _name(data: Mapping[str, Any], lines: _Lines, path: Path, name: str | None) -> str:
    """The batch name: ``--name``, else the file's ``name:``, else the file name."""
    name = name or (_string(data, "name", lines) if "name" in data else path.stem)
    if problem := name_problem(name):
        lines.fail(("name",), problem)
    return name


def _parse_spec(
    data: Any, lines: _Lines, path: Path, endpoint: str | None, name: str | None
) -> _Spec:
    if not isinstance(data, Mapping):
        lines.fail((), "the top level must be a mapping (name, model, messages, ...)")
    for key in data:
        if key not in YAML_KEYS:
            lines.fail((str(key),), f"unknown key (allowed: {', '.join(sorted(YAML_KEYS))})")
    models = _one_or_many(data, "model", "models", lines, _model_problem)
    if models is None:
        lines.fail((), "'model' or 'models' is required")
    api = parse_api(data, lines)
    for key in ("seed", "seeds"):
        if key in data and api in NO_SEED:
            lines.fail((key,), NO_SEED[api])
    seeds = _one_or_many(data, "seed", "seeds", lines, check_seed)
    repeat = _positive_int(data, "repeat", lines) or 1
    key = data.get("key")
    if key is not None and (not isinstance(key, str) or not key):
        lines.fail(("key",), "must be a non-empty template string")
    if "description" in data and not isinstance(data["description"], str):
        lines.fail(("description",), "must be a string")
    variables = _variables(data, lines)
    return _Spec(
        name=_name(data, lines, path, name),
        endpoint=endpoint or (_string(data, "endpoint", lines) if "endpoint" in data else "local"),
        models=models,
        prompt=parse_prompt(data, api, lines),
        items=_items(data, variables, lines, api),
        vars=variables,
        seeds=seeds or [None],
        repeat=repeat,
        params=_params(data, lines, api),
        key=key,
        max_attempts=_positive_int(data, "max_attempts", lines),
    )


def _check_placeholders(spec: _Spec, lines: _Lines) -> None:
    var_names = set(spec.vars)
    for index, item in enumerate(spec.items):
        names = var_names | set(item.values)
        for at, template in spec.prompt.templates():
            for placeholder in _placeholders(template):
                if placeholder not in names:
                    where = "" if len(spec.items) == 1 else f" (in item {index})"
                    lines.fail(
                        at,
                        f"placeholder {{{placeholder}}} has no variable{where}; "
                        f"defined: {', '.join(sorted(names)) or 'none'}",
                    )
        if spec.key is not None:
            allowed = names | {"model", "seed", "repeat", "item", "index"}
            for placeholder in _placeholders(spec.key):
                if placeholder not in allowed:
                    lines.fail(
                        ("key",),
                        f"placeholder {{{placeholder}}} is not a variable nor one of "
                        "model, seed, repeat, item, index",
                    )


@dataclass(frozen=True)
class _Expansion:
    """One point of models x items x vars x seeds, before repeats."""

    model: str
    item_index: int
    item: _Item
    values: dict[str, Any]
    seed: int | None


def _expansions(spec: _Spec) -> Iterator[_Expansion]:
    for model in spec.models:
        for item_index, item in enumerate(spec.items):
            combos = itertools.product(*spec.vars.values()) if spec.vars else [()]
            for combo in combos:
                values = {**item.values, **dict(zip(spec.vars, combo, strict=True))}
                for seed in item.seeds or spec.seeds:
                    yield _Expansion(model, item_index, item, values, seed)


def _key(spec: _Spec, point: _Expansion, rep: int, index: int) -> str:
    if spec.key is not None:
        extra = {
            "model": point.model,
            "seed": point.seed,
            "repeat": rep,
            "item": point.item_index,
            "index": index,
        }
        return _fill(spec.key, {**point.values, **extra})
    parts = []
    if len(spec.models) > 1:
        parts.append(f"model={point.model}")
    if point.values:
        parts.append(_key_values(point.values))
    if (len(spec.seeds) > 1 and point.item.seeds is None) or point.item.seed_in_key:
        parts.append(f"seed={point.seed}")
    if spec.repeat > 1:
        parts.append(f"rep={rep}")
    return "/".join(parts) or "job"


def _expand(spec: _Spec, lines: _Lines) -> Iterator[JobSpec]:
    index = 0
    has_items = ("items",) in lines.lines
    for point in _expansions(spec):
        body: dict[str, Any] = {
            "model": point.model,
            **spec.prompt.filled(functools.partial(_fill, values=point.values)),
            **spec.params,
            **point.item.params,
        }
        if point.seed is not None:
            body["seed"] = point.seed
        text = canonical_json(body)
        digest = request_hash(text)
        first = next(iter(spec.prompt.fields))
        line = lines.line(("items", point.item_index) if has_items else (first,))
        for rep in range(1, spec.repeat + 1):
            index += 1
            yield JobSpec(
                key=_key(spec, point, rep, index),
                endpoint=spec.endpoint,
                model=point.model,
                body=text,
                request_hash=digest,
                seed=point.seed,
                line=line,
                api=spec.prompt.api.value,
            )


def _job_count(spec: _Spec) -> int:
    """How many jobs ``_expand`` will give, without building them."""
    combos = math.prod(len(values) for values in spec.vars.values())
    points = sum(len(item.seeds or spec.seeds) for item in spec.items) * combos
    return len(spec.models) * points * spec.repeat


def load_yaml(path: Path, endpoint: str | None, name: str | None, max_jobs: int | None) -> JobFile:
    data, lines, raw = _read_yaml(path)
    # Text anywhere in the file may end up in a key, a name or a body: storable or refused.
    bad = value_problem(data, json=False, nul=True)
    if bad:
        lines.fail(bad[0], bad[1])
    spec = _parse_spec(data, lines, path, endpoint, name)
    _check_placeholders(spec, lines)
    count = _job_count(spec)
    if max_jobs is not None and count > max_jobs:
        raise JobFileError(str(path), None, None, max_jobs_problem(max_jobs, count))
    sha = hashlib.sha256(raw)
    return JobFile(
        path=path,
        format="yaml",
        name=spec.name,
        endpoint=spec.endpoint,
        max_attempts=spec.max_attempts,
        _jobs=_expand(spec, lines),
        _sha=sha,
        schedule=_schedule(data, lines),
        endpoint_line=None if endpoint else lines.lines.get(("endpoint",)),
        job_count=count,
    )


def _schedule(data: Mapping[str, Any], lines: _Lines) -> ScheduleSpec | None:
    """``schedule:``: a cron string, or a mapping (see runner/scheduling/cron.py)."""
    if "schedule" not in data:
        return None
    return parse_schedule_block(
        data["schedule"], lambda f, why: lines.fail(("schedule", f) if f else ("schedule",), why)
    )
