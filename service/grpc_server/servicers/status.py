"""Maps domain errors to gRPC status codes, with google.rpc.BadRequest details for invalid fields."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Overloaded,
    TooLarge,
    VecserveError,
)

log = logging.getLogger(__name__)

_CODES: dict[type[VecserveError], tuple[grpc.StatusCode, int]] = {
    InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    NotFound: (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    AlreadyExists: (grpc.StatusCode.ALREADY_EXISTS, code_pb2.ALREADY_EXISTS),
    Overloaded: (grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    TooLarge: (grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    Cancelled: (grpc.StatusCode.CANCELLED, code_pb2.CANCELLED),
}

# A status travels in trailers, which clients cap (8 KiB by default, counted after percent-encoding):
# messages that quote a huge input are cut so that the error still reaches the client.
MAX_MESSAGE_BYTES = 1024
MAX_FIELD_BYTES = 256


def bounded(text: str, limit: int) -> str:
    """`text` in at most about `limit` UTF-8 bytes: its head and its tail (where the advice usually is)."""
    encoded = text.encode("utf-8", "backslashreplace")
    if len(encoded) <= limit:
        return text
    head = encoded[: limit * 2 // 3].decode("utf-8", "ignore")
    tail = encoded[-(limit // 3) :].decode("utf-8", "ignore")
    return f"{head} [... {len(encoded) - len(head.encode()) - len(tail.encode())} bytes cut ...] {tail}"


def abort_with_error(context: grpc.ServicerContext, error: VecserveError) -> None:
    """Ends the call with the status code of a domain error (never returns)."""
    _, numeric_code = next(
        (codes for error_type, codes in _CODES.items() if isinstance(error, error_type)),
        (grpc.StatusCode.INTERNAL, code_pb2.INTERNAL),
    )
    message = bounded(str(error), MAX_MESSAGE_BYTES)
    status = status_pb2.Status(code=numeric_code, message=message)
    if isinstance(error, InvalidArgument) and error.field:
        details = any_pb2.Any()
        details.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=bounded(error.field, MAX_FIELD_BYTES), description=message
                    )
                ]
            )
        )
        status.details.append(details)
    context.abort_with_status(rpc_status.to_status(status))


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
