"""The analogy engine's arithmetic on hand-built vectors, its input checks, and the persisted vocabulary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from service.analogy.engine import AnalogyEngine, check_k
from service.analogy.forms import begin_alike, shares_stem
from service.analogy.scoring import (
    COSMUL_EPSILON,
    DEFAULT_SCORING,
    TEXTBOOK_SCORING,
    AnalogyMethod,
    AnalogyScoring,
    combine_scores,
    direction_agreement,
    top_k,
)
from service.analogy.space import TEXT_TEMPLATE, WORD_TEMPLATE, Vocabulary, normalize_word
from service.analogy.vocabulary import VOCABULARY_DIRECTORY, DefaultVocabulary, english_words, model_key
from service.embedding.encoder import Encoder, Token, TokenizedText
from service.errors import FailedPrecondition, InvalidArgument, NotFound
from service.index.model import Document, check_name
from service.index.store import IndexStore

# Axes: person, royal, female, fruit.
HAND_BUILT = {
    "man": (1.0, 0.0, 0.0, 0.0),
    "woman": (1.0, 0.0, 1.0, 0.0),
    "king": (1.0, 1.0, 0.0, 0.0),
    "queen": (1.0, 1.0, 1.0, 0.0),
    "monarch": (1.0, 1.0, 1.0, 0.0),  # same vector as queen: a tie, broken by vocabulary order
    "prince": (1.0, 1.0, 0.0, 0.3),
    "apple": (0.0, 0.0, 0.0, 1.0),
}


class HandBuiltEncoder:
    """Maps each known word (as the engine writes it) to its hand-built vector."""

    def __init__(self, vectors: dict[str, tuple[float, ...]] = HAND_BUILT) -> None:
        self.encoded: list[str] = []
        self._vectors = vectors

    def encode(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        self.encoded += texts
        vectors = np.array([self._vectors[text.strip('"')] for text in texts], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if normalize else vectors

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[TokenizedText]:
        return [
            TokenizedText([Token(text, 1, 0, len(text), False)] if text.strip() else [], False)
            for text in texts
        ]


def unit(vector: Sequence[float]) -> np.ndarray:
    array = np.array(vector, dtype=np.float64)
    return array / np.linalg.norm(array)


@pytest.fixture
def hand_engine() -> AnalogyEngine:
    """Textbook (gensim) scores, so that they can be checked against the published formulas."""
    vocabulary = Vocabulary.from_vectors(list(HAND_BUILT), np.array(list(HAND_BUILT.values())))
    return AnalogyEngine(HandBuiltEncoder(), lambda _timeout: vocabulary, scoring=TEXTBOOK_SCORING)


def test_combine_scores_matches_the_formulas() -> None:
    positive = np.array([[0.5, 0.0], [1.0, -0.5]])
    negative = np.array([[0.2, 0.6]])
    added = combine_scores(positive, negative, AnalogyMethod.COSADD)
    assert added == pytest.approx([1.3, -1.1])
    assert combine_scores(positive, negative, AnalogyMethod.COSADD, offset_norm=2.0) == pytest.approx(
        [0.65, -0.55]
    )
    multiplied = combine_scores(positive, negative, AnalogyMethod.COSMUL)
    assert multiplied == pytest.approx([(0.75 * 1.0) / (0.6 + 1e-6), (0.5 * 0.25) / (0.8 + 1e-6)])
    # A negative weight scales the negative cosines (COSADD) or is their exponent (COSMUL).
    assert combine_scores(positive, negative, AnalogyMethod.COSADD, negative_weight=0.5) == pytest.approx(
        [1.4, -0.8]
    )
    assert combine_scores(positive, negative, AnalogyMethod.COSMUL, negative_weight=0.5) == pytest.approx(
        [0.75 / (0.6**0.5 + 1e-6), 0.125 / (0.8**0.5 + 1e-6)]
    )


def _cosine(left: np.ndarray, right: np.ndarray) -> float:
    return float(left @ right / (np.linalg.norm(left) * np.linalg.norm(right)))


def test_direction_agreement_is_the_mean_offset_cosine() -> None:
    rng = np.random.default_rng(3)
    candidates = rng.normal(size=(5, 4))
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    a, b, c = (unit(rng.normal(size=4)) for _ in range(3))
    positives, negatives = np.stack([b, c]), np.stack([a])
    agreement = direction_agreement(positives @ candidates.T, negatives @ candidates.T, positives, negatives)
    # For a:b :: c:d, the mean of cos(d - b, c - a) and cos(d - c, b - a).
    expected = [(_cosine(d - b, c - a) + _cosine(d - c, b - a)) / 2 for d in candidates]
    assert agreement == pytest.approx(expected, abs=1e-5)
    # A single positive without negatives has no direction to agree with.
    assert not direction_agreement(
        positives[:1] @ candidates.T, np.zeros((0, 5)), b[None], np.zeros((0, 4))
    ).any()


@pytest.mark.parametrize("method", list(AnalogyMethod))
def test_default_scoring_adds_direction_and_frequency_to_the_weighted_score(method: AnalogyMethod) -> None:
    words = list(HAND_BUILT)
    vectors = np.array(list(HAND_BUILT.values()))
    vocabulary = Vocabulary.from_vectors(words, vectors, frequency_ordered=True)
    engine = AnalogyEngine(HandBuiltEncoder(), lambda _timeout: vocabulary)  # default scoring
    answers = engine.solve_analogy(["king", "woman"], ["man"], method, k=4)
    king, woman, man = (unit(HAND_BUILT[w]) for w in ("king", "woman", "man"))
    weight = DEFAULT_SCORING.negative_weight
    for answer in answers:
        d = unit(HAND_BUILT[answer.word])
        direction = (_cosine(d - king, woman - man) + _cosine(d - woman, king - man)) / 2
        adjustment = (
            DEFAULT_SCORING.direction_weight * direction
            - DEFAULT_SCORING.frequency_penalty * math.log(1 + words.index(answer.word))
        )
        if method is AnalogyMethod.COSADD:
            base = float(d @ (king + woman - weight * man)) / float(
                np.linalg.norm(king + woman - weight * man)
            )
            expected = base + adjustment
        else:
            base = (
                ((1 + d @ king) / 2)
                * ((1 + d @ woman) / 2)
                / (((1 + d @ man) / 2) ** weight + COSMUL_EPSILON)
            )
            expected = base * math.exp(adjustment)
        assert answer.score == pytest.approx(expected, rel=1e-5)
    # queen and monarch have one vector: the frequency penalty now ranks the earlier (more frequent) first.
    assert [a.word for a in answers[:2]] == ["queen", "monarch"] and answers[0].score > answers[1].score


def test_the_frequency_penalty_applies_only_to_frequency_ordered_vocabularies() -> None:
    words, vectors = ["queen", "monarch"], np.array([HAND_BUILT["queen"], HAND_BUILT["queen"]])
    scoring = AnalogyScoring(frequency_penalty=1.0)
    for ordered, equal in ((False, True), (True, False)):
        vocabulary = Vocabulary.from_vectors(words, vectors, frequency_ordered=ordered)
        engine = AnalogyEngine(HandBuiltEncoder(), lambda _timeout, v=vocabulary: v, scoring=scoring)
        first, second = engine.solve_analogy(["king", "woman"], ["man"], k=2)
        assert (first.score == second.score) is equal
        if not equal:
            assert second.score == pytest.approx(first.score * math.exp(-math.log(2)), rel=1e-6)


def test_cosadd_answers_with_the_cosine_to_the_offset_vector(hand_engine: AnalogyEngine) -> None:
    answers = hand_engine.solve_analogy(["king", "woman"], ["man"], AnalogyMethod.COSADD, k=3)
    assert [a.word for a in answers] == ["queen", "monarch", "prince"]
    # gensim most_similar: cosine to unit(king) + unit(woman) - unit(man).
    offset = unit(unit(HAND_BUILT["king"]) + unit(HAND_BUILT["woman"]) - unit(HAND_BUILT["man"]))
    assert answers[0].score == pytest.approx(float(unit(HAND_BUILT["queen"]) @ offset), abs=1e-6)
    assert answers[1].score == answers[0].score  # the tie is ordered by vocabulary position
    assert answers[2].score == pytest.approx(float(unit(HAND_BUILT["prince"]) @ offset), abs=1e-6)


def test_cosmul_answers_with_levy_goldberg_scores(hand_engine: AnalogyEngine) -> None:
    answers = hand_engine.solve_analogy(["king", "woman"], ["man"], AnalogyMethod.COSMUL, k=2)
    assert [a.word for a in answers] == ["queen", "monarch"]
    to_king = to_woman = 2 / math.sqrt(6)  # cos(queen, king) = cos(queen, woman)
    to_man = 1 / math.sqrt(3)
    expected = ((1 + to_king) / 2) * ((1 + to_woman) / 2) / ((1 + to_man) / 2 + COSMUL_EPSILON)
    assert answers[0].score == pytest.approx(expected, rel=1e-5)
    assert answers[1].score == answers[0].score  # the tie is ordered by vocabulary position


def test_query_words_are_never_answers_whatever_their_case_or_spacing(hand_engine: AnalogyEngine) -> None:
    for method in AnalogyMethod:
        answers = hand_engine.solve_analogy([" QUEEN ", "King"], ["Man"], method, k=10)
        words = [a.word for a in answers]
        assert not {"queen", "king", "man"} & set(words)
        assert len(words) == len(HAND_BUILT) - 3


def test_positive_and_negative_lists_in_general_form(hand_engine: AnalogyEngine) -> None:
    # Royal without being male, and no negatives at all: both methods accept any list lengths.
    for method in AnalogyMethod:
        assert hand_engine.solve_analogy(["prince", "woman"], [], method, k=1)[0].word == "queen"
        assert hand_engine.solve_analogy(["monarch"], ["woman"], method, k=1)[0].word == "king"
    # Moving away from the fruit axis and the person axis leaves fruit as the best remaining word.
    assert (
        hand_engine.solve_analogy(["prince"], ["man", "king"], AnalogyMethod.COSADD, k=1)[0].word == "apple"
    )


def test_query_words_are_embedded_once_and_then_reused() -> None:
    vocabulary = Vocabulary.from_vectors(list(HAND_BUILT), np.array(list(HAND_BUILT.values())))
    encoder = HandBuiltEncoder()
    engine = AnalogyEngine(encoder, lambda _timeout: vocabulary)
    first = engine.solve_analogy(["king", "woman"], ["man"], k=3)
    assert sorted(encoder.encoded) == ['"king"', '"man"', '"woman"']
    again = engine.solve_analogy(["King", "woman"], ["man", "apple"], k=3)
    assert sorted(encoder.encoded) == ['"apple"', '"king"', '"man"', '"woman"']
    assert [a.word for a in first] == [a.word for a in engine.solve_analogy(["king", "woman"], ["man"], k=3)]
    assert "apple" not in [a.word for a in again]


def test_top_k_orders_ties_by_row_and_skips_excluded_rows() -> None:
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    assert [row for row, _ in top_k(scores, 2)] == [1, 2]
    assert [row for row, _ in top_k(scores, 3, excluded_rows=[2])] == [1, 4, 3]
    assert top_k(scores, 10, excluded_rows=[0, 1, 2, 3, 4]) == []
    assert len(top_k(scores, 10)) == 5


def test_similar_words_leave_out_the_query(hand_engine: AnalogyEngine) -> None:
    [results] = hand_engine.find_similar_words(["Queen"], k=3)
    # woman and king tie at 2/sqrt(6); woman comes first in the vocabulary.
    assert [w.word for w in results] == ["monarch", "woman", "king"]
    assert [w.score for w in results] == pytest.approx([1.0, 2 / math.sqrt(6), 2 / math.sqrt(6)], abs=1e-6)


def test_relation_comparison_uses_offsets_and_pair_cosines(hand_engine: AnalogyEngine) -> None:
    report = hand_engine.compare_relations(("man", "woman"), [("king", "queen"), ("king", "prince")])
    assert report.reference_pair_similarity == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    same, other = report.comparisons
    # Both offsets point along "female" in direction, but the unit vectors differ in length contributions.
    expected_offset = unit(HAND_BUILT["queen"]) - unit(HAND_BUILT["king"])
    reference_offset = unit(HAND_BUILT["woman"]) - unit(HAND_BUILT["man"])
    assert same.offset_similarity == pytest.approx(
        float(unit(expected_offset) @ unit(reference_offset)), abs=1e-6
    )
    assert same.offset_similarity > 0.9 > other.offset_similarity
    assert same.pair_similarity == pytest.approx(2 / math.sqrt(6), abs=1e-6)


def test_normalize_word_folds_case_width_and_spacing() -> None:
    assert normalize_word("  Great\tHammerhead   SHARK ") == "great hammerhead shark"
    assert normalize_word("\uff4b\uff49\uff4e\uff47")  # full-width letters == "king"


@pytest.mark.parametrize("k", [-1, 1001, 10**6])
def test_k_out_of_range_is_refused(k: int) -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_k(k)
    assert raised.value.field == "k"


def test_k_zero_means_ten() -> None:
    assert check_k(0) == 10 and check_k(1000) == 1000


@pytest.fixture
def real_engine(encoder: Encoder) -> AnalogyEngine:
    words = ["king", "queen", "man", "woman"]
    vocabulary = Vocabulary.from_vectors(words, encoder.encode([WORD_TEMPLATE.format(w) for w in words]))
    return AnalogyEngine(encoder, lambda _timeout: vocabulary)


@pytest.mark.parametrize(
    ("positive", "field"),
    [
        (["king", ""], "positive[1]"),
        (["   \t"], "positive[0]"),
        (["😀"], "positive[0]"),  # only the unknown token
        (["king", "\u200b\u200b"], "positive[1]"),  # nothing the tokenizer keeps
        ([], "positive"),
        (["x" * 1001], "positive[0]"),
    ],
)
def test_bad_words_are_refused_with_their_field(
    real_engine: AnalogyEngine, positive: list[str], field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        real_engine.solve_analogy(positive, ["man"])
    assert raised.value.field == field


def test_bad_relation_words_name_the_pair(real_engine: AnalogyEngine) -> None:
    with pytest.raises(InvalidArgument) as raised:
        real_engine.compare_relations(("man", "woman"), [("king", "queen"), ("king", " ")])
    assert raised.value.field == "candidates[1].second"
    with pytest.raises(InvalidArgument):
        real_engine.compare_relations(("man", "woman"), [])


def test_unknown_vocabulary_index_is_not_found(real_engine: AnalogyEngine) -> None:
    with pytest.raises(NotFound):
        real_engine.solve_analogy(["king"], [], vocabulary_index="missing")


# The persisted English vocabulary


def test_english_words_are_frequent_plain_lowercase_words() -> None:
    words = english_words(2000)
    assert len(words) == 2000 == len(set(words))
    assert words[:3] == ["the", "to", "and"]
    assert all(word.isascii() and word.isalpha() and word.islower() for word in words)


def test_vocabulary_directory_cannot_clash_with_an_index_name() -> None:
    with pytest.raises(InvalidArgument):
        check_name(VOCABULARY_DIRECTORY)


def _vocabulary(encoder: Encoder, data_dir: Path, size: int) -> DefaultVocabulary:
    info = encoder.info
    key = model_key(info.model_name, info.dimension, info.dtype, info.backend)
    return DefaultVocabulary(encoder, data_dir, key, size, info.dimension)


def test_vocabulary_is_embedded_once_and_loaded_after_a_restart(encoder: Encoder, tmp_path: Path) -> None:
    first = _vocabulary(encoder, tmp_path, 300)
    built = first(timeout=300)
    assert first.words_embedded == 300 and len(built) == 300
    assert first.path.parent == tmp_path / VOCABULARY_DIRECTORY and first.path.exists()
    assert not [p for p in first.path.parent.iterdir() if p.name.endswith(".tmp")]

    again = _vocabulary(encoder, tmp_path, 300)
    loaded = again(timeout=300)
    assert again.words_embedded == 0  # read from disk: not one word re-embedded
    assert loaded.words == built.words
    np.testing.assert_array_equal(loaded.vectors, built.vectors)

    # Another size is another file; a torn file is rebuilt, never trusted.
    first.path.write_bytes(first.path.read_bytes()[:1000])
    rebuilt = _vocabulary(encoder, tmp_path, 300)
    assert len(rebuilt(timeout=300)) == 300 and rebuilt.words_embedded == 300


def test_a_call_during_the_build_reports_progress_then_succeeds(encoder: Encoder, tmp_path: Path) -> None:
    vocabulary = _vocabulary(encoder, tmp_path, 1500)
    with pytest.raises(FailedPrecondition, match="still being built"):
        vocabulary(timeout=0)
    assert len(vocabulary(timeout=300)) == 1500


def test_an_index_vocabulary_is_built_once_until_the_index_changes(encoder: Encoder, tmp_path: Path) -> None:
    store = IndexStore(tmp_path)
    reads: list[str] = []

    def read_index(name: str) -> tuple[list[str], np.ndarray]:
        reads.append(name)
        return store.texts_and_vectors(name)

    def add(words: Sequence[str]) -> None:
        vectors = encoder.encode([TEXT_TEMPLATE.format(w) for w in words])
        store.upsert("fruit", [Document(id=w, text=w, vector=v) for w, v in zip(words, vectors, strict=True)])

    engine = AnalogyEngine(
        encoder,
        lambda _timeout: pytest.fail("the default vocabulary is not asked for"),
        index_vocabulary=read_index,
        index_generation=store.generation,
    )
    try:
        store.create_index("fruit", dimension=encoder.dimension)
        add(["banana", "apple", "car"])

        def nearest(word: str) -> str:
            return engine.find_similar_words([word], k=1, vocabulary_index="fruit")[0][0].word

        assert nearest("mango") in {"banana", "apple"}
        assert nearest("truck") == "car"
        assert reads == ["fruit"]  # the second call reused the vocabulary
        add(["mango"])
        assert nearest("mangoes") == "mango"  # a write is seen at once
        store.delete_documents("fruit", ["mango"])
        assert nearest("mangoes") != "mango"
        store.delete_index("fruit")
        store.create_index("fruit", dimension=encoder.dimension)
        add(["violin"])
        assert nearest("cello") == "violin"  # a re-created index is a new vocabulary
        assert reads == ["fruit"] * 4
    finally:
        store.close()


# Axes: spain, egypt, capital city, nationality, cairo's own meaning, badness, size, comparative.
# cairo is far less like egypt than egyptian is, as a city's vector is in a real model.
COUNTRIES_AND_FORMS = {
    "spain": (1, 0, 0, 0, 0, 0, 0, 0),
    "madrid": (1, 0, 1, 0, 0, 0, 0, 0),
    "egypt": (0, 1, 0, 0, 0, 0, 0, 0),
    "cairo": (0, 1, 0.5, 0, 1.3, 0, 0, 0),
    "egyptian": (0, 1, 0, 0.2, 0, 0, 0, 0),
    "albania": (0, 0, 0, 0, 1, 0, 0, 0),
    "albanian": (0, 0, 0, 0.2, 1, 0, 0, 0),
    "bad": (0, 0, 0, 0, 0, 1, 0, 0),
    "worse": (0, 0, 0, 0, 0, 1, 0, 1),
    "big": (0, 0, 0, 0, 0, 0, 1, 0),
    "bigger": (0, 0, 0, 0, 0, 0, 1, 1),
    "huge": (0, 0, 0, 0, 0, 0, 1, 0.1),
}


def test_spelling_variants_are_words_of_one_stem() -> None:
    assert (
        shares_stem("egypt", "egyptian") and shares_stem("italian", "italy") and shares_stem("big", "bigger")
    )
    assert not shares_stem("spain", "spanish") and not shares_stem("grandson", "granddaughter")
    assert not shares_stem("man", "woman") and not shares_stem("egypt", "egypt")
    assert begin_alike("sweden", "swedish") and not begin_alike("spain", "madrid")


@pytest.mark.parametrize("method", list(AnalogyMethod))
def test_a_variant_of_c_gives_way_to_the_word_that_completes_the_relation(method: AnalogyMethod) -> None:
    words = list(COUNTRIES_AND_FORMS)
    vocabulary = Vocabulary.from_vectors(words, np.array(list(COUNTRIES_AND_FORMS.values()), dtype=float))
    encoder = HandBuiltEncoder(COUNTRIES_AND_FORMS)

    def top_answer(scoring: AnalogyScoring, a: str, b: str, c: str) -> str:
        engine = AnalogyEngine(encoder, lambda _timeout: vocabulary, scoring=scoring)
        return engine.solve_analogy([b, c], [a], method, k=1)[0].word

    with_variants_left_out = AnalogyScoring(variant_alignment=0.3)
    # The textbook scores answer with the word tied to egypt; egyptian - egypt is not madrid - spain.
    assert top_answer(TEXTBOOK_SCORING, "spain", "madrid", "egypt") == "egyptian"
    assert top_answer(with_variants_left_out, "spain", "madrid", "egypt") == "cairo"
    # A relation of form (its words begin alike) keeps the variant as an answer,
    assert top_answer(with_variants_left_out, "albania", "albanian", "egypt") == "egyptian"
    # and so does a variant whose offset parallels the relation's: bigger - big is like worse - bad.
    assert top_answer(with_variants_left_out, "bad", "worse", "big") == "bigger"
    # CompareRelations ranks a left-out variant where it scores, behind no other left-out word.
    engine = AnalogyEngine(encoder, lambda _timeout: vocabulary, scoring=with_variants_left_out)
    cairo, egyptian = engine.compare_relations(
        ("spain", "madrid"), [("egypt", "cairo"), ("egypt", "egyptian")], method
    ).comparisons
    assert cairo.answer_rank == 1 and egyptian.answer_rank == 1
