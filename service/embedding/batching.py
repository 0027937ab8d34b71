"""Dynamic batching: concurrent encode calls are gathered into one model call by a worker thread.

Callers submit items (tokenized texts) with their token lengths; a worker takes what is queued
(waiting at most `max_wait_seconds` for more while the batch is small), stops when the padded token
budget would be exceeded, runs the batch in one call, and hands each caller its own rows. The queue is
bounded: when it is full, submit raises Overloaded at once instead of letting callers wait without end.
A job whose caller has gone (its `is_cancelled` says so) is dropped when it reaches the head of the
queue instead of spending model time nobody waits for.

With several workers, one gathers the next batch while the others run theirs: the model computes
while the callers of the previous batch are answered and send their next texts, which a single
worker would wait for with the model idle. Batches are formed one at a time, each from at most an
even share of the recent demand, so that concurrent callers are spread over the workers instead of
all riding one batch.

Background work (the vocabulary build: texts no caller is waiting for) goes through a lane of its own,
so that it takes the model only when live calls leave it idle or have had their share:

- A background submission is cut into batches of at most `background_batch_tokens` tokens (texts x
  longest), and a background batch has the model to itself: it starts only when no live batch runs,
  and no live batch starts while it runs. Run beside a live batch, it split the cores with it (and
  three torch threads on two cores slowed both); alone it runs as fast as on an idle server, and a
  live call arriving meanwhile waits for that one small batch (512 tokens by default: about 70
  words of the vocabulary, about 0.2 s on two CPU cores).
- Background batches run freely once live calls have been quiet for `background_quiet_seconds`
  (no live job queued or running): the build then has the model to itself.
- Under steady live load the lane still gets `background_share` of the time while it has work:
  it earns that share of every second as credit, and each of its batches costs its own duration.
  When the credit is not negative, no new live batch starts: the background batch goes next, as
  soon as the live batches running end, ahead of queued live calls. After a batch that took t
  seconds, live calls have the model for t x (1 - share) / share seconds (the credit never sinks
  lower, so batches run while live calls were quiet are not held against the lane), and the time
  it waited for running live batches to end is made up by the next turn. Time, not tokens: the
  vocabulary's one-word texts cost several times more per token than sentences. So background
  work that takes T seconds of model time is done within about T / share seconds however busy the
  server is (10 T at the default share of 0.1), and live calls lose at most that share of the
  model's time to it. T is the model time under that load: on a machine loaded by other work, a
  background batch takes longer than on an idle one, and the build with it.
- Background texts have a queue limit of their own (max_queued_texts, apart from the live queue's):
  live calls are never refused because background work is queued.
"""

from __future__ import annotations

import collections
import logging
import math
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

AUTO_MODEL_WORKERS = 0
# A token budget left to the encoder, which knows the device (service/embedding/device.py).
AUTO_BATCH_TOKENS = 0
MAX_MODEL_WORKERS = 16


@dataclass(frozen=True)
class BatchingSettings:
    max_batch_tokens: int = 16384
    max_wait_seconds: float = 0.010
    max_queued_texts: int = 8192
    # The wait for more calls also ends when none has arrived for this long: a lone call is not
    # held for the whole max wait, while a stream of calls (callers answered by the previous
    # batch coming back one after another) keeps the batch open up to it.
    arrival_gap_seconds: float = 0.0005
    # Threads running batches at the same time (each model call still uses torch's own threads);
    # AUTO_MODEL_WORKERS leaves the choice to the encoder, which knows whether its model allows it.
    model_workers: int = 1
    # The background lane (see the module docstring): the most tokens of one background batch (the
    # longest wait it can cause a live call), the share of the model's time it keeps under steady
    # live load, and how long live calls must have been quiet before it runs freely.
    background_batch_tokens: int = 512
    background_share: float = 0.1
    background_quiet_seconds: float = 0.05

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
        if not AUTO_MODEL_WORKERS <= self.model_workers <= MAX_MODEL_WORKERS:
            raise InvalidSettings(
                f"model workers must be between 1 and {MAX_MODEL_WORKERS} ({AUTO_MODEL_WORKERS}: chosen "
                f"for the model), got {self.model_workers}"
            )
        if self.background_batch_tokens < max_sequence_length:
            raise InvalidSettings(
                f"background batch tokens ({self.background_batch_tokens}) must be at least the model's "
                f"max sequence length ({max_sequence_length}), or a long background text could not run"
            )
        if not 0 < self.background_share < 1:
            raise InvalidSettings(
                f"the background share must be between 0 and 1 (both excluded), got {self.background_share}"
            )
        if not 0 <= self.background_quiet_seconds < math.inf:
            raise InvalidSettings(
                "the background quiet time must be 0 ms or more, got "
                f"{self.background_quiet_seconds * 1000:g} ms"
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


def _background_parts(job: _Job, max_tokens: int) -> list[_Job]:
    """The job cut into runs of consecutive texts of at most max_tokens (texts x longest) each; a text
    longer than that alone still makes a part of its own."""
    parts: list[_Job] = []
    start, longest = 0, 0
    for end, length in enumerate(job.lengths):
        longest = max(longest, length)
        if end > start and (end - start + 1) * longest > max_tokens:
            parts.append(_Job(job.texts[start:end], job.lengths[start:end], job.is_cancelled))
            start, longest = end, length
    parts.append(_Job(job.texts[start:], job.lengths[start:], job.is_cancelled))
    return parts


def _joined(parts: list[_Job]) -> Future[np.ndarray]:
    """A future of the parts' rows, in order, set once every part is done (the first error if any)."""
    joined: Future[np.ndarray] = Future()
    remaining = [len(parts)]
    lock = threading.Lock()

    def part_done(_: Future[np.ndarray]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        errors = [part.result.exception() for part in parts if part.result.exception() is not None]
        if errors:
            joined.set_exception(errors[0])
        else:
            joined.set_result(np.concatenate([part.result.result() for part in parts]))

    for part in parts:
        part.result.add_done_callback(part_done)
    return joined


class DynamicBatcher:
    """Gathers concurrent jobs into batches for the worker threads that run the model."""

    def __init__(
        self,
        run_batch: BatchFunction,
        settings: BatchingSettings,
        name: str = "encoder",
        clock: Callable[[], float] = time.monotonic,
        run_background_batch: BatchFunction | None = None,
    ) -> None:
        """`clock` times the background lane's share (tests give one of their own);
        `run_background_batch` runs the background batches, when they are to be told apart."""
        if settings.model_workers < 1:
            raise ValueError(f"a batcher needs at least one worker, got {settings.model_workers}")
        self._run_batch = run_batch
        self._run_background_batch = run_background_batch or run_batch
        self._settings = settings
        self._clock = clock
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_texts = 0
        self._background: collections.deque[_Job] = collections.deque()
        self._background_texts = 0
        self._background_running = False
        # Seconds of model time the background lane is owed (see the module docstring): not negative
        # means its next batch goes ahead of live calls. Earned while it has work, since the clock read.
        self._background_credit = 0.0
        self._credit_since = clock()
        # When live calls were last seen (submitted or answered), and their batches running now.
        self._last_live = float("-inf")
        self._live_running = 0
        self.background_texts_run = 0
        # Seconds the background batches took (on `clock`): with the wall time, the share they had.
        self.background_seconds_run = 0.0
        self._condition = threading.Condition()
        self._closed = False
        self.batches_run = 0
        self.cancelled_jobs = 0
        # Calls in the latest batch and when their results went out (for the expected batch size).
        self._last_batch_jobs = 0
        self._last_batch_end = float("-inf")
        # Calls in each worker's latest batch: together, about how many callers keep the model busy.
        self._worker_batch_jobs = [0] * settings.model_workers
        # Only one worker gathers a batch at a time; the others wait for that turn or run theirs.
        self._gathering = False
        self._running = 0
        # Called by a worker with the number of texts of each batch it ran (for metrics).
        self.on_batch: Callable[[int], None] | None = None
        self._workers = [
            threading.Thread(target=self._work, args=(index,), name=f"{name}-batcher-{index}", daemon=True)
            for index in range(settings.model_workers)
        ]
        for worker in self._workers:
            worker.start()

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def settings(self) -> BatchingSettings:
        return self._settings

    @property
    def workers(self) -> int:
        return len(self._workers)

    def submit(
        self,
        texts: Sequence[Any],
        lengths: Sequence[int],
        is_cancelled: CancelCheck | None = None,
        background: bool = False,
    ) -> Future[np.ndarray]:
        """Queues texts (with their token lengths, capped at the model limit); the future gets their rows,
        or Cancelled when `is_cancelled` says the caller has gone before the texts reach the model.
        `background` texts go through the background lane (see the module docstring)."""
        job = _Job(list(texts), [max(1, n) for n in lengths], is_cancelled)
        with self._condition:
            if self._closed:
                raise Overloaded("the encoder is shutting down")
            if background:
                return self._submit_background(job)
            if self._queued_texts + len(job.texts) > self._settings.max_queued_texts:
                raise Overloaded(
                    f"the embedding queue is full ({self._queued_texts} texts queued, limit "
                    f"{self._settings.max_queued_texts}); retry later or send smaller batches"
                )
            self._queue.append(job)
            self._queued_texts += len(job.texts)
            self._last_live = time.monotonic()
            # Every waiter rechecks: the gathering worker and the ones waiting for their turn alike.
            self._condition.notify_all()
        return job.result

    def _submit_background(self, job: _Job) -> Future[np.ndarray]:
        """Queues a job in the background lane, in parts of one background batch (call with the lock held)."""
        if self._background_texts + len(job.texts) > self._settings.max_queued_texts:
            raise Overloaded(
                f"the background queue is full ({self._background_texts} texts queued, limit "
                f"{self._settings.max_queued_texts})"
            )
        parts = _background_parts(job, self._settings.background_batch_tokens)
        self._earn_credit()  # nothing earned while the lane had no work
        self._background.extend(parts)
        self._background_texts += len(job.texts)
        self._condition.notify_all()
        return _joined(parts)

    def run(
        self,
        texts: Sequence[Any],
        lengths: Sequence[int],
        is_cancelled: CancelCheck | None = None,
        background: bool = False,
    ) -> np.ndarray:
        return self.submit(texts, lengths, is_cancelled, background).result()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        for worker in self._workers:
            worker.join(timeout=30)

    def _drop_cancelled_head(self) -> None:
        """Drops the jobs at the head of the queue whose caller has gone (call with the lock held)."""
        self._queued_texts -= self._drop_cancelled(self._queue)

    def _drop_cancelled(self, queue: collections.deque[_Job]) -> int:
        """Drops the jobs at the head of a queue whose caller has gone; returns their texts."""
        texts = 0
        while queue and queue[0].is_cancelled is not None and queue[0].is_cancelled():
            job = queue.popleft()
            texts += len(job.texts)
            self.cancelled_jobs += 1
            job.result.set_exception(Cancelled("the call ended before its texts reached the model"))
        return texts

    def _take_batch(self) -> tuple[list[_Job], bool]:
        """Waits for the gathering turn and the first job, then gathers more within the token budget,
        the worker's share of the demand and the wait; says whether it is a background batch."""
        with self._condition:
            while self._gathering and not self._closed:
                self._condition.wait()
            self._gathering = True
            try:
                return self._gather()
            finally:
                self._gathering = False
                self._condition.notify_all()

    def _gather(self) -> tuple[list[_Job], bool]:
        """The batch of the worker holding the gathering turn (call with the lock held)."""
        while True:
            self._drop_cancelled_head()
            self._background_texts -= self._drop_cancelled(self._background)
            if self._background_turn():
                return self._take_background(), True
            if self._queue and not self._background_running and not self._background_due():
                break
            if self._closed and not self._queue and not self._background:
                return [], False
            self._condition.wait(self._until_background_turn())
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
        while len(batch) < self._share(len(batch)):
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
            # Only a quiet gap more once the expected calls are in: a lone call is not held long.
            if len(batch) >= min(expected, self._share(len(batch))):
                until = min(deadline, last_arrival + self._settings.arrival_gap_seconds)
            remaining = until - time.monotonic()
            if remaining <= 0 or self._closed:
                break
            self._condition.wait(remaining)
        self._queued_texts -= texts
        self._running += 1
        self._live_running += 1
        return batch, False

    def _live_quiet(self) -> bool:
        """Whether live calls have left the model idle for the quiet time (call with the lock held)."""
        quiet_since = self._last_live + self._settings.background_quiet_seconds
        return not self._queue and not self._live_running and time.monotonic() >= quiet_since

    def _earn_credit(self) -> None:
        """Adds the background lane's share of the time since the last call, if it had work meanwhile
        (queued or running; call with the lock held)."""
        now = self._clock()
        if self._background or self._background_running:
            self._background_credit += self._settings.background_share * (now - self._credit_since)
        self._credit_since = now

    def _background_due(self) -> bool:
        """Whether a queued background batch is owed its turn ahead of live calls (call with the lock
        held): then no new live batch starts, and it runs once the live batches running end."""
        if not self._background or self._background_running:
            return False
        self._earn_credit()
        return self._background_credit >= 0

    def _background_turn(self) -> bool:
        """Whether the next batch is a background one (call with the lock held): one is queued, no batch
        runs beside it, and live calls are quiet (or the batcher closing) or the lane is owed its turn."""
        if not self._background or self._background_running or self._live_running:
            return False
        return self._closed or self._live_quiet() or self._background_due()

    def _until_background_turn(self) -> float | None:
        """How long a gathering worker with no batch to take may wait (None: until notified)."""
        if not self._background or self._background_running or self._queue or self._live_running:
            return None  # a submission or the end of a batch notifies
        quiet_since = self._last_live + self._settings.background_quiet_seconds
        return max(0.0, quiet_since - time.monotonic())

    def _take_background(self) -> list[_Job]:
        """The next background batch: queued parts while they fit (call with the lock held)."""
        batch = [self._background.popleft()]
        texts, longest = len(batch[0].texts), batch[0].longest
        while self._background:
            candidate = self._background[0]
            padded = (texts + len(candidate.texts)) * max(longest, candidate.longest)
            if padded > self._settings.background_batch_tokens:
                break
            batch.append(self._background.popleft())
            texts += len(candidate.texts)
            longest = max(longest, candidate.longest)
        self._background_texts -= texts
        self._earn_credit()
        if self._closed or self._live_quiet():
            # Running freely, the batch makes up no wait for live batches: what the lane earned
            # meanwhile (while its worker woke, say) is not carried over.
            self._background_credit = min(self._background_credit, 0.0)
        self._background_running = True
        self._running += 1
        return batch

    def _share(self, taken: int) -> float:
        """The most jobs the batch being gathered (`taken` so far) may hold (call with the lock held).

        An even share, among the workers free to run a batch now, of the callers seen lately (or of
        the queue, when a burst outgrows them): free workers split concurrent callers instead of one
        batch taking them all. A worker gathering while all the others are busy may take every caller."""
        free = len(self._workers) - self._running
        if free <= 1:
            return math.inf
        demand = max(sum(self._worker_batch_jobs), taken + len(self._queue))
        return math.ceil(demand / free)

    def _batch_ended(self, background: bool, seconds: float) -> None:
        """Counts a batch that took `seconds` as no longer running (call with the lock held)."""
        self._running -= 1
        if background:
            self._earn_credit()
            share = self._settings.background_share
            # Never lower than one batch's due: batches run while live calls were quiet cost the lane
            # no more than the wait after its last one.
            self._background_credit = max(self._background_credit - seconds, -seconds * (1 - share))
            self._background_running = False
        else:
            self._live_running -= 1
            self._last_live = time.monotonic()
        self._condition.notify_all()  # the other lane may have its turn now

    def _work(self, index: int) -> None:
        while True:
            batch, background = self._take_batch()
            if not batch:
                return
            texts = [text for job in batch for text in job.texts]
            began = self._clock()
            try:
                rows = (self._run_background_batch if background else self._run_batch)(texts)
            except Exception as error:  # the callers get the error; the worker lives on
                log.exception("batch of %d texts failed", len(texts))
                with self._condition:
                    self._batch_ended(background, self._clock() - began)
                for job in batch:
                    job.result.set_exception(error)
                continue
            with self._condition:
                seconds = self._clock() - began
                self._batch_ended(background, seconds)
                self.batches_run += 1
                if background:
                    self.background_texts_run += len(texts)
                    self.background_seconds_run += seconds
                else:
                    # Only live batches tell how many callers keep the model busy.
                    self._last_batch_jobs = len(batch)
                    self._last_batch_end = time.monotonic()
                    self._worker_batch_jobs[index] = len(batch)
            if self.on_batch is not None:
                self.on_batch(len(texts))
            start = 0
            for job in batch:
                job.result.set_result(rows[start : start + len(job.texts)])
                start += len(job.texts)
