"""AnalogyService through the real server and client, with the real model and a small vocabulary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from vecserve.v1 import analogy_pb2

from clients import VecserveClient
from service.analogy.engine import AnalogyEngine
from service.analogy.evaluation import read_analogy_questions
from service.analogy.scoring import (
    DEFAULT_SCORING,
    TEXTBOOK_SCORING,
    AnalogyMethod,
    score_similarities,
    top_k,
    variant_rows,
)
from service.analogy.space import TEXT_TEMPLATE, WORD_TEMPLATE, Vocabulary
from service.analogy.vocabulary import VOCABULARY_DIRECTORY, load_vocabulary_file
from service.config import Settings
from service.embedding.encoder import Encoder
from service.grpc_server.server import RunningServer, create_server

# Enough of the most frequent English words for the classic analogies below.
VOCABULARY_SIZE = 5000


def analogy_settings(data_dir: Path) -> Settings:
    return Settings(listen="127.0.0.1:0", data_dir=data_dir, vocabulary_size=VOCABULARY_SIZE)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Shared by the analogy test modules, so the vocabulary is embedded once per test session.
    path = tmp_path_factory.getbasetemp() / "analogy-data"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def analogy_server(encoder: Encoder, data_dir: Path) -> Iterator[RunningServer]:
    running = create_server(analogy_settings(data_dir), encoder=encoder)
    yield running
    running.stop(grace=5)


@pytest.fixture
def analogies(analogy_server: RunningServer) -> Iterator[VecserveClient]:
    with VecserveClient(f"127.0.0.1:{analogy_server.port}", timeout=300) as connected:
        yield connected


# a:b :: c:d that the default setup answers right (top answer) with its most frequent 5,000 words.
CLASSIC_ANALOGIES = [
    ("man", "king", "woman", "queen"),
    ("japan", "japanese", "china", "chinese"),
    ("big", "bigger", "small", "smaller"),
    ("good", "better", "bad", "worse"),
    ("germany", "german", "france", "french"),
    ("slow", "slowly", "quick", "quickly"),
    # italian (a variant of italy that does not complete the relation) came first before it was left out.
    ("japan", "tokyo", "italy", "rome"),
]


@pytest.mark.parametrize(("a", "b", "c", "d"), CLASSIC_ANALOGIES)
def test_classic_analogies_are_answered(analogies: VecserveClient, a: str, b: str, c: str, d: str) -> None:
    answers = analogies.solve_analogy([b, c], [a], k=5)
    assert answers[0].word == d, [w.word for w in answers]
    assert not {a, b, c} & {w.word for w in answers}
    assert [w.score for w in answers] == sorted((w.score for w in answers), reverse=True)


def test_both_methods_and_the_method_echo(analogies: VecserveClient) -> None:
    for number in (analogy_pb2.ANALOGY_METHOD_COSADD, analogy_pb2.ANALOGY_METHOD_COSMUL):
        request = analogy_pb2.SolveAnalogyRequest(
            positive=["king", "Woman"], negative=["MAN"], method=number, k=3
        )
        response = analogies.analogies.SolveAnalogy(request, timeout=300)
        assert response.method == number
        assert "queen" in [w.word for w in response.answers]
    default = analogies.analogies.SolveAnalogy(
        analogy_pb2.SolveAnalogyRequest(positive=["ocean"]), timeout=300
    )
    assert default.method == analogy_pb2.ANALOGY_METHOD_COSMUL
    assert len(default.answers) == 10  # k = 0 means 10


def test_query_words_never_come_back_in_any_case(analogies: VecserveClient) -> None:
    answers = analogies.solve_analogy(["King", " QUEEN "], ["man"], k=50)
    assert not {"king", "queen", "man"} & {w.word for w in answers}


def test_relation_similarity_ranks_the_matching_relation_first(analogies: VecserveClient) -> None:
    response = analogies.compare_relations(
        ("man", "woman"), [("apple", "car"), ("king", "queen"), ("table", "river")]
    )
    by_pair = {(c.candidate.first, c.candidate.second): c for c in response.comparisons}
    matching = by_pair[("king", "queen")].offset_similarity
    assert matching > by_pair[("apple", "car")].offset_similarity
    assert matching > by_pair[("table", "river")].offset_similarity
    assert [c.candidate.first for c in response.comparisons] == ["apple", "king", "table"]  # request order
    assert 0 < response.reference_pair_similarity < 1


def test_a_true_relation_lies_above_the_95th_percentile_of_random_pairs(analogies: VecserveClient) -> None:
    response = analogies.compare_relations(
        ("man", "king"), [("woman", "queen"), ("table", "river"), ("boy", "prince"), ("dog", "puppy")]
    )
    assert response.null_pair_count == 5000 and response.vocabulary_word_count == VOCABULARY_SIZE
    queen, river, prince, puppy = response.comparisons
    assert queen.offset_percentile > 95
    assert queen.answer_rank == 1 and queen.answer_in_vocabulary  # the top answer to man:king :: woman:?
    assert river.offset_percentile < queen.offset_percentile
    assert river.answer_rank > queen.answer_rank
    # Not among the 5,000 words: ranked by its own vector as if it were the last word.
    assert not puppy.answer_in_vocabulary and puppy.answer_rank > 0
    # The same figures on every call: the random pairs are drawn once, with a fixed seed.
    again = analogies.compare_relations(("man", "king"), [("woman", "queen"), ("table", "river")])
    assert [c.offset_percentile for c in again.comparisons] == [
        queen.offset_percentile,
        river.offset_percentile,
    ]
    # The rank is the answer's position among SolveAnalogy's answers to man : king :: boy : ?.
    answers = [a.word for a in analogies.solve_analogy(["king", "boy"], ["man"], k=1000)]
    assert prince.answer_in_vocabulary and answers.index("prince") + 1 == prince.answer_rank


def test_related_pairs_of_a_grammatical_relation(analogies: VecserveClient) -> None:
    response = analogies.find_related_pairs(("big", "bigger"), k=10)
    pairs = [(p.pair.first, p.pair.second) for p in response.pairs]
    # Comparatives of other frequent adjectives come first.
    assert {("small", "smaller"), ("large", "larger"), ("long", "longer")} <= set(pairs)
    assert [p.offset_similarity for p in response.pairs] == sorted(
        (p.offset_similarity for p in response.pairs), reverse=True
    )
    assert not {"big", "bigger"} & {word for pair in pairs for word in pair}
    assert response.compared_pair_count <= 1000 * 50
    # Their figures are CompareRelations': the same offset and pair cosines.
    compared = analogies.compare_relations(("big", "bigger"), pairs[:3])
    for found, comparison in zip(response.pairs, compared.comparisons, strict=False):
        assert found.offset_similarity == pytest.approx(comparison.offset_similarity, abs=1e-5)
        assert found.pair_similarity == pytest.approx(comparison.pair_similarity, abs=1e-5)
        assert comparison.offset_percentile > 95


def test_similar_words(analogies: VecserveClient) -> None:
    [ocean, phrase] = analogies.find_similar_words(["Ocean", "a large sea animal"], k=5)
    assert "sea" in [w.word for w in ocean]
    assert "ocean" not in [w.word for w in ocean]
    assert len(phrase) == 5
    assert [w.score for w in ocean] == sorted((w.score for w in ocean), reverse=True)


def test_vocabulary_lookup(analogies: VecserveClient) -> None:
    response = analogies.get_vocabulary(["Queen", "the", "zyzzyvas"])
    assert response.word_count == VOCABULARY_SIZE
    assert response.word_template == WORD_TEMPLATE == '"{}"'
    assert list(response.contains) == [True, True, False]


def test_the_vocabulary_is_reused_after_a_restart(encoder: Encoder, tmp_path: Path) -> None:
    settings = analogy_settings(tmp_path).replace(vocabulary_size=500)
    answers = []
    for run in ("first", "restarted"):
        running = create_server(settings, encoder=encoder)
        try:
            with VecserveClient(f"127.0.0.1:{running.port}", timeout=300) as client:
                answers.append([w.word for w in client.solve_analogy(["king", "woman"], ["man"], k=5)])
            assert running.vocabulary is not None
            # Built (500 words embedded) on the first run; loaded from the data directory after.
            assert running.vocabulary.words_embedded == (500 if run == "first" else 0)
        finally:
            running.stop(grace=5)
    assert answers[0] == answers[1]


def test_default_scoring_beats_the_textbook_formulas(encoder: Encoder, analogy_server: RunningServer) -> None:
    """On gensim's questions-words.txt, every third question the small vocabulary can answer."""
    from gensim.test.utils import datapath

    assert analogy_server.vocabulary is not None
    vocabulary = analogy_server.vocabulary(timeout=300)
    questions = [
        tuple(word.lower() for word in q.words)
        for q in read_analogy_questions(Path(datapath("questions-words.txt")))
        if all(vocabulary.contains(word) for word in q.words)
    ][::3]
    assert len(questions) > 500
    # The query words embedded once, as the engine embeds them, and their cosines to every word.
    words = sorted({word for question in questions for word in question[:3]})
    embedded = vocabulary.project(encoder.encode([vocabulary.template.format(w) for w in words]))
    similarities = embedded @ vocabulary.vectors.T
    row = {word: position for position, word in enumerate(words)}
    for method in AnalogyMethod:
        correct = dict.fromkeys(("textbook", "default"), 0)
        for a, b, c, d in questions:
            positive, negative = [row[b], row[c]], [row[a]]
            for name, scoring in (("textbook", TEXTBOOK_SCORING), ("default", DEFAULT_SCORING)):
                scores = score_similarities(
                    vocabulary,
                    similarities[positive],
                    similarities[negative],
                    embedded[positive],
                    embedded[negative],
                    method,
                    scoring,
                )
                variants = variant_rows(
                    vocabulary,
                    [b, c],
                    [a],
                    similarities[positive],
                    similarities[negative],
                    embedded[positive],
                    embedded[negative],
                    scoring.variant_alignment,
                )
                [(best, _)] = top_k(scores, 1, vocabulary.rows_of([a, b, c]) + variants)
                correct[name] += vocabulary.words[best] == d
        # About 4% more in a measured run; 2% leaves room for numeric noise across CPUs.
        assert correct["default"] >= correct["textbook"] + 0.02 * len(questions), (method, correct)


def test_a_capital_beyond_the_first_words_beats_the_nationality_of_its_country(
    encoder: Encoder, analogy_server: RunningServer, data_dir: Path
) -> None:
    """spain : madrid :: egypt : ? with cairo appended to the 5,000 words: egyptian, nearer egypt, used
    to come first."""
    assert analogy_server.vocabulary is not None
    analogy_server.vocabulary(timeout=300)
    [saved] = (data_dir / VOCABULARY_DIRECTORY).glob(f"*-{VOCABULARY_SIZE}.npz")
    loaded = load_vocabulary_file(saved, encoder.info.dimension)
    assert loaded is not None
    words, vectors = loaded
    cairo = encoder.encode([WORD_TEMPLATE.format("cairo")], normalize=True)
    vocabulary = Vocabulary.from_vectors(
        [*words, "cairo"], np.concatenate([vectors, cairo]), frequency_ordered=True
    )
    engine = AnalogyEngine(encoder, lambda _timeout: vocabulary)
    answers = [answer.word for answer in engine.solve_analogy(["madrid", "egypt"], ["spain"], k=3)]
    assert answers[0] == "cairo" and "egyptian" not in answers, answers


def test_a_users_index_serves_as_the_vocabulary(analogies: VecserveClient) -> None:
    analogies.create_index("fruit-and-royals")
    try:
        words = ["queen", "princess", "banana", "apple", "car", "king"]
        analogies.upsert("fruit-and-royals", [{"id": w, "text": w} for w in words])
        answers = analogies.solve_analogy(
            ["king", "woman"], ["man"], k=3, vocabulary_index="fruit-and-royals"
        )
        assert answers[0].word == "queen"
        assert "king" not in [w.word for w in answers]
        [similar] = analogies.find_similar_words(["mango"], k=2, vocabulary_index="fruit-and-royals")
        assert {w.word for w in similar} == {"banana", "apple"}
        lookup = analogies.get_vocabulary(["banana", "pear"], vocabulary_index="fruit-and-royals")
        assert lookup.word_count == len(words) and list(lookup.contains) == [True, False]
        assert lookup.word_template == TEXT_TEMPLATE == "{}"  # matched as the texts were embedded
    finally:
        analogies.delete_index("fruit-and-royals")


def _field_violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    fields = []
    for detail in status.details if status else []:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields += [v.field for v in bad_request.field_violations]
    return fields


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.solve_analogy([], ["man"]), "positive"),
        (lambda c: c.solve_analogy(["king", ""], ["man"]), "positive[1]"),
        (lambda c: c.solve_analogy(["king"], ["  "]), "negative[0]"),
        (lambda c: c.solve_analogy(["\U0001f600"], []), "positive[0]"),
        (lambda c: c.solve_analogy(["king"], [], k=1001), "k"),
        (lambda c: c.find_similar_words(["ocean"], k=5000), "k"),
        (lambda c: c.find_similar_words([]), "queries"),
        (lambda c: c.compare_relations(("man", "woman"), []), "candidates"),
        (lambda c: c.compare_relations(("man", "\u200b"), [("a", "b")]), "reference.second"),
        (lambda c: c.solve_analogy(["king"], [], method=7), "method"),
    ],
)
def test_bad_inputs_are_invalid_argument(analogies: VecserveClient, call, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as raised:
        call(analogies)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details()
    assert _field_violations(raised.value) == [field]


def test_missing_reference_is_invalid_argument(analogies: VecserveClient) -> None:
    request = analogy_pb2.CompareRelationsRequest(candidates=[analogy_pb2.WordPair(first="a", second="b")])
    with pytest.raises(grpc.RpcError) as raised:
        analogies.analogies.CompareRelations(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_vocabulary_index_is_not_found(analogies: VecserveClient) -> None:
    for call in (
        lambda: analogies.solve_analogy(["king"], [], vocabulary_index="no-such-index"),
        lambda: analogies.find_similar_words(["king"], vocabulary_index="no-such-index"),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no-such-index" in raised.value.details()


def test_an_index_of_other_vectors_cannot_be_a_vocabulary(analogies: VecserveClient) -> None:
    analogies.create_index("three-dimensional", dimension=3)
    try:
        analogies.upsert(
            "three-dimensional",
            [
                {"id": "a", "text": "apple", "vector": [1.0, 0.0, 0.0]},
                {"id": "b", "text": "pear", "vector": [0, 1, 0]},
            ],
        )
        with pytest.raises(grpc.RpcError) as raised:
            analogies.find_similar_words(["fruit"], vocabulary_index="three-dimensional")
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "3-dimensional" in raised.value.details()
    finally:
        analogies.delete_index("three-dimensional")
