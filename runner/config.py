"""Configuration: one frozen ``Settings`` built from runner.toml, RUNNER_* variables and flags.

Precedence, highest first: command-line flags (each also readable from a
``RUNNER_*`` environment variable, see ``--help``), then ``runner.toml`` (in the
working directory, or the file named by ``RUNNER_CONFIG``), then built-in
defaults. API keys are never stored here: an endpoint names the *environment
variable* that holds its key, and the key is read only when a client is built.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from runner.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///runner.db"
CONFIG_FILE_NAME = "runner.toml"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"

EndpointType = Literal["openai", "local"]


@dataclass(frozen=True)
class EndpointConfig:
    """Where requests of jobs naming this endpoint go."""

    name: str
    type: EndpointType
    # OpenAI-compatible endpoints: base URL and the NAME of the env var holding the key.
    base_url: str | None = None
    api_key_env: str | None = None
    # Seconds before one HTTP try is abandoned (and retried).
    timeout: float = 120.0
    # The built-in local model: which model variant answers (None = the default model),
    # the probability that a seeded choice leaves its seeded path, the system_fingerprint
    # values served (None = the model's own) and the seed of those server-side draws
    # (None = fresh each process). See runner.localmodel.service.
    variant: str | None = None
    nondeterminism: float = 0.0
    fingerprints: tuple[str, ...] | None = None
    noise_seed: int | None = None
    # The provider's Batch API limits per input file: requests and bytes (any endpoint;
    # the built-in model's Batch API enforces them).
    batch_max_requests: int = 50_000
    batch_max_bytes: int = 200 * 1024 * 1024
    # The built-in model's Batch API (runner.localmodel.batches): where its files live
    # (None = a temporary directory per process), how long a batch stays in_progress at
    # least, the share of lines left to expire and of lines failed with a 500, a
    # validation error every batch fails with ("code" or "code: message"), and a file
    # that gets one JSON line per executed batch line.
    batch_dir: str | None = None
    batch_turnaround_ms: float = 100.0
    batch_expire_fraction: float = 0.0
    batch_line_error_rate: float = 0.0
    batch_fail_validation: str | None = None
    batch_log: str | None = None
    # Rate limits of the whole endpoint (one API key), shared by all live workers.
    # None = not configured: the worker learns them from x-ratelimit-* headers.
    rpm: int | None = None
    tpm: int | None = None
    # Requests in flight at once to this endpoint, per worker (None = no cap).
    max_concurrency: int | None = None
    # Models with limits of their own (OpenAI limits each model separately).
    models: Mapping[str, ModelLimits] = field(default_factory=dict)

    def missing_key(self, env: Mapping[str, str] | None = None) -> str | None:
        """Why requests cannot be sent from here: the variable meant to hold the key is
        unset or empty (None: nothing missing)."""
        env = os.environ if env is None else env
        if self.type == "local" or not self.api_key_env or env.get(self.api_key_env):
            return None
        return (
            f"endpoint {self.name!r}: the environment variable {self.api_key_env} "
            "is not set (it must hold the API key)"
        )


@dataclass(frozen=True)
class ModelLimits:
    """Rate limits of one model on an endpoint."""

    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker claims and runs jobs."""

    concurrency: int = 16
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 20.0
    grace_seconds: float = 30.0
    poll_seconds: float = 0.5
    max_attempts: int = 5
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    # How often a worker looks for due schedule ticks and finished scheduled rounds.
    schedule_seconds: float = 10.0
    # How long a worker waits for an unreachable database (holding its results) before
    # it stops (runner.db.outage).
    database_outage_seconds: float = 600.0
    # SQLite: how long a claim or a store waits for another process's write lock before
    # it counts as an outage (and is tried again, as above).
    sqlite_busy_seconds: float = 60.0


@dataclass(frozen=True)
class SubmitConfig:
    """Bounds of one submit (`runner submit`, `runner run`)."""

    # Jobs one job file may give; a file that would give more is refused, nothing stored.
    max_jobs: int = 10_000_000


@dataclass(frozen=True)
class Price:
    """What a model costs, in USD per million tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know about its environment."""

    database_url: str = DEFAULT_DATABASE_URL
    endpoints: Mapping[str, EndpointConfig] = field(default_factory=dict)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)
    config_path: Path | None = None
    # USD per 1M tokens by model name; a model without a price has an unknown cost.
    prices: Mapping[str, Price] = field(default_factory=dict)

    def endpoint(self, name: str, *, option: str | None = None) -> EndpointConfig:
        """The endpoint called ``name``; ``option`` names the flag that gave it, for the
        message if there is none."""
        try:
            return self.endpoints[name]
        except KeyError:
            where = f"{option}: " if option else ""
            raise ConfigError(where + self.unknown_endpoint(name)) from None

    def unknown_endpoint(self, name: str) -> str:
        """What to say of an endpoint name that is not configured."""
        known = ", ".join(sorted(self.endpoints))
        return (
            f"unknown endpoint {name!r} (configured: {known}); "
            f"add [endpoints.{name}] to {CONFIG_FILE_NAME}"
        )

    def require_keys(self, names: Iterable[str], env: Mapping[str, str] | None = None) -> None:
        """Refuse to start work for endpoints whose API key is not in the environment."""
        for name in sorted(set(names)):
            problem = self.endpoint(name).missing_key(env)
            if problem:
                raise ConfigError(problem)


def builtin_endpoints(env: Mapping[str, str]) -> dict[str, EndpointConfig]:
    return {
        "local": EndpointConfig(name="local", type="local"),
        "openai": EndpointConfig(
            name="openai",
            type="openai",
            base_url=env.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL,
            api_key_env="OPENAI_API_KEY",
        ),
    }


def _table(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def _number(value: Any, where: str, *, minimum: float, integer: bool = False) -> Any:
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: must be {kind} >= {minimum}, got {value!r}")
    return value


ENDPOINT_KEYS = {
    "type",
    "base_url",
    "api_key_env",
    "timeout",
    "variant",
    "nondeterminism",
    "fingerprints",
    "noise_seed",
    *(f"batch_{key}" for key in ("max_requests", "max_bytes")),
    *(f"batch_{key}" for key in ("dir", "turnaround_ms", "expire_fraction")),
    *(f"batch_{key}" for key in ("line_error_rate", "fail_validation", "log")),
    "rpm",
    "tpm",
    "max_concurrency",
    "models",
}


def _parse_models(raw: Any, where: str) -> dict[str, ModelLimits]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table of models")
    models = {}
    for model, limits in raw.items():
        at = f"{where}.{model}"
        if not isinstance(limits, Mapping):
            raise ConfigError(f"{at}: must be a table with rpm and/or tpm")
        _check_keys(limits, {"rpm", "tpm"}, at)
        models[str(model)] = ModelLimits(
            **{k: _number(v, f"{at}.{k}", minimum=1, integer=True) for k, v in limits.items()}
        )
    return models


def _parse_endpoint(name: str, raw: Any, where: str, base: EndpointConfig | None) -> EndpointConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table")
    if "api_key" in raw:
        # Keys never live in files we read; naming the variable keeps them out of the database.
        raise ConfigError(
            f"{where}: api_key is not accepted; put the key in an environment variable "
            "and name it with api_key_env"
        )
    _check_keys(raw, ENDPOINT_KEYS, where)
    etype = raw.get("type", base.type if base else "openai")
    if etype not in ("openai", "local"):
        raise ConfigError(f"{where}.type: must be 'openai' or 'local', got {etype!r}")
    values: dict[str, Any] = {}
    for key in ("base_url", "api_key_env", "variant"):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key]:
                raise ConfigError(f"{where}.{key}: must be a non-empty string")
            values[key] = raw[key]
    if "timeout" in raw:
        values["timeout"] = float(_number(raw["timeout"], f"{where}.timeout", minimum=0.001))
    for key in ("rpm", "tpm", "max_concurrency"):
        if key in raw:
            values[key] = _number(raw[key], f"{where}.{key}", minimum=1, integer=True)
    if "models" in raw:
        values["models"] = _parse_models(raw["models"], f"{where}.models")
    values.update(_parse_local_noise(raw, etype, where))
    values.update(_parse_batch_keys(raw, etype, where))
    if etype == "openai" and not values.get("base_url") and not (base and base.base_url):
        raise ConfigError(f"{where}.base_url: required for an 'openai' endpoint")
    start = base if base and base.type == etype else EndpointConfig(name=name, type=etype)
    return replace(start, **values)


LOCAL_NOISE_KEYS = ("nondeterminism", "fingerprints", "noise_seed")


def _parse_local_noise(raw: Mapping[str, Any], etype: str, where: str) -> dict[str, Any]:
    """The built-in model's server-side noise: nondeterminism, fingerprints, noise_seed."""
    given = [key for key in LOCAL_NOISE_KEYS if key in raw]
    if given and etype != "local":
        raise ConfigError(f"{where}.{given[0]}: only a type = 'local' endpoint takes it")
    values: dict[str, Any] = {}
    if "nondeterminism" in raw:
        value = raw["nondeterminism"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ConfigError(
                f"{where}.nondeterminism: must be a number from 0 to 1, got {value!r}"
            )
        values["nondeterminism"] = float(value)
    if "fingerprints" in raw:
        value = raw["fingerprints"]
        if not isinstance(value, list) or not value:
            raise ConfigError(
                f"{where}.fingerprints: must be a non-empty list of strings, got {value!r}"
            )
        for item in value:
            if not isinstance(item, str) or not item:
                raise ConfigError(
                    f"{where}.fingerprints: every value must be a non-empty string, got {item!r}"
                )
        if len(set(value)) != len(value):
            raise ConfigError(f"{where}.fingerprints: values must be distinct, got {value!r}")
        values["fingerprints"] = tuple(value)
    if "noise_seed" in raw:
        value = raw["noise_seed"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}.noise_seed: must be an integer, got {value!r}")
        values["noise_seed"] = value
    return values


LOCAL_BATCH_KEYS = (
    "batch_dir",
    "batch_turnaround_ms",
    "batch_expire_fraction",
    "batch_line_error_rate",
    "batch_fail_validation",
    "batch_log",
)


def _parse_batch_keys(raw: Mapping[str, Any], etype: str, where: str) -> dict[str, Any]:
    """The Batch API limits (any endpoint) and the built-in model's Batch API knobs."""
    given = [key for key in LOCAL_BATCH_KEYS if key in raw]
    if given and etype != "local":
        raise ConfigError(f"{where}.{given[0]}: only a type = 'local' endpoint takes it")
    values: dict[str, Any] = {}
    for key in ("batch_max_requests", "batch_max_bytes"):
        if key in raw:
            values[key] = _number(raw[key], f"{where}.{key}", minimum=1, integer=True)
    for key in ("batch_dir", "batch_fail_validation", "batch_log"):
        if key in raw:
            value = raw[key]
            # batch_fail_validation is "code" or "code: message": the code must be there.
            text = str(value).split(":")[0] if key == "batch_fail_validation" else str(value)
            if not isinstance(value, str) or not text.strip():
                raise ConfigError(f"{where}.{key}: must be a non-empty string")
            values[key] = value
    if "batch_turnaround_ms" in raw:
        at = f"{where}.batch_turnaround_ms"
        values["batch_turnaround_ms"] = float(_number(raw["batch_turnaround_ms"], at, minimum=0))
    for key in ("batch_expire_fraction", "batch_line_error_rate"):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"{where}.{key}: must be a number from 0 to 1, got {value!r}")
            values[key] = float(value)
    return values


def _parse_worker(raw: Mapping[str, Any], where: str) -> WorkerConfig:
    defaults = WorkerConfig()
    _check_keys(raw, set(defaults.__dataclass_fields__), where)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        integer = key in ("concurrency", "max_attempts")
        values[key] = _number(
            value, f"{where}.{key}", minimum=1 if integer else 0.001, integer=integer
        )
    return replace(defaults, **values)


def _parse_submit(raw: Mapping[str, Any], where: str) -> SubmitConfig:
    _check_keys(raw, {"max_jobs"}, where)
    if "max_jobs" in raw:
        return SubmitConfig(
            max_jobs=_number(raw["max_jobs"], f"{where}.max_jobs", minimum=1, integer=True)
        )
    return SubmitConfig()


def find_config_file(env: Mapping[str, str], cwd: Path) -> Path | None:
    named = env.get("RUNNER_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"RUNNER_CONFIG names {named!r}, which is not a file")
        return path
    path = cwd / CONFIG_FILE_NAME
    return path if path.is_file() else None


def load_settings(
    *,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Read the config file (if any) and overlay explicit values."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    path = find_config_file(env, cwd)
    data: Mapping[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    where = str(path) if path else CONFIG_FILE_NAME
    _check_keys(data, {"database_url", "endpoints", "worker", "submit", "prices"}, where)
    endpoints = builtin_endpoints(env)
    for name, raw in _table(data, "endpoints", where).items():
        endpoints[name] = _parse_endpoint(
            name, raw, f"{where}: endpoints.{name}", endpoints.get(name)
        )
    worker = _parse_worker(_table(data, "worker", where), f"{where}: worker")
    submit = _parse_submit(_table(data, "submit", where), f"{where}: submit")
    url = database_url or data.get("database_url") or DEFAULT_DATABASE_URL
    if not isinstance(url, str):
        raise ConfigError(f"{where}: database_url must be a string")
    prices = _parse_prices(_table(data, "prices", where), f"{where}: prices")
    return Settings(
        database_url=url,
        endpoints=endpoints,
        worker=worker,
        submit=submit,
        config_path=path,
        prices=prices,
    )


def _parse_prices(raw: Mapping[str, Any], where: str) -> dict[str, Price]:
    prices = {}
    for model, entry in raw.items():
        at = f"{where}.{model}"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at}: must be a table with input and output (USD per 1M tokens)")
        _check_keys(entry, {"input", "output"}, at)
        missing = {"input", "output"} - set(entry)
        if missing:
            raise ConfigError(f"{at}: missing {', '.join(sorted(missing))} (USD per 1M tokens)")
        prices[str(model)] = Price(
            input=float(_number(entry["input"], f"{at}.input", minimum=0)),
            output=float(_number(entry["output"], f"{at}.output", minimum=0)),
        )
    return prices
