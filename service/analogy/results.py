"""What the analogy engine answers: scored words, relation reports, vocabulary descriptions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScoredWord:
    word: str
    score: float
    # What answers are ranked by, in float64: the score itself, or for COSMUL its natural log,
    # which stays exact where the product of many words' cosines is below float32's range.
    ranking_score: float


@dataclass(frozen=True)
class RelationComparison:
    first: str
    second: str
    offset_similarity: float  # cosine of (second - first) and the reference offset
    pair_similarity: float  # cosine of first and second
    # Share of random vocabulary pairs whose offset is less like the reference's, in percent (0 to 100).
    offset_percentile: float
    # Position of second among the answers to reference.first : reference.second :: first : ?
    # (1 = the top answer); 0 when second is one of those three words, which are never answers.
    answer_rank: int
    answer_in_vocabulary: bool  # whether second is a vocabulary word (else ranked as if appended last)


@dataclass(frozen=True)
class RelationReport:
    reference_pair_similarity: float
    comparisons: list[RelationComparison]
    null_pair_count: int  # random vocabulary pairs behind the percentiles
    vocabulary_word_count: int


@dataclass(frozen=True)
class RelatedPair:
    first: str
    second: str
    offset_similarity: float  # cosine of (second - first) and the reference offset
    pair_similarity: float  # cosine of first and second


@dataclass(frozen=True)
class RelatedPairsReport:
    pairs: list[RelatedPair]  # best first
    compared_pair_count: int  # candidate pairs (c, d) scored within the bound


@dataclass(frozen=True)
class VocabularyDescription:
    word_count: int
    contains: list[bool]  # one per looked-up word
    word_template: str  # how query words are written for the encoder (Vocabulary.template)
    vectors: np.ndarray | None = None  # per looked-up word, its vector in the vocabulary's space
