"""IndexService through the real server, client and model: behaviour, status codes and restarts."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from vecserve.v1 import index_pb2

from clients import VecserveClient
from clients.client import build_filter, make_document, python_value
from service.config import Settings
from service.embedding.encoder import Encoder
from service.grpc_server.server import create_server
from tests.waiting import wait_until

CORPUS = {
    "eiffel": "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "photosynthesis": "Photosynthesis lets plants turn sunlight into chemical energy.",
    "stocks": "The stock market fell sharply after the interest rate announcement.",
    "sleep": "A good night's sleep improves memory and concentration.",
    "python": "Python is a popular programming language for data science.",
    "baking": "The recipe calls for flour, sugar, eggs and butter.",
    "football": "Lionel Messi scored twice in the football match.",
    "volcano": "Volcanoes erupt when magma rises to the surface.",
    "violin": "The violin concerto was performed by the city orchestra.",
    "electric-cars": "Electric cars are charged using batteries instead of gasoline.",
}
QUERIES = {
    "a famous landmark in France": "eiffel",
    "how do plants make food from light": "photosynthesis",
    "shares dropped when the central bank raised rates": "stocks",
    "resting well helps you remember things": "sleep",
    "a coding language used by data analysts": "python",
    "ingredients for making a cake": "baking",
    "a soccer player gets two goals": "football",
    "lava coming out of a mountain": "volcano",
    "a classical music concert": "violin",
    "vehicles that run without petrol": "electric-cars",
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def status_of(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value


def field_violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    fields = []
    for detail in status.details if status else []:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields += [violation.field for violation in bad_request.field_violations]
    return fields


def test_index_service_is_served_and_healthy(client: VecserveClient, address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="vecserve.v1.IndexService"), timeout=10
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_create_get_list_delete(client: VecserveClient) -> None:
    names = sorted(unique("crud") for _ in range(3))
    created = client.create_index(names[0], kind="hnsw", params=index_pb2.HnswParams(m=8))
    assert created.dimension == 384 and created.metric == index_pb2.METRIC_COSINE
    assert created.kind == index_pb2.INDEX_KIND_HNSW
    assert (created.hnsw.m, created.hnsw.ef_construction, created.hnsw.ef_search) == (8, 80, 64)
    # The kind follows the params when it is left unspecified.
    ivf = client.create_index(names[1], dimension=8, metric="l2", params=index_pb2.IvfParams(nlist=4))
    assert ivf.kind == index_pb2.INDEX_KIND_IVF_FLAT and ivf.training_threshold == 39 * 4
    assert (ivf.ivf_flat.nlist, ivf.ivf_flat.nprobe) == (4, 4)  # the default nprobe, capped at nlist
    client.create_index(names[2], dimension=16, kind="sq8")
    assert status_of(lambda: client.create_index(names[0])).code() == grpc.StatusCode.ALREADY_EXISTS

    fetched = client.get_index(names[2])
    assert fetched.kind == index_pb2.INDEX_KIND_SQ8 and fetched.HasField("sq8")
    assert fetched.training_threshold == 1000 and not fetched.trained and fetched.disk_bytes > 0

    listed: list[str] = []
    token = ""
    while True:
        page = client.list_indexes(page_size=2, page_token=token)
        assert len(page.indexes) <= 2
        listed += [index.name for index in page.indexes]
        token = page.next_page_token
        if not token:
            break
    assert listed == sorted(listed) and set(names) <= set(listed)
    assert [index.name for index in client.all_indexes()] == listed

    client.delete_index(names[1])
    assert status_of(lambda: client.get_index(names[1])).code() == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: client.delete_index(names[1])).code() == grpc.StatusCode.NOT_FOUND
    assert names[1] not in {index.name for index in client.all_indexes()}


@pytest.mark.parametrize("name", ["../x", "", "a" * 65, "a/b"])
def test_bad_names_are_invalid_arguments(client: VecserveClient, name: str) -> None:
    error = status_of(lambda: client.create_index(name))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "letters, digits" in (error.details() or "")
    assert field_violations(error) == ["name"]
    assert status_of(lambda: client.get_index(name)).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(lambda: client.search(name, ["x"])).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_upsert_replace_get_and_delete_documents(client: VecserveClient, encoder: Encoder) -> None:
    name = unique("docs")
    client.create_index(name)
    ids = client.upsert(
        name,
        [
            {
                "id": "a",
                "text": "The cat sat on the mat.",
                "metadata": {"kind": "pet", "legs": 4, "indoor": True},
            },
            {"text": "A server-assigned id for this one."},
        ],
    )
    assert ids[0] == "a" and len(ids[1]) == 32
    document = client.get_document(name, "a")
    assert document.text == "The cat sat on the mat."
    assert {key: python_value(value) for key, value in document.metadata.items()} == {
        "kind": "pet",
        "legs": 4.0,
        "indoor": True,
    }
    np.testing.assert_allclose(document.vector, encoder.encode([document.text])[0], atol=1e-5)

    client.upsert(name, [{"id": "a", "text": "Quarterly revenue grew by ten percent."}])
    replaced = client.get_document(name, "a")
    assert replaced.text == "Quarterly revenue grew by ten percent." and not replaced.metadata
    assert client.get_index(name).document_count == 2
    assert client.search(name, ["company earnings increased"], k=1)[0][0].id == "a"

    assert client.delete_documents(name, ["a", "never-existed"]) == 1
    assert status_of(lambda: client.get_document(name, "a")).code() == grpc.StatusCode.NOT_FOUND
    assert [hit.id for hit in client.search(name, ["company earnings increased"], k=10)[0]] == [ids[1]]
    info = client.get_index(name)
    assert info.document_count == 1 and info.memory_bytes > 0


def test_search_finds_the_semantically_right_document(client: VecserveClient) -> None:
    name = unique("corpus")
    client.create_index(name)
    client.upsert(name, [{"id": key, "text": text} for key, text in CORPUS.items()])
    results = client.search(name, list(QUERIES), k=3)
    assert [hits[0].id for hits in results] == list(QUERIES.values())
    for hits in results:
        assert len(hits) == 3 and hits[0].score > hits[1].score >= hits[2].score
        assert hits[0].text == CORPUS[hits[0].id]
    # By stored document: the closest other document, never itself.
    by_document = client.search(name, [index_pb2.Query(document_id="stocks")], k=len(CORPUS))[0]
    assert "stocks" not in {hit.id for hit in by_document} and len(by_document) == len(CORPUS) - 1
    # By raw vector, with vectors returned.
    vector = client.get_document(name, "volcano").vector
    hit = client.search(name, [np.array(vector)], k=1, include_vectors=True)[0][0]
    assert hit.id == "volcano" and math.isclose(hit.score, 1.0, abs_tol=1e-5)
    np.testing.assert_allclose(hit.vector, vector, atol=1e-6)


def test_filters_return_k_hits_where_a_post_filter_would_return_fewer(client: VecserveClient) -> None:
    name = unique("filtered")
    client.create_index(name, kind="hnsw")
    pets = [f"A photo of my cat number {i} sleeping on the sofa." for i in range(40)]
    food = [f"Recipe {i}: slow-cooked vegetable soup with herbs." for i in range(6)]
    sport = [f"Match report {i}: the home team won the rugby game." for i in range(6)]
    documents = (
        [
            {"id": f"pet-{i}", "text": t, "metadata": {"topic": "pets", "year": 1900 + i}}
            for i, t in enumerate(pets)
        ]
        + [
            {"id": f"food-{i}", "text": t, "metadata": {"topic": "food", "year": 2000 + i}}
            for i, t in enumerate(food)
        ]
        + [
            {"id": f"sport-{i}", "text": t, "metadata": {"topic": "sport", "year": 2010 + i}}
            for i, t in enumerate(sport)
        ]
    )
    client.upsert(name, documents)
    k = 5
    unfiltered = client.search(name, ["a cute kitten"], k=k)[0]
    assert all(hit.id.startswith("pet-") for hit in unfiltered)  # a post-filter on topic would keep nothing

    def topics(search_filter: dict) -> list[str]:
        hits = client.search(name, ["a cute kitten"], k=k, filter=search_filter)[0]
        return [python_value(hit.metadata["topic"]) for hit in hits]  # type: ignore[misc]

    assert topics({"topic": "food"}) == ["food"] * k
    in_topics = topics({"topic": ["food", "sport"]})
    assert len(in_topics) == k and set(in_topics) <= {"food", "sport"}
    recent = client.search(name, ["a cute kitten"], k=k, filter={"year": {"gte": 2011, "lt": 2015}})[0]
    assert sorted(hit.id for hit in recent) == ["sport-1", "sport-2", "sport-3", "sport-4"]
    # Conditions combine with AND; when fewer than k match, all of them come back.
    both = client.search(
        name, ["a cute kitten"], k=k, filter=build_filter({"topic": "food", "year": {"lte": 2001}})
    )
    assert sorted(hit.id for hit in both[0]) == ["food-0", "food-1"]
    assert client.search(name, ["a cute kitten"], k=k, filter={"topic": "missing"})[0] == []


def test_stream_upsert_stores_every_message(client: VecserveClient) -> None:
    name = unique("stream")
    client.create_index(name, dimension=8, metric="inner_product")
    vectors = np.random.default_rng(0).standard_normal((120, 8)).astype(np.float32)
    batches = [
        [{"id": f"v{i}", "vector": vectors[i]} for i in range(start, start + 30)]
        for start in range(0, 120, 30)
    ]
    response = client.stream_upsert(name, batches)
    assert (response.upserted_count, response.message_count) == (120, 4)
    assert client.get_index(name).document_count == 120
    hits = client.search(name, [vectors[7]], k=120)[0]
    scores = vectors @ vectors[7]
    assert hits[0].id == f"v{int(np.argmax(scores))}"
    assert math.isclose(hits[0].score, float(scores.max()), rel_tol=1e-5)


def test_stream_errors(client: VecserveClient) -> None:
    name = unique("stream-errors")
    client.create_index(name, dimension=4)
    indexes = client.indexes

    def stream(messages: list[index_pb2.StreamUpsertDocumentsRequest]) -> grpc.RpcError:
        return status_of(lambda: indexes.StreamUpsertDocuments(iter(messages), timeout=30))

    document = make_document(id="x", vector=[1, 2, 3, 4])
    no_name = stream([index_pb2.StreamUpsertDocumentsRequest(documents=[document])])
    assert no_name.code() == grpc.StatusCode.INVALID_ARGUMENT
    switched = stream(
        [
            index_pb2.StreamUpsertDocumentsRequest(index_name=name, documents=[document]),
            index_pb2.StreamUpsertDocumentsRequest(index_name=unique("other"), documents=[document]),
        ]
    )
    assert switched.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1 documents of the 1 earlier messages were stored" in (switched.details() or "")
    bad_vector = stream(
        [
            index_pb2.StreamUpsertDocumentsRequest(
                index_name=name, documents=[make_document(id="y", vector=[1, 2, 3, 4])]
            ),
            index_pb2.StreamUpsertDocumentsRequest(documents=[make_document(id="z", vector=[1, 2])]),
        ]
    )
    assert bad_vector.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(bad_vector) == ["documents[0].vector"]
    unknown = stream(
        [index_pb2.StreamUpsertDocumentsRequest(index_name=unique("nowhere"), documents=[document])]
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    # What was acknowledged message by message before each failure is stored.
    assert {client.get_document(name, i).id for i in ("x", "y")} == {"x", "y"}


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ([1.0, 2.0, 3.0], "dimension 4"),
        ([1.0, 2.0, 3.0, 4.0, 5.0], "dimension 4"),
        ([1.0, float("nan"), 3.0, 4.0], "NaN or infinite"),
        ([1.0, float("inf"), 3.0, 4.0], "NaN or infinite"),
        ([1.0, float("-inf"), 3.0, 4.0], "NaN or infinite"),
    ],
)
def test_bad_vectors_are_invalid_arguments(client: VecserveClient, vector: list[float], message: str) -> None:
    name = unique("vectors")
    client.create_index(name, dimension=4)
    upsert = status_of(lambda: client.upsert(name, [{"id": "a", "vector": vector}]))
    assert upsert.code() == grpc.StatusCode.INVALID_ARGUMENT and message in (upsert.details() or "")
    assert field_violations(upsert) == ["documents[0].vector"]
    search = status_of(lambda: client.search(name, [vector]))
    assert search.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violations(search) == [
        "queries[0].vector"
    ]
    assert client.get_index(name).document_count == 0


def test_invalid_requests_name_the_field(client: VecserveClient) -> None:
    name = unique("invalid")
    client.create_index(name, dimension=4)
    client.upsert(name, [{"id": "a", "vector": [1, 0, 0, 0]}])
    indexes = client.indexes
    unset_value = index_pb2.MetadataValueList(values=[index_pb2.MetadataValue()])
    cases: list[tuple[object, str]] = [
        (lambda: client.search(name, [[1, 0, 0, 0]], k=1001), "k"),
        (
            lambda: indexes.Search(index_pb2.SearchRequest(index_name=name, queries=[index_pb2.Query()])),
            "queries[0]",
        ),
        (lambda: indexes.Search(index_pb2.SearchRequest(index_name=name)), "queries"),
        (lambda: client.upsert(name, []), "documents"),
        (lambda: client.delete_documents(name, []), "ids"),
        (
            lambda: indexes.UpsertDocuments(
                index_pb2.UpsertDocumentsRequest(
                    index_name=name,
                    documents=[
                        index_pb2.Document(
                            id="m", vector=[1, 0, 0, 0], metadata={"k": index_pb2.MetadataValue()}
                        )
                    ],
                )
            ),
            "documents[0].metadata['k']",
        ),
        (
            lambda: indexes.Search(
                index_pb2.SearchRequest(
                    index_name=name,
                    queries=[index_pb2.Query(document_id="a")],
                    filter=index_pb2.Filter(conditions=[index_pb2.Condition(key="k")]),
                )
            ),
            "filter.conditions[0]",
        ),
        (
            lambda: indexes.Search(
                index_pb2.SearchRequest(
                    index_name=name,
                    queries=[index_pb2.Query(document_id="a")],
                    filter=index_pb2.Filter(conditions=[index_pb2.Condition(key="k", any_of=unset_value)]),
                )
            ),
            "filter.conditions[0].any_of.values[0]",
        ),
        (lambda: client.create_index(unique("x"), kind="flat", params=index_pb2.HnswParams()), "params"),
        (lambda: client.create_index(unique("x"), metric=99), "metric"),
        (lambda: client.create_index(unique("x"), kind=42), "kind"),
        (lambda: client.create_index(unique("x"), dimension=10, kind="ivf_pq"), "ivf_pq.m"),
        (lambda: client.list_indexes(page_token="garbage!"), "page_token"),
    ]
    for call, field in cases:
        error = status_of(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field_violations(error) == [field], error.details()
    assert status_of(lambda: client.search(unique("nowhere"), ["x"])).code() == grpc.StatusCode.NOT_FOUND
    missing = status_of(lambda: client.search(name, [index_pb2.Query(document_id="missing")]))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    text_into_small_index = status_of(lambda: client.upsert(name, [{"text": "needs a 4-dimensional model"}]))
    assert text_into_small_index.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_restart_restores_everything(tmp_path: Path, encoder: Encoder) -> None:
    settings = Settings(listen="127.0.0.1:0", data_dir=tmp_path / "data")
    running = create_server(settings, encoder=encoder)
    try:
        with VecserveClient(f"127.0.0.1:{running.port}", timeout=60) as client:
            client.create_index("texts")
            client.create_index("graph", dimension=8, metric="l2", kind="hnsw")
            client.upsert(
                "texts",
                [
                    {"id": key, "text": text, "metadata": {"n": i}}
                    for i, (key, text) in enumerate(CORPUS.items())
                ],
            )
            vectors = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
            client.stream_upsert(
                "graph",
                [[{"id": f"g{i}", "vector": vectors[i]} for i in range(s, s + 100)] for s in (0, 100, 200)],
            )
            client.delete_documents("graph", ["g5"])
            before = {index.name: index for index in client.all_indexes()}
            texts_before = client.search("texts", list(QUERIES), k=3)
    finally:
        running.stop(grace=5)

    running = create_server(settings, encoder=encoder)
    try:
        with VecserveClient(f"127.0.0.1:{running.port}", timeout=60) as client:
            after = {index.name: index for index in client.all_indexes()}
            assert after.keys() == before.keys() == {"texts", "graph"}
            for name in after:
                for field in ("dimension", "metric", "kind", "document_count", "hnsw"):
                    assert getattr(after[name], field) == getattr(before[name], field)
            assert after["graph"].document_count == 299
            texts_after = client.search("texts", list(QUERIES), k=3)
            assert [[h.id for h in hits] for hits in texts_after] == [
                [h.id for h in hits] for hits in texts_before
            ]
            assert python_value(client.get_document("texts", "violin").metadata["n"]) == 8.0
            hits = client.search("graph", [vectors[i] for i in (0, 5, 299)], k=1)
            assert [h[0].id for h in hits][::2] == ["g0", "g299"] and hits[1][0].id != "g5"
    finally:
        running.stop(grace=5)


def recall_at(found: list[list[str]], truth: list[list[str]]) -> float:
    return sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True)) / sum(len(t) for t in truth)


def test_search_parameters_per_request_trade_speed_for_recall(client: VecserveClient) -> None:
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    ids = [f"v{position}" for position in range(len(vectors))]
    truth_rows = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    truth = [[ids[row] for row in rows] for rows in truth_rows]
    documents = [{"id": i, "vector": v.tolist()} for i, v in zip(ids, vectors, strict=True)]

    def recall(name: str, **tuning: int) -> float:
        results = client.search(name, list(queries), k=10, **tuning)
        return recall_at([[hit.id for hit in hits] for hits in results], truth)

    graph = unique("tuned-hnsw")
    client.create_index(
        graph, dimension=16, metric="inner_product", params=index_pb2.HnswParams(m=4, ef_search=1)
    )
    for start in range(0, len(documents), 1000):
        client.upsert(graph, documents[start : start + 1000])
    narrow, wide = recall(graph), recall(graph, ef_search=400)
    assert wide >= 0.95 and wide > narrow
    assert recall(graph) == narrow  # the override lasts one call

    lists = unique("tuned-ivf")
    client.create_index(
        lists, dimension=16, metric="inner_product", params=index_pb2.IvfParams(nlist=8, nprobe=1)
    )
    for start in range(0, len(documents), 1000):
        client.upsert(lists, documents[start : start + 1000])
    # Trained in the background once enough vectors are stored; searched exactly until then.
    wait_until(lambda: client.get_index(lists).trained, "the ivf index to be trained")
    one_list, every_list = recall(lists), recall(lists, nprobe=8)
    assert every_list == 1.0 and one_list < every_list

    flat = unique("tuned-flat")
    client.create_index(flat, dimension=16)
    client.upsert(flat, documents[:10])
    for name, tuning, field in [
        (flat, {"ef_search": 10}, "ef_search"),
        (flat, {"nprobe": 1}, "nprobe"),
        (graph, {"nprobe": 1}, "nprobe"),
        (graph, {"ef_search": 0}, "ef_search"),
        (graph, {"ef_search": 4097}, "ef_search"),
        (lists, {"ef_search": 10}, "ef_search"),
        (lists, {"nprobe": 0}, "nprobe"),
        (lists, {"nprobe": 9}, "nprobe"),
    ]:
        error = status_of(lambda name=name, tuning=tuning: client.search(name, [queries[0]], **tuning))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, tuning)
        assert field_violations(error) == [field], error.details()
