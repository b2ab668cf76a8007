"""The tokenizer: lossless splitting and stable counts."""

from __future__ import annotations

import random

import pytest

from runner.localmodel.tokenizer import count_tokens, is_sentence_end, keywords, tokenize


def test_splits_words_with_their_leading_space() -> None:
    assert tokenize("The crew's ship, at 3.5 km/s!\n\nNext") == [
        "The",
        " crew's",
        " ship",
        ",",
        " at",
        " 3.5",
        " km",
        "/",
        "s",
        "!",
        "\n\n",
        "Next",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain words",
        "  two leading spaces and trailing  ",
        "tabs\tand\nsingle\nnewlines\n\n\nthree",
        "Ünïcödé wörds, emoji 🚀 and CJK 火星",
        "under_score snake_case __dunder__",
        '{"json": [1, 2.5, "x"]}',
    ],
)
def test_joining_tokens_gives_the_text_back(text: str) -> None:
    assert "".join(tokenize(text)) == text
    assert count_tokens(text) == len(tokenize(text))


def test_random_texts_round_trip() -> None:
    rng = random.Random(7)
    alphabet = "ab Z9.,'-\n\t_é🚀"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
        assert "".join(tokenize(text)) == text


def test_keywords_are_lower_case_words_and_numbers() -> None:
    assert keywords("A Journey to MARS, in 2031!") == ["a", "journey", "to", "mars", "in", "2031"]


def test_sentence_ends() -> None:
    assert [t for t in tokenize("Go. Now! Why? Fine,") if is_sentence_end(t)] == [".", "!", "?"]
