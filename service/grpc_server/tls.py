"""TLS for the gRPC port: server credentials from PEM files, checked before the server starts."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from service.errors import InvalidSettings


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidSettings(f"cannot read the {what} {path}: {error}") from error


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """Credentials serving `cert` (a PEM chain) with `key`; with `client_ca`, clients must present a
    certificate signed by it (mutual TLS). Refuses files that do not parse or do not match."""
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        check.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise InvalidSettings(
            f"the TLS certificate {cert} and key {key} cannot be used together: {error}"
        ) from error
    client_ca_pem = None
    if client_ca is not None:
        try:
            check.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as error:
            raise InvalidSettings(f"the client CA file {client_ca} is not usable: {error}") from error
        client_ca_pem = _read(client_ca, "client CA file")
    return grpc.ssl_server_credentials(
        [(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
        root_certificates=client_ca_pem,
        require_client_auth=client_ca is not None,
    )
