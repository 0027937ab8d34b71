"""The `vecserve` command: `serve` runs the server; the other subcommands call a running one."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import grpc

from clients.client import DEFAULT_ADDRESS, DEFAULT_TIMEOUT_SECONDS
from clients.commands import analogy, cluster, embedding, health, index, serve

# Each command module exposes register(subparsers, common) and sets args.handler.
COMMAND_MODULES = [serve, embedding, index, analogy, health, cluster]

Handler = Callable[[argparse.Namespace], int]


def common_options(root: bool) -> argparse.ArgumentParser:
    """Options accepted both before and after the subcommand (subcommands do not reset them)."""
    parser = argparse.ArgumentParser(add_help=False)
    default = (lambda value: value) if root else (lambda _value: argparse.SUPPRESS)
    parser.add_argument(
        "--address",
        default=default(os.environ.get("VECSERVE_ADDRESS") or DEFAULT_ADDRESS),
        help=f"server address HOST:PORT (env VECSERVE_ADDRESS; default {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT_SECONDS),
        help=f"deadline of each call in seconds (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print machine-readable JSON"
    )
    parser.add_argument(
        "--token",
        default=default(os.environ.get("VECSERVE_TOKEN") or None),
        help="bearer token for servers that require one (env VECSERVE_TOKEN, which keeps it out of "
        "the process list)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=default(os.environ.get("VECSERVE_TLS", "").lower() in ("1", "true", "yes", "on")),
        help="connect with TLS, trusting the system's CA certificates (env VECSERVE_TLS); implied by "
        "--ca-file and --client-cert",
    )
    parser.add_argument(
        "--ca-file",
        default=default(os.environ.get("VECSERVE_CA_FILE") or None),
        help="PEM CA certificates that signed the server's certificate; connects with TLS "
        "(env VECSERVE_CA_FILE)",
    )
    parser.add_argument(
        "--client-cert",
        default=default(os.environ.get("VECSERVE_CLIENT_CERT") or None),
        help="PEM client certificate, for servers that require one (mutual TLS; env VECSERVE_CLIENT_CERT)",
    )
    parser.add_argument(
        "--client-key",
        default=default(os.environ.get("VECSERVE_CLIENT_KEY") or None),
        help="PEM key of the client certificate (env VECSERVE_CLIENT_KEY)",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vecserve",
        description="Embedding and vector-search service over gRPC.",
        parents=[common_options(root=True)],
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_options(root=False)
    for module in COMMAND_MODULES:
        module.register(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        print(f"error: {code.name if code else 'UNKNOWN'}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
