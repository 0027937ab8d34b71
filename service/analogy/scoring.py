"""Analogy scoring as pure functions over cosines: 3CosAdd and 3CosMul (gensim's formulas, one shared
path), the adjustments of AnalogyScoring, top-k and ranks."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.analogy.forms import begin_alike, shares_stem
from service.analogy.space import Vocabulary, normalize_word

# gensim's most_similar_cosmul guards the division with this epsilon too.
COSMUL_EPSILON = 1e-6
# Smallest shifted cosine 3CosMul takes the log of (float64 reaches 1e-308).
COSMUL_FLOOR = 1e-300


class AnalogyMethod(enum.Enum):
    """How analogy candidates are scored from their cosines to the positive and negative words."""

    COSADD = "cosadd"  # cosine to (sum of positives - sum of negatives); gensim most_similar
    COSMUL = "cosmul"  # Levy & Goldberg 2014; gensim most_similar_cosmul


DEFAULT_METHOD = AnalogyMethod.COSMUL


@dataclass(frozen=True)
class AnalogyScoring:
    """Adjustments to the textbook scores of both methods (all off: exactly gensim's formulas).

    negative_weight scales the negative words' part (cosines for COSADD, the exponent of the
    denominator for COSMUL). direction_weight adds the mean over positive words p of
    cos(answer - p, other positives - negatives): for a:b :: c:?, how well c -> answer and
    b -> answer parallel a -> b and a -> c. frequency_penalty subtracts that much times ln(frequency
    rank) when the vocabulary is in frequency order, so that rare words sharing word pieces with a
    query word do not win on spelling alone. Additive for COSADD; for COSMUL the score is
    multiplied by exp(adjustment), which ranks as adding it to the log of the score.

    variant_alignment, when set, leaves out answers that are spelling variants of a positive word p
    (variant_rows: egyptian for egypt) unless they complete the relation: the other query words
    begin alike (a relation of form, as albania : albanian), or cos(answer - p, other positives -
    negatives) reaches variant_alignment (big -> bigger parallels bad -> worse). Without it, for
    spain : madrid :: egypt : ?, egyptian (near egypt, far from spain) outranks cairo.
    """

    negative_weight: float = 1.0
    direction_weight: float = 0.0
    frequency_penalty: float = 0.0
    variant_alignment: float | None = None


TEXTBOOK_SCORING = AnalogyScoring()
# negative_weight, direction_weight and frequency_penalty were tuned on the even-numbered questions
# of questions-words.txt with the default model and 30,000 words (the odd-numbered ones moved alike).
# variant_alignment was chosen on benchmarks/analogy_dev.txt, hand-written relations that
# questions-words.txt does not hold: 3CosMul 27.0% -> 32.4% there. (A frequency_penalty of 0.02
# scored a point more there, but a point less on the questions a 5,000-word vocabulary can answer:
# fewer rare words to push down.)
DEFAULT_SCORING = AnalogyScoring(
    negative_weight=0.6, direction_weight=0.4, frequency_penalty=0.01, variant_alignment=0.3
)


def combine_scores(
    positive_similarities: np.ndarray,
    negative_similarities: np.ndarray,
    method: AnalogyMethod,
    offset_norm: float = 1.0,
    negative_weight: float = 1.0,
) -> np.ndarray:
    """Scores of every candidate from its cosines to the positive and negative words.

    positive_similarities is (len(positive), candidates), negative_similarities
    (len(negative), candidates); w is negative_weight. COSADD: (sum of positive cosines - w * sum
    of negative cosines) / offset_norm, which is the cosine to the vector sum(positive) -
    w * sum(negative) when offset_norm is that vector's length (gensim most_similar for w = 1).
    COSMUL: cosines shifted to [0, 1] by (1 + cos) / 2, product over positives divided by
    (product over negatives ** w + 1e-6) (gensim most_similar_cosmul for w = 1).
    """
    if method is AnalogyMethod.COSADD:
        total = positive_similarities.sum(axis=0) - negative_weight * negative_similarities.sum(axis=0)
        return total / offset_norm if offset_norm > 0 else total
    return np.exp(cosmul_log_scores(positive_similarities, negative_similarities, negative_weight))


def cosmul_log_scores(
    positive_similarities: np.ndarray, negative_similarities: np.ndarray, negative_weight: float = 1.0
) -> np.ndarray:
    """The natural log of the COSMUL score of combine_scores, in float64.

    The product itself underflows float32 from about a hundred positive words (0.5 ** 150 is 7e-46),
    which made every answer tie; summed logs rank any number of words exactly.
    """
    shifted_positive = (1.0 + positive_similarities.astype(np.float64)) / 2.0
    shifted_negative = (1.0 + negative_similarities.astype(np.float64)) / 2.0
    # A cosine of exactly -1 shifts to 0: the floor keeps its log finite, so the word still ranks (last).
    log_positive = np.log(np.maximum(shifted_positive, COSMUL_FLOOR)).sum(axis=0)
    negative = np.exp(np.log(np.maximum(shifted_negative, COSMUL_FLOOR)).sum(axis=0))
    return log_positive - np.log(negative**negative_weight + COSMUL_EPSILON)


def direction_agreement(
    positive_similarities: np.ndarray,
    negative_similarities: np.ndarray,
    positive_vectors: np.ndarray,
    negative_vectors: np.ndarray,
) -> np.ndarray:
    """Per candidate d, the mean over positives p of cos(d - p, sum(other positives) - sum(negatives)).

    From the cosines alone, for unit vectors: (d - p) . o = d . o - p . o and |d - p| = sqrt(2 - 2 d . p).
    Positives with nothing to point to (no other words) are left out; zeros when none is left.
    """
    candidates = positive_similarities.shape[1]
    total = np.zeros(candidates, dtype=np.float32)
    counted = 0
    positive_sum = positive_vectors.sum(axis=0)
    negative_sum = negative_vectors.sum(axis=0)
    positive_similarity_sum = positive_similarities.sum(axis=0)
    negative_similarity_sum = negative_similarities.sum(axis=0)
    for position, vector in enumerate(positive_vectors):
        offset = positive_sum - vector - negative_sum
        offset_norm = float(np.linalg.norm(offset))
        if offset_norm < 1e-9:
            continue
        along = positive_similarity_sum - positive_similarities[position] - negative_similarity_sum
        along -= float(vector @ offset)
        distance = np.sqrt(np.maximum(2.0 - 2.0 * positive_similarities[position], 1e-12))
        total += along / (distance * offset_norm)
        counted += 1
    return total / counted if counted else total


def variant_rows(
    vocabulary: Vocabulary,
    positive_words: Sequence[str],
    negative_words: Sequence[str],
    positive_similarities: np.ndarray,
    negative_similarities: np.ndarray,
    positive_vectors: np.ndarray,
    negative_vectors: np.ndarray,
    min_alignment: float | None,
) -> list[int]:
    """Rows of the spelling variants of positive words (shares_stem) that AnalogyScoring's
    variant_alignment (min_alignment) leaves out of the answers; none when it is None, or without
    negatives (no relation to complete).

    Per positive p, the relation is the other positives against the negatives; it lifts the rule
    when one of its pairs begins alike. Words and similarities as for score_similarities (normalized).
    """
    if min_alignment is None or not len(negative_words):
        return []
    rows = []
    negative_sum = negative_vectors.sum(axis=0)
    for position, word in enumerate(positive_words):
        others = [other for index, other in enumerate(positive_words) if index != position]
        if any(begin_alike(other, negative) for other in others for negative in negative_words):
            continue
        variants = [
            row
            for row in vocabulary.rows_sharing_beginning(word)
            if shares_stem(normalize_word(vocabulary.words[row]), word)
        ]
        offset = positive_vectors.sum(axis=0) - positive_vectors[position] - negative_sum
        offset_norm = float(np.linalg.norm(offset))
        if not variants or offset_norm < 1e-9:
            continue
        along = (
            positive_similarities[:, variants].sum(axis=0)
            - positive_similarities[position, variants]
            - negative_similarities[:, variants].sum(axis=0)
            - float(positive_vectors[position] @ offset)
        )
        distance = np.sqrt(np.maximum(2.0 - 2.0 * positive_similarities[position, variants], 1e-12))
        alignment = along / (distance * offset_norm)
        rows += [row for row, aligned in zip(variants, alignment, strict=True) if aligned < min_alignment]
    return rows


def top_k(scores: np.ndarray, k: int, excluded_rows: Sequence[int] = ()) -> list[tuple[int, float]]:
    """The k best (row, score) pairs, best first; equal scores keep vocabulary order."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    if len(excluded_rows):
        scores[list(excluded_rows)] = -np.inf
    available = int(np.isfinite(scores).sum())
    k = min(k, available)
    if k <= 0:
        return []
    if k < len(scores):
        # Everything scoring at least the k-th best, so ties at the boundary are ordered by row.
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        candidates = np.flatnonzero(scores >= threshold)
    else:
        candidates = np.flatnonzero(np.isfinite(scores))
    order = np.lexsort((candidates, -scores[candidates]))
    chosen = candidates[order][:k]
    return [(int(row), float(scores[row])) for row in chosen]


def score_similarities(
    vocabulary: Vocabulary,
    positive_similarities: np.ndarray,
    negative_similarities: np.ndarray,
    positive_vectors: np.ndarray,
    negative_vectors: np.ndarray,
    method: AnalogyMethod,
    scoring: AnalogyScoring = TEXTBOOK_SCORING,
) -> np.ndarray:
    """Ranking scores from the query words' cosines to every vocabulary word: combine_scores, then
    the adjustments of `scoring`. For COSMUL they are the scores' natural logs (reported_scores turns
    them back), so that many words cannot underflow them. Evaluations that score many questions over
    the same words compute the cosines once and call this directly.
    """
    return score_columns(
        vocabulary.log_ranks,
        positive_similarities,
        negative_similarities,
        positive_vectors,
        negative_vectors,
        method,
        scoring,
    )


def score_columns(
    log_ranks: np.ndarray | None,
    positive_similarities: np.ndarray,
    negative_similarities: np.ndarray,
    positive_vectors: np.ndarray,
    negative_vectors: np.ndarray,
    method: AnalogyMethod,
    scoring: AnalogyScoring = TEXTBOOK_SCORING,
) -> np.ndarray:
    """score_similarities for any candidate columns, given their ln(frequency rank) (None: unranked),
    so that a word outside the vocabulary can be scored as if it were one of its words."""
    adjustment = np.zeros(positive_similarities.shape[1], dtype=np.float32)
    if scoring.direction_weight:
        adjustment += scoring.direction_weight * direction_agreement(
            positive_similarities, negative_similarities, positive_vectors, negative_vectors
        )
    if scoring.frequency_penalty and log_ranks is not None:
        adjustment -= scoring.frequency_penalty * log_ranks
    if method is AnalogyMethod.COSMUL:
        log_scores = cosmul_log_scores(positive_similarities, negative_similarities, scoring.negative_weight)
        return log_scores + adjustment
    offset = positive_vectors.sum(axis=0) - scoring.negative_weight * negative_vectors.sum(axis=0)
    scores = combine_scores(
        positive_similarities,
        negative_similarities,
        method,
        offset_norm=float(np.linalg.norm(offset)),
        negative_weight=scoring.negative_weight,
    )
    return scores + adjustment


def reported_score(ranking_score: float, method: AnalogyMethod) -> float:
    """The score an answer reports from its ranking score (score_similarities): COSMUL ranks by logs."""
    return math.exp(ranking_score) if method is AnalogyMethod.COSMUL else ranking_score


def answer_rank(scores: np.ndarray, excluded_rows: Sequence[int], answer_rows: Sequence[int]) -> int:
    """Position (1 = best) that the best of answer_rows takes in top_k's order of scores; 0 when
    every one of them is excluded."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    scores[list(excluded_rows)] = -np.inf
    candidates = [row for row in answer_rows if np.isfinite(scores[row])]
    if not candidates:
        return 0
    best = min(candidates, key=lambda row: (-scores[row], row))
    ahead = (scores > scores[best]).sum() + (scores[:best] == scores[best]).sum()
    return int(ahead) + 1


def outside_rank(scores: np.ndarray, excluded_rows: Sequence[int], score: float) -> int:
    """Position that a word scoring `score` takes among the vocabulary's scores if it were appended
    as their last row (so equal scores rank ahead of it)."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    scores[list(excluded_rows)] = -np.inf
    return int((scores >= score).sum()) + 1
