"""Search batching: concurrent searches of one index with the same k and filter share one FAISS call.

FAISS answers a matrix of queries far faster than the same queries one call at a time (exact search
over 100,000 x 384 vectors: about 19x here). Callers are grouped by a key (index, k, filter); the
first caller of a group becomes its leader and runs everything queued for the key in one call, while
the others wait for their rows. Queries that arrive during a run queue up, and leadership passes to
the first of them when the run ends, so no thread serves other callers' work after its own.

Without gathering, steady concurrent load splits into alternating small and large runs (32 clients
gave runs of 1 and 31 queries, 4 and 28, ...): the callers answered by one run come back while the
next has just started with the few that were already queued. A run of a few queries costs about as
much as a full one (each is one pass over the vectors), so a leader first waits for as many callers as
were around last time (the last run's callers plus those queued when it ended), for at most
GATHER_FRACTION of the last run's duration. A lone sequential caller expects nobody and never waits:
its search runs directly, with nothing queued, copied or woken (callers arriving meanwhile queue up
and lead the next run as usual).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from service.common.lru import LruCache

Hits = TypeVar("Hits")
# A leader waits for expected callers at most this fraction of the last run's duration.
GATHER_FRACTION = 0.5
# Keys whose history (expected callers, last run time) is remembered; the oldest are forgotten.
REMEMBERED_KEYS = 1024
# Runs one search: query matrix and per-row exclusions in, one result per row out.
SearchFunction = Callable[[np.ndarray, list[int | None]], list[Hits]]


@dataclass
class _History:
    expected_callers: int = 1
    run_seconds: float = 0.0


@dataclass
class _Request(Generic[Hits]):
    queries: np.ndarray
    excluded: list[int | None]
    wake: threading.Event = field(default_factory=threading.Event)
    results: list[Hits] | None = None
    error: BaseException | None = None


class SearchCoalescer:
    """Merges concurrent searches that share a key into one call of the search function."""

    def __init__(self, max_batch_queries: int = 4096) -> None:
        self._max_batch_queries = max_batch_queries
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queued: dict[Hashable, list[_Request]] = {}
        self._running: set[Hashable] = set()
        self._history: LruCache[Hashable, _History] = LruCache(REMEMBERED_KEYS)
        self.calls = 0

    @property
    def queued_callers(self) -> int:
        """Callers, over all keys, whose queries are not yet in a search call (a gathering leader's
        own included)."""
        with self._lock:
            return sum(len(requests) for requests in self._queued.values())

    def search(
        self,
        key: Hashable,
        queries: np.ndarray,
        excluded: Sequence[int | None],
        run: SearchFunction,
    ) -> list:
        with self._lock:
            history = self._history.get(key) or _History()
            alone = key not in self._running and history.expected_callers <= 1
            if alone:
                self._running.add(key)
        if alone:
            return self._run_alone(key, history, queries, list(excluded), run)
        mine = _Request(queries, list(excluded))
        with self._lock:
            self._queued.setdefault(key, []).append(mine)
            leading = key not in self._running
            if leading:
                self._running.add(key)
            else:
                self._arrived.notify_all()
        if not leading:
            mine.wake.wait()
            if mine.results is not None or mine.error is not None:
                return self._outcome(mine)
            # Woken without results: leadership was handed over.
        self._lead(key, run)
        return self._outcome(mine)

    def _lead(self, key: Hashable, run: SearchFunction) -> None:
        with self._lock:
            history = self._history.get(key) or _History()
            self._gather(key, history)
            queued = self._queued.pop(key)
            batch, rest = self._split(queued)
            if rest:
                self._queued[key] = rest
        began = time.perf_counter()
        try:
            results = run(
                np.concatenate([request.queries for request in batch]),
                [row for request in batch for row in request.excluded],
            )
            self.calls += 1
            start = 0
            for request in batch:
                request.results = results[start : start + len(request.queries)]
                start += len(request.queries)
        except BaseException as error:  # every caller of the batch gets the failure
            for request in batch:
                request.error = error
        finally:
            self._finish_run(key, history, len(batch), began)
            for request in batch:
                request.wake.set()

    def _run_alone(
        self,
        key: Hashable,
        history: _History,
        queries: np.ndarray,
        excluded: list[int | None],
        run: SearchFunction,
    ) -> list:
        """Runs a search no other caller is expected to share (the caller holds the key's run)."""
        began = time.perf_counter()
        try:
            results = run(queries, excluded)
            self.calls += 1
            return results
        finally:
            self._finish_run(key, history, 1, began)

    def _finish_run(self, key: Hashable, history: _History, callers: int, began: float) -> None:
        """Records a run of `callers` callers and hands the key's run to the first caller queued
        meanwhile, if any."""
        with self._lock:
            waiting = self._queued.get(key)
            history.run_seconds = time.perf_counter() - began
            history.expected_callers = callers + len(waiting or ())
            self._history.put(key, history)
            if waiting:
                waiting[0].wake.set()  # the next leader
            else:
                self._running.discard(key)

    def _gather(self, key: Hashable, history: _History) -> None:
        """Waits (holding no lock while asleep) until the expected callers are queued or time is up."""
        deadline = time.perf_counter() + GATHER_FRACTION * history.run_seconds
        while len(self._queued[key]) < history.expected_callers:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.wait(remaining)

    def _split(self, queued: list[_Request]) -> tuple[list[_Request], list[_Request]]:
        """As many whole requests as fit the batch limit (always at least one)."""
        total = 0
        for position, request in enumerate(queued):
            total += len(request.queries)
            if total > self._max_batch_queries and position > 0:
                return queued[:position], queued[position:]
        return queued, []

    @staticmethod
    def _outcome(request: _Request) -> list:
        if request.error is not None:
            raise request.error
        assert request.results is not None
        return request.results
