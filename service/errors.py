"""Domain errors raised by the core; the transport maps each to one gRPC status code."""


class VecserveError(Exception):
    """Base class of every error the core raises on purpose."""


class InvalidArgument(VecserveError):
    """The caller's input is malformed or out of range; `field` names the offending input when known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(VecserveError):
    """A named resource (index, document) does not exist."""


class AlreadyExists(VecserveError):
    """A resource with that name already exists."""


class Overloaded(VecserveError):
    """The server is at capacity (a queue is full); retrying later may succeed."""


class TooLarge(VecserveError):
    """A request or its answer exceeds a size limit; the message names the limit and how to split."""


class FailedPrecondition(VecserveError):
    """The request is valid but the system is not in a state to perform it."""


class Unavailable(VecserveError):
    """The server cannot take the call now (it is shutting down, or a shard or encoder replica of the
    cluster it needs is down, named in the message); a retry elsewhere or later may succeed."""


class Cancelled(VecserveError):
    """The caller went away (cancelled, or out of time) before its work ran, so the work was skipped."""


class InvalidSettings(ValueError):
    """Server settings that cannot work; the server refuses to start with them."""
