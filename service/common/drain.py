"""The graceful-shutdown drain every transport shares: it counts the calls being handled and, once
draining, refuses new ones, so a stopping server lets the calls it took finish and takes no more."""

from __future__ import annotations

import threading

from service.errors import Unavailable

SHUTTING_DOWN = (
    "the server is shutting down and takes no new calls; retry on another server or once it is back"
)


class Drain:
    """Counts the calls being handled; once draining, admit() refuses new calls with Unavailable.

    gRPC's own shutdown answers calls that arrived but were not yet handed to a thread with
    CANCELLED (grpc/grpc#41785), and a stopped HTTP server refuses connections, so the server drains
    here first, while both transports still take calls and can answer them UNAVAILABLE, and stops
    the transports only once the calls admitted have finished.
    """

    def __init__(self) -> None:
        # Counting takes the bare lock; waiting for the count to fall to zero, its condition.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._calls = 0
        # Calls being handled by transport ("grpc", "http"): the transports' in-flight gauges.
        self._by_transport: dict[str, int] = {}
        self.draining = False

    def enter(self, transport: str) -> None:
        with self._lock:
            self._calls += 1
            self._by_transport[transport] = self._by_transport.get(transport, 0) + 1

    def leave(self, transport: str) -> None:
        with self._lock:
            self._calls -= 1
            self._by_transport[transport] -= 1
            if not self._calls:
                self._idle.notify_all()

    def in_flight(self, transport: str) -> int:
        """Calls over `transport` being handled right now."""
        return self._by_transport.get(transport, 0)

    def admit(self) -> None:
        """Raises Unavailable once draining has started."""
        if self.draining:
            raise Unavailable(SHUTTING_DOWN)

    def start(self) -> None:
        self.draining = True

    def wait(self, timeout: float | None) -> bool:
        """Until no call is being handled (True), or timeout seconds passed (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._calls == 0, timeout)
