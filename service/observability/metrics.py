"""Prometheus metrics of one server, served over HTTP when a metrics address is configured.

Each server has its own registry (so several servers in one process, as in tests, never share
counters). Calls are counted per transport (service/observability/calls.py, used by both the gRPC and
the HTTP transport), in families of the same labels and code names; queue depth, cancelled encoder
jobs and the indexes' sizes are read from the core at scrape time by collectors.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from service.config import parse_host_port
from service.embedding.encoder import Encoder
from service.embedding.stages import StageClock
from service.errors import InvalidSettings, VecserveError
from service.index.model import IndexInfo
from service.index.store import IndexStore

log = logging.getLogger(__name__)

# Seconds; from a cached tokenize call to a large upsert.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_TEXT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def split_method(method_path: str) -> tuple[str, str]:
    """("/pkg.Service/Method") -> ("pkg.Service", "Method")."""
    service, _, method = method_path.lstrip("/").partition("/")
    return service, method


class MethodMetrics:
    """The call counters and latency histogram of one method, their label children looked up once."""

    def __init__(self, requests: Counter, latency: Histogram, method_path: str) -> None:
        self._requests = requests
        self._service, self._method = split_method(method_path)
        self._latency = latency.labels(self._service, self._method)
        # Counter child by status code name, made on first use.
        self._by_code: dict[str, Counter] = {}

    def observe(self, code_name: str, seconds: float) -> None:
        counter = self._by_code.get(code_name)
        if counter is None:
            counter = self._by_code[code_name] = self._requests.labels(self._service, self._method, code_name)
        counter.inc()
        self._latency.observe(seconds)


class CallMetrics:
    """The calls of one transport: finished by method and code, their latency, those in flight.

    gRPC's families keep their names (vecserve_grpc_*); HTTP's are vecserve_http_* with the same labels
    and the same (gRPC) code names, so dashboards can add the two or tell them apart.
    """

    def __init__(self, registry: CollectorRegistry, transport: str, calls: str) -> None:
        self.requests = Counter(
            f"vecserve_{transport}_requests",
            f"{calls} finished, by service, method and status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            f"vecserve_{transport}_request_duration_seconds",
            f"Time from the start of a call to its end, by service and method ({calls}).",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            f"vecserve_{transport}_requests_in_flight", f"{calls} being handled right now.", registry=registry
        )
        self._methods: dict[str, MethodMetrics] = {}

    def method(self, method_path: str) -> MethodMetrics:
        """The metrics of one method ("/pkg.Service/Method"), the same object on every call."""
        found = self._methods.get(method_path)
        if found is None:
            found = self._methods.setdefault(
                method_path, MethodMetrics(self.requests, self.latency, method_path)
            )
        return found


class ServerMetrics:
    """The metrics of one server: each transport records its calls, collectors read the core."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.grpc = CallMetrics(self.registry, "grpc", "RPCs over gRPC")
        self.http = CallMetrics(self.registry, "http", "RPCs over HTTP (Connect)")
        self.batch_texts = Histogram(
            "vecserve_encoder_batch_texts",
            "Texts per model call of the dynamic batcher.",
            buckets=BATCH_TEXT_BUCKETS,
            registry=self.registry,
        )

    def watch_encoder(self, encoder: Encoder) -> None:
        """Batch sizes as they run; queue depth and cancelled jobs at scrape time."""
        batcher = encoder.batcher
        if batcher is not None:
            batcher.on_batch = self.batch_texts.observe
        self.registry.register(_EncoderCollector(encoder))

    def watch_store(self, store: IndexStore) -> None:
        """Document counts and sizes of every index, read at scrape time."""
        self.registry.register(_IndexCollector(store))


class _EncoderCollector(Collector):
    def __init__(self, encoder: Encoder) -> None:
        self._encoder = encoder

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "vecserve_encoder_queued_texts",
            "Texts waiting in the dynamic batcher's queue.",
            value=self._encoder.queued_texts,
        )
        yield from _stage_metrics(self._encoder.stages)
        batcher = self._encoder.batcher
        if batcher is not None:
            yield CounterMetricFamily(
                "vecserve_encoder_batches",
                "Model calls run by the dynamic batcher.",
                value=batcher.batches_run,
            )
            yield CounterMetricFamily(
                "vecserve_encoder_cancelled_jobs",
                "Queued encoder jobs skipped because their call had been cancelled or had timed out.",
                value=batcher.cancelled_jobs,
            )
            yield CounterMetricFamily(
                "vecserve_encoder_background_texts",
                "Texts the batcher's background lane ran (the vocabulary build), apart from live calls.",
                value=batcher.background_texts_run,
            )
            yield CounterMetricFamily(
                "vecserve_encoder_background_seconds",
                "Seconds of model time the background lane's batches took: over the wall time, the share "
                "of the model background work had (see --background-share).",
                value=batcher.background_seconds_run,
            )


def _stage_metrics(stages: StageClock) -> Iterator[CounterMetricFamily]:
    """Time by stage of embedding texts, and the model's real and padded tokens."""
    cpu = CounterMetricFamily(
        "vecserve_embed_stage_cpu_seconds",
        "CPU seconds of the threads that ran each stage of embedding texts (parse, tokenize, queue, "
        "model, normalize, response).",
        labels=["stage"],
    )
    wall = CounterMetricFamily(
        "vecserve_embed_stage_text_seconds",
        "Wall seconds of each stage summed over the texts it handled (queue: from entering the batcher "
        "to the vectors coming back, model batch included).",
        labels=["stage"],
    )
    texts = CounterMetricFamily("vecserve_embed_stage_texts", "Texts each stage handled.", labels=["stage"])
    for stage, totals in stages.totals().items():
        cpu.add_metric([stage], totals.cpu_seconds)
        wall.add_metric([stage], totals.text_seconds)
        texts.add_metric([stage], totals.texts)
    yield from (cpu, wall, texts)
    yield CounterMetricFamily(
        "vecserve_encoder_real_tokens", "Tokens of the texts the model ran.", value=stages.real_tokens
    )
    yield CounterMetricFamily(
        "vecserve_encoder_padded_tokens",
        "Tokens the model ran, padding included: rows times width of each of its batches.",
        value=stages.padded_tokens,
    )
    yield CounterMetricFamily(
        "vecserve_encoder_model_batches",
        "Model calls (mini-batches) the encoder ran.",
        value=stages.model_batches,
    )


def _all_indexes(store: IndexStore) -> Iterator[IndexInfo]:
    token = ""
    while True:
        infos, token = store.list_indexes(page_token=token)
        yield from infos
        if not token:
            return


class _IndexCollector(Collector):
    def __init__(self, store: IndexStore) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        documents = GaugeMetricFamily(
            "vecserve_index_documents", "Documents (and vectors) stored, by index.", labels=["index"]
        )
        memory = GaugeMetricFamily(
            "vecserve_index_memory_bytes", "Bytes the search structure holds in memory.", labels=["index"]
        )
        disk = GaugeMetricFamily(
            "vecserve_index_disk_bytes", "Bytes the index occupies on disk.", labels=["index"]
        )
        count = 0
        vectors = 0
        # A store closing during a scrape must not fail the whole scrape.
        with contextlib.suppress(VecserveError):
            for info in _all_indexes(self._store):
                count += 1
                vectors += info.document_count
                documents.add_metric([info.name], info.document_count)
                memory.add_metric([info.name], info.memory_bytes)
                disk.add_metric([info.name], info.disk_bytes)
        yield GaugeMetricFamily("vecserve_indexes", "Indexes stored.", value=count)
        yield GaugeMetricFamily("vecserve_vectors_stored", "Vectors stored over all indexes.", value=vectors)
        yield documents
        yield memory
        yield disk


class MetricsHttpServer:
    """Serves /metrics of a registry on its own thread until stop()."""

    def __init__(self, metrics: ServerMetrics, listen: str) -> None:
        host, port = parse_host_port(listen, "metrics_listen")
        try:
            self._server: WSGIServer
            self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        except OSError as error:
            raise InvalidSettings(f"cannot serve metrics on {listen}: {error}") from error
        self.port: int = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
