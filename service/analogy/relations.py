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


def related_pairs(
    vectors: np.ndarray,
    first_vectors: np.ndarray,
    excluded_second_rows: Sequence[Sequence[int]],
    reference_offset: np.ndarray,
    neighbour_count: int,
    k: int,
) -> tuple[list[PairMatch], int]:
    """The k pairs (first word c, vocabulary word d) whose offset d - c is most like reference_offset,
    d among the neighbour_count nearest vocabulary words of c (by cosine) other than
    excluded_second_rows[c]; and how many pairs were compared.

    vectors (words, dimension) and first_vectors (firsts, dimension) are unit rows. Best first; equal
    similarities keep the order of the first words, then of the vocabulary rows.
    """
    direction = (reference_offset / max(float(np.linalg.norm(reference_offset)), 1e-12)).astype(np.float32)
    count = min(neighbour_count, len(vectors) - 1)
    chunk = max(1, BLOCK_NUMBERS // max(len(vectors), count * vectors.shape[1]))
    first_positions, second_rows, offsets = [], [], []
    for start in range(0, len(first_vectors) if count > 0 else 0, chunk):
        block = first_vectors[start : start + chunk]
        similarities = block @ vectors.T
        for position, excluded in enumerate(excluded_second_rows[start : start + chunk]):
            similarities[position, list(excluded)] = -np.inf
        nearest = np.argpartition(-similarities, count - 1, axis=1)[:, :count]
        nearest.sort(axis=1)  # row order, so that ties are broken the same way on every run
        # Excluded words (-inf) fill a neighbourhood only when too few others are left.
        usable = np.isfinite(np.take_along_axis(similarities, nearest, axis=1))
        differences = vectors[nearest] - block[:, None, :]
        lengths = np.linalg.norm(differences, axis=2)
        usable &= lengths > MIN_OFFSET_LENGTH
        offset_cosines = np.where(usable, (differences @ direction) / np.where(usable, lengths, 1.0), -np.inf)
        first_positions.append(np.repeat(np.arange(start, start + len(block)), count))
        second_rows.append(nearest.ravel())
        offsets.append(offset_cosines.ravel())
    if not offsets:
        return [], 0
    approximate = np.concatenate(offsets)
    compared = int(np.isfinite(approximate).sum())
    firsts, seconds = np.concatenate(first_positions), np.concatenate(second_rows)
    # Ranked in float32, which blurs the direction of short offsets (near-duplicate words) by up to
    # about 1e-4; the best candidates, with room to spare, are scored again exactly and ranked on that.
    candidates = np.argsort(-approximate, kind="stable")[: min(4 * k + RESCORED_MARGIN, compared)]
    exact = [exact_pair(vectors[seconds[i]], first_vectors[firsts[i]], reference_offset) for i in candidates]
    # Ties keep the (first word, row) order that the candidates were listed in.
    order = sorted(range(len(candidates)), key=lambda j: (-exact[j][0], candidates[j]))[:k]
    return [
        PairMatch(int(firsts[candidates[j]]), int(seconds[candidates[j]]), exact[j][0], exact[j][1])
        for j in order
    ], compared


def exact_pair(second: np.ndarray, first: np.ndarray, reference_offset: np.ndarray) -> tuple[float, float]:
    """(offset cosine, pair cosine) of one pair, in float64."""
    return cosine(second - first.astype(np.float64), reference_offset), cosine(first, second)
