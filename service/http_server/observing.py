"""Connect interceptors that run before an HTTP call's body is read: the call's observation (request
id, metrics, drain count, access log: service/observability/calls.py, as over gRPC) and the shutdown
drain's refusal."""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from service.common.drain import Drain
from service.errors import Unavailable
from service.http_server.calls import connect_error
from service.observability.calls import REQUEST_ID_HEADER, CallObserver, ObservedCall, ObservedMethod

# The gRPC code names the metrics and access log use, where Connect spells a code otherwise.
_GRPC_NAMES = {Code.CANCELED: "CANCELLED"}


def method_path(ctx: RequestContext) -> str:
    """The method as gRPC names it: "/pkg.Service/Method"."""
    return f"/{ctx.method.service_name}/{ctx.method.name}"


def grpc_code_name(error: Exception | None) -> str:
    """The gRPC name of the code an HTTP call ends with (connectrpc answers other errors UNKNOWN)."""
    if error is None:
        return "OK"
    if isinstance(error, ConnectError):
        return _GRPC_NAMES.get(error.code, error.code.name)
    return "UNKNOWN"


def peer_of(ctx: RequestContext) -> str:
    """The client's address as gRPC writes a peer ("ipv4:1.2.3.4:5", "ipv6:[::1]:5")."""
    address = ctx.client_address
    if address is None:
        return "unknown"
    host, _, port = address.rpartition(":")
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{address}"


class Observing:
    """The first interceptor: every call, refused ones included, gets its request id (sent back in the
    `x-request-id` header), its metrics and its access-log line."""

    def __init__(self, observer: CallObserver) -> None:
        self._observer = observer

    async def on_start(self, ctx: RequestContext) -> tuple[ObservedMethod, ObservedCall]:
        observed = self._observer.method(method_path(ctx))
        call = observed.begin(ctx.request_headers.get(REQUEST_ID_HEADER))
        ctx.response_headers[REQUEST_ID_HEADER] = call.request_id
        return observed, call

    async def on_end(
        self, started: tuple[ObservedMethod, ObservedCall], ctx: RequestContext, error: Exception | None
    ) -> None:
        observed, call = started
        observed.end(call, grpc_code_name(error), peer_of(ctx))


class DrainCheck:
    """Refuses new calls with UNAVAILABLE once the server has begun to shut down."""

    def __init__(self, drain: Drain) -> None:
        self._drain = drain

    async def on_start(self, ctx: RequestContext) -> None:
        try:
            self._drain.admit()
        except Unavailable as error:
            raise connect_error(error) from None

    async def on_end(self, token: None, ctx: RequestContext, error: Exception | None) -> None:
        return None
