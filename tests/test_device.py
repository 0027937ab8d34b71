"""The device plan: what CPU and CUDA change in how the encoder runs (the CUDA path is checked here on
its decisions and, with a CUDA-sized plan, on the CPU: this machine has no GPU)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from service.config import Settings, default_model_path
from service.embedding.batching import AUTO_BATCH_TOKENS, BatchingSettings
from service.embedding.device import CPU_BATCH_TOKENS, CUDA_BATCH_TOKENS, plan_for
from service.embedding.encoder import Encoder
from service.embedding.model_inputs import InputPreparer
from service.errors import InvalidSettings


@pytest.mark.parametrize(
    ("requested", "cuda_available", "name", "dtype"),
    [
        ("auto", False, "cpu", "float32"),
        ("auto", True, "cuda", "float16"),
        ("cpu", True, "cpu", "float32"),
        ("cuda", True, "cuda", "float16"),
        ("cuda:1", True, "cuda:1", "float16"),
    ],
)
def test_device_choice(requested: str, cuda_available: bool, name: str, dtype: str) -> None:
    plan = plan_for(requested, cuda_available)
    assert (plan.name, plan.dtype) == (name, dtype)


def test_cuda_runs_larger_model_calls_from_pinned_memory() -> None:
    cpu, cuda = plan_for("cpu", cuda_available=True), plan_for("cuda", cuda_available=True)
    assert not cpu.pin_memory and cuda.pin_memory and cuda.is_cuda and not cpu.is_cuda
    assert cuda.rows_per_model_call > cpu.rows_per_model_call
    assert cuda.batch_tokens > cpu.batch_tokens
    assert cuda.model_call_tokens > cpu.model_call_tokens
    # A gathered batch of full-length texts fills model calls, never more than one budget's worth.
    assert cuda.batch_tokens >= cuda.rows_per_model_call * 256


def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(InvalidSettings, match="no CUDA device"):
        plan_for("cuda", cuda_available=False)


def test_unknown_device_is_refused() -> None:
    with pytest.raises(InvalidSettings, match="unknown device"):
        plan_for("tpu", cuda_available=False)


def test_the_token_budget_is_chosen_for_the_device_unless_set() -> None:
    assert Settings().max_batch_tokens == AUTO_BATCH_TOKENS
    chosen = Encoder(default_model_path(), device="cpu", batching=Settings().batching)
    given = Encoder(default_model_path(), device="cpu", batching=BatchingSettings(max_batch_tokens=4096))
    try:
        assert chosen.batcher is not None and given.batcher is not None
        assert chosen.batcher.settings.max_batch_tokens == CPU_BATCH_TOKENS != CUDA_BATCH_TOKENS
        assert given.batcher.settings.max_batch_tokens == 4096
    finally:
        chosen.close()
        given.close()
    with pytest.raises(InvalidSettings, match="must not be negative"):
        Settings(max_batch_tokens=-1)


def test_cuda_sized_model_calls_give_the_same_vectors(encoder: Encoder) -> None:
    """The CUDA plan's model-call sizes, run on the CPU: one wide call instead of several."""
    texts = [f"text number {n} " * (1 + n % 7) for n in range(150)]
    expected = encoder.encode(texts, normalize=False)
    wide = Encoder(default_model_path(), device="cpu")
    wide.device_plan = dataclasses.replace(
        wide.device_plan,
        rows_per_model_call=plan_for("cuda", True).rows_per_model_call,
        model_call_tokens=plan_for("cuda", True).model_call_tokens,
    )
    try:
        np.testing.assert_allclose(wide.encode(texts, normalize=False), expected, atol=2e-5)
        assert wide.stages.model_batches == 1
    finally:
        wide.close()


def test_features_stay_on_the_cpu_without_pinning(encoder: Encoder) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(default_model_path(), device="cpu")
    inputs = InputPreparer(model)
    inputs.check_matches(model)
    prepared, _ = inputs.prepare(["a short text", "a somewhat longer text than that"])
    features = inputs.torch_features(prepared, "cpu", pin_memory=False)
    arrays = inputs.arrays(prepared)
    for name, array in arrays.items():
        assert features[name].device.type == "cpu"
        np.testing.assert_array_equal(features[name].numpy(), array)
