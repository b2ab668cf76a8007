"""Server-side noise of the local model: nondeterminism, rotating fingerprints, noise_seed.

Through the real openai SDK, in-process (LocalTransport) and over HTTP (``running_server``);
every draw comes from a seeded server generator, so each assertion holds on every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from runner.config import load_settings
from runner.endpoints.client import EndpointClient
from runner.errors import ConfigError
from runner.localmodel.server import ServerOptions, running_server
from runner.localmodel.service import LocalModelService
from runner.localmodel.tokenizer import tokenize
from tests.helpers import in_process, write_endpoint

pytestmark = pytest.mark.anyio

ClientFactory = Callable[..., openai.AsyncOpenAI]
MARS = [{"role": "user", "content": "Generate a short excerpt of news about a journey to Mars."}]
FINGERPRINTS = ("fp_a1", "fp_b2", "fp_c3")


def body(**params: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MARS, "seed": 123, "max_tokens": 60, **params}


def reference(**params: Any) -> list[str]:
    """Choice texts of the deterministic model (no noise), without any transport."""
    completion = LocalModelService().complete(body(**params))
    return [choice["message"]["content"] for choice in completion["choices"]]


async def texts(client: openai.AsyncOpenAI, times: int, **params: Any) -> list[tuple[str, str]]:
    """(text of choice 0, fingerprint) of ``times`` requests sent one after another."""
    out = []
    for _ in range(times):
        completion = await client.chat.completions.create(**body(**params))
        content = completion.choices[0].message.content
        assert content is not None and completion.system_fingerprint is not None
        out.append((content, completion.system_fingerprint))
    return out


@pytest.fixture(params=["inprocess", "http"])
def noisy(
    request: pytest.FixtureRequest,
    make_inprocess_client: Callable[[LocalModelService], openai.AsyncOpenAI],
    make_http_client: ClientFactory,
) -> Callable[..., Any]:
    """Factory: an SDK client on a model with the given noise, in-process or over HTTP."""

    class Noisy:
        def __init__(self, **noise: Any) -> None:
            self.noise = noise

        async def __aenter__(self) -> openai.AsyncOpenAI:
            if request.param == "inprocess":
                self.client = make_inprocess_client(LocalModelService(**self.noise))
            else:
                options = ServerOptions(port=0, log_level="warning", **self.noise)
                self.server = running_server(options)
                self.client = make_http_client(self.server.__enter__())
            return self.client

        async def __aexit__(self, *exc: object) -> None:
            await self.client.close()
            if request.param == "http":
                self.server.__exit__(None, None, None)

    return Noisy


def shared(text: str, other: str) -> int:
    """Length of the longest common prefix of two texts."""
    return next((i for i, (a, b) in enumerate(zip(text, other, strict=False)) if a != b),
                min(len(text), len(other)))  # fmt: skip


def diverged_after_first_token(text: str, deterministic: str) -> bool:
    """``text`` differs, and shares at least the deterministic text's first token."""
    return text != deterministic and shared(text, deterministic) >= len(tokenize(deterministic)[0])


async def test_nondeterminism_zero_is_byte_identical(noisy: Callable[..., Any]) -> None:
    for params in ({"temperature": 0}, {"temperature": 0.7}):
        async with noisy(nondeterminism=0.0, noise_seed=1) as client:
            got = await texts(client, 8, **params)
        assert [text for text, _ in got] == reference(**params) * 8


@pytest.mark.parametrize("temperature", [0, 0.7])
async def test_nondeterminism_one_diverges_every_seeded_request(
    noisy: Callable[..., Any], temperature: float
) -> None:
    (deterministic,) = reference(temperature=temperature)
    async with noisy(nondeterminism=1.0, noise_seed=2) as client:
        got = [text for text, _ in await texts(client, 12, temperature=temperature)]
    assert all(diverged_after_first_token(text, deterministic) for text in got), got
    prefixes = {shared(text, deterministic) for text in got}
    assert len(prefixes) > 3  # at random positions, not one fixed place


async def test_the_text_before_the_divergence_is_token_for_token_identical(
    make_inprocess_client: Callable[[LocalModelService], openai.AsyncOpenAI],
) -> None:
    params = {"temperature": 0, "logprobs": True, "top_logprobs": 3, "n": 2}
    plain = LocalModelService().complete(body(**params))["choices"]
    async with make_inprocess_client(LocalModelService(nondeterminism=1.0, noise_seed=3)) as sdk:
        completion = await sdk.chat.completions.create(**body(**params))
    for index, choice in enumerate(completion.choices):
        assert choice.logprobs is not None and choice.logprobs.content is not None
        tokens = [entry.token for entry in choice.logprobs.content]
        before = [entry["token"] for entry in plain[index]["logprobs"]["content"]]
        at = next(
            i for i, pair in enumerate(zip(tokens, before, strict=False)) if len(set(pair)) > 1
        )
        assert at >= 1 and tokens[:at] == before[:at]
        # At temperature 0 the other token is the deterministic path's runner-up there.
        runner_up = plain[index]["logprobs"]["content"][at]["top_logprobs"][1]["token"]
        assert tokens[at] == runner_up


async def test_an_intermediate_probability_mixes_and_repeats_with_the_noise_seed(
    noisy: Callable[..., Any],
) -> None:
    (deterministic,) = reference(temperature=0.7)
    async with noisy(nondeterminism=0.5, noise_seed=11) as client:
        first = [text for text, _ in await texts(client, 30, temperature=0.7)]
    kept = sum(text == deterministic for text in first)
    assert 0 < kept < 30
    assert all(
        diverged_after_first_token(text, deterministic) for text in first if text != deterministic
    )
    # The same noise seed repeats the draws, in-process and over HTTP alike.
    again = LocalModelService(nondeterminism=0.5, noise_seed=11)
    assert [again.complete(body(temperature=0.7))["choices"][0]["message"]["content"]
            for _ in range(30)] == first  # fmt: skip


async def test_unseeded_requests_neither_change_nor_consume_the_noise(
    make_inprocess_client: Callable[[LocalModelService], openai.AsyncOpenAI],
) -> None:
    alone = LocalModelService(nondeterminism=0.5, noise_seed=4)
    expected = [alone.complete(body())["choices"][0]["message"]["content"] for _ in range(10)]
    service = LocalModelService(nondeterminism=0.5, noise_seed=4)
    got = []
    async with make_inprocess_client(service) as client:
        for _ in range(10):
            unseeded = body()
            del unseeded["seed"]
            await client.chat.completions.create(**unseeded)
            got.append((await texts(client, 1))[0][0])
    assert got == expected


async def test_fingerprints_are_drawn_from_the_set_and_never_change_the_text(
    noisy: Callable[..., Any],
) -> None:
    async with noisy(fingerprints=FINGERPRINTS, noise_seed=5) as client:
        got = await texts(client, 24)
    assert {fp for _, fp in got} == set(FINGERPRINTS)
    assert [text for text, _ in got] == reference() * 24
    again = LocalModelService(fingerprints=FINGERPRINTS, noise_seed=5)
    assert [again.complete(body())["system_fingerprint"] for _ in range(24)] == [
        fp for _, fp in got
    ]


def test_a_variant_serves_fingerprints_of_its_own() -> None:
    plain = LocalModelService()
    assert plain.fingerprints == (plain.system_fingerprint,)
    v2 = LocalModelService("v2")
    assert v2.fingerprints == (v2.system_fingerprint,) != plain.fingerprints
    listed = LocalModelService(fingerprints=FINGERPRINTS)
    assert listed.fingerprints == FINGERPRINTS
    derived = LocalModelService("v2", fingerprints=FINGERPRINTS).fingerprints
    other = LocalModelService("v3", fingerprints=FINGERPRINTS).fingerprints
    assert len(set(derived)) == len(FINGERPRINTS) and all(fp.startswith("fp_") for fp in derived)
    assert not set(derived) & (set(FINGERPRINTS) | set(other) | {v2.system_fingerprint})
    assert LocalModelService("v2", fingerprints=FINGERPRINTS).fingerprints == derived


@pytest.mark.parametrize(
    ("noise", "field"),
    [
        ({"nondeterminism": 1.5}, "nondeterminism"),
        ({"nondeterminism": -0.1}, "nondeterminism"),
        ({"nondeterminism": math.nan}, "nondeterminism"),
        ({"nondeterminism": True}, "nondeterminism"),
        ({"nondeterminism": "0.5"}, "nondeterminism"),
        ({"fingerprints": ()}, "fingerprints"),
        ({"fingerprints": "fp_a"}, "fingerprints"),
        ({"fingerprints": ("fp_a", 3)}, "fingerprints"),
        ({"fingerprints": ("fp_a", "")}, "fingerprints"),
        ({"fingerprints": ("fp_a", "fp_a")}, "fingerprints"),
        ({"noise_seed": "x"}, "noise_seed"),
    ],
)
def test_bad_noise_values_name_the_field(noise: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LocalModelService(**noise)
    if field != "noise_seed":  # ServerOptions checks at construction, like its other fields
        with pytest.raises(ValueError, match=field):
            ServerOptions(**noise)


async def test_the_endpoint_config_drives_the_in_process_model(tmp_path: Path) -> None:
    write_endpoint(
        tmp_path,
        "noisy",
        "nondeterminism = 1",
        'fingerprints = ["fp_a1", "fp_b2", "fp_c3"]',
        "noise_seed = 9",
    )
    config = load_settings(env={}, cwd=tmp_path).endpoint("noisy")
    assert (config.nondeterminism, config.fingerprints, config.noise_seed) == (1.0, FINGERPRINTS, 9)
    assert load_settings(env={}, cwd=tmp_path).endpoint("local").nondeterminism == 0.0
    client = EndpointClient(config)
    try:
        got = [await client.chat(body(temperature=0)) for _ in range(12)]
    finally:
        await client.aclose()
    (deterministic,) = reference(temperature=0)
    assert all(diverged_after_first_token(c.outputs[0] or "", deterministic) for c in got)
    assert {c.system_fingerprint for c in got} == set(FINGERPRINTS)


@pytest.mark.parametrize(
    ("lines", "etype", "message"),
    [
        (["nondeterminism = 1.5"], "local", "noisy.nondeterminism: must be a number from 0 to 1"),
        (['nondeterminism = "high"'], "local", "noisy.nondeterminism: must be a number"),
        (["nondeterminism = nan"], "local", "noisy.nondeterminism: must be a number"),
        (["fingerprints = []"], "local", "noisy.fingerprints: must be a non-empty list"),
        (['fingerprints = "fp_a"'], "local", "noisy.fingerprints: must be a non-empty list"),
        (['fingerprints = ["fp_a", 7]'], "local", "noisy.fingerprints: every value must be"),
        (['fingerprints = ["fp_a", "fp_a"]'], "local", "noisy.fingerprints: values must be"),
        (["noise_seed = 1.5"], "local", "noisy.noise_seed: must be an integer"),
        (["nondeterminism = 0.5"], "openai", "noisy.nondeterminism: only a type = 'local'"),
    ],
)
def test_bad_endpoint_values_are_one_line_with_exit_2(
    tmp_path: Path, lines: list[str], etype: str, message: str
) -> None:
    write_endpoint(tmp_path, "noisy", *lines, etype=etype)
    with pytest.raises(ConfigError, match=message):
        load_settings(env={}, cwd=tmp_path)
    result = in_process("batches", cwd=tmp_path, env={"RUNNER_CONFIG": None})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert result.stderr.startswith("error: ")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--nondeterminism", "1.5"], "Invalid value for '--nondeterminism': 1.5 is not in"),
        (["--nondeterminism", "nan"], "nondeterminism must be a number from 0 to 1, got nan"),
        (["--fingerprints", ""], "'--fingerprints': fingerprints must list at least one"),
        (["--fingerprints", "fp_a,,fp_b"], "'--fingerprints': fingerprints must be non-empty"),
        (["--fingerprints", "fp_a,fp_a"], "'--fingerprints': fingerprints must be distinct"),
        (["--noise-seed", "x"], "Invalid value for '--noise-seed'"),
    ],
)
def test_bad_serve_flags_exit_2_naming_the_flag(
    tmp_path: Path, args: list[str], error: str
) -> None:
    result = in_process("serve", *args, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert error in line
