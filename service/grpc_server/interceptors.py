"""The outermost server interceptor: request ids, access logs, call metrics, the shutdown drain and
malformed messages.

The request id, metrics, drain count and access log of each call are service/observability/calls.py's,
shared with the HTTP transport; here the id is read from the `x-request-id` metadata and sent back in
the initial metadata, and the call's final gRPC status is told.

Everything that does not depend on the call (the wrapped handler, metric children, the method's
names) is built once per method and reused: per call there is only the work the call needs.

A request that is not a valid protobuf message (bad wire format, invalid UTF-8 in a string field)
is answered with INVALID_ARGUMENT; left to gRPC it would become INTERNAL, a server fault. One over
the message limit is answered with RESOURCE_EXHAUSTED and advice on splitting it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from service.api.limits import oversized_request
from service.errors import TooLarge, VecserveError
from service.grpc_server.servicers.status import abort_with_error
from service.observability.calls import REQUEST_ID_HEADER, CallObserver, ObservedCall, ObservedMethod

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"

Behavior = Callable[[Any, grpc.ServicerContext], Any]


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
    """The client's `x-request-id` metadata value (sane or not: the observer decides), or None."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER:
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
        observer: CallObserver,
        max_message_bytes: int,
    ) -> None:
        self.handler = handler
        self._observed: ObservedMethod = observer.method(method)
        self._drain = observer.drain
        # Health checks go on answering (NOT_SERVING once draining), for probes and load balancers.
        self._drained = not method.startswith(HEALTH_METHOD_PREFIX)
        self._streaming = handler.request_streaming
        if handler.response_streaming:
            kind = "stream_stream" if self._streaming else "unary_stream"
        else:
            kind = "stream_unary" if self._streaming else "unary_unary"
        self._behavior: Behavior = getattr(handler, kind)
        observed_behavior = self._observed_stream if handler.response_streaming else self._observed_call
        self.wrapped = handler._replace(  # RpcMethodHandler is a namedtuple
            request_deserializer=_lenient(handler.request_deserializer, max_message_bytes),
            **{kind: observed_behavior},
        )

    def _observed_call(self, request: Any, context: grpc.ServicerContext) -> Any:
        call = self._begin(context)
        raised = True
        try:
            self._admit(context)
            response = self._behavior(self._checked(request, context), context)
            raised = False
            return response
        finally:
            self._observed.end(call, _final_code(context, raised).name, context.peer())

    def _observed_stream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        call = self._begin(context)
        raised = True
        try:
            self._admit(context)
            yield from self._behavior(self._checked(request, context), context)
            raised = False
        finally:
            self._observed.end(call, _final_code(context, raised).name, context.peer())

    def _begin(self, context: grpc.ServicerContext) -> ObservedCall:
        call = self._observed.begin(request_id_from(context.invocation_metadata()))
        if context.is_active():
            context.send_initial_metadata(((REQUEST_ID_HEADER, call.request_id),))
        return call

    def _admit(self, context: grpc.ServicerContext) -> None:
        if self._drained:
            try:
                self._drain.admit()
            except VecserveError as error:
                abort_with_error(context, error)

    def _checked(self, request: Any, context: grpc.ServicerContext) -> Any:
        if self._streaming:
            return _checked_stream(request, context)
        if isinstance(request, MalformedMessage):
            _refuse_malformed(request, context)
        if isinstance(request, OversizedMessage):
            abort_with_error(context, request.error())
        return request


class ObservingInterceptor(grpc.ServerInterceptor):
    """Gives each call its request id, logs and measures it, and refuses malformed messages."""

    def __init__(self, observer: CallObserver, max_message_bytes: int) -> None:
        self._observer = observer
        self._max_message_bytes = max_message_bytes
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
            observed = _ObservedMethod(method, handler, self._observer, self._max_message_bytes)
            self._observed[method] = observed
        return observed.wrapped
