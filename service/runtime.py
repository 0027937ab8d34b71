"""Process-wide defaults that must be in place before torch, faiss or tokenizers are imported."""

from __future__ import annotations

import os

# OpenMP threads that spin while idle steal the cores that gRPC threads, the tokenizer and the
# batching worker need between model calls; on a busy 2-core machine that made batched encoding
# several times slower. Tokenizer thread pools buy nothing for the short inputs of single requests.
THREADING_DEFAULTS = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_threading_defaults() -> None:
    """Sets the defaults unless the operator chose otherwise; call before importing torch or faiss."""
    for name, value in THREADING_DEFAULTS.items():
        os.environ.setdefault(name, value)
