"""The `vecserve` command line against the session's real server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clients.cli import main
from service.config import Settings
from service.embedding.encoder import Encoder
from service.grpc_server.server import create_server


def run_cli(capsys: pytest.CaptureFixture[str], address: str, *args: str) -> tuple[int, str, str]:
    code = main(["--address", address, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_embed_json_prints_a_384_dimensional_vector(capsys, address: str) -> None:
    code, out, _ = run_cli(capsys, address, "embed", "hello world", "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["dimension"] == 384
    assert len(payload["embeddings"][0]["vector"]) == 384
    assert payload["embeddings"][0]["text"] == "hello world"


def test_json_flag_works_before_the_subcommand(capsys, address: str) -> None:
    code, out, _ = run_cli(capsys, address, "--json", "info")
    assert code == 0 and json.loads(out)["dimension"] == 384


def test_embed_human_output(capsys, address: str) -> None:
    code, out, _ = run_cli(capsys, address, "embed", "hello world")
    assert code == 0 and "384 dims" in out and "4 tokens" in out


def test_tokenize_json(capsys, address: str) -> None:
    code, out, _ = run_cli(capsys, address, "tokenize", "dugong", "--json")
    assert code == 0
    tokens = json.loads(out)[0]["tokens"]
    assert [t["text"] for t in tokens] == ["[CLS]", "dug", "##ong", "[SEP]"]


def test_compare_json_and_table(capsys, address: str) -> None:
    code, out, _ = run_cli(
        capsys, address, "compare", "a cat naps", "--against", "a kitten sleeps", "tax law", "--json"
    )
    assert code == 0
    scores = json.loads(out)["scores"]
    assert len(scores) == 1 and scores[0][0] > scores[0][1]
    code, out, _ = run_cli(capsys, address, "compare", "a cat naps", "a kitten sleeps")
    assert code == 0 and "1.000" in out


def test_info_human_output(capsys, address: str) -> None:
    code, out, _ = run_cli(capsys, address, "info")
    assert code == 0 and "dimension" in out and "384" in out


def test_rpc_error_prints_code_and_message_and_fails(capsys, address: str) -> None:
    code, out, err = run_cli(capsys, address, "embed", "   ")
    assert code == 1 and out == ""
    assert err.startswith("error: INVALID_ARGUMENT: texts[0]")


def test_unreachable_server_is_reported(capsys) -> None:
    code, _, err = run_cli(capsys, "127.0.0.1:1", "--timeout", "2", "info")
    assert code == 1 and "UNAVAILABLE" in err


def test_installed_console_script_uses_the_address_variable(address: str) -> None:
    script = shutil.which("vecserve", path=str(Path(sys.executable).parent))
    assert script, "the vecserve console script is not installed next to the interpreter"
    result = subprocess.run(
        [script, "embed", "hello world", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "VECSERVE_ADDRESS": address},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["embeddings"][0]["vector"]) == 384


def test_health_reports_serving(capsys, address: str) -> None:
    assert run_cli(capsys, address, "health") == (0, "SERVING\n", "")
    code, out, _ = run_cli(capsys, address, "health", "--service", "vecserve.v1.IndexService", "--json")
    assert code == 0 and json.loads(out) == {"service": "vecserve.v1.IndexService", "status": "SERVING"}
    code, out, err = run_cli(capsys, address, "health", "--service", "no.such.Service")
    assert code == 1 and out == "" and err.startswith("error: NOT_FOUND: ")


def test_health_fails_while_the_server_shuts_down(capsys, encoder: Encoder, tmp_path: Path) -> None:
    running = create_server(Settings(listen="127.0.0.1:0", data_dir=tmp_path), encoder=encoder)
    try:
        address = f"127.0.0.1:{running.port}"
        assert run_cli(capsys, address, "health")[0] == 0
        running.health.enter_graceful_shutdown()
        assert run_cli(capsys, address, "health") == (1, "NOT_SERVING\n", "")
    finally:
        running.stop(grace=1)
