"""Background work on search structures: builds (training, HNSW compaction) queued to run one at a time
at low CPU priority, the log of the changes written while a build runs, and the low-priority thread a
snapshot is written from."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from service.common.threads import run_in_own_thread

T = TypeVar("T")

# How much nicer than the serving threads a build runs: its CPU weight is about a tenth of theirs
# (Linux's CFS weights 110 against 1024), so it takes the cores that live calls leave idle.
BUILD_NICENESS = 10
MAX_NICENESS = 19


class ChangeLog:
    """The net changes written since a build took its copy of the record: FAISS ids added (with their
    vectors) and removed. FAISS ids are never reused, so an id added and removed again cancels out."""

    def __init__(self) -> None:
        self.added: dict[int, np.ndarray] = {}
        self.removed: set[int] = set()

    def __len__(self) -> int:
        return len(self.added) + len(self.removed)

    def record_removed(self, faiss_ids: np.ndarray) -> None:
        for faiss_id in faiss_ids.tolist():
            if self.added.pop(faiss_id, None) is None:
                self.removed.add(faiss_id)

    def record_added(self, faiss_ids: np.ndarray, vectors: np.ndarray) -> None:
        self.added.update(zip(faiss_ids.tolist(), vectors, strict=True))

    def take(self) -> ChangeLog:
        """The changes logged so far; the log starts again empty."""
        taken = ChangeLog()
        taken.added, self.added = self.added, {}
        taken.removed, self.removed = self.removed, set()
        return taken


def _lower_priority() -> None:
    """Makes the calling thread nicer than the serving threads. On Linux niceness is per thread and
    inherited by the threads it starts, such as FAISS's OpenMP team; elsewhere a thread id is no
    process id, so nothing is changed there (and builds run on one thread: see BuildQueue.threads)."""
    thread = threading.get_native_id()
    niceness = min(os.getpriority(os.PRIO_PROCESS, thread) + BUILD_NICENESS, MAX_NICENESS)
    os.setpriority(os.PRIO_PROCESS, thread, niceness)


def run_at_low_priority(work: Callable[[], T]) -> T:
    """Runs `work` in a thread of its own made nicer than the caller's, and returns what it returns.

    For work that holds no lock, such as writing a snapshot: on Linux it then takes only the CPU that
    live calls leave idle. A thread's niceness cannot be lowered again, so the caller's stays as it is.
    """
    if sys.platform != "linux":
        return work()

    def niced() -> T:
        _lower_priority()
        return work()

    return run_in_own_thread(niced, "index-background-write")


class BuildQueue:
    """Runs structure builds one at a time, in a thread of low CPU priority shared by a store's indexes.

    A build is CPU-bound for seconds to minutes; at full priority on every core it would take the cores
    from searches and writes. Niced, it may use every core, and yields them whenever live calls want them.
    """

    def __init__(self, cores: int) -> None:
        self._niced = sys.platform == "linux"
        # FAISS threads of a build: every core when the thread is niced, one otherwise.
        self.threads = cores if self._niced else 1
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="index-build",
            initializer=_lower_priority if self._niced else None,
        )
        # The snapshot after a build, at normal priority: its copy of the structure is taken under the
        # read lock, which writers wait for, so it must not wait for the CPU behind live calls.
        self._snapshots = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-build-snapshot")

    def submit(self, build: Callable[[], None]) -> Future[None]:
        """Queues a build; RuntimeError once the queue is closed."""
        return self._executor.submit(build)

    def snapshot_after_build(self, snapshot: Callable[[], None]) -> None:
        """Runs a snapshot at normal priority (see __init__) and returns once it is written."""
        self._snapshots.submit(snapshot).result()

    def close(self) -> None:
        """Lets the running build finish and drops the queued ones (the next start asks for them again)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._snapshots.shutdown(wait=True)
