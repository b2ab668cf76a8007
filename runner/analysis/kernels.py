"""String kernels over one job's completions, after "Model Equality Testing" (Gao et al. 2025).

Every kernel here is normalised as the paper's reference code (``_mmd``) normalises its
kernels, ``k(y, y') / sqrt(k(y, y) k(y', y'))``: entries in [0, 1], diagonal 1. Texts
are cut to their first ``max_chars`` code points first.

``hamming_gram``: the paper's default kernel (reference ``mmd_hamming``) on Unicode code
points, the paper's tokenisation for API samples (a remote model's tokenizer is
unknown). Texts are padded with a pad symbol to the longest text of the job, ``L``, and
the kernel is the share of the ``L`` positions where two texts agree. Padding matches
padding, so a change of length counts; past the first divergence positions rarely line
up, so it mostly sees shared openings and lengths.

``spectrum_gram``: the paper's k-spectrum kernel (reference ``mmd_kspectrum``, cumulative):
the number of common runs of 1 to ``k`` tokens, each counted as often as it occurs in
each text (a dot product of run counts). It sees what a text says wherever it says it
and is blind to length alone. Tokens are either code points (``unit="chars"``) or words,
maximal runs of non-whitespace as ``str.split`` finds them (``unit="words"``), the
nearest thing to a model's tokens we can find without its tokenizer (which whitespace
separates two words does not matter).

Everything is numpy over whole jobs: strings go in as one buffer of code points, words
and runs become 64-bit polynomial hashes (collisions are ignored: at about 10^5 runs a
job, the chance of one is a few in 10^9). numpy is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["MIXTURE_HAMMING", "hamming_gram", "mixture_gram", "spectrum_gram"]

_PAD = -1  # never a code point
MIXTURE_HAMMING = (
    0.2  # weight of the Hamming kernel next to the word kernel's 1 in ``mixture_gram``
)
_BASE = 0x9E3779B97F4A7C15  # odd 64-bit multiplier of the polynomial hashes
# What str.split() splits on (str.isspace), as code points.
_WHITESPACE = (
    *range(9, 14),
    *range(28, 33),
    133,
    160,
    5760,
    *range(8192, 8203),
    8232,
    8233,
    8239,
    8287,
    12288,
)


def _code_points(
    texts: Sequence[str], max_chars: int | None
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """``(padded, inside)``: code points ``(len(texts), L)`` padded with -1, and which are text."""
    import numpy as np

    lengths = np.fromiter((len(text) for text in texts), dtype=np.int64, count=len(texts))
    cut = lengths if max_chars is None else np.minimum(lengths, max_chars)
    width = int(cut.max(initial=0))
    codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype="<u4")
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    positions = np.arange(width)
    inside = positions[None, :] < cut[:, None]
    if not codes.size:
        return np.full((len(texts), width), _PAD, dtype=np.int64), inside
    index = np.where(inside, starts[:, None] + positions[None, :], 0)
    return np.where(inside, codes.astype(np.int64)[index], _PAD), inside


def hamming_gram(texts: Sequence[str], max_chars: int | None) -> NDArray[np.float64]:
    """Share of aligned positions where two texts agree (padding included); diagonal 1."""
    import numpy as np

    padded, _ = _code_points(texts, max_chars)
    width = padded.shape[1]
    if width == 0:  # every text empty: all identical
        return np.ones((len(texts), len(texts)), dtype=np.float64)
    agree = (padded[:, None, :] == padded[None, :, :]).sum(axis=-1, dtype=np.int64)
    return np.asarray(agree / float(width), dtype=np.float64)


def mixture_gram(texts: Sequence[str], max_chars: int | None) -> NDArray[np.float64]:
    """(word spectrum 1-3 + ``MIXTURE_HAMMING`` x Hamming) / (1 + ``MIXTURE_HAMMING``); diagonal 1.

    One kernel that sees what a text says (words) and, through the Hamming part's
    padding, how long it is. A sum of kernels is a kernel, so its MMD test is exact like
    either part's, without the price in power a maximum over two tests pays.
    """
    words = spectrum_gram(texts, max_chars, k=3, unit="words")
    return (words + MIXTURE_HAMMING * hamming_gram(texts, max_chars)) / (1.0 + MIXTURE_HAMMING)


def spectrum_gram(
    texts: Sequence[str],
    max_chars: int | None,
    *,
    k: int,
    unit: Literal["chars", "words"],
) -> NDArray[np.float64]:
    """Normalised count of common runs of 1..k tokens (code points or words); diagonal 1."""
    import numpy as np

    if not 1 <= k <= 15:  # the run's size lives in 4 bits of its key
        raise ValueError("k must be between 1 and 15")
    padded, inside = _code_points(texts, max_chars)
    if unit == "words":
        tokens, inside = _words(padded, inside)
    else:
        tokens = padded.astype(np.uint64)
    keys, rows = _runs(tokens, inside, k)
    return _count_gram(keys, rows, len(texts))


def _words(
    padded: NDArray[np.int64], inside: NDArray[np.bool_]
) -> tuple[NDArray[np.uint64], NDArray[np.bool_]]:
    """Each text's words as hashes, ``(texts, most words)``, and which entries are words."""
    import numpy as np

    count, width = padded.shape
    letter = inside & ~np.isin(padded, _WHITESPACE)
    edges = np.diff(letter.astype(np.int8), axis=1, prepend=0, append=0)
    start_rows, start_cols = np.nonzero(edges == 1)  # row-major: words in reading order
    _, end_cols = np.nonzero(edges == -1)  # end_cols: one past the word's last code point
    # Prefix sums of c_t * B^-t give any substring's hash sum_t c_t B^(r-1-t) by one product.
    base = np.uint64(_BASE)
    inverse = np.uint64(pow(_BASE, -1, 1 << 64))
    powers = np.cumprod(np.full(width + 1, base, dtype=np.uint64)) * inverse  # B^0..B^width
    inverses = np.cumprod(np.full(width + 1, inverse, dtype=np.uint64)) * base  # B^-0..B^-width
    terms = padded.astype(np.uint64) * inverses[None, :width]
    prefix = np.concatenate((np.zeros((count, 1), np.uint64), np.cumsum(terms, axis=1)), axis=1)
    spans = prefix[start_rows, end_cols] - prefix[start_rows, start_cols]
    hashes = spans * powers[end_cols - 1] + (end_cols - start_cols).astype(np.uint64)
    per_text = np.bincount(start_rows, minlength=count)
    most = int(per_text.max(initial=0))
    slots = np.arange(most)
    present = slots[None, :] < per_text[:, None]
    tokens = np.zeros((count, most), dtype=np.uint64)
    tokens[present] = hashes  # row-major order on both sides
    return tokens, present


def _runs(
    tokens: NDArray[np.uint64], inside: NDArray[np.bool_], k: int
) -> tuple[NDArray[np.uint64], NDArray[np.int64]]:
    """Hashes of every run of 1..k consecutive tokens, and the text each comes from."""
    import numpy as np

    count, width = tokens.shape
    rows_all = np.broadcast_to(np.arange(count)[:, None], tokens.shape)
    keys_parts = [np.zeros(0, dtype=np.uint64)]
    rows_parts = [np.zeros(0, dtype=np.int64)]
    rolling = tokens
    for size in range(1, min(k, width) + 1):
        if size > 1:
            rolling = rolling[:, :-1] * np.uint64(_BASE) + tokens[:, size - 1 :]
        valid = inside[:, size - 1 :]
        # Runs of different sizes never share a key: the low 4 bits hold the size.
        keys_parts.append((rolling[valid] << np.uint64(4)) | np.uint64(size))
        rows_parts.append(rows_all[:, size - 1 :][valid])
    return np.concatenate(keys_parts), np.concatenate(rows_parts)


def _count_gram(
    keys: NDArray[np.uint64], rows: NDArray[np.int64], count: int
) -> NDArray[np.float64]:
    """Normalised dot products of per-text run counts; two texts with no runs count as equal."""
    import numpy as np

    unique, column = np.unique(keys, return_inverse=True)
    # How often each text holds each run: one entry per (run, text) that occurs.
    pairs, times = np.unique(column * count + rows, return_counts=True)
    run_of, text_of = np.divmod(pairs, count)
    times = times.astype(np.float64)
    norms = np.bincount(text_of, weights=times * times, minlength=count)
    # Only runs held by two or more texts reach off the diagonal; the table holds just those.
    holders = np.bincount(run_of, minlength=unique.size)
    keep = holders[run_of] >= 2
    kept = run_of[keep]  # sorted: number the kept runs in order
    first = np.ones(kept.size, dtype=bool)
    first[1:] = kept[1:] != kept[:-1]
    dense = np.cumsum(first) - 1
    shared = np.zeros((int(first.sum()), count), dtype=np.float64)
    shared[dense, text_of[keep]] = times[keep]
    gram = shared.T @ shared
    gram[np.diag_indices(count)] = norms
    scale = np.sqrt(np.where(norms > 0, norms, 1.0))
    gram /= np.outer(scale, scale)
    empty = norms == 0
    gram[np.ix_(empty, empty)] = 1.0
    gram[np.diag_indices(count)] = 1.0
    return np.asarray(gram, dtype=np.float64)
