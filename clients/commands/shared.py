"""Helpers shared by the subcommands: connecting with the global options and printing JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from clients.client import VecserveClient


def connect(args: argparse.Namespace) -> VecserveClient:
    return VecserveClient(
        args.address,
        timeout=args.timeout,
        token=args.token,
        tls=args.tls,
        ca_file=args.ca_file,
        client_cert=args.client_cert,
        client_key=args.client_key,
    )


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
