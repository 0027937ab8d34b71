"""Faults of `cluster serve` on a local multi-node Ray cluster (ray.cluster_utils.Cluster), with the real
model: a shard replica killed in the middle of a streamed load, the node of a shard removed (UNAVAILABLE
naming the shard while it is down), an encoder replica killed under concurrent embeds. Afterwards every
acknowledged document is there and searches equal one flat index of the same documents."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import ray
from ray._private import state
from ray.cluster_utils import Cluster

from clients import VecserveClient
from service.cluster.routing import shard_of
from service.cluster.serving import APP_NAME, ClusterServer, ClusterSettings, start_cluster_server
from service.config import Settings
from service.index.model import Document, Query
from service.index.store import IndexStore
from tests.waiting import wait_until

# Ray warns about its own use of deprecated pydantic options.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")]
DIMENSION = 384
SHARD_SLOT = "shard_slot"  # one per worker node: each holds one shard, and no node has a spare one
SHARD_TIMEOUT_SECONDS = 3.0
RECOVERY_SECONDS = 120.0


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    """A head (the ingress and two encoder replicas) and two worker nodes (a shard each)."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, resources={SHARD_SLOT: 1})
        ray.init(address=cluster.address, logging_level="warning")
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def server(ray_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServer]:
    settings = Settings(listen="127.0.0.1:0", data_dir=tmp_path_factory.mktemp("faults"), vocabulary_size=100)
    layout = ClusterSettings(
        encoder_replicas=2,
        cpus_per_encoder=0.5,
        cpus_per_shard=0,
        shard_resources={SHARD_SLOT: 1},
        shard_timeout_seconds=SHARD_TIMEOUT_SECONDS,
    )
    running = start_cluster_server(settings, layout, shard_count=2)
    yield running
    running.stop()


@pytest.fixture
def client(server: ClusterServer) -> Iterator[VecserveClient]:
    with VecserveClient(f"127.0.0.1:{server.port}", timeout=60) as connected:
        yield connected


def replica(deployment: str) -> dict[str, Any]:
    """The Ray actor of a live replica of the deployment (its pid and node)."""
    prefix = f"SERVE_REPLICA::{APP_NAME}#{deployment}#"
    return next(
        info
        for info in state.actors().values()
        if info["Name"].startswith(prefix) and info["State"] == "ALIVE"
    )


def vector_documents(start: int, count: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(start)
    return [
        {
            "id": f"d{number}",
            "text": f"document {number}",
            "vector": rng.standard_normal(DIMENSION).astype(np.float32),
        }
        for number in range(start, start + count)
    ]


def answers(client: VecserveClient, name: str) -> bool:
    try:
        client.get_index(name)
        client.search(name, [np.ones(DIMENSION, dtype=np.float32)], k=1)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        return False
    return True


def assert_matches_flat(
    client: VecserveClient, name: str, documents: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Every document is stored as sent, and searches equal one flat index of them."""
    flat = IndexStore(tmp_path / "flat")
    try:
        flat.create_index(name, dimension=DIMENSION)
        for start in range(0, len(documents), 500):
            flat.upsert(
                name, [Document(d["id"], d["text"], {}, d["vector"]) for d in documents[start : start + 500]]
            )
        assert client.get_index(name).document_count == len(documents)
        for document in documents[::7]:
            assert client.get_document(name, document["id"]).text == document["text"]
        probes = list(np.random.default_rng(99).standard_normal((5, DIMENSION)).astype(np.float32))
        served = client.search(name, probes, k=15)
        expected = flat.search(name, [Query(vector=probe) for probe in probes], k=15)
        assert [[hit.id for hit in hits] for hits in served] == [
            [hit.id for hit in hits] for hits in expected
        ]
    finally:
        flat.close()


def test_a_shard_replica_killed_mid_stream_loses_no_acknowledged_document(
    client: VecserveClient, tmp_path: Path
) -> None:
    name = "killed-mid-stream"
    client.create_index(name, dimension=DIMENSION)
    messages = [vector_documents(number * 40, 40) for number in range(60)]
    sent = threading.Event()
    killed = threading.Event()

    def paced() -> Iterator[list[dict[str, Any]]]:
        for number, message in enumerate(messages):
            yield message
            if number == 10:
                # The rest of the stream goes out once the shard's replica is dead: killed mid-stream.
                sent.set()
                killed.wait(RECOVERY_SECONDS)

    with ThreadPoolExecutor(1) as background:
        streaming = background.submit(client.stream_upsert, name, paced(), 120)
        assert sent.wait(RECOVERY_SECONDS)
        # Killed once the first messages are stored: the stream holds its next ones until then.
        stored = 10 * len(messages[0])
        wait_until(
            lambda: client.get_index(name).document_count >= stored, "10 messages stored", RECOVERY_SECONDS
        )
        os.kill(replica("shard-0")["Pid"], signal.SIGKILL)
        killed.set()
        try:
            response = streaming.result()
            acknowledged = (
                response.message_count
            )  # the stream outlived the replica: it waited for the new one
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE and "shard-0" in error.details(), error
            # "message N: ... (M documents of the N-1 earlier messages were stored)"
            acknowledged = int(re.search(r"of the (\d+) earlier messages were stored", error.details())[1])
    assert acknowledged >= 10  # 10 messages had been stored when the replica was killed
    wait_until(lambda: answers(client, name), "the index to answer again", RECOVERY_SECONDS)
    for message in messages[:acknowledged]:
        for document in message[::5]:
            assert client.get_document(name, document["id"]).text == document["text"]
    # The client resumes where the acknowledgement ended.
    client.stream_upsert(name, messages[acknowledged:] or [messages[-1]], 120)
    assert_matches_flat(client, name, [document for message in messages for document in message], tmp_path)


def test_a_shard_whose_node_is_removed_is_unavailable_until_it_is_back(
    ray_cluster: Cluster, client: VecserveClient, tmp_path: Path
) -> None:
    name = "node-removed"
    client.create_index(name, dimension=DIMENSION)
    documents = vector_documents(0, 600)
    for start in range(0, 600, 200):
        client.upsert(name, documents[start : start + 200])
    node_id = replica("shard-1")["Address"]["NodeID"]
    node = next(node for node in ray_cluster.worker_nodes if node.node_id == node_id)
    ray_cluster.remove_node(node, allow_graceful=False)
    on_shard_1 = next(d for d in documents if shard_of(d["id"], 2) == 1)
    on_shard_0 = next(d for d in documents if shard_of(d["id"], 2) == 0)
    # The replica's process outlives its raylet for a moment; then no node has a free slot for shard-1:
    # it stays down, and says so.
    wait_until(lambda: not answers(client, name), "the index to stop answering", 30)
    for attempt in (
        lambda: client.search(name, [documents[0]["vector"]], k=3),
        lambda: client.get_index(name),
        lambda: client.upsert(name, [on_shard_1]),
        lambda: client.get_document(name, on_shard_1["id"]),
    ):
        with pytest.raises(grpc.RpcError) as down:
            attempt()
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE and "shard-1" in down.value.details()
    assert client.get_document(name, on_shard_0["id"]).text == on_shard_0["text"]  # the other shard serves
    ray_cluster.add_node(num_cpus=1, resources={SHARD_SLOT: 1})
    wait_until(lambda: answers(client, name), "the index to answer again", RECOVERY_SECONDS)
    assert_matches_flat(client, name, documents, tmp_path)


def test_an_encoder_replica_killed_under_load_fails_no_call_and_the_service_goes_on(
    client: VecserveClient,
) -> None:
    stop = threading.Event()
    outcomes: list[str] = []

    def embed_until_stopped(number: int) -> None:
        while not stop.is_set():
            try:
                client.embed_array([f"sentence {number} {time.monotonic()}"] * 8)
                outcomes.append("ok")
            except grpc.RpcError as error:
                outcomes.append(error.code().name)

    with ThreadPoolExecutor(4) as callers:
        for number in range(4):
            callers.submit(embed_until_stopped, number)
        wait_until(lambda: len(outcomes) >= 8, "every caller embedding", RECOVERY_SECONDS)
        before = len(outcomes)
        os.kill(replica("encoder")["Pid"], signal.SIGKILL)
        # Calls go on after the kill: the callers' next rounds, and the ones in flight, all answered.
        wait_until(lambda: len(outcomes) >= before + 40, "calls answered after the kill", RECOVERY_SECONDS)
        stop.set()
    assert before > 0 and outcomes.count("ok") > before
    # Calls in flight on the killed replica were sent again to the other one: none failed.
    assert set(outcomes) == {"ok"}, {code: outcomes.count(code) for code in set(outcomes)}
    assert client.embed_array(["still embedding"]).shape == (1, DIMENSION)
