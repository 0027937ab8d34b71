"""The outermost server interceptor: request ids, access logs, call metrics, malformed messages.

Every call gets a request id: the client's `x-request-id` metadata value when it is a sane token,
otherwise a new one. It is sent back in the initial metadata, set in the logging context (so every
log line of the call carries it) and written in the one access-log line each call ends with.

A request that is not a valid protobuf message (bad wire format, invalid UTF-8 in a string field)
is answered with INVALID_ARGUMENT; left to gRPC it would become INTERNAL, a server fault.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from service.logging_setup import REQUEST_ID
from service.metrics import ServerMetrics

log = logging.getLogger("vecserve.access")

REQUEST_ID_HEADER = "x-request-id"
# What an incoming request id may look like: no spaces or quotes that could forge log fields.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
# Codes that mean a fault of the server rather than of the call.
_SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})

Behavior = Callable[[Any, grpc.ServicerContext], Any]


class MalformedMessage:
    """Stands in for a request message that could not be parsed."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
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


class ObservingInterceptor(grpc.ServerInterceptor):
    """Gives each call its request id, logs and measures it, and refuses malformed messages."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return None
        method = handler_call_details.method
        request_id = request_id_from(handler_call_details.invocation_metadata) or uuid.uuid4().hex
        streaming = handler.request_streaming
        if handler.response_streaming:
            kind = "stream_stream" if streaming else "unary_stream"
        else:
            kind = "stream_unary" if streaming else "unary_unary"
        behavior: Behavior = getattr(handler, kind)

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            with self._observing(method, request_id, context):
                return behavior(_checked(request, context, streaming), context)

        def observed_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with self._observing(method, request_id, context):
                yield from behavior(_checked(request, context, streaming), context)

        return handler._replace(  # RpcMethodHandler is a namedtuple
            request_deserializer=_lenient(handler.request_deserializer),
            **{kind: observed_stream if handler.response_streaming else observed},
        )

    @contextlib.contextmanager
    def _observing(self, method: str, request_id: str, context: grpc.ServicerContext) -> Iterator[None]:
        token = REQUEST_ID.set(request_id)
        self._metrics.in_flight.inc()
        started = time.perf_counter()
        raised = True
        try:
            if context.is_active():
                context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
            yield
            raised = False
        finally:
            seconds = time.perf_counter() - started
            code = _final_code(context, raised)
            self._metrics.in_flight.dec()
            self._metrics.observe_call(method, code.name, seconds)
            log.log(
                logging.WARNING if code in _SERVER_FAULTS else logging.INFO,
                "%s %s %.1f ms",
                method,
                code.name,
                seconds * 1000,
                extra={
                    "fields": {
                        "request_id": request_id,
                        "method": method,
                        "code": code.name,
                        "duration_ms": round(seconds * 1000, 3),
                        "peer": context.peer(),
                    }
                },
            )
            REQUEST_ID.reset(token)


def _checked(request: Any, context: grpc.ServicerContext, streaming: bool) -> Any:
    if streaming:
        return _checked_stream(request, context)
    if isinstance(request, MalformedMessage):
        _refuse_malformed(request, context)
    return request
