"""Where embedding a text spends its time, stage by stage, and how much of the model's input is padding.

Each stage adds the CPU time of the thread that ran it (time.thread_time: other calls running at the
same time are not counted) and its wall time summed over the texts it handled, so that per text both
are the totals divided by the stage's texts. The transport adds parse and response; the encoder the
rest. The queue stage is a text's wall time from entering the batcher until its vectors come back,
model batch included: the wait before the model is that minus the model stage's wall time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

# In the order a text meets them.
STAGES = ("parse", "tokenize", "queue", "model", "normalize", "response")

# (wall clock, thread CPU clock), both in seconds.
Instant = tuple[float, float]


def now() -> Instant:
    return time.perf_counter(), time.thread_time()


@dataclass
class StageTotals:
    cpu_seconds: float = 0.0
    # Wall seconds summed over texts: a batch of 64 that took 10 ms adds 0.64.
    text_seconds: float = 0.0
    texts: int = 0


class StageClock:
    """Totals per stage and of model tokens; safe to update from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = {stage: StageTotals() for stage in STAGES}
        # Tokens the model ran: the texts' own, and their batches' rows times width (padding included).
        self.real_tokens = 0
        self.padded_tokens = 0
        self.model_batches = 0

    def record(self, stage: str, since: Instant, texts: int) -> Instant:
        """Adds the time from `since` to now to a stage that handled `texts`; returns now, where the
        next stage starts."""
        wall, cpu = now()
        with self._lock:
            totals = self._totals[stage]
            totals.cpu_seconds += cpu - since[1]
            totals.text_seconds += (wall - since[0]) * texts
            totals.texts += texts
        return wall, cpu

    def count_batch(self, real: int, padded: int) -> None:
        """Counts one model batch and its tokens: the texts' own, and rows times width."""
        with self._lock:
            self.model_batches += 1
            self.real_tokens += real
            self.padded_tokens += padded

    def totals(self) -> dict[str, StageTotals]:
        """A consistent copy of every stage's totals."""
        with self._lock:
            return {
                stage: StageTotals(t.cpu_seconds, t.text_seconds, t.texts)
                for stage, t in self._totals.items()
            }
