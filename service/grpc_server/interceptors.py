"""The outermost server interceptor: request ids, access logs, call metrics, malformed messages.

Every call gets a request id: the client's `x-request-id` metadata value when it is a sane token,
otherwise a new one. It is sent back in the initial metadata, set in the logging context (so every
log line of the call carries it) and written in the one access-log line each call ends with.

Everything that does not depend on the call (the wrapped handler, metric children, the method's
names) is built once per method and reused: per call there is only the work the call needs.

A request that is not a valid protobuf message (bad wire format, invalid UTF-8 in a string field)
is answered with INVALID_ARGUMENT; left to gRPC it would become INTERNAL, a server fault. One over
the message limit is answered with RESOURCE_EXHAUSTED and advice on splitting it.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from service.api.limits import oversized_request
from service.errors import TooLarge
from service.grpc_server.servicers.status import abort_with_error
from service.observability.logs import REQUEST_ID
from service.observability.metrics import MethodMetrics, ServerMetrics

log = logging.getLogger("vecserve.access")

REQUEST_ID_HEADER = "x-request-id"
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
# What an incoming request id may look like: no spaces or quotes that could forge log fields.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
# Codes that mean a fault of the server rather than of the call.
_SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})

Behavior = Callable[[Any, grpc.ServicerContext], Any]

# Made request ids: a random prefix per process and a counter, 32 hex digits in all. Unique like
# uuid4 across processes (64 random bits), at a fraction of its cost per call.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFFFFFFFFFF:016x}"


class MalformedMessage:
    """Stands in for a request message that could not be parsed."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class OversizedMessage:
    """Stands in for a request message over the server's message limit."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit

    def error(self) -> TooLarge:
        return oversized_request(self.size, self.limit)


def receive_limit(max_message_bytes: int) -> int:
    """gRPC's own receive limit: above the server's, so that messages up to twice the limit are
    refused here with advice rather than by gRPC with its bare "larger than max" text."""
    return min(2 * max_message_bytes, 2**31 - 1)


def _lenient(
    deserialize: Callable[[bytes], Any] | None, max_message_bytes: int
) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        if len(data) > max_message_bytes:
            return OversizedMessage(len(data), max_message_bytes)
        try:
            return deserialize(data)
        except Exception as error:  # protobuf raises DecodeError, and others on some inputs
            return MalformedMessage(error)

    return parse


def _refuse_malformed(message: MalformedMessage, context: grpc.ServicerContext) -> None:
    context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request is not a valid message of this method ({message.error}); check the client's "
        "protobuf definitions and that string fields hold valid UTF-8",
    )


def _checked_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, MalformedMessage):
            _refuse_malformed(request, context)
        if isinstance(request, OversizedMessage):
            # Raised into the servicer's loop, which adds how much of the stream was stored.
            raise request.error()
        yield request


def request_id_from(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _SANE_REQUEST_ID.fullmatch(value):
            return value
    return None


def _final_code(context: grpc.ServicerContext, raised: bool) -> grpc.StatusCode:
    """The status the client sees: a call it gave up on (deadline or cancel) ended that way, whatever
    the handler set afterwards."""
    if not context.is_active():
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if raised else grpc.StatusCode.OK


class _ObservedMethod:
    """One method's handler wrapped to give each call a request id, and to log and measure it."""

    def __init__(
        self,
        method: str,
        handler: grpc.RpcMethodHandler,
        metrics: ServerMetrics,
        max_message_bytes: int,
        drain: Drain,
    ) -> None:
        self.handler = handler
        self._drain = drain
        self._method = method
        self._metrics = metrics
        self._calls: MethodMetrics = metrics.method(method)
        self._streaming = handler.request_streaming
        if handler.response_streaming:
            kind = "stream_stream" if self._streaming else "unary_stream"
        else:
            kind = "stream_unary" if self._streaming else "unary_unary"
        self._behavior: Behavior = getattr(handler, kind)
        observed = self._observed_stream if handler.response_streaming else self._observed
        self.wrapped = handler._replace(  # RpcMethodHandler is a namedtuple
            request_deserializer=_lenient(handler.request_deserializer, max_message_bytes),
            **{kind: observed},
        )

    def _observed(self, request: Any, context: grpc.ServicerContext) -> Any:
        request_id, token, started = self._begin(context)
        raised = True
        try:
            self._admit(context)
            response = self._behavior(self._checked(request, context), context)
            raised = False
            return response
        finally:
            self._end(context, request_id, token, started, raised)

    def _observed_stream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        request_id, token, started = self._begin(context)
        raised = True
        try:
            self._admit(context)
            yield from self._behavior(self._checked(request, context), context)
            raised = False
        finally:
            self._end(context, request_id, token, started, raised)

    def _admit(self, context: grpc.ServicerContext) -> None:
        # Health checks go on answering (NOT_SERVING once draining), for probes and load balancers.
        if self._drain.draining and not self._method.startswith(HEALTH_METHOD_PREFIX):
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the server is shutting down and takes no new calls; retry on another server or once "
                "it is back",
            )

    def _checked(self, request: Any, context: grpc.ServicerContext) -> Any:
        if self._streaming:
            return _checked_stream(request, context)
        if isinstance(request, MalformedMessage):
            _refuse_malformed(request, context)
        if isinstance(request, OversizedMessage):
            abort_with_error(context, request.error())
        return request

    def _begin(self, context: grpc.ServicerContext) -> tuple[str, Any, float]:
        request_id = request_id_from(context.invocation_metadata()) or new_request_id()
        token = REQUEST_ID.set(request_id)
        self._metrics.in_flight.inc()
        self._drain.enter()
        if context.is_active():
            context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
        return request_id, token, time.perf_counter()

    def _end(
        self, context: grpc.ServicerContext, request_id: str, token: Any, started: float, raised: bool
    ) -> None:
        seconds = time.perf_counter() - started
        code = _final_code(context, raised)
        self._metrics.in_flight.dec()
        self._drain.leave()
        self._calls.observe(code.name, seconds)
        level = logging.WARNING if code in _SERVER_FAULTS else logging.INFO
        if log.isEnabledFor(level):  # the record and its fields cost more than the rest of the call
            fields = {
                "request_id": request_id,
                "method": self._method,
                "code": code.name,
                "duration_ms": round(seconds * 1000, 3),
                "peer": context.peer(),
            }
            # Made directly: log.log would also walk the stack for a source line nobody prints.
            record = log.makeRecord(
                log.name,
                level,
                __file__,
                0,
                "%s %s %.1f ms",
                (self._method, code.name, seconds * 1000),
                None,
                extra={"fields": fields},
            )
            log.handle(record)
        REQUEST_ID.reset(token)


class Drain:
    """Counts the calls being handled; once draining, new calls are refused with UNAVAILABLE.

    gRPC's own shutdown answers calls that arrived but were not yet handed to a thread with
    CANCELLED (grpc/grpc#41785), so the server drains here first, while gRPC still hands calls over,
    and stops gRPC only once the calls it admitted have finished.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._calls = 0
        self.draining = False

    def enter(self) -> None:
        with self._condition:
            self._calls += 1

    def leave(self) -> None:
        with self._condition:
            self._calls -= 1
            if not self._calls:
                self._condition.notify_all()

    def start(self) -> None:
        self.draining = True

    def wait(self, timeout: float | None) -> bool:
        """Until no call is being handled (True), or timeout seconds passed (False)."""
        with self._condition:
            return self._condition.wait_for(lambda: self._calls == 0, timeout)


class ObservingInterceptor(grpc.ServerInterceptor):
    """Gives each call its request id, logs and measures it, and refuses malformed messages."""

    def __init__(self, metrics: ServerMetrics, max_message_bytes: int) -> None:
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes
        self.drain = Drain()
        # The wrapper of each method's handler, rebuilt only when a later interceptor or the
        # server returns another handler (as the auth interceptor does to refuse a call).
        self._observed: dict[str, _ObservedMethod] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return None
        method = handler_call_details.method
        observed = self._observed.get(method)
        if observed is None or observed.handler is not handler:
            observed = _ObservedMethod(
                method, handler, self._metrics, self._max_message_bytes, self.drain
            )
            self._observed[method] = observed
        return observed.wrapped
