"""What the model's device changes: weight precision, how texts are cut into model calls, the token
budget of a gathered batch, and how inputs reach the device.

The CPU figures were measured on the development machines (see model_inputs.MODEL_CALL_TOKENS). The
CUDA ones follow what GPU embedding servers do: far larger model calls, since a GPU's cost per call
is mostly kernel launches and a wide batch is nearly free until its cores are full, and inputs copied
from pinned (page-locked) host memory, which the copy engine moves without a staging copy and without
holding up the calling thread. No GPU is at hand where this was written: `make bench-gpu` is where
these figures get measured and tuned.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.embedding.model_inputs import MODEL_CALL_TOKENS
from service.errors import InvalidSettings

# Texts per model call on the CPU (sentence-transformers' own default batch size is 32).
CPU_ROWS_PER_MODEL_CALL = 64
CPU_BATCH_TOKENS = 16_384
CUDA_ROWS_PER_MODEL_CALL = 512
# On a GPU another model call costs about as much as a few thousand padded tokens.
CUDA_MODEL_CALL_TOKENS = 4_096
# 512 texts at a 256-token model limit: a gathered batch fills one large model call.
CUDA_BATCH_TOKENS = 131_072


@dataclass(frozen=True)
class DevicePlan:
    """How the encoder runs on one device."""

    name: str  # the torch device: "cpu", "cuda" or "cuda:N"
    dtype: str  # weights: float32 on the CPU, float16 on CUDA
    rows_per_model_call: int
    # What one more model call costs in padded tokens, when a batch is cut by length (length_batches).
    model_call_tokens: int
    # Padded tokens a gathered batch may hold, unless the settings name a budget.
    batch_tokens: int
    # Inputs are staged in pinned host memory and copied to the device asynchronously.
    pin_memory: bool

    @property
    def is_cuda(self) -> bool:
        return self.name.startswith("cuda")


def plan_for(requested: str, cuda_available: bool) -> DevicePlan:
    """The plan for a --device choice: auto takes CUDA when torch sees a device, else the CPU."""
    if requested == "auto":
        requested = "cuda" if cuda_available else "cpu"
    if requested.startswith("cuda"):
        if not cuda_available:
            raise InvalidSettings("device 'cuda' was requested but torch sees no CUDA device")
        return DevicePlan(
            name=requested,
            dtype="float16",
            rows_per_model_call=CUDA_ROWS_PER_MODEL_CALL,
            model_call_tokens=CUDA_MODEL_CALL_TOKENS,
            batch_tokens=CUDA_BATCH_TOKENS,
            pin_memory=True,
        )
    if requested != "cpu":
        raise InvalidSettings(f"unknown device {requested!r}: use auto, cpu or cuda")
    return DevicePlan(
        name="cpu",
        dtype="float32",
        rows_per_model_call=CPU_ROWS_PER_MODEL_CALL,
        model_call_tokens=MODEL_CALL_TOKENS,
        batch_tokens=CPU_BATCH_TOKENS,
        pin_memory=False,
    )
