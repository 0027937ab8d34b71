"""Ends gRPC calls with the status service/api/status.py gives each domain error."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_status import rpc_status

from service.api.status import status_of
from service.errors import VecserveError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def abort_with_error(context: grpc.ServicerContext, error: VecserveError) -> None:
    """Ends the call with the status of a domain error (never returns).

    The status's details travel in the trailing metadata, after what the call set there already (its
    request id): abort_with_status alone would replace it.
    """
    status = rpc_status.to_status(status_of(error))
    kept = tuple(context.trailing_metadata() or ())
    context.abort_with_status(_Status(status.code, status.details, (*kept, *status.trailing_metadata)))


F = TypeVar("F", bound=Callable[..., Any])


def translate_errors(method: F) -> F:
    """Wraps a servicer method: domain errors become their status code, anything else INTERNAL."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except VecserveError as error:
            abort_with_error(context, error)
        except Exception as error:
            if context.code() is not None:  # already aborted deliberately
                raise
            if isinstance(error, grpc.RpcError) and not context.is_active():
                raise  # a request stream ended by the client's cancel or deadline: nothing to answer
            log.exception("unexpected error in %s", method.__qualname__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see server log")
        return None

    return wrapper  # type: ignore[return-value]
