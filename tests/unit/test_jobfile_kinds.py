"""Request kinds in job files: api: in YAML, url per line in Batch files, seed refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.errors import JobFileError
from runner.jobfile import load_job_file


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line(custom_id: str, url: str, body: dict[str, object]) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def test_a_batch_file_mixes_kinds_line_by_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mixed.jsonl",
        "\n".join(
            [
                line(
                    "c",
                    "/v1/chat/completions",
                    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1},
                ),
                line(
                    "r",
                    "/v1/responses",
                    {
                        "model": "m",
                        "input": "hi",
                        "instructions": "Be brief.",
                        "max_output_tokens": 20,
                    },
                ),
                line("e", "/v1/embeddings", {"model": "m", "input": ["a", "b"], "dimensions": 8}),
            ]
        ),
    )
    jobs = list(load_job_file(path).jobs())
    assert [(j.key, j.api, j.seed) for j in jobs] == [
        ("c", "chat", 1),
        ("r", "responses", None),
        ("e", "embeddings", None),
    ]


@pytest.mark.parametrize(
    ("url", "body", "field", "words"),
    [
        (
            "/v1/responses",
            {"model": "m", "input": "hi", "seed": 3},
            "body.seed",
            "Responses API has no seed",
        ),
        ("/v1/responses", {"model": "m"}, "body.input", "non-empty string"),
        (
            "/v1/responses",
            {"model": "m", "input": "x", "max_output_tokens": "9"},
            "body.max_output_tokens",
            "integer",
        ),
        (
            "/v1/responses",
            {"model": "m", "input": "x", "instructions": 4},
            "body.instructions",
            "string",
        ),
        ("/v1/embeddings", {"model": "m", "input": [3]}, "body.input", "strings"),
        (
            "/v1/embeddings",
            {"model": "m", "input": "x", "encoding_format": "hex"},
            "body.encoding_format",
            "float, base64",
        ),
        ("/v1/chat/completions", {"model": "m", "input": "x"}, "body.messages", "non-empty list"),
    ],
)
def test_batch_bodies_are_checked_for_their_kind(
    tmp_path: Path, url: str, body: dict[str, object], field: str, words: str
) -> None:
    path = write(
        tmp_path,
        "b.jsonl",
        line(
            "ok",
            url,
            {"model": "m", "input": "fine"}
            if url != "/v1/chat/completions"
            else {"model": "m", "messages": [{"role": "user", "content": "x"}]},
        )
        + "\n"
        + line("bad", url, body)
        + "\n",
    )
    with pytest.raises(JobFileError) as info:
        list(load_job_file(path).jobs())
    assert (info.value.line, info.value.field) == (2, field)
    assert words in str(info.value)


def test_seed_on_a_responses_batch_line_says_why_and_what_to_do(tmp_path: Path) -> None:
    path = write(
        tmp_path, "b.jsonl", line("r", "/v1/responses", {"model": "m", "input": "x", "seed": 1})
    )
    with pytest.raises(JobFileError) as info:
        list(load_job_file(path).jobs())
    message = str(info.value)
    assert message.startswith(f"{path}:1: body.seed:")
    assert "no seed parameter" in message
    assert "api: chat" in message and "runner verify FILE --times K" in message


RESPONSES = """\
name: answers
api: responses
model: gpt-4o-mini
instructions: Answer in one line about {topic}.
input: Tell me about {topic}.
vars:
  topic: [Mars, tides]
params:
  max_output_tokens: 40
  text: {format: {type: text}}
"""


def test_yaml_responses_job_builds_input_and_instructions(tmp_path: Path) -> None:
    jobs = list(load_job_file(write(tmp_path, "r.yaml", RESPONSES)).jobs())
    assert [j.api for j in jobs] == ["responses", "responses"]
    assert json.loads(jobs[0].body) == {
        "model": "gpt-4o-mini",
        "instructions": "Answer in one line about Mars.",
        "input": "Tell me about Mars.",
        "max_output_tokens": 40,
        "text": {"format": {"type": "text"}},
    }
    assert jobs[0].seed is None and jobs[0].line == 5  # the input: line


def test_yaml_responses_input_may_be_messages(tmp_path: Path) -> None:
    text = (
        "api: responses\nmodel: m\ninput:\n  - role: user\n    content: About {x}\n"
        "vars:\n  x: [a]\n"
    )
    job = next(load_job_file(write(tmp_path, "r.yaml", text)).jobs())
    assert json.loads(job.body)["input"] == [{"role": "user", "content": "About a"}]


def test_yaml_embeddings_job(tmp_path: Path) -> None:
    text = (
        "api: embeddings\nmodel: e\ninput: ['one {x}', two]\nvars:\n  x: [a]\n"
        "params:\n  dimensions: 16\n"
    )
    job = next(load_job_file(write(tmp_path, "e.yaml", text)).jobs())
    assert job.api == "embeddings"
    assert json.loads(job.body) == {"model": "e", "input": ["one a", "two"], "dimensions": 16}


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("api: responses\nmodel: m\ninput: x\nseed: 7\n", 4, "seed", "Responses API has no seed"),
        ("api: responses\nmodel: m\ninput: x\nseeds: [1, 2]\n", 4, "seeds", "api: chat"),
        (
            "api: responses\nmodel: m\ninput: x\nitems:\n  - seed: 1\n",
            5,
            "items[0].seed",
            "no seed",
        ),
        ("api: responses\nmodel: m\ninput: x\nparams:\n  seed: 1\n", 5, "params.seed", "no seed"),
        ("api: responses\nmodel: m\nmessages: []\n", 3, "messages", "takes input and instructions"),
        (
            "api: responses\nmodel: m\ninput: x\nparams:\n  max_tokens: 5\n",
            5,
            "params.max_tokens",
            "unknown parameter of api: responses",
        ),
        ("api: responses\nmodel: m\ninput: x\nsamples: 3\n", 4, "samples", "only for api: chat"),
        ("api: responses\nmodel: m\ninput: '{nope}'\n", 3, "input", "placeholder {nope}"),
        ("api: embeddings\nmodel: m\ninput: [x, 4]\n", 3, "input[1]", "non-empty string"),
        ("api: completions\nmodel: m\ninput: x\n", 1, "api", "chat, responses, embeddings"),
        ("model: m\ninput: x\n", 2, "input", "api: chat takes messages"),
    ],
)
def test_yaml_kind_errors_name_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, words: str
) -> None:
    with pytest.raises(JobFileError) as info:
        list(load_job_file(write(tmp_path, "k.yaml", text)).jobs())
    assert (info.value.line, info.value.field) == (line, field), str(info.value)
    assert words in str(info.value)


def test_yaml_message_content_parts_keep_images_and_fill_text(tmp_path: Path) -> None:
    text = (
        "model: m\nmessages:\n  - role: user\n    content:\n"
        "      - {type: text, text: 'Describe {thing}.'}\n"
        "      - {type: image_url, image_url: {url: 'https://example.invalid/{thing}.png'}}\n"
        "vars:\n  thing: [Mars]\n"
    )
    job = next(load_job_file(write(tmp_path, "img.yaml", text)).jobs())
    assert json.loads(job.body)["messages"][0]["content"] == [
        {"type": "text", "text": "Describe Mars."},
        # not a template: an image URL is sent exactly as written
        {"type": "image_url", "image_url": {"url": "https://example.invalid/{thing}.png"}},
    ]
    bad = "model: m\nmessages:\n  - role: user\n    content:\n      - {text: hi}\n"
    with pytest.raises(JobFileError) as info:
        list(load_job_file(write(tmp_path, "bad.yaml", bad)).jobs())
    assert info.value.field == "messages[0].content[0]"
