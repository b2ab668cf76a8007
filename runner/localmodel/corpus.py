"""The training corpus: reading it, splitting it into topics, scoring prompts against them.

``corpus.txt`` is original prose written for this project: ``# topic`` headers, each followed
by paragraphs separated by blank lines. A section is one training document; paragraph
breaks inside it become ``"\\n\\n"`` tokens. :class:`TopicIndex` scores a prompt against the
sections with tf-idf over their keywords, which is how the prompt pulls the text toward a
topic. Scores are sums in sorted word order through ``math.fsum``: identical everywhere.
"""

from __future__ import annotations

import math
from importlib import resources

from runner.localmodel.tokenizer import keywords

__all__ = ["TopicIndex", "corpus_text", "parse_sections"]

# Function words carry no topic; they would let "how" or "do" pick a section.
_STOP_WORDS = frozenset(
    (
        *("a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be"),
        *("been", "but", "by", "can", "could", "did", "do", "does", "for", "from", "had"),
        *("has", "have", "he", "her", "his", "how", "i", "if", "in", "into", "is", "it"),
        *("its", "me", "my", "no", "not", "of", "on", "or", "our", "she", "so", "than"),
        *("that", "the", "their", "them", "then", "there", "these", "they", "this", "those"),
        *("to", "was", "we", "were", "what", "when", "where", "which", "who", "why", "will"),
        *("with", "would", "you", "your"),
    )
)


def corpus_text() -> str:
    """The training corpus shipped with the package."""
    return resources.files("runner.localmodel").joinpath("corpus.txt").read_text("utf-8")


def parse_sections(text: str) -> list[tuple[str, list[str]]]:
    """``[(topic, [paragraph, ...]), ...]`` in file order, whitespace inside paragraphs folded."""
    sections: list[tuple[str, list[str]]] = []
    for block in text.split("\n# "):
        header, _, body = block.removeprefix("# ").partition("\n")
        paragraphs = [" ".join(p.split()) for p in body.split("\n\n") if p.strip()]
        if header.strip() and paragraphs:
            sections.append((header.strip(), paragraphs))
    return sections


class TopicIndex:
    """tf-idf profiles of the corpus sections."""

    def __init__(self, sections: list[tuple[str, list[str]]]) -> None:
        self.names = tuple(name for name, _ in sections)
        self._frequency: list[dict[str, float]] = []
        for _, paragraphs in sections:
            counts: dict[str, int] = {}
            for paragraph in paragraphs:
                for word in keywords(paragraph):
                    counts[word] = counts.get(word, 0) + 1
            total = sum(counts.values())
            self._frequency.append({word: count / total for word, count in counts.items()})
        spread: dict[str, int] = {}
        for frequency in self._frequency:
            for word in frequency:
                spread[word] = spread.get(word, 0) + 1
        self._idf = {word: math.log(len(sections) / count) for word, count in spread.items()}

    def _words(self, prompt: str) -> list[str]:
        words = []
        for word in sorted(set(keywords(prompt))):
            if word in _STOP_WORDS:
                continue
            if word not in self._idf and word.endswith("s") and word[:-1] in self._idf:
                word = word[:-1]  # "rivers" finds "river"
            words.append(word)
        return words

    def scores(self, prompt: str) -> list[float]:
        """One score per section, in section order; all zero when no word matches."""
        words = self._words(prompt)
        return [
            math.fsum(frequency.get(word, 0.0) * self._idf.get(word, 0.0) for word in words)
            for frequency in self._frequency
        ]
