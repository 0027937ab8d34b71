"""Word analogies, relation similarity and nearest words over a vocabulary of embedded words.

Meaning as geometry: a:b :: c:? is answered by the vocabulary words whose vectors lie near b and c
and far from a. Plain Python and numpy, no transport code; errors are domain errors.

The vocabulary's space (words, vectors, normalization) is service.analogy.space; the scoring
formulas are pure functions in service.analogy.scoring.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from service.analogy.relations import cosine, nearest_rows, offset_percentiles, related_pairs
from service.analogy.results import (
    RelatedPair,
    RelatedPairsReport,
    RelationComparison,
    RelationReport,
    ScoredWord,
    VocabularyDescription,
)
from service.analogy.scoring import (
    DEFAULT_METHOD,
    DEFAULT_SCORING,
    TEXTBOOK_SCORING,
    AnalogyMethod,
    AnalogyScoring,
    answer_rank,
    outside_rank,
    reported_score,
    score_columns,
    score_similarities,
    top_k,
    variant_rows,
)
from service.analogy.space import TEXT_TEMPLATE, WORD_TEMPLATE, Vocabulary, normalize_word
from service.common.limits import check_k
from service.common.lru import LruCache
from service.embedding.protocol import TextEncoder
from service.errors import FailedPrecondition, InvalidArgument, NotFound
from service.index.model import check_name

MAX_WORDS_PER_REQUEST = 256
# Vocabularies built from users' indexes kept in memory (each holds a copy of its index's vectors).
MAX_CACHED_INDEX_VOCABULARIES = 4
MAX_WORD_CHARACTERS = 1000
# Unknown-token spellings of common tokenizers (WordPiece, SentencePiece, BPE).
_UNKNOWN_TOKENS = frozenset({"[UNK]", "<unk>", "<UNK>", "<|unk|>"})
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


# Texts and vectors of a named index, for using a user's index as the vocabulary; raises NotFound.
IndexVocabularySource = Callable[[str], tuple[list[str], np.ndarray]]
# Index name -> a value that changes whenever the index's contents may have (see IndexStore.generation).
IndexGeneration = Callable[[str], Hashable]
# The default vocabulary, waiting at most `timeout` seconds (None: no limit) while it is built.
DefaultVocabularySource = Callable[[float | None], "Vocabulary"]


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

        For a:b :: c:?, positive=[b, c] and negative=[a]. The query words are never answers, nor (with
        the scoring's variant_alignment) their spelling variants that do not complete the relation.
        """
        k = check_k(k)
        positive_words = self._check_words(positive, "positive", embedded=not space)
        negative_words = self._check_words(negative, "negative", allow_empty_list=True, embedded=not space)
        vocabulary = self._vocabulary(vocabulary_index, space, timeout)
        names = [*field_names("positive", len(positive)), *field_names("negative", len(negative))]
        query_words = [*positive_words, *negative_words]
        vectors = self._query_vectors(vocabulary, query_words, names, vocabulary_index)
        similarities = vectors @ vocabulary.vectors.T
        positive, negative = slice(0, len(positive_words)), slice(len(positive_words), None)
        scoring = self._scoring_in(vocabulary)
        scores = score_similarities(
            vocabulary,
            similarities[positive],
            similarities[negative],
            vectors[positive],
            vectors[negative],
            method,
            scoring,
        )
        excluded = vocabulary.rows_of(query_words) + variant_rows(
            vocabulary,
            positive_words,
            negative_words,
            similarities[positive],
            similarities[negative],
            vectors[positive],
            vectors[negative],
            scoring.variant_alignment,
        )
        return [
            ScoredWord(vocabulary.words[row], reported_score(score, method), score)
            for row, score in top_k(scores, k, excluded)
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
            answer_rows = vocabulary.rows_of([answer])
            if answer in (first, second, third):
                ranks.append((0, bool(answer_rows)))
                continue
            # The variants SolveAnalogy leaves out do not rank ahead of d; d itself is ranked as it scores.
            variants = variant_rows(
                vocabulary,
                [second, third],
                [first],
                similarities[positive],
                similarities[negative],
                vectors[positive],
                vectors[negative],
                scoring.variant_alignment,
            )
            excluded = vocabulary.rows_of([first, second, third]) + [
                row for row in variants if row not in answer_rows
            ]
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
        # Room for the reference's rows, which are left out of the neighbourhoods afterwards.
        width = neighbour_count + len(reference_rows)
        if first_words:
            chosen = [word for word in dict.fromkeys(chosen) if word not in reference_words]
            names = field_names("first_words", len(chosen))
            first_vectors = (
                self._query_vectors(vocabulary, chosen, names, vocabulary_index)
                if chosen
                else vocabulary.vectors[:0]
            )
            own_rows = [vocabulary.rows_of([word]) for word in chosen]
            neighbours = nearest_rows(vocabulary.vectors, first_vectors, own_rows, width)
        else:
            rows = [row for row in range(min(first_word_count, len(vocabulary))) if row not in reference_rows]
            chosen = [vocabulary.words[row] for row in rows]
            first_vectors = vocabulary.vectors[rows]
            neighbours = vocabulary.first_word_neighbours(first_word_count, width)[rows]
        reference_offset = reference_vectors[1].astype(np.float64) - reference_vectors[0]
        matches, compared = related_pairs(
            vocabulary.vectors,
            first_vectors,
            neighbours,
            reference_rows,
            neighbour_count,
            reference_offset,
            k,
        )
        return RelatedPairsReport(
            pairs=[
                RelatedPair(
                    chosen[match.first_position],
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
