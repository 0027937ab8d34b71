"""`vecserve cluster serve` on a local Ray: every RPC through the ingress with the real client and the CLI,
the answers of one flat index and of one server's encoder, what `cluster index` wrote served as it is,
bearer-token roles, health and reflection without a token, and TLS."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vecserve.v1 import index_pb2

from clients import VecserveClient
from clients.cli import main
from service.api.auth import Role, protected_methods
from service.cluster.indexing import EmbeddedBatch, ErrorBudget, IndexRequest, ShardWriter
from service.cluster.manifest import open_manifest
from service.cluster.serving import ClusterServer, ClusterSettings, start_cluster_server
from service.config import Settings
from service.embedding.encoder import Encoder
from service.index.filters import Condition
from service.index.model import Document, Metric, Query
from service.index.store import IndexStore
from tests.certs import CertificateAuthority
from tests.rpcs import Rpc, all_rpcs, outcome, served_services
from tests.test_auth import INDEX, READ_TOKEN, REQUESTS, TOKENS, WRITE_TOKEN, metadata_for, write_tokens_file
from tests.test_node_client import node_client, run_node  # noqa: F401 - node_client is a fixture

# Ray warns about its own use of deprecated pydantic and Ray Data options.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")]
PRELOADED = "preloaded"
DIMENSION = 384


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cluster(
    ca: CertificateAuthority, encoder: Encoder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterServer]:
    """One application for the module, over 2 shards, with tokens and TLS (as a deployment would run)."""
    directory = tmp_path_factory.mktemp("cluster")
    data_dir = directory / "data"
    preload(data_dir, encoder)
    server_cert = ca.issue("localhost", server=True)
    settings = Settings(
        listen="127.0.0.1:0",
        data_dir=data_dir,
        tokens_file=write_tokens_file(directory / "tokens"),
        tls_cert=server_cert.cert,
        tls_key=server_cert.key,
        vocabulary_size=300,  # embedded through the encoder deployment at start
        max_texts_per_request=64,
    )
    ray.init(num_cpus=4, include_dashboard=False, logging_level="warning")
    try:
        server = start_cluster_server(settings, ClusterSettings(cpus_per_shard=0.5), shard_count=None)
        with connect(server, ca) as client:
            client.create_index(INDEX)
            client.upsert(INDEX, [{"id": "door", "text": "a door in the wall"}])
        yield server
        server.stop()
    finally:
        ray.shutdown()


def preload(data_dir: Path, encoder: Encoder) -> None:
    """What `cluster index --shards 2` writes, written here without Ray."""
    texts = [f"preloaded text number {number}" for number in range(30)]
    batch = EmbeddedBatch(
        documents=[
            Document(id=f"p{number}", text=text, metadata={"n": number}, vector=vector)
            for number, (text, vector) in enumerate(zip(texts, encoder.encode(texts), strict=True))
        ],
        wheres=[f"input:{number}" for number in range(30)],
    )
    writer = ShardWriter(data_dir, open_manifest(data_dir, 2), IndexRequest(PRELOADED), "all-MiniLM-L6-v2")
    try:
        assert writer.write(batch, ErrorBudget(0, print)) == 30
    finally:
        writer.close()


def address(cluster: ClusterServer) -> str:
    return f"localhost:{cluster.port}"


def connect(
    cluster: ClusterServer, ca: CertificateAuthority, token: str | None = WRITE_TOKEN
) -> VecserveClient:
    return VecserveClient(address(cluster), timeout=120, token=token, ca_file=ca.cert_path)


@pytest.fixture(scope="module")
def channel(cluster: ClusterServer, ca: CertificateAuthority) -> Iterator[grpc.Channel]:
    credentials = grpc.ssl_channel_credentials(ca.cert_path.read_bytes())
    with grpc.secure_channel(address(cluster), credentials) as opened:
        yield opened


def test_embedding_rpcs_answer_as_one_server(
    cluster: ClusterServer, ca: CertificateAuthority, encoder: Encoder
) -> None:
    texts = ["a red bicycle", "a short poem about rain"]
    with connect(cluster, ca) as client:
        np.testing.assert_allclose(client.embed_array(texts), encoder.encode(texts), atol=1e-5)
        info = client.model_info()
        assert (info.dimension, info.max_texts_per_request) == (DIMENSION, 64)
        tokens = client.tokenize(["bicycles"])
        assert tokens.results[0].tokens[0].text == "[CLS]"
        matrix = client.compare(["cat"], ["cat", "car"])
        assert matrix[0, 0] == pytest.approx(1.0, abs=1e-5) and matrix[0, 1] < 0.99


def test_index_rpcs_answer_as_one_flat_index(
    cluster: ClusterServer, ca: CertificateAuthority, tmp_path: Path
) -> None:
    name = f"items-{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((200, DIMENSION)).astype(np.float32)
    documents = [
        {
            "id": f"v{number}",
            "text": f"item {number}",
            "metadata": {"odd": bool(number % 2)},
            "vector": vectors[number],
        }
        for number in range(200)
    ]
    flat = IndexStore(tmp_path / "flat")
    try:
        flat.create_index(name, dimension=DIMENSION, metric=Metric.INNER_PRODUCT)
        flat.upsert(name, [Document(d["id"], d["text"], d["metadata"], d["vector"]) for d in documents])
        flat.delete_documents(name, ["v1", "v2"])
        with connect(cluster, ca) as client:
            created = client.create_index(name, metric="inner_product", dimension=DIMENSION)
            assert created.document_count == 0
            assert client.upsert(name, documents[:150]) == [d["id"] for d in documents[:150]]
            streamed = client.stream_upsert(name, [documents[150:175], documents[175:]])
            assert (streamed.upserted_count, streamed.message_count) == (50, 2)
            assert client.delete_documents(name, ["v1", "v2", "never-stored"]) == 2
            assert client.get_index(name).document_count == 198
            assert name in {index.name for index in client.all_indexes()}
            assert client.get_document(name, "v7").text == "item 7"
            probes = [*rng.standard_normal((3, DIMENSION)).astype(np.float32)]
            for search_filter, conditions in [({}, []), ({"odd": True}, [Condition("odd", equals=True)])]:
                served = client.search(name, probes, k=20, filter=search_filter)
                expected = flat.search(
                    name, [Query(vector=probe) for probe in probes], k=20, conditions=conditions
                )
                assert [[hit.id for hit in hits] for hits in served] == [
                    [hit.id for hit in hits] for hits in expected
                ]
                for served_hits, expected_hits in zip(served, expected, strict=True):
                    np.testing.assert_allclose(
                        [hit.score for hit in served_hits], [hit.score for hit in expected_hits], rtol=1e-5
                    )
            by_document = client.search(name, [index_pb2.Query(document_id="v9")], k=5)[0]
            expected_by_document = flat.search(name, [Query(document_id="v9")], k=5)[0]
            assert [hit.id for hit in by_document] == [hit.id for hit in expected_by_document]
            client.delete_index(name)
            with pytest.raises(grpc.RpcError) as missing:
                client.get_index(name)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        flat.close()


def test_what_cluster_index_wrote_is_served(cluster: ClusterServer, ca: CertificateAuthority) -> None:
    with connect(cluster, ca, token=READ_TOKEN) as client:
        assert client.get_index(PRELOADED).document_count == 30
        hits = client.search(PRELOADED, ["preloaded text number 7"], k=3)[0]
        assert hits[0].id == "p7" and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_analogy_rpcs_work_over_the_cluster(cluster: ClusterServer, ca: CertificateAuthority) -> None:
    with connect(cluster, ca, token=READ_TOKEN) as client:
        assert client.get_vocabulary(["the"]).contains == [True]
        assert len(client.solve_analogy(["king", "woman"], ["man"], k=3)) == 3
        assert len(client.find_similar_words(["house"], k=2)[0]) == 2
        assert len(client.compare_relations(("paris", "france"), [("rome", "italy")]).comparisons) == 1
        assert client.get_vocabulary(vocabulary_index=PRELOADED).word_count == 30


def test_the_cli_works_against_the_cluster(
    cluster: ClusterServer, ca: CertificateAuthority, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    common = ["--address", address(cluster), "--ca-file", str(ca.cert_path), "--token", WRITE_TOKEN]
    source = tmp_path / "notes.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"n{n}", "text": f"note {n} about boats"}) + "\n" for n in range(12))
    )
    assert main([*common, "index", "create", name]) == 0
    assert main([*common, "add", name, str(source), "--no-progress", "--batch-size", "5"]) == 0
    capsys.readouterr()
    assert main([*common, "--json", "search", name, "note 3 about boats", "-k", "2"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["hits"][0]["id"] == "n3"
    assert main([*common, "--json", "index", "get", name]) == 0
    assert int(json.loads(capsys.readouterr().out)["document_count"]) == 12
    assert main([*common, "info"]) == 0
    assert main([*common, "index", "delete", name, "--yes"]) == 0


@pytest.mark.parametrize("token_name", list(TOKENS))
@pytest.mark.parametrize("rpc", all_rpcs(), ids=str)
def test_roles_as_on_one_server(channel: grpc.Channel, rpc: Rpc, token_name: str) -> None:
    code = outcome(channel, rpc, REQUESTS[rpc.short_name](), metadata=metadata_for(TOKENS[token_name]))
    if token_name in ("none", "wrong"):
        assert code == grpc.StatusCode.UNAUTHENTICATED
    elif token_name == "read" and protected_methods()[rpc.path] is not Role.READ:
        assert code == grpc.StatusCode.PERMISSION_DENIED
    else:
        assert code not in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.INTERNAL,
        ), code


def test_health_and_reflection_need_no_token(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    assert {
        "vecserve.v1.IndexService",
        "vecserve.v1.EmbeddingService",
        "grpc.health.v1.Health",
    } <= served_services(channel)


def test_plaintext_is_refused(cluster: ClusterServer) -> None:
    with (
        VecserveClient(address(cluster), timeout=5, token=READ_TOKEN) as client,
        pytest.raises(grpc.RpcError) as refused,
    ):
        client.model_info()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="needs node and npm")
def test_the_node_client_works_against_the_cluster(
    node_client: Path,  # noqa: F811 - the fixture of tests/test_node_client.py
    cluster: ClusterServer,
    ca: CertificateAuthority,
) -> None:
    result = run_node(
        node_client, address(cluster), "--ca-file", str(ca.cert_path), "--token", READ_TOKEN, "info"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dimension"] == DIMENSION


@pytest.mark.skipif(shutil.which("npx") is None, reason="buf curl needs npx (Node.js)")
def test_buf_curl_works_against_the_cluster_through_reflection(
    cluster: ClusterServer, ca: CertificateAuthority, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            "npx",
            "-y",
            "@bufbuild/buf",
            "curl",
            "--protocol",
            "grpc",
            "--cacert",
            str(ca.cert_path),
            "-H",
            f"Authorization: Bearer {READ_TOKEN}",
            "-d",
            '{"texts": ["hello world"]}',
            f"https://{address(cluster)}/vecserve.v1.EmbeddingService/Embed",
        ],
        cwd=tmp_path,  # no .proto files to fall back on: reflection is the only source
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["embeddings"][0]["values"]) == DIMENSION
