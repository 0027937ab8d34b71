"""Checks made before an HTTP call's body is read: its size against the message limit, and its bearer
token against the role the method needs (service/api/auth.py decides; this only answers)."""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from service.api.auth import DenialKind, TokenTable, access_denial, protected_methods, required_role
from service.api.limits import oversized_request
from service.http_server.calls import connect_error
from service.http_server.observing import method_path

_DENIAL_CODES = {
    DenialKind.UNAUTHENTICATED: Code.UNAUTHENTICATED,
    DenialKind.PERMISSION_DENIED: Code.PERMISSION_DENIED,
}
_BEARER_PREFIX = "bearer "


class BodyLimit:
    """Refuses a body whose declared length is over the limit with RESOURCE_EXHAUSTED and advice;
    a body without a length is cut at the same limit by connectrpc itself (read_max_bytes)."""

    def __init__(self, max_message_bytes: int) -> None:
        self._limit = max_message_bytes

    async def on_start(self, ctx: RequestContext) -> None:
        declared = ctx.request_headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limit:
            raise connect_error(oversized_request(int(declared), self._limit))

    async def on_end(self, token: None, ctx: RequestContext, error: Exception | None) -> None:
        return None


class TokenCheck:
    """Lets a call go on only with an `Authorization: Bearer <token>` header whose role allows it."""

    def __init__(self, tokens: TokenTable) -> None:
        self._tokens = tokens
        self._required = protected_methods()

    async def on_start(self, ctx: RequestContext) -> None:
        path = method_path(ctx)
        required = required_role(path, self._required)
        if required is None:
            return
        header = ctx.request_headers.get("authorization")
        token = None
        if header is not None and header[: len(_BEARER_PREFIX)].lower() == _BEARER_PREFIX:
            token = header[len(_BEARER_PREFIX) :].strip()
        denial = access_denial(self._tokens, path, required, token)
        if denial is not None:
            raise ConnectError(_DENIAL_CODES[denial.kind], denial.message)

    async def on_end(self, token: None, ctx: RequestContext, error: Exception | None) -> None:
        return None
