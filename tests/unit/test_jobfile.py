"""Job files -> job specs: expansion, canonical bodies, and errors that name file:line field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.errors import JobFileError
from runner.hashing import canonical_json, request_hash
from runner.jobfile import load_job_file


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jobs_of(path: Path) -> list:
    return list(load_job_file(path).jobs())


SPEC = """\
name: demo
model: m1
messages:
  - role: system
    content: Be brief.
  - role: user
    content: Tell me about {topic} in {lang}.
vars:
  topic: [mars, tides]
  lang: [en, fr]
seeds: [1, 2]
repeat: 2
params:
  temperature: 0.5
  max_tokens: 20
"""


def test_yaml_expands_vars_seeds_repeat_with_deterministic_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "demo.yaml", SPEC)
    jobs = jobs_of(path)
    assert len(jobs) == 2 * 2 * 2 * 2
    assert [j.key for j in jobs[:4]] == [
        "topic=mars/lang=en/seed=1/rep=1",
        "topic=mars/lang=en/seed=1/rep=2",
        "topic=mars/lang=en/seed=2/rep=1",
        "topic=mars/lang=en/seed=2/rep=2",
    ]
    assert len({j.key for j in jobs}) == len(jobs)
    assert [j.key for j in jobs_of(path)] == [j.key for j in jobs]  # deterministic
    body = json.loads(jobs[0].body)
    assert body == {
        "model": "m1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me about mars in en."},
        ],
        "temperature": 0.5,
        "max_tokens": 20,
        "seed": 1,
    }
    assert jobs[0].body == canonical_json(body)
    assert jobs[0].request_hash == request_hash(jobs[0].body)
    assert jobs[0].request_hash.startswith("v1:")
    # repeats share one body, so one hash
    assert jobs[0].request_hash == jobs[1].request_hash
    assert jobs[0].seed == 1 and jobs[0].endpoint == "local" and jobs[0].model == "m1"


def test_items_models_key_template_and_item_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.yml",
        """\
models: [a, b]
endpoint: openai
messages: [{role: user, content: "Say {word} {{literally}} {\\"json\\": 1}"}]
items:
  - {word: hi}
  - {word: bye, seed: 123, params: {temperature: 0}}
key: "{model}-{word}-{index}"
""",
    )
    job_file = load_job_file(path)
    assert job_file.name == "x" and job_file.endpoint == "openai"
    jobs = list(job_file.jobs())
    assert [j.key for j in jobs] == ["a-hi-1", "a-bye-2", "b-hi-3", "b-bye-4"]
    first, second = json.loads(jobs[0].body), json.loads(jobs[1].body)
    assert first["messages"][0]["content"] == 'Say hi {literally} {"json": 1}'
    assert "seed" not in first and jobs[0].seed is None
    assert second["seed"] == 123 and second["temperature"] == 0
    assert jobs[1].line == 6  # the line of the item it comes from


def test_items_told_apart_only_by_their_own_seed_get_the_seed_in_their_keys(
    tmp_path: Path,
) -> None:
    # Items with the same variables and their own seeds would share a key without it;
    # items that differ otherwise keep the keys they always had (keys are stored).
    path = write(
        tmp_path,
        "s.yaml",
        "model: m\nmessages: [{role: user, content: 'hi {who}'}]\nvars: {who: [ann, bob]}\n"
        "items: [{seed: 1}, {seed: 2}, {tone: calm, seed: 3}, {tone: warm}]\n",
    )
    assert [(j.key, j.seed) for j in jobs_of(path)] == [
        ("who=ann/seed=1", 1), ("who=bob/seed=1", 1),
        ("who=ann/seed=2", 2), ("who=bob/seed=2", 2),
        ("tone=calm/who=ann", 3), ("tone=calm/who=bob", 3),
        ("tone=warm/who=ann", None), ("tone=warm/who=bob", None),
    ]  # fmt: skip
    alone = write(tmp_path, "a.yaml", "model: m\nmessages: [{role: user, content: hi}]\n"
                                      "items: [{seed: 1}, {seed: 2}]\n")  # fmt: skip
    assert [j.key for j in jobs_of(alone)] == ["seed=1", "seed=2"]


def test_extra_params_pass_through(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "v.yaml",
        "model: m\nmessages: [{role: user, content: hi}]\nextra_params: {top_k: 5, min_p: 0.1}\n",
    )
    (job,) = jobs_of(path)
    assert json.loads(job.body) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "top_k": 5,
        "min_p": 0.1,
    }
    assert job.key == "job"


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("model: m\nmessages: [{role: user, content: hi}]\ncolour: red\n", 3, "colour",
         "unknown key"),
        ("model: m\nmessages:\n  - role: user\n    content: hi {who}\n", 4,
         "messages[0].content", "placeholder {who} has no variable"),
        ("model: m\nmessages: [{role: user, content: hi}]\nparams:\n  temperature: hot\n", 4,
         "params.temperature", "must be a number"),
        ("model: m\nmessages: [{role: user, content: hi}]\nparams:\n  temprature: 1\n", 4,
         "params.temprature", "unknown parameter"),
        ("model: m\nmessages: [{role: user, content: hi}]\nparams:\n  stream: true\n", 4,
         "params.stream", "streaming is not supported"),
        ("model: m\nmessages: [{role: user, content: hi}]\nparams: {seed: 3}\n", 3,
         "params.seed", "top-level 'seed'"),
        ("model: m\nmessages: [{role: robot, content: hi}]\n", 2, "messages[0].role",
         "must be one of"),
        ("messages: [{role: user, content: hi}]\n", 1, None, "'model' or 'models' is required"),
        ("model: m\nmodel: n\nmessages: [{role: user, content: hi}]\n", 2, "model",
         "duplicate key"),
        ("model: m\nmessages: [{role: user, content: hi}]\nseeds: [1, x]\n", 3, "seeds[1]",
         "must be an integer"),
        ("model: m\nmessages: [{role: user, content: hi}]\nrepeat: 0\n", 3, "repeat", "from 1 to"),
        ("model: m\nmessages:\n  - role: user\n    content: [unclosed\n", 5, None, "invalid YAML"),
        ("model: m\nmessages: [{role: user, content: hi}]\nvars: {x: []}\n", 3, "vars.x",
         "non-empty list"),
        ("model: m\nmessages: [{role: user, content: '{x}'}]\nvars: {x: [1, 2]}\nkey: same\n",
         None, None, None),  # duplicate keys are found at submit time (see test_submit)
    ],
)  # fmt: skip
def test_yaml_errors_name_file_line_and_field(
    tmp_path: Path, text: str, line: int | None, field: str | None, words: str | None
) -> None:
    path = write(tmp_path, "bad.yaml", text)
    if words is None:
        assert len(jobs_of(path)) == 2
        return
    with pytest.raises(JobFileError) as info:
        jobs_of(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    assert words in err.problem
    assert str(err).startswith(f"{path}:{line}: ")


def test_empty_yaml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match=r"empty\.yaml:1: file is empty"):
        jobs_of(write(tmp_path, "empty.yaml", "# nothing\n"))


def batch_line(custom_id: str, **body: object) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **body}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def test_jsonl_is_taken_as_is(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "b.jsonl",
        batch_line("a", seed=5, temperature=0.2, vendor_knob=1) + "\n\n" + batch_line("b") + "\n",
    )
    job_file = load_job_file(path)
    assert job_file.format == "openai-batch" and job_file.endpoint == "openai"
    jobs = list(job_file.jobs())
    assert [(j.key, j.seed, j.line) for j in jobs] == [("a", 5, 1), ("b", None, 3)]
    assert json.loads(jobs[0].body)["vendor_knob"] == 1
    import hashlib

    assert job_file.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("line2", "field", "words"),
    [
        ("{not json", None, "invalid JSON"),
        ('{"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": {}}', "url",
         "use one of /v1/chat/completions, /v1/responses, /v1/embeddings"),
        ('{"custom_id": "", "method": "POST", "url": "/v1/chat/completions", "body": {}}',
         "custom_id", "non-empty"),
        ('{"custom_id": "x", "method": "GET", "url": "/v1/chat/completions", "body": {}}',
         "method", "POST"),
        ('{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}, '
         '"extra": 1}', "extra", "unknown key"),
        (batch_line("x", temperature="warm"), "body.temperature", "must be a number"),
        (batch_line("x", stream=True), "body.stream", "streaming"),
        (batch_line("x", seed=1.5), "body.seed", "integer"),
        (batch_line("x", messages=[]), "body.messages", "non-empty"),
    ],
)  # fmt: skip
def test_jsonl_errors_name_line_and_field(
    tmp_path: Path, line2: str, field: str | None, words: str
) -> None:
    path = write(tmp_path, "b.jsonl", batch_line("ok") + "\n" + line2 + "\n")
    with pytest.raises(JobFileError) as info:
        jobs_of(path)
    assert (info.value.line, info.value.field) == (2, field)
    assert words in info.value.problem


def test_jsonl_empty_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="file is empty"):
        jobs_of(write(tmp_path, "e.jsonl", "\n\n"))
    with pytest.raises(JobFileError, match="unknown file type"):
        jobs_of(write(tmp_path, "e.json", "{}"))
    with pytest.raises(JobFileError, match="no such file"):
        jobs_of(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "extra",
    [
        "",
        "items: [{topic: a, seed: 5}, {topic: b}, {topic: c, seed: 6}]\nvars: {lang: [en, fr]}\n",
        "models: [m1, m2]\nseeds: [1, 2, 3]\nrepeat: 2\nvars: {topic: [a, b], lang: [en]}\n",
    ],
)
def test_job_count_is_known_before_the_jobs_and_is_theirs(tmp_path: Path, extra: str) -> None:
    base = "messages: [{role: user, content: '{topic} {lang}'}]\n"
    if "models" not in extra:
        base += "model: m\n"
    if "topic" not in extra:
        base += "vars: {topic: [a, b, c], lang: [en]}\n"
    job_file = load_job_file(write(tmp_path, "count.yaml", base + extra))
    assert job_file.job_count == len(list(job_file.jobs()))
    with pytest.raises(JobFileError, match="more than max_jobs"):
        load_job_file(tmp_path / "count.yaml", max_jobs=job_file.job_count - 1)


def test_anchors_without_aliases_are_still_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "anchor.yaml", "model: &m m1\nmessages: [{role: user, content: hi}]\n")
    assert [json.loads(j.body)["model"] for j in jobs_of(path)] == ["m1"]


def test_batch_bodies_nested_too_deep_for_our_bound_but_not_for_json(tmp_path: Path) -> None:
    # 150 levels: json parses them, but our bound (100) refuses them, naming the field.
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    record = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}
    line = json.dumps({**record, "body": {**body, "x": 1}})
    line = line.replace('"x": 1', '"x": ' + "[" * 150 + "]" * 150)
    path = write(tmp_path, "deep.jsonl", line + "\n")
    with pytest.raises(JobFileError, match="nested more than 100 levels deep") as caught:
        jobs_of(path)
    assert (caught.value.line, caught.value.field) == (1, "body.x" + "[0]" * 99)
