"""Dynamic batching: concurrent encode calls are gathered into one model call by a worker thread.

Callers submit items (tokenized texts) with their token lengths; the worker takes what is queued
(waiting at most `max_wait_seconds` for more while the batch is small), stops when the padded token
budget would be exceeded, runs the batch in one call, and hands each caller its own rows. The queue is
bounded: when it is full, submit raises Overloaded at once instead of letting callers wait without end.
A job whose caller has gone (its `is_cancelled` says so) is dropped when it reaches the head of the
queue instead of spending model time nobody waits for.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import Cancelled, InvalidSettings, Overloaded

log = logging.getLogger(__name__)

# Runs the model on items (in the given order) and returns one float32 row per item.
BatchFunction = Callable[[list[Any]], np.ndarray]
# Tells whether the caller of a job has gone away (for example: its RPC was cancelled or timed out).
CancelCheck = Callable[[], bool]


@dataclass(frozen=True)
class BatchingSettings:
    max_batch_tokens: int = 16384
    max_wait_seconds: float = 0.010
    max_queued_texts: int = 8192
    # The wait for more calls also ends when none has arrived for this long: a lone call is not
    # held for the whole max wait, while a stream of calls (callers answered by the previous
    # batch coming back one after another) keeps the batch open up to it.
    arrival_gap_seconds: float = 0.0005

    def check(self, max_sequence_length: int, max_texts_per_request: int) -> None:
        """Refuses settings that cannot work with the model and the request limits."""
        if self.max_batch_tokens < max_sequence_length:
            raise InvalidSettings(
                f"max batch tokens ({self.max_batch_tokens}) must be at least the model's max sequence "
                f"length ({max_sequence_length}), or a single long input could never be batched"
            )
        if not 0 <= self.max_wait_seconds <= 1:
            raise InvalidSettings(
                f"max batch wait must be between 0 and 1000 ms, got {self.max_wait_seconds * 1000:g}"
            )
        if self.max_queued_texts < max_texts_per_request:
            raise InvalidSettings(
                f"the batch queue ({self.max_queued_texts} texts) must hold at least one full request "
                f"({max_texts_per_request} texts)"
            )


@dataclass
class _Job:
    texts: list[Any]
    lengths: list[int]
    is_cancelled: CancelCheck | None = None
    result: Future[np.ndarray] = field(default_factory=Future)

    @property
    def longest(self) -> int:
        return max(self.lengths)


class DynamicBatcher:
    """Gathers concurrent jobs into batches for one worker thread that owns the model."""

    def __init__(self, run_batch: BatchFunction, settings: BatchingSettings, name: str = "encoder") -> None:
        self._run_batch = run_batch
        self._settings = settings
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_texts = 0
        self._condition = threading.Condition()
        self._closed = False
        self.batches_run = 0
        self.cancelled_jobs = 0
        # Calls in the latest batch and when their results went out (for the expected batch size).
        self._last_batch_jobs = 0
        self._last_batch_end = float("-inf")
        # Called by the worker with the number of texts of each batch it ran (for metrics).
        self.on_batch: Callable[[int], None] | None = None
        self._worker = threading.Thread(target=self._work, name=f"{name}-batcher", daemon=True)
        self._worker.start()

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    def submit(
        self, texts: Sequence[Any], lengths: Sequence[int], is_cancelled: CancelCheck | None = None
    ) -> Future[np.ndarray]:
        """Queues texts (with their token lengths, capped at the model limit); the future gets their rows,
        or Cancelled when `is_cancelled` says the caller has gone before the texts reach the model."""
        job = _Job(list(texts), [max(1, n) for n in lengths], is_cancelled)
        with self._condition:
            if self._closed:
                raise Overloaded("the encoder is shutting down")
            if self._queued_texts + len(job.texts) > self._settings.max_queued_texts:
                raise Overloaded(
                    f"the embedding queue is full ({self._queued_texts} texts queued, limit "
                    f"{self._settings.max_queued_texts}); retry later or send smaller batches"
                )
            self._queue.append(job)
            self._queued_texts += len(job.texts)
            self._condition.notify()
        return job.result

    def run(
        self, texts: Sequence[Any], lengths: Sequence[int], is_cancelled: CancelCheck | None = None
    ) -> np.ndarray:
        return self.submit(texts, lengths, is_cancelled).result()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._worker.join(timeout=30)

    def _drop_cancelled_head(self) -> None:
        """Drops the jobs at the head of the queue whose caller has gone (call with the lock held)."""
        while self._queue and self._queue[0].is_cancelled is not None and self._queue[0].is_cancelled():
            job = self._queue.popleft()
            self._queued_texts -= len(job.texts)
            self.cancelled_jobs += 1
            job.result.set_exception(Cancelled("the call ended before its texts reached the model"))

    def _take_batch(self) -> list[_Job]:
        """Blocks for the first job, then gathers more within the token budget and the wait."""
        with self._condition:
            self._drop_cancelled_head()
            while not self._queue and not self._closed:
                self._condition.wait()
                self._drop_cancelled_head()
            if not self._queue:
                return []
            batch = [self._queue.popleft()]
            texts, longest = len(batch[0].texts), batch[0].longest
            last_arrival = time.monotonic()
            deadline = last_arrival + self._settings.max_wait_seconds
            # Callers the previous batch just answered come back with their next call within moments.
            # Under such steady load the batch waits for as many calls (at most max_wait) instead of
            # running the few already queued while the others arrive, which would leave them the
            # next batch and keep alternating a small, costly model call with a big one.
            recent = last_arrival - self._last_batch_end <= self._settings.max_wait_seconds
            expected = self._last_batch_jobs if recent else 1
            while True:
                self._drop_cancelled_head()
                if self._queue:
                    candidate = self._queue[0]
                    padded = (texts + len(candidate.texts)) * max(longest, candidate.longest)
                    if padded > self._settings.max_batch_tokens:
                        break
                    batch.append(self._queue.popleft())
                    texts += len(candidate.texts)
                    longest = max(longest, candidate.longest)
                    last_arrival = time.monotonic()
                    continue
                until = deadline
                if len(batch) >= expected:  # only a quiet gap more: a lone call is not held long
                    until = min(deadline, last_arrival + self._settings.arrival_gap_seconds)
                remaining = until - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._condition.wait(remaining)
            self._queued_texts -= texts
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            texts = [text for job in batch for text in job.texts]
            try:
                rows = self._run_batch(texts)
            except Exception as error:  # the callers get the error; the worker lives on
                log.exception("batch of %d texts failed", len(texts))
                for job in batch:
                    job.result.set_exception(error)
                continue
            self.batches_run += 1
            if self.on_batch is not None:
                self.on_batch(len(texts))
            start = 0
            for job in batch:
                job.result.set_result(rows[start : start + len(job.texts)])
                start += len(job.texts)
            self._last_batch_jobs = len(batch)
            self._last_batch_end = time.monotonic()
