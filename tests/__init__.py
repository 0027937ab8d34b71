"""The vecserve test suite. Runs before any test module: the environment must be set before torch,
faiss or tokenizers are imported."""

import os

from service.runtime import apply_threading_defaults

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
apply_threading_defaults()
