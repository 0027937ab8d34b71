"""Word analogies, relation similarity and nearest words over a vocabulary of embedded words.

Meaning as geometry: a:b :: c:? is answered by the vocabulary words whose vectors lie near b and c
and far from a. Plain Python and numpy, no transport code; errors are domain errors.

Words are compared case-insensitively: every query word and vocabulary entry is normalized by
`normalize_word` (Unicode NFKC, whitespace collapsed, lower case) before it is embedded or
matched. The default model is uncased, so this changes no vector; it makes "Athens" and "athens"
the same word, so that a query word is never returned as its own answer in another case.
"""

from __future__ import annotations

import enum
import math
import threading
import unicodedata
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from service.analogy.relations import cosine, null_offsets, offset_percentiles, related_pairs
from service.common.limits import check_k
from service.common.lru import LruCache
from service.embedding.protocol import TextEncoder
from service.errors import FailedPrecondition, InvalidArgument, NotFound
from service.index.model import check_name

MAX_WORDS_PER_REQUEST = 256
# Vocabularies built from users' indexes kept in memory (each holds a copy of its index's vectors).
MAX_CACHED_INDEX_VOCABULARIES = 4
MAX_WORD_CHARACTERS = 1000
# gensim's most_similar_cosmul guards the division with this epsilon too.
COSMUL_EPSILON = 1e-6
# Smallest shifted cosine 3CosMul takes the log of (float64 reaches 1e-308).
COSMUL_FLOOR = 1e-300
# Below this many words a vocabulary's mean says more about its few words than about the model.
MIN_WORDS_TO_CENTER = 1000
# Unknown-token spellings of common tokenizers (WordPiece, SentencePiece, BPE).
_UNKNOWN_TOKENS = frozenset({"[UNK]", "<unk>", "<UNK>", "<|unk|>"})
# How a single word is put to the sentence encoder. In quotes, the model reads it as a word named
# rather than a fragment of a sentence: on questions-words.txt this scores 56.3% against 53.9%
# for the bare word (30,000 words, textbook 3CosMul); Spearman on WordSim353 0.765 against 0.729, on
# SimLex-999 0.482 against 0.446.
WORD_TEMPLATE = '"{}"'
# Document texts of an index are matched as they were embedded: bare.
TEXT_TEMPLATE = "{}"
MAX_LOOKUP_WORDS = 100_000
# The request field that names an index serving as the vocabulary, for the errors about it.
VOCABULARY_INDEX_FIELD = "index_name"
# The request field that names an index of word vectors serving as the whole space.
SPACE_FIELD = "space"
# FindRelatedPairs' bound: first words c taken from the vocabulary's first (most frequent) words, and
# second words d among each c's nearest neighbours.
DEFAULT_FIRST_WORD_COUNT = 1000
MAX_FIRST_WORD_COUNT = 10_000
DEFAULT_NEIGHBOUR_COUNT = 50
MAX_NEIGHBOUR_COUNT = 1000
# Word vectors kept for reuse (about 1.5 KiB each with 384 dimensions): queries repeat words a lot.
WORD_CACHE_ENTRIES = 20_000


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
    """

    negative_weight: float = 1.0
    direction_weight: float = 0.0
    frequency_penalty: float = 0.0


TEXTBOOK_SCORING = AnalogyScoring()
# Tuned on the even-numbered questions of questions-words.txt with the default model and 30,000
# words; the odd-numbered ones moved alike: 3CosMul 53.96% -> 59.50% (even), 58.49% -> 62.66% (odd).
DEFAULT_SCORING = AnalogyScoring(negative_weight=0.6, direction_weight=0.4, frequency_penalty=0.01)


# Texts and vectors of a named index, for using a user's index as the vocabulary; raises NotFound.
IndexVocabularySource = Callable[[str], tuple[list[str], np.ndarray]]
# Index name -> a value that changes whenever the index's contents may have (see IndexStore.generation).
IndexGeneration = Callable[[str], Hashable]
# The default vocabulary, waiting at most `timeout` seconds (None: no limit) while it is built.
DefaultVocabularySource = Callable[[float | None], "Vocabulary"]


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


def normalize_word(text: str) -> str:
    """The form in which words are embedded and compared: NFKC, single spaces, lower case."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).lower()


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (all-zero rows stay zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """Candidate answer words and their vectors in the engine's space.

    `vectors` are the unit-length encoder vectors with `mean` (a direction every embedding of this
    model shares: its length is 0.45 over the English words) subtracted and re-normalized, the first
    step of "all-but-the-top" post-processing (Mu & Viswanath 2018). Measured with the default
    model, it leaves analogy accuracy within 0.1 point (removing top principal components as well
    lowered it) and lifts word-pair correlations a little (WordSim353 0.743 against 0.729), so
    nearest words and relations are computed in the centered space. Query vectors go through the
    same `project`.

    A vocabulary with a `space` name is a word-vector space (an index of imported word vectors):
    its query words are looked up among its own words, never embedded, and nothing is centered.
    """

    words: list[str]
    vectors: np.ndarray  # (len(words), dimension) float32, unit rows
    mean: np.ndarray | None  # (dimension,) float32, or None for no centering
    template: str  # how query words are written for the encoder to match these vectors
    positions: dict[str, list[int]] = field(repr=False)  # normalized word -> rows
    # ln(1 + row) when the words are in order of frequency, most frequent first; else None.
    log_ranks: np.ndarray | None = field(default=None, repr=False)
    # Name of the word-vector space (index) these words come from; "" when query words are embedded.
    space: str = ""

    @classmethod
    def from_vectors(
        cls,
        words: Sequence[str],
        vectors: np.ndarray,
        template: str = WORD_TEMPLATE,
        center: bool = True,
        frequency_ordered: bool = False,
        space: str = "",
    ) -> Vocabulary:
        """Builds a vocabulary from raw (any length) vectors; centers it when it is large enough."""
        words = list(words)
        if len(words) != len(vectors):
            raise ValueError(f"{len(words)} words but {len(vectors)} vectors")
        unit = unit_rows(vectors)
        mean = unit.mean(axis=0) if center and len(words) >= MIN_WORDS_TO_CENTER else None
        positions: dict[str, list[int]] = {}
        for row, word in enumerate(words):
            positions.setdefault(normalize_word(word), []).append(row)
        log_ranks = np.log(np.arange(1, len(words) + 1, dtype=np.float32)) if frequency_ordered else None
        vocabulary = cls(
            words=words,
            vectors=unit,
            mean=mean,
            template=template,
            positions=positions,
            log_ranks=log_ranks,
            space=space,
        )
        if mean is not None:
            object.__setattr__(vocabulary, "vectors", vocabulary.project(unit))
        return vocabulary

    def __len__(self) -> int:
        return len(self.words)

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Raw encoder vectors into this vocabulary's space (unit length, centered if it is)."""
        unit = unit_rows(vectors)
        if self.mean is None:
            return unit
        return unit_rows(unit - self.mean)

    def rows_of(self, normalized_words: Sequence[str]) -> list[int]:
        """Rows of every entry whose normalized form is one of normalized_words."""
        return [row for word in normalized_words for row in self.positions.get(word, [])]

    def contains(self, word: str) -> bool:
        return normalize_word(word) in self.positions

    def first_row(self, normalized_word: str) -> int | None:
        """The first (most frequent, in a frequency-ordered file) row of a normalized word, if any:
        as gensim's case-insensitive evaluation takes the first of a word's case variants."""
        rows = self.positions.get(normalized_word)
        return rows[0] if rows else None

    @cached_property
    def null_offsets(self) -> np.ndarray:
        """Unit offsets of random pairs of this vocabulary's words (fixed seed, see
        service.analogy.relations): the baseline a relation's offset similarity is judged against.
        Computed on first use and kept as long as the vocabulary is."""
        return null_offsets(self.vectors)


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


def score_analogy(
    vocabulary: Vocabulary,
    positive_vectors: np.ndarray,
    negative_vectors: np.ndarray,
    method: AnalogyMethod,
    scoring: AnalogyScoring = TEXTBOOK_SCORING,
) -> np.ndarray:
    """Scores of every vocabulary word for vectors already in the vocabulary's space (unit rows).

    The one scoring path of both methods: one matrix product gives every cosine, then
    score_similarities folds them.
    """
    queries = np.concatenate([positive_vectors, negative_vectors]).astype(np.float32, copy=False)
    similarities = queries @ vocabulary.vectors.T
    return score_similarities(
        vocabulary,
        similarities[: len(positive_vectors)],
        similarities[len(positive_vectors) :],
        positive_vectors,
        negative_vectors,
        method,
        scoring,
    )


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


class AnalogyEngine:
    """Analogies, relation comparisons, relation search and similar words; safe to call from many threads.

    default_vocabulary provides the built-in vocabulary (see service.analogy.vocabulary), waiting while
    it is built; index_vocabulary, when given, turns a user's index into a vocabulary (its texts
    embedded by the model) or into a word-vector space (its words and stored vectors, nothing
    embedded). With index_generation too, either is built once and reused until the index changes.

    Every operation works in one vocabulary's space: the built-in one, an index's (`index_name`) or
    a word-vector space (`space`). In a space the scores are the textbook (gensim) formulas: the
    default adjustments were tuned for the model's embeddings, not for other vectors.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        default_vocabulary: DefaultVocabularySource,
        index_vocabulary: IndexVocabularySource | None = None,
        max_words_per_request: int = MAX_WORDS_PER_REQUEST,
        scoring: AnalogyScoring = DEFAULT_SCORING,
        index_generation: IndexGeneration | None = None,
    ) -> None:
        self._encoder = encoder
        self._scoring = scoring
        self._default_vocabulary = default_vocabulary
        self._index_vocabulary = index_vocabulary
        self._index_generation = index_generation
        # (index name, whether it serves as a space) -> (its generation, its vocabulary).
        self._index_vocabularies: LruCache[tuple[str, bool], tuple[Hashable, Vocabulary]] = LruCache(
            MAX_CACHED_INDEX_VOCABULARIES
        )
        self._max_words = max_words_per_request
        # (template, normalized word) -> unit vector; holds checked words only.
        self._cache: LruCache[tuple[str, str], np.ndarray] = LruCache(WORD_CACHE_ENTRIES)
        self._cache_lock = threading.Lock()

    # Inputs

    def _check_words(
        self,
        words: Sequence[str],
        field_name: str,
        allow_empty_list: bool = False,
        names: Sequence[str] | None = None,
        max_words: int | None = None,
        embedded: bool = True,
    ) -> list[str]:
        """Normalized words, or InvalidArgument naming the first bad one (names: per-word field names).

        Words to be embedded must have a token the model knows; words looked up in a space need not.
        """
        names = names or field_names(field_name, len(words))
        limit = max_words or self._max_words
        if not words and not allow_empty_list:
            raise InvalidArgument(f"{field_name} is empty: give at least one word", field_name)
        if len(words) > limit:
            raise InvalidArgument(
                f"{field_name} has {len(words)} words, more than the limit of {limit}", field_name
            )
        normalized = []
        for position, word in enumerate(words):
            where = names[position]
            if len(word) > MAX_WORD_CHARACTERS:
                raise InvalidArgument(
                    f"{where} has {len(word)} characters, more than the limit of {MAX_WORD_CHARACTERS}", where
                )
            form = normalize_word(word)
            if not form:
                raise InvalidArgument(f"{where} is empty or only whitespace: give a word or phrase", where)
            normalized.append(form)
        if not embedded:
            return normalized
        with self._cache_lock:
            # A cached word was checked when it was first embedded.
            unchecked = [
                position
                for position, form in enumerate(normalized)
                if (WORD_TEMPLATE, form) not in self._cache and (TEXT_TEMPLATE, form) not in self._cache
            ]
        if unchecked:
            tokenized_words = self._encoder.tokenize(
                [normalized[p] for p in unchecked], add_special_tokens=False
            )
            for position, tokenized in zip(unchecked, tokenized_words, strict=True):
                if not any(token.text not in _UNKNOWN_TOKENS for token in tokenized.tokens):
                    where = names[position]
                    raise InvalidArgument(
                        f"{where} ({words[position]!r}) has no token the model knows: it would embed as "
                        "noise; use letters or digits",
                        where,
                    )
        return normalized

    def _vocabulary(self, vocabulary_index: str, space: str, timeout: float | None) -> Vocabulary:
        if vocabulary_index and space:
            raise InvalidArgument(
                f"give either {VOCABULARY_INDEX_FIELD} (an index of the model's embeddings, its texts the "
                f"candidate words) or {SPACE_FIELD} (an index of word vectors, the whole space), not both",
                SPACE_FIELD,
            )
        if space:
            return self._index_backed(space, as_space=True)
        if vocabulary_index:
            return self._index_backed(vocabulary_index, as_space=False)
        return self._default_vocabulary(timeout)

    def _index_backed(self, name: str, as_space: bool) -> Vocabulary:
        """The vocabulary (or, as_space, the word-vector space) of an index, cached until it changes."""
        field_name = SPACE_FIELD if as_space else VOCABULARY_INDEX_FIELD
        check_name(name, field_name)
        if self._index_vocabulary is None:
            raise NotFound(f"index {name!r} not found: this server has no index store")
        # Read before the contents: a write in between makes the entry stale, never wrongly fresh.
        generation = self._index_generation(name) if self._index_generation else None
        with self._cache_lock:
            cached = self._index_vocabularies.get((name, as_space))
            if cached is not None and generation is not None and cached[0] == generation:
                return cached[1]
        texts, vectors = self._index_vocabulary(name)
        if not texts:
            raise InvalidArgument(
                f"index {name!r} has no document with text, so no words to serve as a "
                f"{'space' if as_space else 'vocabulary'}: a vocabulary's words are its documents' texts, "
                "and documents stored as vectors alone cannot be looked up by word",
                field_name,
            )
        if as_space:
            # The vectors as they are: like gensim's, whose analogies the space is compared with.
            vocabulary = Vocabulary.from_vectors(
                texts, vectors, template=TEXT_TEMPLATE, center=False, space=name
            )
        else:
            vocabulary = Vocabulary.from_vectors(texts, vectors, template=TEXT_TEMPLATE)
        if generation is not None:
            with self._cache_lock:
                self._index_vocabularies.put((name, as_space), (generation, vocabulary))
        return vocabulary

    def _scoring_in(self, vocabulary: Vocabulary) -> AnalogyScoring:
        return TEXTBOOK_SCORING if vocabulary.space else self._scoring

    def _embed(self, normalized_words: Sequence[str], template: str = WORD_TEMPLATE) -> np.ndarray:
        """Encoder vectors of checked, normalized words written with template (each embedded once)."""
        found: dict[str, np.ndarray] = {}
        with self._cache_lock:
            for word in normalized_words:
                vector = self._cache.get((template, word))
                if vector is not None:
                    found[word] = vector
        missing = [word for word in dict.fromkeys(normalized_words) if word not in found]
        if missing:
            vectors = self._encoder.encode([template.format(word) for word in missing], normalize=True)
            with self._cache_lock:
                for word, vector in zip(missing, vectors, strict=True):
                    found[word] = vector
                    self._cache.put((template, word), vector)
        return np.stack([found[word] for word in normalized_words])

    def _query_vectors(
        self, vocabulary: Vocabulary, normalized_words: Sequence[str], names: Sequence[str], index: str
    ) -> np.ndarray:
        """Query words in the vocabulary's space (unit rows): looked up in a word-vector space (NOT_FOUND
        naming the first missing word), else embedded as the vocabulary was and projected into it."""
        if vocabulary.space:
            rows = []
            for word, where in zip(normalized_words, names, strict=True):
                row = vocabulary.first_row(word)
                if row is None:
                    raise NotFound(f"{where} {word!r} is not a word of space {vocabulary.space!r}")
                rows.append(row)
            return vocabulary.vectors[rows]
        vectors = self._embed(normalized_words, vocabulary.template)
        if vectors.shape[1] != vocabulary.vectors.shape[1]:
            raise FailedPrecondition(
                f"index {index!r} holds {vocabulary.vectors.shape[1]}-dimensional vectors, not the model's "
                f"{vectors.shape[1]}: only an index of the model's own embeddings can serve as a vocabulary "
                f"(give an index of other word vectors as {SPACE_FIELD})"
            )
        return vocabulary.project(vectors)

    # Operations

    def solve_analogy(
        self,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        method: AnalogyMethod = DEFAULT_METHOD,
        k: int = 0,
        vocabulary_index: str = "",
        timeout: float | None = None,
        space: str = "",
    ) -> list[ScoredWord]:
        """Vocabulary words near the positives and far from the negatives, best first.

        For a:b :: c:?, positive=[b, c] and negative=[a]. The query words are never answers.
        """
        k = check_k(k)
        positive_words = self._check_words(positive, "positive", embedded=not space)
        negative_words = self._check_words(negative, "negative", allow_empty_list=True, embedded=not space)
        vocabulary = self._vocabulary(vocabulary_index, space, timeout)
        names = [*field_names("positive", len(positive)), *field_names("negative", len(negative))]
        query_words = [*positive_words, *negative_words]
        vectors = self._query_vectors(vocabulary, query_words, names, vocabulary_index)
        scores = score_analogy(
            vocabulary,
            vectors[: len(positive_words)],
            vectors[len(positive_words) :],
            method,
            self._scoring_in(vocabulary),
        )
        return [
            ScoredWord(vocabulary.words[row], reported_score(score, method), score)
            for row, score in top_k(scores, k, vocabulary.rows_of(query_words))
        ]

    def find_similar_words(
        self,
        queries: Sequence[str],
        k: int = 0,
        vocabulary_index: str = "",
        timeout: float | None = None,
        space: str = "",
    ) -> list[list[ScoredWord]]:
        """For each word or phrase, the k nearest vocabulary words by cosine, leaving out the query."""
        k = check_k(k)
        normalized = self._check_words(queries, "queries", embedded=not space)
        vocabulary = self._vocabulary(vocabulary_index, space, timeout)
        vectors = self._query_vectors(
            vocabulary, normalized, field_names("queries", len(queries)), vocabulary_index
        )
        similarities = vectors @ vocabulary.vectors.T
        return [
            [
                ScoredWord(vocabulary.words[row], score, score)
                for row, score in top_k(row_scores, k, vocabulary.rows_of([query]))
            ]
            for query, row_scores in zip(normalized, similarities, strict=True)
        ]

    def compare_relations(
        self,
        reference: tuple[str, str],
        candidates: Sequence[tuple[str, str]],
        method: AnalogyMethod = DEFAULT_METHOD,
        vocabulary_index: str = "",
        timeout: float | None = None,
        space: str = "",
    ) -> RelationReport:
        """How alike each candidate relation (c -> d) is to the reference (a -> b), and how significant.

        Offsets and cosines are taken in the vocabulary's space (where SolveAnalogy ranks). Per
        candidate: the percentile of its offset similarity among random vocabulary pairs' (see
        Vocabulary.null_offsets), and the rank of d among the answers to a : b :: c : ?.
        """
        if not candidates:
            raise InvalidArgument("candidates is empty: give at least one pair to compare", "candidates")
        if len(candidates) > self._max_words:
            raise InvalidArgument(
                f"candidates has {len(candidates)} pairs, more than the limit of {self._max_words}",
                "candidates",
            )
        reference_names = ["reference.first", "reference.second"]
        reference_words = self._check_words(reference, "reference", names=reference_names, embedded=not space)
        names = [f"candidates[{i}].{part}" for i in range(len(candidates)) for part in ("first", "second")]
        candidate_words = self._check_words(
            [word for pair in candidates for word in pair],
            "candidates",
            names=names,
            max_words=2 * self._max_words,
            embedded=not space,
        )
        vocabulary = self._vocabulary(vocabulary_index, space, timeout)
        vectors = self._query_vectors(
            vocabulary, [*reference_words, *candidate_words], [*reference_names, *names], vocabulary_index
        )
        first, second = vectors[0], vectors[1]
        firsts, seconds = vectors[2::2], vectors[3::2]
        reference_offset = second.astype(np.float64) - first
        offset_similarities = [cosine(d - c, reference_offset) for c, d in zip(firsts, seconds, strict=True)]
        percentiles = offset_percentiles(vocabulary.null_offsets, reference_offset, offset_similarities)
        ranks = self._answer_ranks(vocabulary, reference_words, candidate_words, vectors, method)
        return RelationReport(
            reference_pair_similarity=cosine(first, second),
            comparisons=[
                RelationComparison(
                    first=pair[0],
                    second=pair[1],
                    offset_similarity=offset_similarities[i],
                    pair_similarity=cosine(firsts[i], seconds[i]),
                    offset_percentile=percentiles[i],
                    answer_rank=ranks[i][0],
                    answer_in_vocabulary=ranks[i][1],
                )
                for i, pair in enumerate(candidates)
            ],
            null_pair_count=len(vocabulary.null_offsets),
            vocabulary_word_count=len(vocabulary),
        )

    def _answer_ranks(
        self,
        vocabulary: Vocabulary,
        reference_words: Sequence[str],
        candidate_words: Sequence[str],
        vectors: np.ndarray,
        method: AnalogyMethod,
    ) -> list[tuple[int, bool]]:
        """Per candidate (c, d): d's rank among the answers to a : b :: c : ? (as SolveAnalogy ranks
        them), and whether d is a vocabulary word."""
        scoring = self._scoring_in(vocabulary)
        first, second = reference_words
        # Cosines of a, b and every c to all words at once; then each question is scored alone.
        similarities = vectors @ vocabulary.vectors.T
        outside_log_rank = None if vocabulary.log_ranks is None else np.log([len(vocabulary) + 1.0])
        ranks = []
        for i in range(len(candidate_words) // 2):
            third, answer = candidate_words[2 * i], candidate_words[2 * i + 1]
            positive, negative = [1, 2 + 2 * i], [0]
            excluded = vocabulary.rows_of([first, second, third])
            answer_rows = vocabulary.rows_of([answer])
            if answer in (first, second, third):
                ranks.append((0, bool(answer_rows)))
                continue
            scores = score_similarities(
                vocabulary,
                similarities[positive],
                similarities[negative],
                vectors[positive],
                vectors[negative],
                method,
                scoring,
            )
            if answer_rows:
                ranks.append((answer_rank(scores, excluded, answer_rows), True))
                continue
            # Not a vocabulary word: scored from its own vector, as if it were the last word.
            answer_vector = vectors[3 + 2 * i]
            answer_similarities = vectors[[*positive, *negative]] @ answer_vector
            [outside] = score_columns(
                outside_log_rank,
                answer_similarities[:2, None],
                answer_similarities[2:, None],
                vectors[positive],
                vectors[negative],
                method,
                scoring,
            )
            ranks.append((outside_rank(scores, excluded, float(outside)), False))
        return ranks

    def find_related_pairs(
        self,
        reference: tuple[str, str],
        k: int = 0,
        first_words: Sequence[str] = (),
        first_word_count: int = 0,
        neighbour_count: int = 0,
        vocabulary_index: str = "",
        timeout: float | None = None,
        space: str = "",
    ) -> RelatedPairsReport:
        """The k pairs (c, d) whose offset d - c is most like b - a, for reference (a, b).

        Bounded: c is one of first_words, or else of the vocabulary's first first_word_count words
        (default 1000; the most frequent ones in a frequency-ordered vocabulary), and d one of c's
        neighbour_count nearest vocabulary words (default 50). Pairs with a or b in them are left out.
        """
        k = check_k(k)
        first_word_count = _check_count(
            first_word_count, DEFAULT_FIRST_WORD_COUNT, MAX_FIRST_WORD_COUNT, "first_word_count"
        )
        neighbour_count = _check_count(
            neighbour_count, DEFAULT_NEIGHBOUR_COUNT, MAX_NEIGHBOUR_COUNT, "neighbour_count"
        )
        if first_words and first_word_count != DEFAULT_FIRST_WORD_COUNT:
            raise InvalidArgument("give either first_words or first_word_count, not both", "first_word_count")
        reference_names = ["reference.first", "reference.second"]
        reference_words = self._check_words(reference, "reference", names=reference_names, embedded=not space)
        chosen = self._check_words(first_words, "first_words", allow_empty_list=True, embedded=not space)
        vocabulary = self._vocabulary(vocabulary_index, space, timeout)
        reference_vectors = self._query_vectors(
            vocabulary, reference_words, reference_names, vocabulary_index
        )
        reference_rows = vocabulary.rows_of(reference_words)
        if chosen:
            chosen = [word for word in dict.fromkeys(chosen) if word not in reference_words]
            first_vectors = (
                self._query_vectors(
                    vocabulary, chosen, field_names("first_words", len(chosen)), vocabulary_index
                )
                if chosen
                else np.zeros((0, vocabulary.vectors.shape[1]), np.float32)
            )
            first_labels = chosen
        else:
            excluded = set(reference_rows)
            rows = [row for row in range(min(first_word_count, len(vocabulary))) if row not in excluded]
            first_vectors = vocabulary.vectors[rows]
            first_labels = [vocabulary.words[row] for row in rows]
        excluded_seconds = [
            sorted({*reference_rows, *vocabulary.rows_of([normalize_word(word)])}) for word in first_labels
        ]
        matches, compared = related_pairs(
            vocabulary.vectors,
            first_vectors,
            excluded_seconds,
            reference_vectors[1].astype(np.float64) - reference_vectors[0],
            neighbour_count,
            k,
        )
        return RelatedPairsReport(
            pairs=[
                RelatedPair(
                    first_labels[match.first_position],
                    vocabulary.words[match.second_row],
                    match.offset_similarity,
                    match.pair_similarity,
                )
                for match in matches
            ],
            compared_pair_count=compared,
        )

    def describe_vocabulary(
        self,
        words: Sequence[str],
        vocabulary_index: str = "",
        timeout: float | None = None,
        space: str = "",
        include_vectors: bool = False,
    ) -> VocabularyDescription:
        """The vocabulary's size, for each word whether it holds it (compared normalized), and how it
        writes query words for the encoder; with include_vectors, each word's vector in its space."""
        limit = self._max_words if include_vectors else MAX_LOOKUP_WORDS
        if len(words) > limit:
            raise InvalidArgument(
                f"words has {len(words)} entries, more than the limit of {limit}"
                + (" when vectors are included" if include_vectors else ""),
                "words",
            )
        normalized = (
            self._check_words(words, "words", allow_empty_list=True, embedded=not space)
            if include_vectors
            else []
        )
        vocabulary = self._vocabulary(vocabulary_index, space, timeout)
        vectors = None
        if include_vectors:
            vectors = (
                self._query_vectors(
                    vocabulary, normalized, field_names("words", len(words)), vocabulary_index
                )
                if normalized
                else np.zeros((0, vocabulary.vectors.shape[1]), np.float32)
            )
        return VocabularyDescription(
            word_count=len(vocabulary),
            contains=[vocabulary.contains(word) for word in words],
            word_template=vocabulary.template,
            vectors=vectors,
        )


def field_names(field_name: str, count: int) -> list[str]:
    """The names of a repeated field's entries, as errors cite them: positive[0], positive[1], ..."""
    return [f"{field_name}[{position}]" for position in range(count)]


def _check_count(value: int, default: int, limit: int, field_name: str) -> int:
    if value == 0:
        return default
    if not 1 <= value <= limit:
        raise InvalidArgument(
            f"{field_name} must be between 1 and {limit} (0 for {default}), got {value}", field_name
        )
    return value
