"""HTTP calls are observed as gRPC calls are: request ids taken or made and sent back, one access-log
line each, the same metrics (vecserve_http_*), and during a graceful shutdown new calls are answered
UNAVAILABLE while the calls in flight finish."""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families
from vecserve.v1 import embedding_pb2, index_pb2

from service.grpc_server.server import RunningServer
from service.http_server.calls import ConnectService
from service.index.store import IndexStore
from service.observability.access_log import flush_access_log
from service.observability.calls import REQUEST_ID_HEADER
from service.observability.logs import REQUEST_ID
from tests.test_http_api import enveloped, http_server, post
from tests.waiting import wait_until

EMBEDDING = "vecserve.v1.EmbeddingService"
INDEXES = "vecserve.v1.IndexService"


@pytest.fixture(scope="module")
def observed(encoder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """An HTTP server of its own (fresh counters), with metrics."""
    with http_server(encoder, tmp_path_factory.mktemp("observed"), metrics_listen="127.0.0.1:0") as running:
        yield running


@pytest.fixture(scope="module")
def base_url(observed: RunningServer) -> str:
    return f"http://127.0.0.1:{observed.http_port}"


def access_records(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "vecserve.access" and record.fields["request_id"] == request_id  # type: ignore[attr-defined]
    ]


def scrape(running: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_client_request_id_is_sent_back_and_logged(
    base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="vecserve.access"):
        response = post(base_url, "EmbeddingService/GetModelInfo", b"{}", **{REQUEST_ID_HEADER: "web-7.a:b"})
        flush_access_log()
    assert response.status_code == 200
    assert response.headers[REQUEST_ID_HEADER] == "web-7.a:b"
    (record,) = access_records(caplog, "web-7.a:b")
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["method"] == "/vecserve.v1.EmbeddingService/GetModelInfo"
    assert fields["code"] == "OK"
    assert fields["transport"] == "http"
    assert re.fullmatch(r"ipv4:127\.0\.0\.1:\d+", fields["peer"])
    assert fields["duration_ms"] >= 0


@pytest.mark.parametrize("unsafe", ["two words", 'quote"d', "x" * 129, "<b>"])
def test_unsafe_request_ids_are_replaced(base_url: str, unsafe: str) -> None:
    response = post(base_url, "EmbeddingService/GetModelInfo", b"{}", **{REQUEST_ID_HEADER: unsafe})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers[REQUEST_ID_HEADER])


def test_refused_and_failed_calls_carry_their_request_id_and_grpc_code_name(
    base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="vecserve.access"):
        failed = post(base_url, "EmbeddingService/Embed", b'{"texts": []}', **{REQUEST_ID_HEADER: "empty"})
        oversized = post(
            base_url, "EmbeddingService/Embed", b" " * 100_000, **{REQUEST_ID_HEADER: "oversized"}
        )
        flush_access_log()
    assert (failed.status_code, failed.headers[REQUEST_ID_HEADER]) == (400, "empty")
    assert (oversized.status_code, oversized.headers[REQUEST_ID_HEADER]) == (429, "oversized")
    assert access_records(caplog, "empty")[0].fields["code"] == "INVALID_ARGUMENT"  # type: ignore[attr-defined]
    assert access_records(caplog, "oversized")[0].fields["code"] == "RESOURCE_EXHAUSTED"  # type: ignore[attr-defined]


def test_http_calls_are_counted_by_method_and_code_beside_grpc(
    base_url: str, observed: RunningServer
) -> None:
    before = scrape(observed)
    for _ in range(3):
        assert post(base_url, "EmbeddingService/Embed", b'{"texts": ["counted"]}').status_code == 200
    assert post(base_url, "IndexService/GetIndex", b'{"indexName": "absent"}').status_code == 404
    after = scrape(observed)

    def added(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert added("vecserve_http_requests_total", service=EMBEDDING, method="Embed", code="OK") == 3
    assert added("vecserve_http_requests_total", service=INDEXES, method="GetIndex", code="NOT_FOUND") == 1
    assert added("vecserve_http_request_duration_seconds_count", service=EMBEDDING, method="Embed") == 3
    assert after[("vecserve_http_requests_in_flight", ())] == 0
    assert added("vecserve_grpc_requests_total", service=EMBEDDING, method="Embed", code="OK") == 0


def test_the_handler_runs_with_the_call_request_id() -> None:
    """Log lines written by a handler (in a worker thread) carry the request id of its call."""

    class Handlers:
        def GetModelInfo(self, request: object, call: object) -> embedding_pb2.GetModelInfoResponse:
            return embedding_pb2.GetModelInfoResponse(model_name=REQUEST_ID.get() or "")

    class NoDeadline:  # the part of connectrpc's RequestContext the endpoint reads
        timeout_ms = None

    async def served(service: ConnectService) -> str:
        REQUEST_ID.set("in-the-worker")  # as the observing interceptor does before the handler runs
        response = await service.get_model_info(embedding_pb2.GetModelInfoRequest(), NoDeadline())  # type: ignore[attr-defined]
        return response.model_name

    with ThreadPoolExecutor(max_workers=1) as executor:
        assert asyncio.run(served(ConnectService(Handlers(), ["GetModelInfo"], executor))) == "in-the-worker"


def test_calls_during_shutdown_get_unavailable_while_in_flight_ones_finish(encoder, tmp_path: Path) -> None:
    release = threading.Event()
    outcome: dict[str, httpx.Response] = {}
    with http_server(encoder, tmp_path / "data") as running:
        base_url = f"http://127.0.0.1:{running.http_port}"
        assert (
            post(base_url, "IndexService/CreateIndex", b'{"name": "held", "dimension": 2}').status_code == 200
        )

        def held_body() -> Iterator[bytes]:
            yield enveloped(
                index_pb2.StreamUpsertDocumentsRequest(
                    index_name="held", documents=[index_pb2.Document(id="first", vector=[1, 0])]
                )
            )
            release.wait()
            yield enveloped(
                index_pb2.StreamUpsertDocumentsRequest(
                    documents=[index_pb2.Document(id="second", vector=[0, 1])]
                )
            )

        def held_stream() -> None:
            outcome["response"] = httpx.post(
                f"{base_url}/vecserve.v1.IndexService/StreamUpsertDocuments",
                content=held_body(),
                headers={"content-type": "application/connect+json"},
                timeout=120,
            )

        def stored() -> int:
            answer = post(base_url, "IndexService/GetIndex", b'{"indexName": "held"}').json()
            return int(answer["index"].get("documentCount", 0))

        streamer = threading.Thread(target=held_stream)
        streamer.start()
        wait_until(lambda: stored() == 1, "the first message of the stream stored")
        stopper = threading.Thread(target=running.stop, kwargs={"grace": 120})
        stopper.start()
        wait_until(lambda: running.drain.draining, "the drain")
        for _ in range(10):
            refused = post(base_url, "IndexService/GetIndex", b'{"indexName": "held"}')
            assert refused.status_code == 503
            assert refused.json()["code"] == "unavailable"
            assert "shutting down" in refused.json()["message"]
        release.set()
        streamer.join(timeout=120)
        stopper.join(timeout=120)
        assert not stopper.is_alive()
    response = outcome["response"]
    assert response.status_code == 200
    flags, length = struct.unpack(">BI", response.content[:5])
    assert flags == 0
    counts = json_format.Parse(response.content[5 : 5 + length], index_pb2.StreamUpsertDocumentsResponse())
    assert counts.upserted_count == 2
    with pytest.raises(httpx.ConnectError):  # stopped: the port is closed
        post(base_url, "IndexService/GetIndex", b'{"indexName": "held"}')
    store = IndexStore(tmp_path / "data")
    try:
        assert store.get_index("held").document_count == 2
    finally:
        store.close()
