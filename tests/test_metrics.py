"""Prometheus metrics over HTTP: calls by method and code, latency, batch sizes, queue depth, indexes,
and encoder work skipped for calls that timed out."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients import VecserveClient
from service.config import Settings
from service.embedding.encoder import Encoder
from service.errors import InvalidSettings
from service.grpc_server.server import RunningServer, create_server

EMBEDDING = "vecserve.v1.EmbeddingService"
INDEXES = "vecserve.v1.IndexService"


@pytest.fixture
def metered(encoder: Encoder, tmp_path: Path) -> Iterator[RunningServer]:
    """A server of its own (fresh counters) with metrics on a free port."""
    settings = Settings(listen="127.0.0.1:0", data_dir=tmp_path / "data", metrics_listen="127.0.0.1:0")
    running = create_server(settings, encoder=encoder)
    yield running
    running.stop(grace=2)


def scrape(running: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_calls_are_counted_by_method_and_code(metered: RunningServer) -> None:
    with VecserveClient(f"127.0.0.1:{metered.port}", timeout=60) as client:
        for _ in range(3):
            client.embed(["counted"])
        with pytest.raises(grpc.RpcError):
            client.embed([])
        with pytest.raises(grpc.RpcError):
            client.get_index("absent")
    samples = scrape(metered)
    requests = "vecserve_grpc_requests_total"
    assert value(samples, requests, service=EMBEDDING, method="Embed", code="OK") == 3
    assert value(samples, requests, service=EMBEDDING, method="Embed", code="INVALID_ARGUMENT") == 1
    assert value(samples, requests, service=INDEXES, method="GetIndex", code="NOT_FOUND") == 1
    latency = "vecserve_grpc_request_duration_seconds"
    assert value(samples, f"{latency}_count", service=EMBEDDING, method="Embed") == 4
    assert value(samples, f"{latency}_sum", service=EMBEDDING, method="Embed") > 0
    assert value(samples, f"{latency}_bucket", service=EMBEDDING, method="Embed", le="+Inf") == 4
    assert value(samples, "vecserve_grpc_requests_in_flight") == 0


def test_batches_and_queue_depth(metered: RunningServer) -> None:
    with VecserveClient(f"127.0.0.1:{metered.port}", timeout=60) as client:
        client.embed([f"text {i}" for i in range(5)])
    samples = scrape(metered)
    assert value(samples, "vecserve_encoder_batch_texts_count") >= 1
    assert value(samples, "vecserve_encoder_batch_texts_sum") >= 5
    assert value(samples, "vecserve_encoder_batches_total") >= 1
    assert ("vecserve_encoder_queued_texts", ()) in samples


def test_index_sizes_are_read_at_scrape_time(metered: RunningServer) -> None:
    with VecserveClient(f"127.0.0.1:{metered.port}", timeout=60) as client:
        client.create_index("metered", dimension=4)
        client.create_index("empty", dimension=4)
        client.upsert("metered", [{"id": str(i), "vector": [1.0, i, 0.0, 1.0]} for i in range(5)])
        samples = scrape(metered)
        assert value(samples, "vecserve_indexes") == 2
        assert value(samples, "vecserve_vectors_stored") == 5
        assert value(samples, "vecserve_index_documents", index="metered") == 5
        assert value(samples, "vecserve_index_documents", index="empty") == 0
        assert value(samples, "vecserve_index_disk_bytes", index="metered") > 0
        assert value(samples, "vecserve_index_memory_bytes", index="metered") > 0
        client.delete_documents("metered", ["0", "1"])
        client.delete_index("empty")
    samples = scrape(metered)
    assert value(samples, "vecserve_vectors_stored") == 3
    assert value(samples, "vecserve_indexes") == 1
    assert ("vecserve_index_documents", (("index", "empty"),)) not in samples


def test_an_expired_call_is_dropped_from_the_encoder_queue(metered: RunningServer, encoder: Encoder) -> None:
    """A call whose deadline passes while it waits behind a long batch never reaches the model."""
    address = f"127.0.0.1:{metered.port}"
    batcher = encoder.batcher
    assert batcher is not None
    cancelled_before = batcher.cancelled_jobs
    # One job is never split, so 192 full-length texts hold a model worker for seconds even on a
    # fast CPU: long enough for the next call's 0.3 s deadline to pass while it waits in the queue.
    long_texts = [f"sentence number {i} about nothing much " * 40 for i in range(192)]
    long_inputs = encoder.prepare(long_texts)
    busy = [
        batcher.submit(long_inputs, [len(item.ids) for item in long_inputs]) for _ in range(batcher.workers)
    ]
    started = time.monotonic()
    while batcher.queued_texts > 0 and time.monotonic() - started < 30:
        time.sleep(0.002)  # the workers take the long jobs: the model is busy from here on
    with VecserveClient(address) as client, pytest.raises(grpc.RpcError) as caught:
        client.embed(["too late"], timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for job in busy:
        job.result(timeout=300)
    deadline = time.monotonic() + 10
    while batcher.cancelled_jobs == cancelled_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert batcher.cancelled_jobs == cancelled_before + 1
    # The call is counted when its handler returns, just after the worker drops its job.
    expired = {"service": EMBEDDING, "method": "Embed", "code": "DEADLINE_EXCEEDED"}
    samples = scrape(metered)
    while value(samples, "vecserve_grpc_requests_total", **expired) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        samples = scrape(metered)
    assert value(samples, "vecserve_encoder_cancelled_jobs_total") == batcher.cancelled_jobs
    assert value(samples, "vecserve_grpc_requests_total", **expired) == 1, {
        key: count for key, count in samples.items() if key[0] == "vecserve_grpc_requests_total"
    }


def test_metrics_are_off_by_default(server: RunningServer) -> None:
    assert server.metrics_port is None


def test_a_taken_metrics_port_is_refused(encoder: Encoder, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(listen="127.0.0.1:0", data_dir=tmp_path, metrics_listen=f"127.0.0.1:{port}")
        with pytest.raises(InvalidSettings, match="cannot serve metrics"):
            create_server(settings, encoder=encoder)


@pytest.mark.parametrize("listen", ["9100", "localhost:", ":9100", "localhost:99999", "localhost:http"])
def test_malformed_metrics_addresses_are_refused(listen: str) -> None:
    with pytest.raises(InvalidSettings, match="metrics_listen must be HOST:PORT"):
        Settings(metrics_listen=listen)
