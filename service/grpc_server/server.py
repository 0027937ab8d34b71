"""The gRPC transport: builds the server over the core and runs it until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from vecserve.v1 import (
    analogy_pb2,
    analogy_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    index_pb2,
    index_pb2_grpc,
)

from service.analogy.vocabulary import DefaultVocabulary
from service.api.auth import TokenTable, load_tokens, protected_methods
from service.api.services import calls_over
from service.common.drain import Drain
from service.config import Settings
from service.core import Core, build_core
from service.embedding.encoder import Encoder
from service.errors import InvalidSettings
from service.grpc_server.interceptors import ObservedRegistration, receive_limit
from service.grpc_server.servicers.analogy import AnalogyServicer
from service.grpc_server.servicers.embedding import EmbeddingServicer
from service.grpc_server.servicers.index import IndexServicer
from service.grpc_server.tls import server_credentials
from service.http_server.server import HttpServer
from service.observability.access_log import flush_access_log
from service.observability.calls import CallObserver
from service.observability.logs import configure_logging
from service.observability.metrics import MetricsHttpServer, ServerMetrics

log = logging.getLogger(__name__)


@dataclass
class RunningServer:
    """A started server, the port it bound, its core and what must be closed when it stops."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    core: Core
    closers: list[Callable[[], None]] = field(default_factory=list)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    # Port of the /metrics HTTP endpoint, when one was asked for.
    metrics_port: int | None = None
    # Port of the HTTP/JSON (Connect) API, when one was asked for.
    http_port: int | None = None
    # Counts the calls in flight over every transport, and refuses new ones once stop() has begun.
    drain: Drain = field(default_factory=Drain)

    @property
    def vocabulary(self) -> DefaultVocabulary:
        """The built-in analogy vocabulary, built on first use or by calling its start()."""
        return self.core.vocabulary

    def stop(self, grace: float | None = None) -> None:
        """Stops accepting calls, lets in-flight calls finish within grace seconds, then closes the core.

        New calls over either transport get UNAVAILABLE from the start; gRPC and HTTP themselves are
        stopped once the calls in flight have finished (or the grace is over), as gRPC's own refusal
        of calls is CANCELLED and a stopped HTTP server refuses connections.
        """
        self.health.enter_graceful_shutdown()
        started = time.monotonic()
        self.drain.start()
        self.drain.wait(grace)
        remaining = None if grace is None else max(0.0, grace - (time.monotonic() - started))
        self.server.stop(remaining).wait()
        for close in self.closers:
            close()
        flush_access_log()  # the lines of the last calls, written by the access log's thread


def _service_name(descriptor_module: object, service: str) -> str:
    return descriptor_module.DESCRIPTOR.services_by_name[service].full_name  # type: ignore[attr-defined]


@dataclass
class _FrontDoor:
    """What every call passes through before the core: metrics, the drain, tokens and TLS."""

    metrics: ServerMetrics
    drain: Drain
    tokens: TokenTable | None
    credentials: grpc.ServerCredentials | None


def _front_door(settings: Settings) -> _FrontDoor:
    """Reads the tokens and certificates, so that mistakes in them show before the core is built."""
    tokens = load_tokens(settings.tokens_file) if settings.tokens_file is not None else None
    credentials = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    return _FrontDoor(ServerMetrics(), Drain(), tokens, credentials)


def create_server(settings: Settings, encoder: Encoder | None = None) -> RunningServer:
    """Builds the core and starts a server over it on settings.listen ("127.0.0.1:0" picks a free
    port). A given encoder is shared, not owned: the caller closes it."""
    front = _front_door(settings)  # before the slow model load
    return _start(settings, build_core(settings, encoder), front)


def serve_core(settings: Settings, core: Core) -> RunningServer:
    """Starts a server over a core built elsewhere (the cluster ingress's, over remote shards and
    encoders), with the same interceptors, health, reflection, TLS and limits; stopping the server
    closes the core."""
    return _start(settings, core, _front_door(settings))


def _start(settings: Settings, core: Core, front: _FrontDoor) -> RunningServer:
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix="rpc"),
        options=[
            ("grpc.max_receive_message_length", receive_limit(settings.max_message_bytes)),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # A second server on a taken port must fail, not silently share the port's calls.
            ("grpc.so_reuseport", 0),
        ],
    )
    # Every service registers through the front door, so that refused calls are logged and counted too.
    registration = ObservedRegistration(
        server,
        CallObserver("grpc", front.metrics.grpc, front.drain),
        settings.max_message_bytes,
        front.tokens,
        protected_methods(),
    )
    front.metrics.watch_encoder(core.encoder)
    front.metrics.watch_store(core.store)
    calls = calls_over(core)
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(
        EmbeddingServicer(calls.embedding), registration
    )
    index_pb2_grpc.add_IndexServiceServicer_to_server(IndexServicer(calls.index), registration)
    analogy_pb2_grpc.add_AnalogyServiceServicer_to_server(AnalogyServicer(calls.analogy), registration)
    service_names = [
        _service_name(embedding_pb2, "EmbeddingService"),
        _service_name(index_pb2, "IndexService"),
        _service_name(analogy_pb2, "AnalogyService"),
    ]
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registration)
    for name in [*service_names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], registration
    )
    try:
        if front.credentials is not None:
            port = server.add_secure_port(settings.listen, front.credentials)
        else:
            port = server.add_insecure_port(settings.listen)
    except RuntimeError as error:
        core.close()  # release the data directory's lock and the batching worker
        raise InvalidSettings(f"cannot listen on {settings.listen}: {error}") from error
    server.start()
    running = RunningServer(
        server=server,
        port=port,
        health=health_servicer,
        core=core,
        closers=[core.close],
        metrics=front.metrics,
        drain=front.drain,
    )
    if settings.metrics_listen is not None:
        try:
            metrics_server = MetricsHttpServer(front.metrics, settings.metrics_listen)
        except InvalidSettings:
            running.stop(0)
            raise
        running.metrics_port = metrics_server.port
        running.closers.insert(0, metrics_server.stop)
    if settings.http_listen is not None:
        try:
            http_server = HttpServer(
                calls, settings, settings.http_listen, CallObserver("http", front.metrics.http, front.drain)
            )
        except InvalidSettings:
            running.stop(0)
            raise
        running.http_port = http_server.port
        running.closers.insert(0, http_server.stop)
    log.info(
        "vecserve listening on %s (port %d, %s, %s)",
        settings.listen,
        port,
        "mutual TLS" if settings.tls_client_ca else "TLS" if front.credentials else "plaintext",
        "tokens required" if settings.tokens_file else "no authentication",
    )
    return running


def stop_signal() -> threading.Event:
    """An event set by the first SIGTERM or SIGINT (the handlers are this process's from now on)."""
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop_requested


def serve(settings: Settings) -> int:
    """Runs the server until SIGTERM or SIGINT, then shuts down gracefully; returns the exit code."""
    configure_logging(settings.log_format)
    stop_requested = stop_signal()
    running = create_server(settings)
    running.vocabulary.start()  # loads or embeds it in the background, so first calls are fast
    stop_requested.wait()
    running.stop(settings.shutdown_grace_seconds)
    log.info("stopped")
    return 0
