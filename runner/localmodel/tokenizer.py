"""The local model's tokenizer: text <-> token strings, and token counts for ``usage``.

Tokens are word-level pieces in the style of byte-pair vocabularies: a word, a number
or one punctuation mark, carrying the single space that precedes it (``" Mars"``,
``","``), a paragraph break ``"\\n\\n"``, or a run of other whitespace. Joining the
tokens of a text gives the text back exactly, so token strings can be reported in
``logprobs`` and concatenated into the completion. The split is a pure function of the
text (one regular expression), so counts are identical in every process.
"""

from __future__ import annotations

import re

__all__ = ["count_tokens", "is_sentence_end", "keywords", "tokenize"]

_WORD = r"[^\W\d_]+(?:['\u2019\-][^\W\d_]+)*"
_NUMBER = r"\d+(?:[.,:]\d+)*"
_SYMBOL = r"[^\w\s]|_"
_TOKEN = re.compile(rf" ?(?:{_WORD}|{_NUMBER}|{_SYMBOL})|\n\n|\s+(?!\S)|\s+")
_KEYWORD = re.compile(rf"{_WORD}|{_NUMBER}")

_SENTENCE_END = frozenset({".", "!", "?"})


def tokenize(text: str) -> list[str]:
    """Split ``text`` into token strings; ``"".join(tokenize(t)) == t`` for every text."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """Number of tokens in ``text``."""
    return sum(1 for _ in _TOKEN.finditer(text))


def keywords(text: str) -> list[str]:
    """Lower-cased words and numbers of ``text``, in order, for topic matching and embeddings."""
    return [match.lower() for match in _KEYWORD.findall(text)]


def is_sentence_end(token: str) -> bool:
    """Whether ``token`` closes a sentence (the model restarts its context after it)."""
    return token in _SENTENCE_END
