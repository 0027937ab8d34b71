"""The API definition: generated stubs are fresh and buf lint (STANDARD) is clean."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def test_generated_stubs_match_the_proto_sources(tmp_path: Path) -> None:
    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "vecserve" / "v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--plugin=protoc-gen-connectrpc={Path(sys.executable).parent / 'protoc-gen-connectrpc'}",
            f"--connectrpc_out={tmp_path}",
            "--connectrpc_opt=protobuf=google,io=async",
            *sources,
        ],
        check=True,
        cwd=PROTO_DIR,
    )
    generated = sorted([*tmp_path.rglob("*_pb2*.py*"), *tmp_path.rglob("*_connect.py")])
    assert any(path.name.endswith("_connect.py") for path in generated)
    for fresh in generated:
        committed = PROTO_DIR / fresh.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `make proto`"
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `make proto`"


@pytest.mark.skipif(shutil.which("npx") is None, reason="buf lint needs npx (Node.js)")
def test_buf_lint_is_clean() -> None:
    result = subprocess.run(
        ["npx", "-y", "@bufbuild/buf", "lint"], cwd=PROTO_DIR, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("npx") is None, reason="buf curl needs npx (Node.js)")
def test_buf_curl_calls_embed_through_reflection(address: str, tmp_path: Path) -> None:
    # Run outside proto/ so that buf cannot fall back on the .proto files: reflection is the only source.
    result = subprocess.run(
        [
            "npx",
            "-y",
            "@bufbuild/buf",
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-d",
            '{"texts": ["hello world"]}',
            f"http://{address}/vecserve.v1.EmbeddingService/Embed",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["dimension"] == 384
    assert len(response["embeddings"][0]["values"]) == 384
