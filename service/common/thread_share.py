"""An even share of the cores for each of the compute calls running at the same time."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ThreadShare:
    """Splits a number of threads evenly among the calls running at once (at least one each).

    A server runs model batches and FAISS searches side by side: a full team of threads per call
    oversubscribes the cores and leaves threads waiting for each other, while a call running alone
    should have every core. The share is decided when a call starts; the threading library's own
    setting (torch's or OpenMP's, both per calling thread) is the caller's to apply.
    """

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._lock = threading.Lock()
        self._running = 0

    @contextlib.contextmanager
    def share(self, most: int | None = None) -> Iterator[int]:
        """Counts the call as running while inside; yields its threads (at most `most`)."""
        with self._lock:
            self._running += 1
            running = self._running
        try:
            yield max(1, min(most or self.threads, self.threads // running))
        finally:
            with self._lock:
                self._running -= 1
