"""Connect service objects whose every RPC runs the service/api handler of the same name in a worker
thread (the core blocks), with domain errors answered as Connect errors."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.request import RequestContext
from google.protobuf.message import Message
from google.rpc import code_pb2
from protobuf.wkt import Any as ConnectAny

from service.api.status import status_of
from service.errors import VecserveError

log = logging.getLogger(__name__)

# google.rpc codes (what service/api/status.py answers) as Connect codes.
CONNECT_CODES = {
    code_pb2.CANCELLED: Code.CANCELED,
    code_pb2.INVALID_ARGUMENT: Code.INVALID_ARGUMENT,
    code_pb2.NOT_FOUND: Code.NOT_FOUND,
    code_pb2.ALREADY_EXISTS: Code.ALREADY_EXISTS,
    code_pb2.PERMISSION_DENIED: Code.PERMISSION_DENIED,
    code_pb2.RESOURCE_EXHAUSTED: Code.RESOURCE_EXHAUSTED,
    code_pb2.FAILED_PRECONDITION: Code.FAILED_PRECONDITION,
    code_pb2.UNAVAILABLE: Code.UNAVAILABLE,
    code_pb2.UNAUTHENTICATED: Code.UNAUTHENTICATED,
    code_pb2.INTERNAL: Code.INTERNAL,
}


def connect_error(error: VecserveError) -> ConnectError:
    """The Connect error of a domain error: the same code, message and details as over gRPC."""
    status = status_of(error)
    details = [ErrorDetail(ConnectAny(type_url=item.type_url, value=item.value)) for item in status.details]
    return ConnectError(CONNECT_CODES.get(status.code, Code.INTERNAL), status.message, details)


class HttpCallContext:
    """service/api's CallContext for one HTTP call: its Connect timeout, and whether the client left."""

    def __init__(self, ctx: RequestContext) -> None:
        timeout_ms = ctx.timeout_ms
        self._deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        self.left = threading.Event()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return not self.left.is_set() and (self._deadline is None or time.monotonic() < self._deadline)


def _blocking(stream: AsyncIterator[Message], loop: asyncio.AbstractEventLoop) -> Iterator[Message]:
    """A request stream read from a worker thread: each message is awaited on the server's loop."""
    while True:
        try:
            yield asyncio.run_coroutine_threadsafe(anext(stream), loop).result()
        except StopAsyncIteration:
            return


def _snake_case(name: str) -> str:
    return "".join(f"_{letter.lower()}" if letter.isupper() else letter for letter in name).lstrip("_")


class ConnectService:
    """Answers a Connect service's methods (snake_case names, as its generated application calls them)
    with `handlers`' methods named as the RPCs (CamelCase), one worker thread per call."""

    def __init__(self, handlers: object, rpc_names: list[str], executor: Executor) -> None:
        self._executor = executor
        for rpc in rpc_names:
            setattr(self, _snake_case(rpc), self._endpoint(getattr(handlers, rpc), rpc))

    def _endpoint(
        self, handler: Callable[[Any, HttpCallContext], Message], rpc: str
    ) -> Callable[[Any, RequestContext], Awaitable[Message]]:
        async def call(request: Any, ctx: RequestContext) -> Message:
            loop = asyncio.get_running_loop()
            if isinstance(request, AsyncIterator):
                request = _blocking(request, loop)
            call_context = HttpCallContext(ctx)
            try:
                # In the call's context, so the worker's log lines carry its request id.
                run = contextvars.copy_context().run
                return await loop.run_in_executor(self._executor, run, handler, request, call_context)
            except asyncio.CancelledError:
                call_context.left.set()  # the worker's work for this caller may be skipped
                raise
            except VecserveError as error:
                raise connect_error(error) from error
            except ConnectError:
                raise
            except Exception as error:
                log.exception("unexpected error in %s", rpc)
                raise ConnectError(Code.INTERNAL, f"internal error in {rpc}; see server log") from error

        return call
