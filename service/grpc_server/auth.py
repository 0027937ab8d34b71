"""The gRPC side of bearer-token authentication (service/api/auth.py): an interceptor that answers
every call the shared rules deny with UNAUTHENTICATED or PERMISSION_DENIED, reading no request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from service.api.auth import (
    DenialKind,
    TokenTable,
    access_denial,
    bearer_token,
    protected_methods,
    required_role,
)

_CODES = {
    DenialKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    DenialKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}


def rejecting_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same shape as `handler` that ends the call with `code`, reading no request."""

    def reject(_request: object, context: grpc.ServicerContext) -> None:
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(reject)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(reject)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject)
    return grpc.unary_unary_rpc_method_handler(reject)


class AuthInterceptor(grpc.ServerInterceptor):
    """Lets a call through only with a token whose role allows the method."""

    def __init__(self, tokens: TokenTable) -> None:
        self._tokens = tokens
        self._required = protected_methods()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        required = required_role(handler_call_details.method, self._required)
        if handler is None or required is None:
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        denial = access_denial(self._tokens, handler_call_details.method, required, token)
        if denial is not None:
            return rejecting_handler(handler, _CODES[denial.kind], denial.message)
        return handler
