"""The HTTP/JSON (Connect) transport through real HTTP calls against a real server: every RPC, the error
mapping (HTTP status, Connect code, message, details), the message limit, token roles, TLS, and the
same answers as gRPC on the same data."""

from __future__ import annotations

import base64
import json
import ssl
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from vecserve.v1 import (
    analogy_pb2,
    analogy_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    index_pb2,
    index_pb2_grpc,
)

from service.config import Settings
from service.embedding.encoder import Encoder
from service.grpc_server.server import RunningServer, create_server
from tests.certs import CertificateAuthority
from tests.test_auth import READ_TOKEN, WRITE_TOKEN, write_tokens_file

MAX_MESSAGE_BYTES = 64 * 1024
VOCABULARY_SIZE = 2000
M = TypeVar("M", bound=Message)


@contextmanager
def http_server(encoder: Encoder, directory: Path, **settings: Any) -> Iterator[RunningServer]:
    running = create_server(
        Settings(
            listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            data_dir=directory,
            max_message_bytes=MAX_MESSAGE_BYTES,
            vocabulary_size=VOCABULARY_SIZE,
            **settings,
        ),
        encoder=encoder,
    )
    try:
        yield running
    finally:
        running.stop(grace=5)


@pytest.fixture(scope="module")
def server(encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with http_server(encoder, tmp_path_factory.mktemp("http-data")) as running:
        yield running


@pytest.fixture(scope="module")
def base_url(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def post(base_url: str, rpc: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/vecserve.v1.{rpc}",
        content=body,
        headers={"content-type": "application/json", **headers},
        timeout=120,
    )


def call(base_url: str, rpc: str, request: Message, answer: type[M], token: str | None = None) -> M:
    """One Connect JSON call; the answer parsed into `answer` (a non-200 status fails the test)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = post(base_url, rpc, json_format.MessageToJson(request).encode(), **headers)
    assert response.status_code == 200, response.text
    return json_format.Parse(response.text, answer())


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def field_violations(error: dict[str, Any]) -> list[str]:
    fields = []
    for detail in error.get("details", []):
        assert detail["type"] == "google.rpc.BadRequest"
        padded = detail["value"] + "=" * (-len(detail["value"]) % 4)  # Connect sends unpadded base64
        bad_request = error_details_pb2.BadRequest.FromString(base64.b64decode(padded))
        fields.extend(violation.field for violation in bad_request.field_violations)
    return fields


def enveloped(*messages: Message) -> bytes:
    """A Connect streaming request body: each message as flags (0), a 4-byte length and its JSON."""
    body = b""
    for message in messages:
        data = json_format.MessageToJson(message).encode()
        body += struct.pack(">BI", 0, len(data)) + data
    return body


def test_embed_with_the_readme_curl_body(base_url: str) -> None:
    response = post(base_url, "EmbeddingService/Embed", b'{"texts":["hello world"]}')
    assert response.status_code == 200
    answer = response.json()
    assert answer["dimension"] == 384
    assert len(answer["embeddings"][0]["values"]) == 384


def test_every_rpc_answers_over_http(base_url: str) -> None:
    called: set[str] = set()

    def rpc(name: str, request: Message, answer: type[M]) -> M:
        called.add(name)
        return call(base_url, name, request, answer)

    embed = rpc(
        "EmbeddingService/Embed", embedding_pb2.EmbedRequest(texts=["a cat"]), embedding_pb2.EmbedResponse
    )
    assert len(embed.embeddings[0].values) == 384
    tokens = rpc(
        "EmbeddingService/Tokenize",
        embedding_pb2.TokenizeRequest(texts=["a cat"]),
        embedding_pb2.TokenizeResponse,
    )
    assert [token.text for token in tokens.results[0].tokens if not token.special] == ["a", "cat"]
    rows = rpc(
        "EmbeddingService/CompareTexts",
        embedding_pb2.CompareTextsRequest(left_texts=["cat"], right_texts=["cat", "tax law"]),
        embedding_pb2.CompareTextsResponse,
    )
    assert rows.rows[0].scores[0] > rows.rows[0].scores[1]
    info = rpc(
        "EmbeddingService/GetModelInfo",
        embedding_pb2.GetModelInfoRequest(),
        embedding_pb2.GetModelInfoResponse,
    )
    assert info.max_message_bytes == MAX_MESSAGE_BYTES

    created = rpc(
        "IndexService/CreateIndex", index_pb2.CreateIndexRequest(name="every"), index_pb2.CreateIndexResponse
    )
    assert created.index.name == "every"
    upserted = rpc(
        "IndexService/UpsertDocuments",
        index_pb2.UpsertDocumentsRequest(
            index_name="every", documents=[index_pb2.Document(id="cat", text="a cat sleeps")]
        ),
        index_pb2.UpsertDocumentsResponse,
    )
    assert list(upserted.ids) == ["cat"]
    # Client streaming over HTTP/1.1: the enveloped messages, then the end of the body.
    called.add("IndexService/StreamUpsertDocuments")
    streamed = httpx.post(
        f"{base_url}/vecserve.v1.IndexService/StreamUpsertDocuments",
        content=enveloped(
            index_pb2.StreamUpsertDocumentsRequest(
                index_name="every", documents=[index_pb2.Document(id="dog", text="a dog barks")]
            ),
            index_pb2.StreamUpsertDocumentsRequest(documents=[index_pb2.Document(id="tax", text="tax law")]),
        ),
        headers={"content-type": "application/connect+json"},
        timeout=120,
    )
    assert streamed.status_code == 200
    flags, length = struct.unpack(">BI", streamed.content[:5])
    assert flags == 0
    counts = json_format.Parse(streamed.content[5 : 5 + length], index_pb2.StreamUpsertDocumentsResponse())
    assert (counts.upserted_count, counts.message_count) == (2, 2)
    document = rpc(
        "IndexService/GetDocument",
        index_pb2.GetDocumentRequest(index_name="every", id="dog"),
        index_pb2.GetDocumentResponse,
    )
    assert document.document.text == "a dog barks"
    hits = rpc(
        "IndexService/Search",
        index_pb2.SearchRequest(index_name="every", queries=[index_pb2.Query(text="kitten")], k=1),
        index_pb2.SearchResponse,
    )
    assert hits.results[0].hits[0].id == "cat"
    index = rpc(
        "IndexService/GetIndex", index_pb2.GetIndexRequest(index_name="every"), index_pb2.GetIndexResponse
    )
    assert index.index.document_count == 3
    listed = rpc("IndexService/ListIndexes", index_pb2.ListIndexesRequest(), index_pb2.ListIndexesResponse)
    assert "every" in [item.name for item in listed.indexes]
    deleted = rpc(
        "IndexService/DeleteDocuments",
        index_pb2.DeleteDocumentsRequest(index_name="every", ids=["tax"]),
        index_pb2.DeleteDocumentsResponse,
    )
    assert deleted.deleted_count == 1
    rpc(
        "IndexService/DeleteIndex",
        index_pb2.DeleteIndexRequest(index_name="every"),
        index_pb2.DeleteIndexResponse,
    )

    solved = rpc(
        "AnalogyService/SolveAnalogy",
        analogy_pb2.SolveAnalogyRequest(positive=["king", "woman"], negative=["man"], k=3),
        analogy_pb2.SolveAnalogyResponse,
    )
    assert len(solved.answers) == 3
    relations = rpc(
        "AnalogyService/CompareRelations",
        analogy_pb2.CompareRelationsRequest(
            reference=analogy_pb2.WordPair(first="man", second="woman"),
            candidates=[analogy_pb2.WordPair(first="king", second="queen")],
        ),
        analogy_pb2.CompareRelationsResponse,
    )
    assert len(relations.comparisons) == 1
    assert 0 <= relations.comparisons[0].offset_percentile <= 100
    related = rpc(
        "AnalogyService/FindRelatedPairs",
        analogy_pb2.FindRelatedPairsRequest(
            reference=analogy_pb2.WordPair(first="big", second="bigger"), k=2, first_word_count=200
        ),
        analogy_pb2.FindRelatedPairsResponse,
    )
    assert len(related.pairs) == 2
    similar = rpc(
        "AnalogyService/FindSimilarWords",
        analogy_pb2.FindSimilarWordsRequest(queries=["ocean"], k=2),
        analogy_pb2.FindSimilarWordsResponse,
    )
    assert len(similar.results[0].words) == 2
    vocabulary = rpc(
        "AnalogyService/GetVocabulary",
        analogy_pb2.GetVocabularyRequest(words=["king"]),
        analogy_pb2.GetVocabularyResponse,
    )
    assert vocabulary.word_count == VOCABULARY_SIZE

    every = {
        f"{service.name}/{method.name}"
        for file in (embedding_pb2.DESCRIPTOR, index_pb2.DESCRIPTOR, analogy_pb2.DESCRIPTOR)
        for service in file.services_by_name.values()
        for method in service.methods
    }
    assert called == every


@pytest.mark.parametrize(
    ("rpc", "body", "status", "code", "message_part", "fields"),
    [
        ("EmbeddingService/Embed", {"texts": []}, 400, "invalid_argument", "texts is empty", ["texts"]),
        ("IndexService/GetIndex", {"indexName": "missing"}, 404, "not_found", "'missing'", []),
        (
            "IndexService/Search",
            {"indexName": "missing", "queries": [{}]},
            400,
            "invalid_argument",
            "queries[0] is empty",
            ["queries[0]"],
        ),
        ("EmbeddingService/Embed", {"texts": "not a list"}, 400, "invalid_argument", "", []),
        ("EmbeddingService/NoSuchRpc", {}, 404, None, "", []),
    ],
)
def test_errors_keep_their_code_message_and_details(
    base_url: str,
    rpc: str,
    body: dict[str, Any],
    status: int,
    code: str | None,
    message_part: str,
    fields: list[str],
) -> None:
    response = post(base_url, rpc, json.dumps(body).encode())
    assert response.status_code == status, response.text
    if code is None:
        return
    error = error_of(response)
    assert error["code"] == code
    assert message_part in error["message"]
    assert field_violations(error) == fields


def test_an_existing_index_is_already_exists(base_url: str) -> None:
    body = json.dumps({"name": "twice"}).encode()
    assert post(base_url, "IndexService/CreateIndex", body).status_code == 200
    response = post(base_url, "IndexService/CreateIndex", body)
    assert (response.status_code, error_of(response)["code"]) == (409, "already_exists")


def test_a_body_over_the_message_limit_is_refused_with_advice(base_url: str) -> None:
    body = json.dumps({"texts": ["word " * 1000] * 20}).encode()
    assert len(body) > MAX_MESSAGE_BYTES
    response = post(base_url, "EmbeddingService/Embed", body)
    assert response.status_code == 429
    error = error_of(response)
    assert error["code"] == "resource_exhausted"
    assert "split it into smaller requests" in error["message"]
    assert f"{MAX_MESSAGE_BYTES:,}" in error["message"]


def test_a_count_limit_is_the_same_as_over_grpc(base_url: str, server: RunningServer) -> None:
    texts = ["a"] * (server.core.settings.max_texts_per_request + 1)
    response = post(base_url, "EmbeddingService/Embed", json.dumps({"texts": texts}).encode())
    assert response.status_code == 400
    error = error_of(response)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, pytest.raises(grpc.RpcError) as raised:
        embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(embedding_pb2.EmbedRequest(texts=texts))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error["message"] == raised.value.details()


def test_token_roles_over_http(encoder: Encoder, tmp_path: Path) -> None:
    with http_server(
        encoder, tmp_path / "data", tokens_file=write_tokens_file(tmp_path / "tokens")
    ) as running:
        base_url = f"http://127.0.0.1:{running.http_port}"
        embed = json.dumps({"texts": ["door"]}).encode()
        create = json.dumps({"name": "guarded"}).encode()

        def outcome(rpc: str, body: bytes, token: str | None) -> tuple[int, str | None]:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            response = post(base_url, rpc, body, **headers)
            return response.status_code, None if response.status_code == 200 else error_of(response)["code"]

        assert outcome("EmbeddingService/Embed", embed, None) == (401, "unauthenticated")
        assert outcome("EmbeddingService/Embed", embed, "x" * 20) == (401, "unauthenticated")
        assert outcome("EmbeddingService/Embed", embed, READ_TOKEN) == (200, None)
        assert outcome("IndexService/CreateIndex", create, READ_TOKEN) == (403, "permission_denied")
        assert outcome("IndexService/CreateIndex", create, WRITE_TOKEN) == (200, None)
        denied = post(base_url, "IndexService/DeleteIndex", b"{}", authorization=f"Bearer {READ_TOKEN}")
        assert "needs a write token" in error_of(denied)["message"]


def test_tls_applies_to_the_http_port(encoder: Encoder, tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path / "certs")
    server_cert = authority.issue("localhost", server=True)
    trusting = ssl.create_default_context(cafile=authority.cert_path)
    with http_server(
        encoder, tmp_path / "data", tls_cert=server_cert.cert, tls_key=server_cert.key
    ) as running:
        url = f"https://localhost:{running.http_port}/vecserve.v1.EmbeddingService/GetModelInfo"
        answer = httpx.post(url, json={}, verify=trusting, timeout=60)
        assert answer.status_code == 200
        assert answer.json()["dimension"] == 384
        with pytest.raises(httpx.TransportError):
            httpx.post(url.replace("https:", "http:"), json={}, timeout=60)


def test_mutual_tls_applies_to_the_http_port(encoder: Encoder, tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path / "certs")
    server_cert = authority.issue("localhost", server=True)
    client_cert = authority.issue("a client", server=False)
    anonymous = ssl.create_default_context(cafile=authority.cert_path)
    identified = ssl.create_default_context(cafile=authority.cert_path)
    identified.load_cert_chain(client_cert.cert, client_cert.key)
    with http_server(
        encoder,
        tmp_path / "data",
        tls_cert=server_cert.cert,
        tls_key=server_cert.key,
        tls_client_ca=authority.cert_path,
    ) as running:
        url = f"https://localhost:{running.http_port}/vecserve.v1.EmbeddingService/GetModelInfo"
        assert httpx.post(url, json={}, verify=identified, timeout=60).status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.post(url, json={}, verify=anonymous, timeout=60)


def test_grpc_and_http_give_the_same_answers(base_url: str, server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        embedding = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        indexes = index_pb2_grpc.IndexServiceStub(channel)
        analogies = analogy_pb2_grpc.AnalogyServiceStub(channel)

        embed_request = embedding_pb2.EmbedRequest(texts=["hello world", "a quiet harbour"])
        over_grpc = embedding.Embed(embed_request)
        over_http = call(base_url, "EmbeddingService/Embed", embed_request, embedding_pb2.EmbedResponse)
        assert [list(e.values) for e in over_http.embeddings] == [
            list(e.values) for e in over_grpc.embeddings
        ]

        indexes.CreateIndex(index_pb2.CreateIndexRequest(name="shared"))
        indexes.UpsertDocuments(
            index_pb2.UpsertDocumentsRequest(
                index_name="shared",
                documents=[
                    index_pb2.Document(id=str(number), text=text)
                    for number, text in enumerate(
                        ["boats in a harbour", "tax law", "a sleeping cat", "sailing"]
                    )
                ],
            )
        )
        search = index_pb2.SearchRequest(index_name="shared", queries=[index_pb2.Query(text="ships")], k=3)
        assert call(base_url, "IndexService/Search", search, index_pb2.SearchResponse) == indexes.Search(
            search
        )

        analogy = analogy_pb2.SolveAnalogyRequest(positive=["king", "woman"], negative=["man"], k=5)
        over_http_analogy = call(
            base_url, "AnalogyService/SolveAnalogy", analogy, analogy_pb2.SolveAnalogyResponse
        )
        assert over_http_analogy == analogies.SolveAnalogy(analogy)
