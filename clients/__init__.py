"""Python client and command-line tool for the vecserve gRPC service."""

from clients.client import DEFAULT_ADDRESS, VecserveClient

__all__ = ["DEFAULT_ADDRESS", "VecserveClient"]
