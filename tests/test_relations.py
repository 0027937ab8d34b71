"""Relation significance (percentile among random pairs, rank of the answer), relation search and
word-vector spaces, in the engine on hand-built vectors with known answers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from service.analogy.engine import AnalogyEngine
from service.analogy.relations import NULL_PAIR_COUNT, null_pair_rows, offset_percentiles
from service.analogy.scoring import TEXTBOOK_SCORING, AnalogyMethod
from service.analogy.space import Vocabulary, normalize_word
from service.embedding.encoder import Token, TokenizedText
from service.errors import InvalidArgument, NotFound


class DictionaryEncoder:
    """Embeds each known word (as the engine writes it, quotes stripped) to its given vector."""

    def __init__(self, vectors: dict[str, Sequence[float]]) -> None:
        self.vectors = vectors

    def encode(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        vectors = np.array([self.vectors[text.strip('"')] for text in texts], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if normalize else vectors

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[TokenizedText]:
        return [TokenizedText([Token(text, 1, 0, len(text), False)], False) for text in texts]


class NoEncoder:
    """Fails the test when a space's words are embedded or tokenized: they must be looked up."""

    def encode(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        pytest.fail(f"embedded {texts!r}")

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[TokenizedText]:
        pytest.fail(f"tokenized {texts!r}")


def engine_over(
    words: dict[str, Sequence[float]], extra: dict[str, Sequence[float]] | None = None
) -> AnalogyEngine:
    """An engine whose built-in vocabulary is `words`; `extra` words can be embedded but are not in it."""
    vocabulary = Vocabulary.from_vectors(list(words), np.array(list(words.values())))
    encoder = DictionaryEncoder({**words, **(extra or {})})
    return AnalogyEngine(encoder, lambda _timeout: vocabulary, scoring=TEXTBOOK_SCORING)


# Percentiles


# Four words on a circle: the null distribution is every ordered pair of them (12).
CIRCLE = {"east": (1.0, 0.0), "north": (0.0, 1.0), "west": (-1.0, 0.0), "south": (0.0, -1.0)}


def test_small_vocabularies_use_every_ordered_pair_and_large_ones_a_fixed_sample() -> None:
    assert sorted(map(tuple, null_pair_rows(3))) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    sample = null_pair_rows(30_000)
    assert sample.shape == (NULL_PAIR_COUNT, 2)
    assert (sample[:, 0] != sample[:, 1]).all() and sample.min() >= 0 and sample.max() < 30_000
    assert np.array_equal(sample, null_pair_rows(30_000))  # the fixed seed


def test_percentile_counts_the_null_pairs_below_and_half_the_ties() -> None:
    null = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    # Similarities to the reference (1, 0): 1, 0, -1, 0.6.
    assert offset_percentiles(null, np.array([2.0, 0.0]), [0.8, 0.0, -2.0, 1.0]) == [75.0, 37.5, 0.0, 87.5]
    assert offset_percentiles(np.zeros((0, 2)), np.array([1.0, 0.0]), [0.5]) == [0.0]


def test_compare_relations_reports_the_percentile_among_the_vocabularys_pairs() -> None:
    # Off the circle, so only the candidates use them.
    engine = engine_over(CIRCLE, extra={"northwest": (-0.6, 0.8)})
    report = engine.compare_relations(
        ("east", "north"), [("west", "north"), ("east", "northwest"), ("west", "south"), ("south", "west")]
    )
    assert report.null_pair_count == 12 and report.vocabulary_word_count == 4
    # The 12 offsets' cosines to north - east: -1, -1, -0.71, -0.71, 0, 0, 0, 0, 0.71, 0.71, 1, 1.
    across, near, opposite, same = report.comparisons
    assert across.offset_similarity == pytest.approx(0.0, abs=1e-7)
    assert across.offset_percentile == pytest.approx(50.0)  # 4 below, 4 tied
    assert near.offset_similarity == pytest.approx(2.4 / (math.sqrt(2) * math.sqrt(3.2)), abs=1e-6)
    assert near.offset_percentile == pytest.approx(100 * 10 / 12)  # 0.95: above all but the two 1s
    assert opposite.offset_similarity == pytest.approx(-1.0) and opposite.offset_percentile == pytest.approx(
        100 * 1 / 12
    )
    assert same.offset_similarity == pytest.approx(1.0) and same.offset_percentile == pytest.approx(
        100 * 11 / 12
    )


# Axes: person, royal, female, fruit (as in test_analogy_engine.py).
ROYALS = {
    "man": (1.0, 0.0, 0.0, 0.0),
    "woman": (1.0, 0.0, 1.0, 0.0),
    "king": (1.0, 1.0, 0.0, 0.0),
    "queen": (1.0, 1.0, 1.0, 0.0),
    "monarch": (1.0, 1.0, 1.0, 0.0),  # ties with queen; vocabulary order puts queen first
    "prince": (1.0, 1.0, 0.0, 0.3),
    "apple": (0.0, 0.0, 0.0, 1.0),
}


def test_the_rank_is_the_answers_position_among_solve_analogys_answers() -> None:
    engine = engine_over(ROYALS, extra={"princess": (1.0, 1.0, 1.0, 0.3)})
    candidates = [("woman", "queen"), ("woman", "monarch"), ("woman", "prince"), ("woman", "apple")]
    for method in AnalogyMethod:
        answers = [a.word for a in engine.solve_analogy(["king", "woman"], ["man"], method, k=10)]
        report = engine.compare_relations(("man", "king"), candidates, method=method)
        ranks = {c.second: c.answer_rank for c in report.comparisons}
        assert ranks == {word: answers.index(word) + 1 for word in ranks}, method
        assert all(c.answer_in_vocabulary for c in report.comparisons)
    report = engine.compare_relations(("man", "king"), candidates, method=AnalogyMethod.COSADD)
    assert [c.answer_rank for c in report.comparisons] == [1, 2, 3, 4]


def test_an_answer_outside_the_vocabulary_ranks_as_if_it_were_its_last_word() -> None:
    engine = engine_over(ROYALS, extra={"princess": (1.0, 1.0, 1.0, 0.3), "pear": (0.0, 0.0, 0.0, 1.0)})
    report = engine.compare_relations(
        ("man", "king"), [("woman", "princess"), ("woman", "pear")], method=AnalogyMethod.COSADD
    )
    princess, pear = report.comparisons
    # Cosines to (king + woman - man): queen = monarch 1.056/|o|, princess 1.040/|o|, prince 0.775/|o|.
    assert (princess.answer_rank, princess.answer_in_vocabulary) == (3, False)
    # Pear has apple's vector: it ties with apple and ranks after it, last of five.
    assert (pear.answer_rank, pear.answer_in_vocabulary) == (5, False)


def test_an_answer_that_is_a_question_word_has_rank_zero() -> None:
    report = engine_over(ROYALS).compare_relations(("man", "king"), [("woman", "Man"), ("woman", "woman")])
    assert [c.answer_rank for c in report.comparisons] == [0, 0]


# Relation search


def reflected(vector: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The mirror image of a unit vector across the plane normal to direction: same length, and the
    offset (image - vector) = -2 (vector . direction) direction, exactly along direction."""
    return vector - 2 * (vector @ direction) * direction


def planted_space(words: int = 300, dimension: int = 16) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Random unit vectors, with pairs (from-i, to-i) whose offsets lie exactly along one direction."""
    generator = np.random.default_rng(7)
    direction = generator.normal(size=dimension)
    direction /= np.linalg.norm(direction)
    vectors = generator.normal(size=(words, dimension))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = [f"w{row}" for row in range(words)]
    # Planted at rows 0-7 (the reference pair and three more) and 200-201 (beyond the first 100 words).
    for pair, row in enumerate([0, 2, 4, 6, 200]):
        start = vectors[row] - (vectors[row] @ direction + 0.3) * direction  # start . direction = -0.3
        start /= np.linalg.norm(start)
        vectors[row], vectors[row + 1] = start, reflected(start, direction)
        names[row], names[row + 1] = f"from{pair}", f"to{pair}"
    return names, vectors, direction


def test_relation_search_finds_the_planted_pairs_within_its_bound() -> None:
    names, vectors, _ = planted_space()
    engine = engine_over(dict(zip(names, vectors.tolist(), strict=True)))
    report = engine.find_related_pairs(("from0", "to0"), k=3, first_word_count=100)
    assert {(p.first, p.second) for p in report.pairs} == {
        ("from1", "to1"),
        ("from2", "to2"),
        ("from3", "to3"),
    }
    assert [p.offset_similarity for p in report.pairs] == pytest.approx([1.0] * 3, abs=1e-6)
    # The 100 first words less the reference pair, each with 50 neighbours (never itself, a or b).
    assert report.compared_pair_count == 98 * 50
    # The pair planted at rows 200-201 lies beyond the first 100 words: found once they are searched.
    wider = engine.find_related_pairs(("from0", "to0"), k=4, first_word_count=300)
    assert ("from4", "to4") in {(p.first, p.second) for p in wider.pairs}
    assert not {"from0", "to0"} & {word for p in wider.pairs for word in (p.first, p.second)}


def test_relation_search_from_given_first_words() -> None:
    names, vectors, direction = planted_space()
    engine = engine_over(dict(zip(names, vectors.tolist(), strict=True)))
    report = engine.find_related_pairs(("From0", "to0"), k=2, first_words=["from4", "w10", "from4"])
    assert (report.pairs[0].first, report.pairs[0].second) == ("from4", "to4")
    # The cosine of a unit vector v and its mirror image is 1 - 2 (v . direction)^2.
    along = vectors[names.index("from4")] @ direction
    assert report.pairs[0].pair_similarity == pytest.approx(1 - 2 * along**2, abs=1e-6)
    # Repeated first words are searched once.
    assert report.pairs[1].first in {"from4", "w10"} and report.compared_pair_count == 2 * 50


def test_the_first_words_neighbourhoods_are_computed_once_per_vocabulary() -> None:
    names, vectors, _ = planted_space()
    vocabulary = Vocabulary.from_vectors(names, vectors)
    encoder = DictionaryEncoder(dict(zip(names, vectors.tolist(), strict=True)))
    engine = AnalogyEngine(encoder, lambda _timeout: vocabulary, scoring=TEXTBOOK_SCORING)
    first = engine.find_related_pairs(("from0", "to0"), k=5, first_word_count=100)
    cached = vocabulary.first_word_neighbours(100, 52)  # 50 neighbours and room for the two reference rows
    second = engine.find_related_pairs(("from1", "to1"), k=5, first_word_count=100)
    assert vocabulary.first_word_neighbours(100, 52) is cached  # both relations used the same
    # The same answers as a search from those first words given as a list (neighbourhoods computed anew).
    listed = engine.find_related_pairs(("from1", "to1"), k=5, first_words=names[:100])
    assert [(p.first, p.second) for p in second.pairs] == [(p.first, p.second) for p in listed.pairs]
    assert [p.offset_similarity for p in second.pairs] == pytest.approx(
        [p.offset_similarity for p in listed.pairs]
    )
    assert first.pairs != second.pairs
    empty = engine.find_related_pairs(("from0", "to0"), first_words=["to0", "FROM0"])
    assert (empty.pairs, empty.compared_pair_count) == ([], 0)


def test_relation_search_bounds_are_checked() -> None:
    engine = engine_over(ROYALS)
    for arguments, field in [
        ({"first_word_count": 10_001}, "first_word_count"),
        ({"neighbour_count": 1001}, "neighbour_count"),
        ({"k": 1001}, "k"),
        ({"first_words": ["king"], "first_word_count": 5}, "first_word_count"),
        ({"first_words": [" "]}, "first_words[0]"),
    ]:
        with pytest.raises(InvalidArgument) as raised:
            engine.find_related_pairs(("man", "king"), **arguments)  # type: ignore[arg-type]
        assert raised.value.field == field, arguments


# Word-vector spaces


def space_engine(spaces: dict[str, tuple[list[str], np.ndarray]]) -> AnalogyEngine:
    def read(name: str) -> tuple[list[str], np.ndarray]:
        if name not in spaces:
            raise NotFound(f"index {name!r} does not exist")
        return spaces[name]

    return AnalogyEngine(
        NoEncoder(),
        lambda _timeout: pytest.fail("the built-in vocabulary is not asked for"),
        index_vocabulary=read,
    )


def test_analogies_in_a_space_are_answered_from_its_own_vectors() -> None:
    # Vectors not of unit length and not of the model's dimension: the space takes them as they are.
    words = ["man", "Man", "woman", "king", "queen", "apple"]
    vectors = np.array(
        [[2, 0, 0, 0], [1, 0, 0, 9], [2, 0, 2, 0], [3, 3, 0, 0], [4, 4, 4, 0], [0, 0, 0, 5]], dtype=np.float32
    )
    engine = space_engine({"classic": (words, vectors)})
    for method in AnalogyMethod:
        answers = engine.solve_analogy(["king", "woman"], ["MAN"], method, k=2, space="classic")
        # Neither case variant of man is ever an answer.
        assert [a.word for a in answers] == ["queen", "apple"], method
    # A word stands for the first of its case variants (the most frequent in a word2vec file).
    [man] = engine.describe_vocabulary(["MAN"], space="classic", include_vectors=True).vectors  # type: ignore[misc]
    assert man == pytest.approx([1, 0, 0, 0])
    [similar] = engine.find_similar_words(["queen"], k=2, space="classic")
    assert {w.word for w in similar} == {"woman", "king"}
    assert [w.score for w in similar] == pytest.approx([2 / math.sqrt(6)] * 2, abs=1e-6)
    report = engine.compare_relations(("man", "king"), [("woman", "queen")], space="classic")
    assert report.comparisons[0].answer_rank == 1 and report.vocabulary_word_count == 6
    description = engine.describe_vocabulary(["queen", "Queen", "pear"], space="classic")
    assert description.word_count == 6 and description.contains == [True, True, False]
    vectors_of = engine.describe_vocabulary(["QUEEN"], space="classic", include_vectors=True).vectors
    assert vectors_of is not None and vectors_of[0] == pytest.approx(np.array([1, 1, 1, 0]) / math.sqrt(3))


def test_a_word_outside_the_space_is_not_found_naming_it() -> None:
    engine = space_engine({"classic": (["king", "queen"], np.eye(2, dtype=np.float32))})
    calls = [
        (
            lambda: engine.solve_analogy(["king", "dugong"], ["queen"], space="classic"),
            "positive[1] 'dugong'",
        ),
        (lambda: engine.find_similar_words(["manatee"], space="classic"), "queries[0] 'manatee'"),
        (
            lambda: engine.compare_relations(("king", "queen"), [("sea cow", "king")], space="classic"),
            "candidates[0].first 'sea cow'",
        ),
        (lambda: engine.find_related_pairs(("king", "ox"), space="classic"), "reference.second 'ox'"),
        (
            lambda: engine.describe_vocabulary(["yak"], space="classic", include_vectors=True),
            "words[0] 'yak'",
        ),
    ]
    for call, named in calls:
        with pytest.raises(NotFound) as raised:
            call()
        assert named in str(raised.value) and "'classic'" in str(raised.value)
    with pytest.raises(NotFound, match="'missing'"):
        engine.solve_analogy(["king"], space="missing")
    with pytest.raises(InvalidArgument) as both:
        engine.solve_analogy(["king"], vocabulary_index="other", space="classic")
    assert both.value.field == "space"


def test_a_space_answers_as_gensim_does() -> None:
    from gensim.models import KeyedVectors

    generator = np.random.default_rng(3)
    words = [f"word{i}" for i in range(500)]
    vectors = generator.normal(size=(500, 20)).astype(np.float32)
    engine = space_engine({"random": (words, vectors)})
    gensim_vectors = KeyedVectors(20)
    gensim_vectors.add_vectors(words, vectors)
    for a, b, c in [("word1", "word2", "word3"), ("word10", "word400", "word77")]:
        added = engine.solve_analogy([b, c], [a], AnalogyMethod.COSADD, k=5, space="random")
        expected = gensim_vectors.most_similar(positive=[b, c], negative=[a], topn=5)
        assert [(w.word, round(w.score, 5)) for w in added] == [(w, round(s, 5)) for w, s in expected]
        multiplied = engine.solve_analogy([b, c], [a], AnalogyMethod.COSMUL, k=5, space="random")
        expected = gensim_vectors.most_similar_cosmul(positive=[b, c], negative=[a], topn=5)
        assert [(w.word, round(w.score, 5)) for w in multiplied] == [(w, round(s, 5)) for w, s in expected]
    assert normalize_word("Word1") == "word1"
