"""The Node.js client (clients/node) against the real server: another language reads the same API."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import VecserveClient
from service.config import Settings
from service.embedding.encoder import Encoder
from service.grpc_server.server import create_server
from tests.certs import CertFiles, CertificateAuthority

NODE_CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"
# Written after a successful `npm ci`: the hash of the lock file it installed, so reruns skip the install.
INSTALL_STAMP = NODE_CLIENT_DIR / "node_modules" / ".installed-lock-sha256"
NODE_TOKEN = "node-read-token-0123456789"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="the Node.js client needs node and npm on PATH",
)


@pytest.fixture(scope="module")
def node_client() -> Path:
    """clients/node with its locked dependencies installed (once, until package-lock.json changes)."""
    lock_hash = hashlib.sha256((NODE_CLIENT_DIR / "package-lock.json").read_bytes()).hexdigest()
    if not INSTALL_STAMP.exists() or INSTALL_STAMP.read_text() != lock_hash:
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_CLIENT_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        INSTALL_STAMP.write_text(lock_hash)
    return NODE_CLIENT_DIR / "vecserve.js"


def run_node(script: Path, address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(script), "--address", address, "--timeout", "60", *args],
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_embed_returns_the_same_vectors_as_the_python_client(
    node_client: Path, address: str, client: VecserveClient
) -> None:
    texts = ["hello world", "a quiet harbour at dawn"]
    result = run_node(node_client, address, "embed", *texts)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)

    assert output["dimension"] == 384
    assert [e["text"] for e in output["embeddings"]] == texts
    expected = client.embed(texts)
    for from_node, from_python in zip(output["embeddings"], expected.embeddings, strict=True):
        vector = from_node["vector"]
        assert len(vector) == 384
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, abs_tol=1e-4)
        assert vector == pytest.approx(list(from_python.values), abs=1e-6)
        assert from_node["token_count"] == from_python.token_count
        assert from_node["truncated"] is False


def test_embed_without_normalization_sends_the_flag(node_client: Path, address: str) -> None:
    result = run_node(node_client, address, "embed", "--no-normalize", "hello world")
    assert result.returncode == 0, result.stderr
    vector = json.loads(result.stdout)["embeddings"][0]["vector"]
    # Raw mean-pooled MiniLM vectors are far from unit length; a dropped flag would give norm 1.
    assert abs(math.sqrt(sum(v * v for v in vector)) - 1.0) > 0.1


def test_model_info_matches_the_python_client(
    node_client: Path, address: str, client: VecserveClient
) -> None:
    result = run_node(node_client, address, "info")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)

    expected = client.model_info()
    assert info["dimension"] == expected.dimension == 384
    assert info["model_name"] == expected.model_name
    assert info["max_sequence_length"] == expected.max_sequence_length
    assert info["max_texts_per_request"] == expected.max_texts_per_request
    assert info["max_documents_per_request"] == expected.max_documents_per_request == 1024
    # uint64 travels as a decimal string, as in the protobuf JSON mapping.
    assert info["max_message_bytes"] == str(expected.max_message_bytes)


def test_server_errors_become_a_message_and_exit_status_1(node_client: Path, address: str) -> None:
    result = run_node(node_client, address, "embed", "   ")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: INVALID_ARGUMENT: ")
    assert "texts[0]" in result.stderr


def test_usage_errors_exit_with_status_2(node_client: Path, address: str) -> None:
    result = run_node(node_client, address, "embed")
    assert result.returncode == 2
    assert "embed needs at least one TEXT" in result.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, CertFiles, CertFiles]:
    ca = CertificateAuthority(tmp_path_factory.mktemp("node-pki"))
    return ca, ca.issue("vecserve server", server=True), ca.issue("node client", server=False)


@pytest.fixture(scope="module")
def secured_address(
    encoder: Encoder,
    pki: tuple[CertificateAuthority, CertFiles, CertFiles],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """A server that wants mutual TLS and a read token."""
    ca, server_cert, _ = pki
    directory = tmp_path_factory.mktemp("node-secured")
    (directory / "tokens").write_text(f"read {NODE_TOKEN}\n")
    settings = Settings(
        listen="127.0.0.1:0",
        data_dir=directory / "data",
        tokens_file=directory / "tokens",
        tls_cert=server_cert.cert,
        tls_key=server_cert.key,
        tls_client_ca=ca.cert_path,
    )
    running = create_server(settings, encoder=encoder)
    # By name: Node warns on stderr when TLS is given an IP address as the server name (RFC 6066).
    yield f"localhost:{running.port}"
    running.stop(grace=2)


def test_token_and_mutual_tls(
    node_client: Path, secured_address: str, pki: tuple[CertificateAuthority, CertFiles, CertFiles]
) -> None:
    ca, _, client_cert = pki
    tls = ["--ca-file", str(ca.cert_path), "--client-cert", str(client_cert.cert)]
    tls += ["--client-key", str(client_cert.key)]
    result = run_node(node_client, secured_address, *tls, "--token", NODE_TOKEN, "embed", "hello")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["embeddings"][0]["vector"]) == 384

    without_token = run_node(node_client, secured_address, *tls, "info")
    assert without_token.returncode == 1
    assert without_token.stderr.startswith("error: UNAUTHENTICATED: ")
    assert NODE_TOKEN not in without_token.stderr

    wrong_token = run_node(node_client, secured_address, *tls, "--token", "not-the-token", "info")
    assert wrong_token.stderr.startswith("error: UNAUTHENTICATED: ")

    without_client_cert = run_node(
        node_client, secured_address, "--ca-file", str(ca.cert_path), "--token", NODE_TOKEN, "info"
    )
    assert without_client_cert.returncode == 1
    assert without_client_cert.stderr.startswith("error: UNAVAILABLE: ")


def test_unreadable_certificate_files_are_a_usage_error(
    node_client: Path, address: str, tmp_path: Path
) -> None:
    result = run_node(node_client, address, "--ca-file", str(tmp_path / "missing.pem"), "info")
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "missing.pem" in result.stderr
    lone_cert = run_node(node_client, address, "--client-cert", str(tmp_path / "c.pem"), "info")
    assert lone_cert.returncode == 2
    assert "--client-cert and --client-key go together" in lone_cert.stderr
