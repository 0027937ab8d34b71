"""Search with ids_only through real servers (gRPC and HTTP/JSON, one index and two local shards): the
same ids and scores as full hits, with no text, metadata or vector, under filters, k and queries by
document id; ids_only with include_vectors refused as INVALID_ARGUMENT; the CLI's --ids-only; and the
client's packed query vectors, equal to the values given; a request's vector queries read at once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import json_format
from vecserve.v1 import index_pb2

from clients import VecserveClient
from clients.cli import main
from clients.client import make_document, vector_message
from service.api.index import queries_from_messages, query_from_message
from service.cluster.routing import shard_name
from service.cluster.sharded_store import LocalShard, ShardedStore
from service.config import Settings
from service.core import build_core
from service.embedding.encoder import Encoder
from service.errors import TooLarge
from service.grpc_server.server import RunningServer, create_server, serve_core
from service.index.model import Document, Query
from service.index.store import IndexStore

INDEX = "papers"
DIMENSION = 8
COUNT = 60
COLOURS = ("red", "green", "blue")


def corpus() -> list[dict[str, object]]:
    vectors = np.random.default_rng(7).standard_normal((COUNT, DIMENSION)).astype(np.float32)
    return [
        {
            "id": f"doc-{number}",
            "text": f"the text of document {number}",
            "metadata": {"colour": COLOURS[number % 3], "rank": number},
            "vector": vectors[number],
        }
        for number in range(COUNT)
    ]


def settings_for(data_dir: Path) -> Settings:
    return Settings(listen="127.0.0.1:0", http_listen="127.0.0.1:0", data_dir=data_dir, vocabulary_size=1)


@pytest.fixture(scope="module", params=["one index", "two shards"])
def server(
    request: pytest.FixtureRequest, encoder: Encoder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A real server with gRPC and HTTP over one IndexStore, or over a ShardedStore of two local shards,
    holding INDEX (flat, cosine)."""
    directory = tmp_path_factory.mktemp("ids-only")
    if request.param == "one index":
        running = create_server(settings_for(directory), encoder=encoder)
        store = None
    else:
        shards = [LocalShard(IndexStore(directory / shard_name(n)), shard_name(n)) for n in range(2)]
        store = ShardedStore(shards, encoder)
        settings = settings_for(directory / "ingress")
        running = serve_core(settings, build_core(settings, encoder, store))
    try:
        with VecserveClient(f"127.0.0.1:{running.port}", timeout=120) as client:
            client.create_index(INDEX, dimension=DIMENSION)
            client.upsert(INDEX, corpus())
        yield running
    finally:
        running.stop(grace=5)
        if store is not None:
            store.close()


@pytest.fixture
def client(server: RunningServer) -> Iterator[VecserveClient]:
    with VecserveClient(f"127.0.0.1:{server.port}", timeout=120) as connected:
        yield connected


def queries() -> list[object]:
    rng = np.random.default_rng(11)
    return [*rng.standard_normal((3, DIMENSION)).astype(np.float32), index_pb2.Query(document_id="doc-5")]


def ids_and_scores(results: list[list[index_pb2.SearchHit]]) -> list[list[tuple[str, float]]]:
    return [[(hit.id, hit.score) for hit in hits] for hits in results]


@pytest.mark.parametrize("k", [1, 7, COUNT])
@pytest.mark.parametrize("search_filter", [None, {"colour": "red"}, {"rank": {"gte": 10, "lt": 40}}])
def test_ids_only_answers_the_ids_and_scores_of_full_hits(
    client: VecserveClient, k: int, search_filter: dict[str, object] | None
) -> None:
    full = client.search(INDEX, queries(), k=k, filter=search_filter)
    bare = client.search(INDEX, queries(), k=k, filter=search_filter, ids_only=True)
    assert ids_and_scores(bare) == ids_and_scores(full)
    assert all(hit.text and hit.metadata for hits in full for hit in hits)
    for hits in bare:
        for hit in hits:
            assert (hit.text, dict(hit.metadata), list(hit.vector)) == ("", {}, [])
    assert "doc-5" not in {hit.id for hit in bare[-1]}  # a query by document id leaves it out
    if search_filter == {"colour": "red"}:
        assert all(int(hit.id.split("-")[1]) % 3 == 0 for hits in bare for hit in hits)


def test_ids_only_with_include_vectors_is_refused(client: VecserveClient) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        client.search(INDEX, queries(), ids_only=True, include_vectors=True)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "ids_only and include_vectors cannot both be set" in raised.value.details()


def post_search(server: RunningServer, body: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{server.http_port}/vecserve.v1.IndexService/Search",
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        timeout=120,
    )


def test_ids_only_over_http_json(server: RunningServer, client: VecserveClient) -> None:
    vector = [float(value) for value in queries()[0]]  # type: ignore[union-attr]
    body = {"indexName": INDEX, "queries": [{"vector": {"values": vector}}], "k": 5, "idsOnly": True}
    response = post_search(server, body)
    assert response.status_code == 200, response.text
    hits = response.json()["results"][0]["hits"]
    assert [set(hit) for hit in hits] == [{"id", "score"}] * 5  # nothing else is sent
    answer = json_format.ParseDict(response.json(), index_pb2.SearchResponse())
    assert ids_and_scores([list(answer.results[0].hits)]) == ids_and_scores(
        client.search(INDEX, [vector], k=5)
    )

    refused = post_search(server, {**body, "includeVectors": True})
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid_argument"
    assert "ids_only and include_vectors" in refused.json()["message"]


def test_the_cli_searches_with_ids_only(
    server: RunningServer, client: VecserveClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--address", f"127.0.0.1:{server.port}", "search", INDEX, "--like", "doc-3", "-k", "4",
                 "--ids-only", "--json"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    expected = client.search(INDEX, [index_pb2.Query(document_id="doc-3")], k=4)[0]
    assert printed[0]["hits"] == [{"id": hit.id, "score": round(hit.score, 6)} for hit in expected]


def test_an_ids_only_answer_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    store = IndexStore(tmp_path, max_response_bytes=1000)
    try:
        store.create_index(INDEX, DIMENSION)
        store.upsert(INDEX, [Document(id="x" * 100 + str(n), vector=np.eye(DIMENSION)[n]) for n in range(8)])
        query = [Query(vector=np.ones(DIMENSION, dtype=np.float32))]
        assert len(store.search(INDEX, query, k=8, ids_only=True)[0]) == 8  # 8 x 117 bytes
        with pytest.raises(TooLarge):
            store.search(INDEX, query * 2, k=8, ids_only=True)
    finally:
        store.close()


@pytest.mark.parametrize(
    "values",
    [
        np.arange(384, dtype=np.float32) / 7,
        np.arange(20, dtype=np.float64) / 3,  # rounded to float32, as the values field rounds them
        np.arange(40, dtype=">f4")[::2],  # big-endian and strided
        [0.5, -1.25, float("nan"), float("inf")],
        [],
    ],
)
def test_packed_query_vectors_equal_the_values_given(values: object) -> None:
    expected = index_pb2.Vector(values=np.asarray(values, dtype=np.float32).tolist())
    assert vector_message(values).SerializeToString() == expected.SerializeToString()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "values",
    [
        np.arange(384, dtype=np.float32) / 7,
        np.arange(40, dtype=">f8")[::2] / 3,  # big-endian, strided float64, rounded to float32
        [0.5, -1.25, float("nan"), float("inf")],
        [],
    ],
)
def test_packed_document_vectors_equal_the_values_given(values: object) -> None:
    fields = {"id": "d1", "text": "dugongs graze", "metadata": {"year": 2021, "lang": "en"}}
    expected = make_document(**fields)  # type: ignore[arg-type]
    expected.vector.extend(np.asarray(values, dtype=np.float32).tolist())
    packed = make_document(**fields, vector=values)  # type: ignore[arg-type]
    assert packed == expected
    assert packed.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def test_a_query_or_document_vector_of_rows_is_refused_as_before() -> None:
    with pytest.raises(TypeError):
        vector_message(np.zeros((2, 3)))
    with pytest.raises(TypeError):
        make_document(id="x", vector=np.zeros((2, 3)))


def vector_query(values: list[float], unknown: bytes = b"") -> index_pb2.Query:
    vector = index_pb2.Vector.FromString(index_pb2.Vector(values=values).SerializeToString() + unknown)
    return index_pb2.Query(vector=vector)


@pytest.mark.parametrize(
    "messages",
    [
        [vector_query([1.5, -2.0, 3.25]), vector_query([0.0, 1e-30, 3e38])],
        [vector_query([1.0, 2.0]), vector_query([1.0, 2.0, 3.0])],  # dimensions differ
        [vector_query([1.0, 2.0]), index_pb2.Query(text="words")],
        [vector_query([1.0, 2.0]), vector_query([3.0, 4.0], unknown=b"\x10\x01")],  # an unknown field
        [vector_query([]), vector_query([])],
    ],
)
def test_queries_read_at_once_equal_queries_read_one_by_one(messages: list[index_pb2.Query]) -> None:
    request = index_pb2.SearchRequest(queries=messages)
    one_by_one = [query_from_message(query, f"queries[{n}]") for n, query in enumerate(request.queries)]
    at_once = queries_from_messages(request.queries)
    assert [(query.text, query.document_id) for query in at_once] == [
        (query.text, query.document_id) for query in one_by_one
    ]
    for read, expected in zip(at_once, one_by_one, strict=True):
        if expected.vector is None:
            assert read.vector is None
        else:
            assert read.vector.dtype == np.float32
            assert read.vector.tobytes() == expected.vector.tobytes()


def test_a_batch_of_vector_queries_answers_as_each_alone(client: VecserveClient) -> None:
    vectors = list(np.random.default_rng(5).standard_normal((20, DIMENSION)).astype(np.float32))
    together = client.search(INDEX, vectors, k=3, ids_only=True)
    assert ids_and_scores(together) == [ids_and_scores(client.search(INDEX, [v], k=3))[0] for v in vectors]
    with pytest.raises(grpc.RpcError) as raised:
        client.search(INDEX, [vectors[0], np.ones(DIMENSION + 1)])
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "queries[1].vector" in raised.value.details()
