"""Domain errors as google.rpc.Status (code, bounded message, BadRequest details): one meaning per error,
which each transport only puts on its wire (a gRPC status, a Connect error)."""

from __future__ import annotations

from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from service.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Overloaded,
    TooLarge,
    Unavailable,
    VecserveError,
)

_CODES: dict[type[VecserveError], int] = {
    InvalidArgument: code_pb2.INVALID_ARGUMENT,
    NotFound: code_pb2.NOT_FOUND,
    AlreadyExists: code_pb2.ALREADY_EXISTS,
    Overloaded: code_pb2.RESOURCE_EXHAUSTED,
    TooLarge: code_pb2.RESOURCE_EXHAUSTED,
    FailedPrecondition: code_pb2.FAILED_PRECONDITION,
    Cancelled: code_pb2.CANCELLED,
    Unavailable: code_pb2.UNAVAILABLE,
}

# A gRPC status travels in trailers, which clients cap (8 KiB by default, counted after
# percent-encoding): messages that quote a huge input are cut so that the error still reaches the client.
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


def status_of(error: VecserveError) -> status_pb2.Status:
    """The status a domain error is answered with; an InvalidArgument naming its field carries a
    google.rpc.BadRequest field violation, so clients can point at the input."""
    code = next(
        (code for error_type, code in _CODES.items() if isinstance(error, error_type)), code_pb2.INTERNAL
    )
    message = bounded(str(error), MAX_MESSAGE_BYTES)
    status = status_pb2.Status(code=code, message=message)
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
    return status
