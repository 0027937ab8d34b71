"""`vecserve health`: the standard gRPC health check, for scripts, orchestrators and container probes."""

from __future__ import annotations

import argparse

from clients.commands.shared import connect, print_json


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "health",
        parents=[common],
        help="check that the server is serving (exit status 0) or not (1)",
        description="Ask the server's grpc.health.v1 service. Prints the status and exits 0 when it is "
        "SERVING, 1 otherwise (including an unreachable server). Needs no token.",
    )
    parser.add_argument(
        "--service",
        default="",
        help="a full service name such as vecserve.v1.IndexService (default: the whole server)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    with connect(args) as client:
        status = client.health(args.service)
    if args.json:
        print_json({"service": args.service, "status": status})
    else:
        print(status)
    return 0 if status == "SERVING" else 1
