"""Extreme inputs through the real server: ids with any code point, vectors at float32's edges,
3CosMul with as many words as a request may carry, answers and messages over the size limit, and
calls that arrive while the server shuts down. Each either works exactly or is refused clearly."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vecserve.v1 import index_pb2

from clients import VecserveClient
from service.analogy.engine import MAX_WORDS_PER_REQUEST, AnalogyEngine
from service.analogy.scoring import TEXTBOOK_SCORING, AnalogyMethod
from service.analogy.space import Vocabulary
from service.config import Settings
from service.embedding.encoder import Encoder, Token, TokenizedText
from service.errors import InvalidArgument, TooLarge
from service.grpc_server.server import RunningServer, create_server
from service.index.model import Document, Query
from service.index.store import IndexStore
from tests.waiting import wait_until

SMALL_MESSAGES = 64 * 1024
PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def small_server(encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with a 64 KiB message limit, so that oversized messages are cheap to make."""
    settings = Settings(
        listen="127.0.0.1:0", data_dir=tmp_path_factory.mktemp("extreme"), max_message_bytes=SMALL_MESSAGES
    )
    running = create_server(settings, encoder=encoder)
    yield running
    running.stop(grace=5)


@pytest.fixture(scope="module")
def small(small_server: RunningServer) -> Iterator[VecserveClient]:
    with VecserveClient(f"127.0.0.1:{small_server.port}", timeout=120) as client:
        yield client


def refusal(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value


def ensure_index(client: VecserveClient, name: str, **options: object) -> None:
    """Creates the index unless an earlier example of a property test did."""
    try:
        client.create_index(name, **options)  # type: ignore[arg-type]
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


def violated_fields(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None and status.details
    violations = error_details_pb2.BadRequest()
    status.details[0].Unpack(violations)
    return [violation.field for violation in violations.field_violations]


# 1. Document ids with any code point ------------------------------------------------------------


def test_an_id_with_nul_is_replaced_and_deleted_like_any_other(small: VecserveClient) -> None:
    small.create_index("nul-ids", dimension=2)
    try:
        small.upsert("nul-ids", [{"id": "ab\x00", "vector": [1, 0], "text": "first"}])
        small.upsert("nul-ids", [{"id": "ab\x00", "vector": [0, 1], "text": "second"}])  # replaces
        small.upsert("nul-ids", [{"id": "ab", "vector": [1, 1]}, {"id": "\x00", "vector": [1, 2]}])
        document = small.get_document("nul-ids", "ab\x00")
        assert (document.id, document.text, list(document.vector)) == ("ab\x00", "second", [0.0, 1.0])
        assert small.get_index("nul-ids").document_count == 3
        assert small.delete_documents("nul-ids", ["ab\x00", "\x00"]) == 2
        assert refusal(small.get_document, "nul-ids", "ab\x00").code() == grpc.StatusCode.NOT_FOUND
        assert small.get_document("nul-ids", "ab").id == "ab"  # the prefix was never confused with it
    finally:
        small.delete_index("nul-ids")


def test_a_lone_surrogate_in_an_id_is_refused_by_the_core(tmp_path: Path) -> None:
    """gRPC clients cannot send one (protobuf strings are UTF-8); a JSON escape or a library caller can."""
    store = IndexStore(tmp_path)
    try:
        store.create_index("ids", 2)
        with pytest.raises(InvalidArgument, match="lone surrogate U\\+D800") as caught:
            store.upsert("ids", [Document(id="a\ud800", vector=np.array([1.0, 0.0]))])
        assert caught.value.field == "documents[0].id"
        assert store.get_index("ids").document_count == 0
        with pytest.raises(InvalidArgument, match="lone surrogate"):
            store.delete_documents("ids", ["\udfff"])
    finally:
        store.close()


@PROPERTY_SETTINGS
@given(document_id=st.text(st.characters(codec="utf-8"), min_size=1, max_size=40))
def test_any_id_round_trips_exactly(small: VecserveClient, document_id: str) -> None:
    name = "any-ids"
    ensure_index(small, name, dimension=2)
    assert small.upsert(name, [{"id": document_id, "vector": [1, 0]}]) == [document_id]
    assert small.upsert(name, [{"id": document_id, "vector": [0, 1]}]) == [document_id]
    assert small.get_document(name, document_id).id == document_id
    (hits,) = small.search(name, [[0.0, 1.0]], k=1)
    assert hits[0].id == document_id
    assert small.delete_documents(name, [document_id]) == 1
    assert small.get_index(name).document_count == 0


# 2. Vectors at float32's edges -------------------------------------------------------------------


def test_huge_and_tiny_vectors_of_a_cosine_index_keep_their_direction(small: VecserveClient) -> None:
    small.create_index("cosine-edges", dimension=384)
    try:
        direction = np.zeros(384, dtype=np.float32)
        direction[0] = 1.0
        small.upsert(
            "cosine-edges",
            [
                {"id": "huge", "vector": [1e20] * 384},
                {"id": "tiny", "vector": [1e-30] * 384},  # not zero: its squared length underflows float32
                {"id": "axis", "vector": direction * 3e38},
            ],
        )
        for document_id in ("huge", "tiny", "axis"):
            stored = np.array(small.get_document("cosine-edges", document_id).vector)
            assert np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-5)
        (hits,) = small.search("cosine-edges", [[3e38] * 384], k=3)
        assert [hit.id for hit in hits[:2]] in (["huge", "tiny"], ["tiny", "huge"])
        assert [hit.score for hit in hits[:2]] == pytest.approx([1.0, 1.0], abs=1e-5)
        assert hits[2].id == "axis" and np.isfinite(hits[2].score)
        zero = refusal(small.upsert, "cosine-edges", [{"id": "zero", "vector": [0.0] * 384}])
        assert zero.code() == grpc.StatusCode.INVALID_ARGUMENT and "zero vector" in zero.details()
    finally:
        small.delete_index("cosine-edges")


@pytest.mark.parametrize("metric", ["l2", "inner_product"])
def test_vectors_whose_scores_would_overflow_are_refused(small: VecserveClient, metric: str) -> None:
    name = f"{metric.replace('_', '-')}-edges"
    small.create_index(name, dimension=4, metric=metric)
    try:
        small.upsert(name, [{"id": "unit", "vector": [1, 0, 0, 0]}, {"id": "big", "vector": [1e17] * 4}])
        error = refusal(small.upsert, name, [{"id": "pos", "vector": [3e38] * 4}])
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "overflow" in error.details() and violated_fields(error) == ["documents[0].vector"]
        error = refusal(small.search, name, [[-3e38] * 4], k=2)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(error) == ["queries[0].vector"]
        (hits,) = small.search(name, [[1e17] * 4], k=2)
        assert hits[0].id == "big" and all(np.isfinite(hit.score) for hit in hits)
        assert small.get_index(name).document_count == 2
    finally:
        small.delete_index(name)


magnitudes = st.floats(min_value=-38, max_value=np.log10(3e38)).map(lambda exponent: 10.0**exponent)


@PROPERTY_SETTINGS
@given(
    metric=st.sampled_from(["cosine", "l2", "inner_product"]),
    magnitude=magnitudes,
    signs=st.lists(st.sampled_from([-1.0, 0.5, 1.0]), min_size=4, max_size=4),
)
def test_any_magnitude_is_stored_exactly_or_refused(
    small: VecserveClient, metric: str, magnitude: float, signs: Sequence[float]
) -> None:
    name = f"magnitudes-{metric.replace('_', '-')}"
    ensure_index(small, name, dimension=4, metric=metric)
    vector = np.array(signs, dtype=np.float32) * np.float32(magnitude)
    try:
        small.upsert(name, [{"id": "v", "vector": vector}, {"id": "other", "vector": [1, 2, 3, 4]}])
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert violated_fields(error) == ["documents[0].vector"]
        return
    stored = np.array(small.get_document(name, "v").vector, dtype=np.float32)
    if metric == "cosine":
        wide = vector.astype(np.float64)
        np.testing.assert_allclose(stored, wide / np.linalg.norm(wide), rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(stored, vector)
    (hits,) = small.search(name, [vector], k=2)
    assert len(hits) == 2 and all(np.isfinite(hit.score) for hit in hits)


# 3. 3CosMul with as many words as a request may carry --------------------------------------------


class AxisEncoder:
    """Encodes "w<n>" as a fixed unit vector: hand-built geometry with known answers."""

    dimension = 3

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self._vectors = vectors

    def encode(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        return np.stack([self._vectors[text.strip('"')] for text in texts])

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[TokenizedText]:
        return [TokenizedText([Token(text, 1, 0, len(text), False)], False) for text in texts]


def test_cosmul_ranks_exactly_with_the_most_positive_words() -> None:
    """256 positives at 60 degrees from every candidate but one: the product per candidate is about
    0.75 ** 256 = 1e-32 and below, which float32 cannot tell apart; logs can."""
    angles = np.radians([60.0, 61.0, 62.0, 63.0, 64.0])
    candidates = {f"c{n}": np.array([np.cos(a), np.sin(a), 0.0]) for n, a in enumerate(angles)}
    positives = {f"p{n}": np.array([1.0, 0.0, 0.0]) for n in range(MAX_WORDS_PER_REQUEST)}
    vocabulary = Vocabulary.from_vectors(list(candidates), np.stack(list(candidates.values())), center=False)
    engine = AnalogyEngine(
        AxisEncoder({**candidates, **positives}), lambda _timeout: vocabulary, scoring=TEXTBOOK_SCORING
    )
    answers = engine.solve_analogy(list(positives), method=AnalogyMethod.COSMUL, k=5)
    assert [answer.word for answer in answers] == ["c0", "c1", "c2", "c3", "c4"]
    rankings = [answer.ranking_score for answer in answers]
    assert all(np.isfinite(rankings)) and rankings == sorted(rankings, reverse=True)
    assert len(set(rankings)) == 5


def test_cosmul_through_the_server_tells_answers_apart_at_the_word_limit(small: VecserveClient) -> None:
    words = ["ocean", "sea", "river", "lake", "mountain", "desert", "forest", "city", "violin", "algebra"]
    small.create_index("cosmul-words")
    try:
        small.upsert("cosmul-words", [{"id": word, "text": word} for word in words])
        phrases = [f"water number {n}" for n in range(MAX_WORDS_PER_REQUEST)]
        answers = small.solve_analogy(phrases, method="cosmul", k=len(words), vocabulary_index="cosmul-words")
        rankings = [answer.ranking_score for answer in answers]
        assert len(answers) == len(words) and all(np.isfinite(rankings))
        assert rankings == sorted(rankings, reverse=True) and len(set(rankings)) == len(words)
        assert all(answer.score >= 0 and np.isfinite(answer.score) for answer in answers)
        # The same ranking as 3CosAdd's at the top: water words first, not an arbitrary order.
        assert {answers[0].word, answers[1].word} <= {"ocean", "sea", "river", "lake"}
    finally:
        small.delete_index("cosmul-words")


# 4-6. Clear errors --------------------------------------------------------------------------------


def test_a_search_answer_bounded_over_the_limit_is_refused_before_searching(
    small: VecserveClient, tmp_path: Path
) -> None:
    small.create_index("wide", dimension=64)
    try:
        rng = np.random.default_rng(7)
        small.upsert("wide", [{"id": f"d{n}", "vector": rng.normal(size=64)} for n in range(100)])
        error = refusal(small.search, "wide", rng.normal(size=(40, 64)), k=50, include_vectors=True)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-message-bytes" in error.details() and "lower k" in error.details()
    finally:
        small.delete_index("wide")
    # In the core, that refusal comes before any search work.
    store = IndexStore(tmp_path, max_response_bytes=SMALL_MESSAGES)
    try:
        store.create_index("wide", 64)
        store.upsert("wide", [Document(id=f"d{n}", vector=rng.normal(size=64)) for n in range(100)])
        index = store._indexes["wide"]
        index.search = lambda *args, **kwargs: pytest.fail("searched before refusing")  # type: ignore[method-assign]
        queries = [Query(vector=vector) for vector in rng.normal(size=(40, 64))]
        with pytest.raises(TooLarge, match="more than the limit of 65,536 bytes"):
            store.search("wide", queries, k=50, include_vectors=True)
    finally:
        store.close()


def test_an_invalid_vocabulary_index_name_names_its_field(small: VecserveClient) -> None:
    error = refusal(small.solve_analogy, ["king"], vocabulary_index="../x")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["index_name"]


def test_a_vocabulary_index_without_texts_says_so(small: VecserveClient) -> None:
    small.create_index("vectors-only", dimension=384)
    try:
        small.upsert("vectors-only", [{"id": "a", "vector": [1.0] * 384}, {"id": "b", "vector": [2.0] * 384}])
        error = refusal(small.solve_analogy, ["king"], vocabulary_index="vectors-only")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no document with text" in error.details() and "no documents" not in error.details()
    finally:
        small.delete_index("vectors-only")


# 7. Messages over the limit -------------------------------------------------------------------------


def test_an_oversized_message_names_the_limit_and_the_fix(small: VecserveClient) -> None:
    error = refusal(small.embed, ["word " * 1000] * 20)  # about 100 kB, over the 64 KiB limit
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error.details()
    assert "65,536 bytes" in details and "--max-message-bytes" in details and "split" in details


def test_an_oversized_stream_message_says_what_was_stored(small: VecserveClient) -> None:
    small.create_index("streamed", dimension=4)
    try:
        first = [{"id": f"d{n}", "vector": [1, n, 0, 0]} for n in range(5)]
        oversized = [{"id": f"big{n}", "vector": [1, 1, 1, 1], "text": "x" * 1000} for n in range(100)]
        error = refusal(small.stream_upsert, "streamed", [first, oversized])
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = error.details()
        assert details.startswith("message 2: ") and "--max-message-bytes" in details
        assert "(5 documents of the 1 earlier messages were stored)" in details
        assert small.get_index("streamed").document_count == 5
    finally:
        small.delete_index("streamed")


# 8. Calls during a graceful shutdown ----------------------------------------------------------------


def test_calls_during_shutdown_get_unavailable_while_in_flight_ones_finish(
    encoder: Encoder, tmp_path: Path
) -> None:
    running = create_server(Settings(listen="127.0.0.1:0", data_dir=tmp_path), encoder=encoder)
    address = f"127.0.0.1:{running.port}"
    release = threading.Event()
    outcome: dict[str, object] = {}
    with VecserveClient(address, timeout=120) as client:
        client.create_index("held", dimension=2)

        def held_batches() -> Iterator[list[dict[str, object]]]:
            yield [{"id": "first", "vector": [1, 0]}]
            release.wait()
            yield [{"id": "second", "vector": [0, 1]}]

        def held_stream() -> None:
            outcome["response"] = client.stream_upsert("held", held_batches())

        streamer = threading.Thread(target=held_stream)
        streamer.start()
        wait_until(lambda: client.get_index("held").document_count == 1, "the first message stored")
        stopper = threading.Thread(target=running.stop, kwargs={"grace": 120})
        stopper.start()
        wait_until(lambda: running.drain.draining, "the server draining")
        for _ in range(20):
            error = refusal(client.get_index, "held")
            assert error.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in error.details()
        assert client.health() == "NOT_SERVING"  # probes still get an answer
        release.set()
        streamer.join(timeout=120)
        stopper.join(timeout=120)
    response = outcome["response"]
    assert isinstance(response, index_pb2.StreamUpsertDocumentsResponse) and response.upserted_count == 2
    store = IndexStore(tmp_path)
    try:
        assert store.get_index("held").document_count == 2
    finally:
        store.close()
