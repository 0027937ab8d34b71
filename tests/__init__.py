"""The vecserve test suite. Runs before any test module: the environment must be set before torch,
faiss or tokenizers are imported."""

import os

import service  # noqa: F401 - applies the process-wide threading defaults, as every entry point does

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
