"""Starts the HTTP/JSON (Connect) server on its own port and thread, over the service/api handlers of a
core that the gRPC server shares; stop() ends it."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn
from connectrpc.server import ConnectASGIApplication
from vecserve.v1 import analogy_pb2, embedding_pb2, index_pb2
from vecserve.v1.analogy_connect import AnalogyServiceASGIApplication
from vecserve.v1.embedding_connect import EmbeddingServiceASGIApplication
from vecserve.v1.index_connect import IndexServiceASGIApplication

from service.api.auth import load_tokens
from service.api.services import ServiceCalls
from service.config import Settings, parse_host_port
from service.errors import InvalidSettings
from service.http_server.calls import ConnectService
from service.http_server.guards import BodyLimit, TokenCheck
from service.http_server.observing import DrainCheck, Observing
from service.http_server.page import Page, Receive, Scope, Send
from service.observability.calls import CallObserver

log = logging.getLogger(__name__)


def _rpc_names(file_descriptor: Any, service: str) -> list[str]:
    return [method.name for method in file_descriptor.services_by_name[service].methods]


class _Router:
    """Sends each request to the Connect application of its service ("/vecserve.v1.X/Method"), or to
    the web page for its paths."""

    def __init__(self, applications: list[ConnectASGIApplication[Any]], page: Page) -> None:
        self._by_path = {application.path: application for application in applications}
        self._page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if self._page.serves(path):
            await self._page(scope, receive, send)
            return
        service_path = "/" + path.lstrip("/").split("/", 1)[0]
        application = self._by_path.get(service_path)
        if application is None:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await application(scope, receive, send)


def connect_application(
    calls: ServiceCalls, settings: Settings, executor: ThreadPoolExecutor, observer: CallObserver
) -> _Router:
    """The three vecserve.v1 services and the web page as one ASGI application. Each call is observed
    (outermost, so refused calls are logged and counted too), refused while draining, then checked
    against the token roles (refusing unknown callers first) and the body limit."""
    guards: list[Any] = [Observing(observer), DrainCheck(observer.drain)]
    if settings.tokens_file is not None:
        guards.append(TokenCheck(load_tokens(settings.tokens_file)))
    guards.append(BodyLimit(settings.max_message_bytes))
    options: dict[str, Any] = {"interceptors": guards, "read_max_bytes": settings.max_message_bytes}
    return _Router(
        [
            EmbeddingServiceASGIApplication(
                ConnectService(
                    calls.embedding, _rpc_names(embedding_pb2.DESCRIPTOR, "EmbeddingService"), executor
                ),  # type: ignore[arg-type]
                **options,
            ),
            IndexServiceASGIApplication(
                ConnectService(calls.index, _rpc_names(index_pb2.DESCRIPTOR, "IndexService"), executor),  # type: ignore[arg-type]
                **options,
            ),
            AnalogyServiceASGIApplication(
                ConnectService(calls.analogy, _rpc_names(analogy_pb2.DESCRIPTOR, "AnalogyService"), executor),  # type: ignore[arg-type]
                **options,
            ),
        ],
        Page(),
    )


class HttpServer:
    """uvicorn in a thread of its own on a socket bound here, so the port is known (and taken) at once."""

    def __init__(self, calls: ServiceCalls, settings: Settings, listen: str, observer: CallObserver) -> None:
        host, port = parse_host_port(listen, "http_listen")
        self._executor = ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix="http")
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._socket.bind((host, port))
            # Connections made before uvicorn accepts wait in the backlog: no start-up wait is needed.
            self._socket.listen(socket.SOMAXCONN)
        except OSError as error:
            self._socket.close()
            self._executor.shutdown()
            raise InvalidSettings(f"cannot listen on {listen} (http_listen): {error}") from error
        self.port: int = self._socket.getsockname()[1]
        tls: dict[str, Any] = {}
        if settings.tls_cert is not None and settings.tls_key is not None:
            tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
            if settings.tls_client_ca is not None:
                tls |= {"ssl_ca_certs": str(settings.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        config = uvicorn.Config(
            connect_application(calls, settings, self._executor, observer),
            lifespan="off",
            log_config=None,  # the process's logging (service/observability/logs.py) applies
            access_log=False,
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
            **tls,
        )
        try:
            config.load()  # reads the certificates now, so a bad one fails the start, not the thread
        except (OSError, ssl.SSLError) as error:
            self._socket.close()
            self._executor.shutdown()
            raise InvalidSettings(f"cannot serve TLS on {listen} (http_listen): {error}") from error
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="http-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stops accepting, lets calls in flight finish (within the shutdown grace), then returns."""
        self._server.should_exit = True
        self._thread.join()
        self._socket.close()
        self._executor.shutdown()
