"""What every transport does for each call it serves: a request id, the call's metrics, the shutdown
drain's count and one access-log line at its end. The transports only read the id from their headers,
send it back and tell the final code (as a gRPC code name); the rest is here, once.

Every call gets a request id: the client's `x-request-id` value when it is a sane token, otherwise a
new one. It is set in the logging context (so every log line of the call carries it) and written in
the access-log line the call ends with (written by service/observability/access_log.py's thread).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from contextvars import Token
from dataclasses import dataclass

from service.common.drain import Drain
from service.observability.access_log import ACCESS_LOG, AccessLine
from service.observability.logs import REQUEST_ID
from service.observability.metrics import CallMetrics, MethodMetrics

log = ACCESS_LOG.logger

REQUEST_ID_HEADER = "x-request-id"
# What an incoming request id may look like: no spaces or quotes that could forge log fields.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
# Codes that mean a fault of the server rather than of the call.
SERVER_FAULTS = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS"})

# Made request ids: a random prefix per process and a counter, 32 hex digits in all. Unique like
# uuid4 across processes (64 random bits), at a fraction of its cost per call.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFFFFFFFFFF:016x}"


def sane_request_id(value: object) -> str | None:
    """The client's request id when it is safe to log and echo, else None (a new one is made)."""
    return value if isinstance(value, str) and _SANE_REQUEST_ID.fullmatch(value) else None


@dataclass(slots=True)
class ObservedCall:
    """One call between begin() and end()."""

    request_id: str
    started: float
    context_token: Token[str | None]


class ObservedMethod:
    """The observation of one method's calls, its names and metric children looked up once."""

    def __init__(self, method: str, transport: str, metrics: CallMetrics, drain: Drain) -> None:
        self._method = method
        self._transport = transport
        self._calls: MethodMetrics = metrics.method(method)
        self._drain = drain

    def begin(self, client_request_id: object) -> ObservedCall:
        """Starts a call: its request id (the client's when sane) is set for the call's log lines."""
        request_id = sane_request_id(client_request_id) or new_request_id()
        token = REQUEST_ID.set(request_id)
        self._drain.enter(self._transport)
        return ObservedCall(request_id, time.perf_counter(), token)

    def end(self, call: ObservedCall, code_name: str, peer: str) -> None:
        """Ends a call with the gRPC name of its final code: counted, timed and logged."""
        seconds = time.perf_counter() - call.started
        self._drain.leave(self._transport)
        self._calls.observe(code_name, seconds)
        level = logging.WARNING if code_name in SERVER_FAULTS else logging.INFO
        if log.isEnabledFor(level):
            ACCESS_LOG.add(
                AccessLine(
                    level,
                    time.time(),
                    self._method,
                    code_name,
                    seconds,
                    call.request_id,
                    peer,
                    self._transport,
                )
            )
        REQUEST_ID.reset(call.context_token)


class CallObserver:
    """The observation of one transport's calls, per method ("/pkg.Service/Method")."""

    def __init__(self, transport: str, metrics: CallMetrics, drain: Drain) -> None:
        self.transport = transport
        self.drain = drain
        self._metrics = metrics
        # Counted by the drain, whose lock each call takes anyway; read at scrape time.
        metrics.in_flight.set_function(lambda: drain.in_flight(transport))
        self._methods: dict[str, ObservedMethod] = {}

    def method(self, method: str) -> ObservedMethod:
        found = self._methods.get(method)
        if found is None:
            found = self._methods.setdefault(
                method, ObservedMethod(method, self.transport, self._metrics, self.drain)
            )
        return found
