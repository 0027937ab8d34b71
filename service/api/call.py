"""What a call handler may ask of the transport about the call in progress."""

from __future__ import annotations

from typing import Protocol


class CallContext(Protocol):
    """The part of a call's context the handlers use; grpc.ServicerContext already has this shape."""

    def time_remaining(self) -> float | None:
        """Seconds until the call's deadline, or None when it has none."""
        ...

    def is_active(self) -> bool:
        """False once the caller went away or its deadline passed: work for it can be skipped."""
        ...
