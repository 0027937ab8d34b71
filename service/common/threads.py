"""Running one piece of work in a thread of its own, waiting for it, as if it had run in the caller's."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_in_own_thread(work: Callable[[], T], name: str) -> T:
    """Runs `work` in a new thread named `name`, waits for it, and returns its value or raises its error.

    For work that must not run in the calling thread: one that changes its thread's settings for good
    (niceness), or a caller on an event loop that refuses blocking calls."""
    outcome: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as error:
            errors.append(error)

    worker = threading.Thread(target=run, name=name)
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return outcome[0]
