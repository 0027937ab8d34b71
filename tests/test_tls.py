"""TLS and mutual TLS: connections succeed with the right certificates and fail without them."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from clients import VecserveClient
from clients.cli import main as cli_main
from service.config import Settings
from service.embedding.encoder import Encoder
from service.errors import InvalidSettings
from service.grpc_server.server import RunningServer, create_server
from tests.certs import CertFiles, CertificateAuthority

# Failed handshakes surface as UNAVAILABLE; a short deadline keeps the retries from taking long.
QUICK = 5.0


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: CertFiles
    client: CertFiles
    stranger_ca: CertificateAuthority  # a CA the server does not trust
    stranger_client: CertFiles


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory / "ca")
    stranger_ca = CertificateAuthority(directory / "stranger", name="stranger CA")
    return Pki(
        ca=ca,
        server=ca.issue("vecserve server", server=True),
        client=ca.issue("vecserve client", server=False),
        stranger_ca=stranger_ca,
        stranger_client=stranger_ca.issue("stranger client", server=False),
    )


def start(encoder: Encoder, data_dir: Path, pki: Pki, mutual: bool) -> RunningServer:
    settings = Settings(
        listen="127.0.0.1:0",
        data_dir=data_dir,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=pki.ca.cert_path if mutual else None,
    )
    return create_server(settings, encoder=encoder)


@pytest.fixture(scope="module")
def tls_address(encoder: Encoder, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    running = start(encoder, tmp_path_factory.mktemp("tls-data"), pki, mutual=False)
    yield f"127.0.0.1:{running.port}"
    running.stop(grace=2)


@pytest.fixture(scope="module")
def mtls_address(encoder: Encoder, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    running = start(encoder, tmp_path_factory.mktemp("mtls-data"), pki, mutual=True)
    yield f"127.0.0.1:{running.port}"
    running.stop(grace=2)


def refused(client: VecserveClient) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        client.model_info(timeout=QUICK)
    return caught.value.code()


def test_tls_with_the_right_ca_succeeds(tls_address: str, pki: Pki) -> None:
    with VecserveClient(tls_address, ca_file=pki.ca.cert_path) as client:
        assert client.model_info().dimension == 384
        assert client.embed_array(["sealed in transit"]).shape == (1, 384)


def test_tls_also_accepts_localhost_as_the_name(tls_address: str, pki: Pki) -> None:
    port = tls_address.rsplit(":", 1)[1]
    with VecserveClient(f"localhost:{port}", ca_file=pki.ca.cert_path) as client:
        assert client.model_info().dimension == 384


def test_tls_fails_with_an_untrusted_ca(tls_address: str, pki: Pki) -> None:
    with VecserveClient(tls_address, ca_file=pki.stranger_ca.cert_path) as client:
        assert refused(client) == grpc.StatusCode.UNAVAILABLE


def test_tls_fails_with_system_roots(tls_address: str) -> None:
    with VecserveClient(tls_address, tls=True) as client:
        assert refused(client) == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_address: str) -> None:
    with VecserveClient(tls_address) as client:
        assert refused(client) == grpc.StatusCode.UNAVAILABLE


def test_tls_client_cannot_talk_to_a_plaintext_server(address: str, pki: Pki) -> None:
    with VecserveClient(address, ca_file=pki.ca.cert_path) as client:
        assert refused(client) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_with_a_client_certificate_succeeds(mtls_address: str, pki: Pki) -> None:
    with VecserveClient(
        mtls_address, ca_file=pki.ca.cert_path, client_cert=pki.client.cert, client_key=pki.client.key
    ) as client:
        assert client.model_info().dimension == 384


def test_mutual_tls_without_a_client_certificate_fails(mtls_address: str, pki: Pki) -> None:
    with VecserveClient(mtls_address, ca_file=pki.ca.cert_path) as client:
        assert refused(client) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_with_a_certificate_from_another_ca_fails(mtls_address: str, pki: Pki) -> None:
    with VecserveClient(
        mtls_address,
        ca_file=pki.ca.cert_path,
        client_cert=pki.stranger_client.cert,
        client_key=pki.stranger_client.key,
    ) as client:
        assert refused(client) == grpc.StatusCode.UNAVAILABLE


def test_cli_connects_with_tls_options(
    mtls_address: str, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["--address", mtls_address, "--timeout", str(QUICK)]
    assert cli_main([*base, "--ca-file", str(pki.ca.cert_path), "info"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    options = [
        "--ca-file",
        str(pki.ca.cert_path),
        "--client-cert",
        str(pki.client.cert),
        "--client-key",
        str(pki.client.key),
    ]
    assert cli_main([*base, *options, "--json", "info"]) == 0
    assert '"dimension": 384' in capsys.readouterr().out
    monkeypatch.setenv("VECSERVE_CA_FILE", str(pki.ca.cert_path))
    monkeypatch.setenv("VECSERVE_CLIENT_CERT", str(pki.client.cert))
    monkeypatch.setenv("VECSERVE_CLIENT_KEY", str(pki.client.key))
    assert cli_main([*base, "info"]) == 0


def test_a_key_that_does_not_match_the_certificate_is_refused(
    encoder: Encoder, pki: Pki, tmp_path: Path
) -> None:
    settings = Settings(
        listen="127.0.0.1:0", data_dir=tmp_path, tls_cert=pki.server.cert, tls_key=pki.client.key
    )
    with pytest.raises(InvalidSettings, match="cannot be used together"):
        create_server(settings, encoder=encoder)


def test_unreadable_or_inconsistent_tls_settings_are_refused(
    encoder: Encoder, pki: Pki, tmp_path: Path
) -> None:
    with pytest.raises(InvalidSettings, match="both a certificate"):
        Settings(tls_cert=pki.server.cert)
    with pytest.raises(InvalidSettings, match="needs tls_cert"):
        Settings(tls_client_ca=pki.ca.cert_path)
    missing = Settings(
        listen="127.0.0.1:0", data_dir=tmp_path, tls_cert=tmp_path / "no.crt", tls_key=tmp_path / "no.key"
    )
    with pytest.raises(InvalidSettings, match=r"no\.crt"):
        create_server(missing, encoder=encoder)
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    bad_ca = Settings(
        listen="127.0.0.1:0",
        data_dir=tmp_path,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=not_pem,
    )
    with pytest.raises(InvalidSettings, match="client CA file"):
        create_server(bad_ca, encoder=encoder)


def test_client_certificate_needs_its_key(pki: Pki) -> None:
    with pytest.raises(ValueError, match="needs its key"):
        VecserveClient("127.0.0.1:1", ca_file=pki.ca.cert_path, client_cert=pki.client.cert)


def test_tokens_over_tls(encoder: Encoder, pki: Pki, tmp_path: Path) -> None:
    token = "tls-" + secrets.token_urlsafe(24)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read {token}\n")
    settings = Settings(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tokens_file=tokens,
    )
    running = create_server(settings, encoder=encoder)
    try:
        address = f"127.0.0.1:{running.port}"
        with VecserveClient(address, ca_file=pki.ca.cert_path, token=token) as client:
            assert client.model_info().dimension == 384
        with VecserveClient(address, ca_file=pki.ca.cert_path) as client:
            assert refused(client) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        running.stop(grace=2)
