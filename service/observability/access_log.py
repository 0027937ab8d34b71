"""The access log's lines, made and written by a thread of their own, a batch at a time.

A call's thread only queues what its line says (a tuple, well under a microsecond); the writer makes
the records and hands them to the `vecserve.access` logger's handlers, unchanged in content and
format, up to LINGER_SECONDS later. Made on the call's thread, a record and its formatted line cost
more than the rest of the front door (about 60 of 110 us of thread CPU per call in a serving process),
and one at a time, between calls, they ran several times slower than in a batch.

What a crash can lose: a process killed outright (kill -9, power loss) loses the lines of at most
the last LINGER_SECONDS, as a server whose log writes are buffered does (Envoy flushes its access log
every second, nginx with `buffer=` when the buffer fills or `flush=` expires). A normal exit or an
unhandled exception writes them all: flush() runs at interpreter exit and when a server stops.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import traceback
from collections import deque
from typing import NamedTuple

# How long the writer gathers lines before writing them: at most this much of the log is lost to a kill.
LINGER_SECONDS = 0.05
# Lines queued beyond this are written by the calls' own threads, as before: a log that cannot keep up
# (stderr a pipe nobody reads) slows the calls down instead of filling the memory.
MAX_PENDING_LINES = 10_000


class AccessLine(NamedTuple):
    """What one call's line says, as the call's thread queued it."""

    level: int
    created: float  # time.time() at the call's end: the record's time
    method: str
    code: str
    seconds: float
    request_id: str
    peer: str
    transport: str


class AccessLog:
    """Queues lines from any thread and writes them from its own, in order."""

    def __init__(self, logger: logging.Logger, max_pending: int = MAX_PENDING_LINES) -> None:
        self.logger = logger
        self._max_pending = max_pending
        self._pending: deque[AccessLine] = deque()  # append and popleft are atomic: no lock per call
        self._queued = threading.Event()
        self._writing = threading.Lock()  # one writer at a time: the thread, or flush()
        self._started = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, line: AccessLine) -> None:
        self._pending.append(line)
        if len(self._pending) > self._max_pending:
            self.flush()
        elif not self._queued.is_set():  # a plain read; setting takes a lock, once per batch
            if self._thread is None:
                self._start()
            self._queued.set()

    def flush(self) -> None:
        """Writes every line queued so far, before returning."""
        with self._writing:
            self._write_pending()

    def _start(self) -> None:
        with self._started:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._queued.wait()
            # Lines keep coming while the writer lingers; each batch is written in one pass.
            time.sleep(LINGER_SECONDS)
            # Cleared before the lines are taken: a line queued after this sets the event again.
            self._queued.clear()
            try:
                self.flush()
            except Exception:  # a failing filter or handler loses its line, not the writer thread
                traceback.print_exc()

    def _write_pending(self) -> None:
        logger = self.logger
        while self._pending:
            line = self._pending.popleft()
            fields = {
                "request_id": line.request_id,
                "method": line.method,
                "code": line.code,
                "duration_ms": round(line.seconds * 1000, 3),
                "peer": line.peer,
                "transport": line.transport,
            }
            # Made directly: log.log would also walk the stack for a source line nobody prints.
            record = logger.makeRecord(
                logger.name,
                line.level,
                __file__,
                0,
                "%s %s %.1f ms",
                (line.method, line.code, line.seconds * 1000),
                None,
                extra={"fields": fields},
            )
            _set_time(record, line.created)
            logger.handle(record)


def _set_time(record: logging.LogRecord, created: float) -> None:
    """Dates the record at the call's end, as LogRecord.__init__ would have."""
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    record.relativeCreated = (created - logging._startTime) * 1000  # type: ignore[attr-defined]


ACCESS_LOG = AccessLog(logging.getLogger("vecserve.access"))
# At exit, before logging's own shutdown (atexit runs last registered first) closes the handlers.
atexit.register(ACCESS_LOG.flush)


def flush_access_log() -> None:
    """Writes the access-log lines of every call that has ended (for a stopping server, and tests)."""
    ACCESS_LOG.flush()
