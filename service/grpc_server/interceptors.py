"""The server's front door: request ids, access logs, call metrics, the shutdown drain, bearer
tokens and malformed messages, in one wrapper around each method's handler.

The wrapper is put around each handler once, when the services register (ObservedRegistration stands
in for the grpc.Server then), not by grpc server interceptors: those run on gRPC's one polling thread
for every call, each adding its frames, and a refused call needed a handler made for it.

The request id, metrics, drain count and access log of each call are service/observability/calls.py's,
shared with the HTTP transport; here the id is read from the `x-request-id` metadata and sent back in
the trailing metadata, and the call's final gRPC status is told. The id goes with the status rather
than in the initial metadata, which a handler can only send as an operation of its own (about a
tenth of a millisecond per call, as much as a small search).

A request that is not a valid protobuf message (bad wire format, invalid UTF-8 in a string field)
is answered with INVALID_ARGUMENT; left to gRPC it would become INTERNAL, a server fault. One over
the message limit is answered with RESOURCE_EXHAUSTED and advice on splitting it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from service.api.auth import DenialKind, Role, TokenTable, access_denial, bearer_token, required_role
from service.api.limits import oversized_request
from service.errors import TooLarge, VecserveError
from service.grpc_server.servicers.status import abort_with_error
from service.observability.calls import REQUEST_ID_HEADER, CallObserver, ObservedCall, ObservedMethod

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"

Behavior = Callable[[Any, grpc.ServicerContext], Any]

_DENIAL_CODES = {
    DenialKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    DenialKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}


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


class _TokenCheck:
    """The bearer-token check of one method (service/api/auth.py decides), reading no request."""

    def __init__(self, tokens: TokenTable, method: str, required: Role) -> None:
        self._tokens = tokens
        self._method = method
        self._required = required

    def check(self, context: grpc.ServicerContext) -> None:
        token = bearer_token(context.invocation_metadata())
        denial = access_denial(self._tokens, self._method, self._required, token)
        if denial is not None:
            context.abort(_DENIAL_CODES[denial.kind], denial.message)


class _ObservedMethod:
    """One method's handler wrapped to give each call a request id, log and measure it, check its
    token and refuse malformed messages."""

    def __init__(
        self,
        method: str,
        handler: grpc.RpcMethodHandler,
        observer: CallObserver,
        max_message_bytes: int,
        token_check: _TokenCheck | None,
    ) -> None:
        self.handler = handler
        self._observed: ObservedMethod = observer.method(method)
        self._drain = observer.drain
        # Health checks go on answering (NOT_SERVING once draining), for probes and load balancers.
        self._drained = not method.startswith(HEALTH_METHOD_PREFIX)
        self._token_check = token_check
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
            response = self._behavior(self._admitted(request, context), context)
            raised = False
            return response
        finally:
            self._observed.end(call, _final_code(context, raised).name, context.peer())

    def _observed_stream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        call = self._begin(context)
        raised = True
        try:
            yield from self._behavior(self._admitted(request, context), context)
            raised = False
        finally:
            self._observed.end(call, _final_code(context, raised).name, context.peer())

    def _begin(self, context: grpc.ServicerContext) -> ObservedCall:
        call = self._observed.begin(request_id_from(context.invocation_metadata()))
        # Trailing metadata is sent with the status, in the operation that ends the call.
        context.set_trailing_metadata(((REQUEST_ID_HEADER, call.request_id),))
        return call

    def _admitted(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The request for the handler once the call may go on; otherwise the call is ended with the
        refusal: shutting down, no fitting token, or a malformed or oversized (unary) message."""
        if self._drained:
            try:
                self._drain.admit()
            except VecserveError as error:
                abort_with_error(context, error)
        if self._token_check is not None:
            self._token_check.check(context)
        if self._streaming:
            return _checked_stream(request, context)
        if isinstance(request, MalformedMessage):
            _refuse_malformed(request, context)
        if isinstance(request, OversizedMessage):
            abort_with_error(context, request.error())
        return request


class ObservedRegistration:
    """Stands in for the grpc.Server while the services register (the generated add_*_to_server
    functions, health, reflection): each method's handler is registered wrapped by the front door.

    `tokens` None means no authentication; otherwise every method `required` names (and every
    unknown one, which needs a write token) checks the call's token.
    """

    def __init__(
        self,
        server: grpc.Server,
        observer: CallObserver,
        max_message_bytes: int,
        tokens: TokenTable | None,
        required: Mapping[str, Role],
    ) -> None:
        self._server = server
        self._observer = observer
        self._max_message_bytes = max_message_bytes
        self._tokens = tokens
        self._required = required
        self._observed: dict[str, _ObservedMethod] = {}

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service, {name: self.wrapped(f"/{service}/{name}", handler) for name, handler in handlers.items()}
        )

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_ObservedGenericHandler(handler, self) for handler in handlers)
        )

    def wrapped(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The front door's wrapper of a method's handler, made once per method and handler."""
        observed = self._observed.get(method)
        if observed is None or observed.handler is not handler:
            observed = _ObservedMethod(
                method, handler, self._observer, self._max_message_bytes, self._token_check(method)
            )
            self._observed[method] = observed
        return observed.wrapped

    def _token_check(self, method: str) -> _TokenCheck | None:
        if self._tokens is None:
            return None
        required = required_role(method, self._required)
        return None if required is None else _TokenCheck(self._tokens, method, required)


class _ObservedGenericHandler(grpc.GenericRpcHandler):
    """A service's generic handler (how gRPC finds a method it did not match when the call came in)
    whose handlers are wrapped by the front door."""

    def __init__(self, handler: grpc.GenericRpcHandler, registration: ObservedRegistration) -> None:
        self._handler = handler
        self._registration = registration

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._handler.service(handler_call_details)
        if handler is None:  # not this service's method: gRPC asks the next, or answers UNIMPLEMENTED
            return None
        return self._registration.wrapped(handler_call_details.method, handler)
