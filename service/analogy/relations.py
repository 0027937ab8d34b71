"""Relations between word pairs as offsets: how significant a relation's likeness is, and which
vocabulary pairs share it. Pure numpy over unit-row matrices; the engine supplies the vectors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Random word pairs in the null distribution of offset similarities: enough that a percentile is
# known to about a point (its standard error is at most 0.7 point), few enough to score in a blink.
NULL_PAIR_COUNT = 5000
# Fixed, so the same vocabulary always yields the same null distribution and the same percentiles.
NULL_PAIR_SEED = 20240613
# Similarities closer than this are ties: float32 vectors do not tell them apart.
TIE_TOLERANCE = 1e-6
# Offsets shorter than this (two words with the same vector) have no direction to compare.
MIN_OFFSET_LENGTH = 1e-6
# Candidates beyond 4 k that related_pairs scores again exactly before choosing the k best.
RESCORED_MARGIN = 64
# Numbers held at once per block of first words by related_pairs (cosines to every word, and the
# neighbours' offsets): 8 million, at most 64 MB, whatever the vocabulary's size.
BLOCK_NUMBERS = 8_000_000


def cosine(left: np.ndarray, right: np.ndarray) -> float:
    """Cosine of two vectors in float64; 0.0 when either is zero."""
    left, right = left.astype(np.float64), right.astype(np.float64)
    norms = float(np.linalg.norm(left) * np.linalg.norm(right))
    return float(left @ right / norms) if norms > 0 else 0.0


def null_pair_rows(
    word_count: int, pair_count: int = NULL_PAIR_COUNT, seed: int = NULL_PAIR_SEED
) -> np.ndarray:
    """(pairs, 2) rows (first, second) of distinct words: every ordered pair when there are at most
    pair_count of them, else pair_count pairs drawn uniformly with the fixed seed."""
    if word_count * (word_count - 1) <= pair_count:
        first, second = np.meshgrid(np.arange(word_count), np.arange(word_count), indexing="ij")
        pairs = np.stack([first.ravel(), second.ravel()], axis=1)
        return pairs[pairs[:, 0] != pairs[:, 1]]
    generator = np.random.default_rng(seed)
    first = generator.integers(0, word_count, pair_count)
    # Drawn among the other words, then shifted past `first`: distinct, and still uniform.
    second = generator.integers(0, word_count - 1, pair_count)
    second += second >= first
    return np.stack([first, second], axis=1)


def null_offsets(
    vectors: np.ndarray, pair_count: int = NULL_PAIR_COUNT, seed: int = NULL_PAIR_SEED
) -> np.ndarray:
    """Unit offsets (second - first) of the null pairs of `vectors`' rows, float32; pairs of words with
    the same vector (no offset) are left out."""
    rows = null_pair_rows(len(vectors), pair_count, seed)
    offsets = vectors[rows[:, 1]].astype(np.float64) - vectors[rows[:, 0]]
    lengths = np.linalg.norm(offsets, axis=1)
    kept = lengths > MIN_OFFSET_LENGTH
    return (offsets[kept] / lengths[kept, None]).astype(np.float32)


def offset_percentiles(
    null: np.ndarray, reference_offset: np.ndarray, similarities: Sequence[float]
) -> list[float]:
    """Per offset similarity, its percentile (0 to 100) among the null offsets' similarities to the
    reference offset: the share of null pairs below it, ties (within TIE_TOLERANCE) counting half.
    0.0 with no null pairs."""
    if not len(null):
        return [0.0 for _ in similarities]
    length = float(np.linalg.norm(reference_offset))
    direction = reference_offset.astype(np.float64) / length if length > 0 else reference_offset * 0.0
    ordered = np.sort(null.astype(np.float64) @ direction)
    values = np.asarray(similarities, dtype=np.float64)
    below = np.searchsorted(ordered, values - TIE_TOLERANCE, side="left")
    at_or_below = np.searchsorted(ordered, values + TIE_TOLERANCE, side="right")
    return [float(p) for p in 100.0 * (below + at_or_below) / (2 * len(ordered))]


@dataclass(frozen=True)
class PairMatch:
    first_position: int  # position in the first words given to related_pairs
    second_row: int  # vocabulary row
    offset_similarity: float
    pair_similarity: float


def nearest_rows(
    vectors: np.ndarray, first_vectors: np.ndarray, own_rows: Sequence[Sequence[int]], count: int
) -> np.ndarray:
    """(firsts, count) int64: each first word's count nearest vocabulary rows by cosine, nearest first
    (equal cosines by row), never one of its own rows (own_rows[i]); -1 pads a row short of words.

    vectors and first_vectors are unit rows. A neighbourhood does not depend on the relation asked
    about, so the vocabulary keeps those of its first words (Vocabulary.first_word_neighbours).
    """
    count = min(count, len(vectors))
    neighbours = np.full((len(first_vectors), count), -1, dtype=np.int64)
    if count == 0:
        return neighbours
    chunk = max(1, BLOCK_NUMBERS // len(vectors))
    for start in range(0, len(first_vectors), chunk):
        similarities = first_vectors[start : start + chunk] @ vectors.T
        for position, own in enumerate(own_rows[start : start + chunk]):
            similarities[position, list(own)] = -np.inf
        nearest = np.argpartition(-similarities, count - 1, axis=1)[:, :count]
        chosen = np.take_along_axis(similarities, nearest, axis=1)
        order = np.lexsort((nearest, -chosen), axis=1)
        nearest, chosen = (
            np.take_along_axis(nearest, order, axis=1),
            np.take_along_axis(chosen, order, axis=1),
        )
        neighbours[start : start + len(nearest)] = np.where(np.isfinite(chosen), nearest, -1)
    return neighbours


def related_pairs(
    vectors: np.ndarray,
    first_vectors: np.ndarray,
    neighbours: np.ndarray,
    excluded_rows: Sequence[int],
    neighbour_count: int,
    reference_offset: np.ndarray,
    k: int,
) -> tuple[list[PairMatch], int]:
    """The k pairs (first word c, vocabulary word d) whose offset d - c is most like reference_offset,
    d among the neighbour_count nearest of c's neighbours (nearest_rows) that are not excluded_rows;
    and how many pairs were compared.

    vectors (words, dimension) and first_vectors (firsts, dimension) are unit rows. Best first; equal
    similarities keep the order of the first words, then of the vocabulary rows.
    """
    kept = (neighbours >= 0) & ~np.isin(neighbours, list(excluded_rows))
    kept &= np.cumsum(kept, axis=1) <= neighbour_count
    firsts, places = np.nonzero(kept)
    seconds = neighbours[firsts, places]
    compared = len(seconds)
    if not compared:
        return [], 0
    direction = (reference_offset / max(float(np.linalg.norm(reference_offset)), 1e-12)).astype(np.float32)
    approximate = np.empty(compared, dtype=np.float32)
    chunk = max(1, BLOCK_NUMBERS // vectors.shape[1])
    for start in range(0, compared, chunk):
        differences = vectors[seconds[start : start + chunk]] - first_vectors[firsts[start : start + chunk]]
        lengths = np.linalg.norm(differences, axis=1)
        usable = lengths > MIN_OFFSET_LENGTH
        approximate[start : start + chunk] = np.where(
            usable, (differences @ direction) / np.where(usable, lengths, 1.0), -np.inf
        )
    # Ranked in float32, which blurs the direction of short offsets (near-duplicate words) by up to
    # about 1e-4; the best candidates, with room to spare, are scored again exactly and ranked on that.
    ranked = np.lexsort((seconds, firsts, -approximate))
    candidates = [i for i in ranked[: 4 * k + RESCORED_MARGIN] if np.isfinite(approximate[i])]
    exact = {
        i: exact_pair(vectors[seconds[i]], first_vectors[firsts[i]], reference_offset) for i in candidates
    }
    best = sorted(candidates, key=lambda i: (-exact[i][0], firsts[i], seconds[i]))[:k]
    return [PairMatch(int(firsts[i]), int(seconds[i]), exact[i][0], exact[i][1]) for i in best], compared


def exact_pair(second: np.ndarray, first: np.ndarray, reference_offset: np.ndarray) -> tuple[float, float]:
    """(offset cosine, pair cosine) of one pair, in float64."""
    return cosine(second - first.astype(np.float64), reference_offset), cosine(first, second)
