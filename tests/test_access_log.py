"""The access log's writer thread: every queued line is written, in order, in the format of a line
written on the call's thread, and a stopping server writes the lines of its last calls."""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

import grpc
import pytest
from vecserve.v1 import embedding_pb2, embedding_pb2_grpc

from clients.local_server import ServerProcess
from service.observability.access_log import AccessLine, AccessLog
from service.observability.calls import REQUEST_ID_HEADER
from service.observability.logs import TextFormatter
from tests.waiting import wait_until


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Kept:
    logger = logging.getLogger("vecserve.test-access")
    logger.propagate = False
    handler = Kept()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def line(number: int, level: int = logging.INFO) -> AccessLine:
    return AccessLine(
        level, 1_700_000_000.25, "/pkg.S/M", "OK", 0.0012345, f"id-{number}", "ipv4:1.2.3.4:5", "grpc"
    )


def test_the_writer_thread_writes_queued_lines_in_order(kept: Kept) -> None:
    access_log = AccessLog(logging.getLogger("vecserve.test-access"))
    for number in range(300):
        access_log.add(line(number))
    wait_until(lambda: len(kept.records) == 300, "the writer thread to write the queued lines")
    assert [record.fields["request_id"] for record in kept.records] == [f"id-{n}" for n in range(300)]  # type: ignore[attr-defined]


def test_flush_writes_every_queued_line_before_returning(kept: Kept) -> None:
    access_log = AccessLog(logging.getLogger("vecserve.test-access"))
    access_log.add(line(1))
    access_log.add(line(2, logging.WARNING))
    access_log.flush()
    assert [(r.fields["request_id"], r.levelno) for r in kept.records] == [  # type: ignore[attr-defined]
        ("id-1", logging.INFO),
        ("id-2", logging.WARNING),
    ]


def test_beyond_the_pending_limit_the_calls_thread_writes_the_lines_itself(kept: Kept) -> None:
    access_log = AccessLog(logging.getLogger("vecserve.test-access"), max_pending=3)
    for number in range(4):
        access_log.add(line(number))
    # Written by the fourth add itself, whatever the writer thread has done meanwhile.
    assert [record.fields["request_id"] for record in kept.records] == [f"id-{n}" for n in range(4)]  # type: ignore[attr-defined]


def test_the_writer_thread_outlives_a_failing_filter(kept: Kept, capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("vecserve.test-access")

    def refuse_the_first(record: logging.LogRecord) -> bool:
        if record.fields["request_id"] == "id-1":  # type: ignore[attr-defined]
            raise RuntimeError("a broken filter")
        return True

    logger.addFilter(refuse_the_first)
    try:
        access_log = AccessLog(logger)
        access_log.add(line(1))
        wait_until(lambda: "a broken filter" in capsys.readouterr().err, "the writer to meet the filter")
        access_log.add(line(2))
        wait_until(lambda: len(kept.records) == 1, "the writer thread to write the next line")
    finally:
        logger.removeFilter(refuse_the_first)
    assert kept.records[0].fields["request_id"] == "id-2"  # type: ignore[attr-defined]


def test_a_line_reads_as_one_written_on_the_calls_thread(kept: Kept) -> None:
    access_log = AccessLog(logging.getLogger("vecserve.test-access"))
    access_log.add(line(7))
    access_log.flush()
    (record,) = kept.records
    # The record is dated at the call's end, not when the writer made it.
    assert (record.created, record.msecs) == (1_700_000_000.25, 250.0)
    assert TextFormatter().format(record) == (
        "2023-11-14T22:13:20.250Z INFO vecserve.test-access: /pkg.S/M OK 1.2 ms request_id=id-7 "
        "method=/pkg.S/M code=OK duration_ms=1.234 peer=ipv4:1.2.3.4:5 transport=grpc"
    )


def test_a_stopping_server_writes_the_lines_of_its_last_calls(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"VECSERVE_VOCABULARY_SIZE": "1"}).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            embedding_pb2_grpc.EmbeddingServiceStub(channel).GetModelInfo(
                embedding_pb2.GetModelInfoRequest(),
                metadata=[(REQUEST_ID_HEADER, "the-last-call")],
                timeout=60,
            )
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    finally:
        server.kill()
    assert re.search(r"GetModelInfo OK .* request_id=the-last-call ", server.log())
