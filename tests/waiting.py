"""Waiting for real state instead of sleeping a fixed time, which a loaded machine may outlast."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_SECONDS = 0.002


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Returns once `condition()` holds; TimeoutError naming `what` if it still does not after `timeout`
    seconds (a safety net against a hang, not a bound the test relies on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what} after {timeout:g} s")
        time.sleep(POLL_SECONDS)
