"""Request ids and structured logs: ids are taken from the client or made, echoed back in the trailing
metadata, and carried by the access-log line of every call, in text and JSON formats."""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families
from vecserve.v1 import embedding_pb2, embedding_pb2_grpc

from clients.local_server import ServerProcess, free_port
from service.config import Settings, settings_from_env
from service.errors import InvalidSettings
from service.observability.access_log import flush_access_log
from service.observability.calls import REQUEST_ID_HEADER
from service.observability.logs import REQUEST_ID, JsonFormatter, TextFormatter


@pytest.fixture
def stub(address: str) -> embedding_pb2_grpc.EmbeddingServiceStub:
    return embedding_pb2_grpc.EmbeddingServiceStub(grpc.insecure_channel(address))


def echoed_id(metadata: tuple[tuple[str, str], ...] | None) -> str | None:
    return dict(metadata or ()).get(REQUEST_ID_HEADER)


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "vecserve.access"]


def test_the_client_request_id_is_echoed_and_logged(
    stub: embedding_pb2_grpc.EmbeddingServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="vecserve.access"):
        _, call = stub.GetModelInfo.with_call(
            embedding_pb2.GetModelInfoRequest(), metadata=[(REQUEST_ID_HEADER, "trace-42.a:b")], timeout=10
        )
        flush_access_log()
    assert echoed_id(call.trailing_metadata()) == "trace-42.a:b"
    (record,) = [r for r in access_records(caplog) if r.fields["request_id"] == "trace-42.a:b"]  # type: ignore[attr-defined]
    assert record.fields["method"] == "/vecserve.v1.EmbeddingService/GetModelInfo"  # type: ignore[attr-defined]
    assert record.fields["code"] == "OK"  # type: ignore[attr-defined]
    assert record.fields["duration_ms"] >= 0  # type: ignore[attr-defined]


def test_a_request_id_is_made_when_none_is_sent(stub: embedding_pb2_grpc.EmbeddingServiceStub) -> None:
    made = set()
    for _ in range(3):
        _, call = stub.GetModelInfo.with_call(embedding_pb2.GetModelInfoRequest(), timeout=10)
        request_id = echoed_id(call.trailing_metadata())
        assert request_id is not None and re.fullmatch(r"[0-9a-f]{32}", request_id)
        made.add(request_id)
    assert len(made) == 3


@pytest.mark.parametrize("unsafe", ["two words", 'quote"d', "x" * 129, "semi;colon", "<b>", "", "a,b"])
def test_unsafe_request_ids_are_replaced(stub: embedding_pb2_grpc.EmbeddingServiceStub, unsafe: str) -> None:
    metadata = [(REQUEST_ID_HEADER, unsafe)]
    _, call = stub.GetModelInfo.with_call(embedding_pb2.GetModelInfoRequest(), metadata=metadata, timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", echoed_id(call.trailing_metadata()) or "")


def test_failed_calls_carry_the_request_id_too(
    stub: embedding_pb2_grpc.EmbeddingServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="vecserve.access"), pytest.raises(grpc.RpcError) as caught:
        stub.Embed(embedding_pb2.EmbedRequest(), metadata=[(REQUEST_ID_HEADER, "failing-call")], timeout=10)
    flush_access_log()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert echoed_id(caught.value.trailing_metadata()) == "failing-call"
    # The error's details travel in the same trailing metadata, beside the id.
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    (record,) = [r for r in access_records(caplog) if r.fields["request_id"] == "failing-call"]  # type: ignore[attr-defined]
    assert record.fields["code"] == "INVALID_ARGUMENT"  # type: ignore[attr-defined]


def make_record(message: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("vecserve.test", logging.INFO, __file__, 1, message, (), None)
    record.fields = fields
    return record


def test_json_lines_hold_the_fields_and_the_request_id_of_the_call() -> None:
    token = REQUEST_ID.set("req-7")
    try:
        line = JsonFormatter().format(make_record("hello", code="OK", duration_ms=1.5))
    finally:
        REQUEST_ID.reset(token)
    entry = json.loads(line)
    assert entry["message"] == "hello"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "vecserve.test"
    assert entry["request_id"] == "req-7"
    assert entry["code"] == "OK" and entry["duration_ms"] == 1.5
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])


def test_text_lines_end_in_quoted_key_value_pairs() -> None:
    line = TextFormatter().format(make_record("done", method="/a/B", peer="ipv4:1.2.3.4:5", note='say "hi"'))
    assert line.endswith('done method=/a/B peer=ipv4:1.2.3.4:5 note="say \\"hi\\""')
    assert "request_id" not in line  # outside a call there is none


def test_exceptions_are_kept_whole_in_json() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]


@pytest.mark.slow
def test_serve_flags_json_logs_metrics_and_tokens_together(tmp_path: Path) -> None:
    """The command line: --log-format json, --metrics-listen and --tokens-file in one server process."""
    write_token = secrets.token_urlsafe(24)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"write {write_token}\n")
    metrics_port = free_port()
    server = ServerProcess(
        tmp_path / "data",
        "--log-format",
        "json",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--tokens-file",
        str(tokens),
    ).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            stub.Embed(
                embedding_pb2.EmbedRequest(texts=["logged"]),
                metadata=[
                    ("authorization", f"Bearer {write_token}"),
                    (REQUEST_ID_HEADER, "from-the-cli-test"),
                ],
                timeout=60,
            )
            with pytest.raises(grpc.RpcError):
                stub.Embed(embedding_pb2.EmbedRequest(texts=["refused"]), timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
            families = {
                family.name: family for family in text_string_to_metric_families(reply.read().decode())
            }
        codes = {
            sample.labels["code"]: sample.value
            for sample in families["vecserve_grpc_requests"].samples
            if sample.name == "vecserve_grpc_requests_total" and sample.labels["method"] == "Embed"
        }
        assert codes == {"OK": 1.0, "UNAUTHENTICATED": 1.0}
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    assert lines, "the server logged JSON lines"
    (access,) = [line for line in lines if line.get("request_id") == "from-the-cli-test"]
    assert access["logger"] == "vecserve.access"
    assert access["method"] == "/vecserve.v1.EmbeddingService/Embed"
    assert access["code"] == "OK"
    assert any(line.get("code") == "UNAUTHENTICATED" for line in lines)
    assert write_token not in server.log_path.read_text()


def test_log_format_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VECSERVE_LOG_FORMAT", "json")
    assert settings_from_env().log_format == "json"
    with pytest.raises(InvalidSettings, match="log_format must be one of text, json"):
        Settings(log_format="xml")
