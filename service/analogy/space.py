"""A vocabulary's space: its words, their unit vectors (centered when large enough), word normalization.

Words are compared case-insensitively: every query word and vocabulary entry is normalized by
`normalize_word` (Unicode NFKC, whitespace collapsed, lower case) before it is embedded or
matched. The default model is uncased, so this changes no vector; it makes "Athens" and "athens"
the same word, so that a query word is never returned as its own answer in another case.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from service.analogy.forms import MIN_STEM_LETTERS
from service.analogy.relations import nearest_rows, null_offsets
from service.common.lru import LruCache

# Below this many words a vocabulary's mean says more about its few words than about the model.
MIN_WORDS_TO_CENTER = 1000
# How a single word is put to the sentence encoder. In quotes, the model reads it as a word named
# rather than a fragment of a sentence: on questions-words.txt this scores 56.3% against 53.9%
# for the bare word (30,000 words, textbook 3CosMul); Spearman on WordSim353 0.765 against 0.729, on
# SimLex-999 0.482 against 0.446.
WORD_TEMPLATE = '"{}"'
# Document texts of an index are matched as they were embedded: bare.
TEXT_TEMPLATE = "{}"
# Neighbourhoods of FindRelatedPairs' first words kept per vocabulary (one per bound asked for).
MAX_CACHED_NEIGHBOURHOODS = 4


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
    # (first words, neighbours) -> first_word_neighbours, under _neighbourhoods_lock.
    _neighbourhoods: LruCache[tuple[int, int], np.ndarray] = field(
        default_factory=lambda: LruCache(MAX_CACHED_NEIGHBOURHOODS), repr=False
    )
    _neighbourhoods_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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

    def first_word_neighbours(self, first_word_count: int, neighbour_count: int) -> np.ndarray:
        """The neighbour_count nearest rows of each of the first first_word_count rows (nearest_rows,
        never a word's own rows): FindRelatedPairs' default bound, the same whatever the relation,
        so computed once per vocabulary and bound."""
        key = (first_word_count, neighbour_count)
        with self._neighbourhoods_lock:
            cached = self._neighbourhoods.get(key)
        if cached is None:
            own = [self.positions[normalize_word(word)] for word in self.words[:first_word_count]]
            cached = nearest_rows(self.vectors, self.vectors[: len(own)], own, neighbour_count)
            with self._neighbourhoods_lock:
                self._neighbourhoods.put(key, cached)
        return cached

    def rows_sharing_beginning(self, normalized_word: str) -> list[int]:
        """Rows of the words that begin with the same MIN_STEM_LETTERS letters as normalized_word (a
        shorter word: none), the only ones that can be its spelling variants (forms.shares_stem)."""
        return (
            self._rows_by_beginning.get(normalized_word[:MIN_STEM_LETTERS], [])
            if len(normalized_word) >= MIN_STEM_LETTERS
            else []
        )

    @cached_property
    def _rows_by_beginning(self) -> dict[str, list[int]]:
        rows: dict[str, list[int]] = {}
        for word, word_rows in self.positions.items():
            if len(word) >= MIN_STEM_LETTERS:
                rows.setdefault(word[:MIN_STEM_LETTERS], []).extend(word_rows)
        return rows

    @cached_property
    def null_offsets(self) -> np.ndarray:
        """Unit offsets of random pairs of this vocabulary's words (fixed seed, see
        service.analogy.relations): the baseline a relation's offset similarity is judged against.
        Computed on first use and kept as long as the vocabulary is."""
        return null_offsets(self.vectors)
