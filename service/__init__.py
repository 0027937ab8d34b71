"""vecserve server: a gRPC transport over a core of encoder, index store and analogy engine."""

__version__ = "0.1.0"
