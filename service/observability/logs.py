"""Structured logs: every record carries the request id of the call it belongs to.

Two formats: `text`, a human line ending in key=value pairs, and `json`, one JSON object per line
for log collectors. Fields given as `extra={"fields": {...}}` appear in both.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import re
import sys
import time
from typing import Any

LOG_FORMATS = ("text", "json")
# The request id of the call the current thread is serving (None outside calls).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    request_id = REQUEST_ID.get()
    if request_id is not None:
        fields["request_id"] = request_id
    fields.update(getattr(record, "fields", None) or {})
    return fields


# Values that must be quoted in text lines: empty, or holding a space, quote, equals sign or newline.
_NEEDS_QUOTES = re.compile(r'[ "=\n]')
# The formatted UTC second of the latest record: records come many to a second, only the
# milliseconds change. A (second, text) pair, replaced whole so threads never see half an update.
_last_second: tuple[int, str] = (-1, "")


def _timestamp(record: logging.LogRecord) -> str:
    global _last_second
    # Rounded to microseconds first, exactly as datetime.fromtimestamp does.
    fraction, whole = math.modf(record.created)
    second, microseconds = int(whole), round(fraction * 1_000_000)
    if microseconds >= 1_000_000:
        second, microseconds = second + 1, microseconds - 1_000_000
    cached_second, text = _last_second
    if second != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}.{microseconds // 1000:03d}Z"


def _value_text(value: object) -> str:
    text = value if type(value) is str else str(value)
    return text if text and _NEEDS_QUOTES.search(text) is None else json.dumps(text)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL logger: message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        pairs = " ".join(f"{key}={_value_text(value)}" for key, value in _fields(record).items())
        if pairs:
            line = f"{line} {pairs}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the fields and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Sends the root logger's records to stderr in the chosen format (replacing earlier handlers),
    without the thread and process fields neither format prints."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    # Neither format shows the thread or process, which every record would otherwise look up (half
    # the cost of making one: the access log makes one per call).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
