"""The encoder core without a server: device choice, normalization, truncation."""

from __future__ import annotations

import numpy as np
import pytest

from service.encoder import Encoder, resolve_device
from service.errors import InvalidArgument


@pytest.mark.parametrize(
    ("requested", "cuda_available", "expected"),
    [
        ("auto", False, ("cpu", "float32")),
        ("auto", True, ("cuda", "float16")),
        ("cpu", True, ("cpu", "float32")),
        ("cuda", True, ("cuda", "float16")),
        ("cuda:1", True, ("cuda:1", "float16")),
    ],
)
def test_device_resolution(requested: str, cuda_available: bool, expected: tuple[str, str]) -> None:
    assert resolve_device(requested, cuda_available) == expected


def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda", cuda_available=False)


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu", cuda_available=False)


def test_info_describes_the_default_model(encoder: Encoder) -> None:
    assert (encoder.info.dimension, encoder.info.max_sequence_length) == (384, 256)
    assert encoder.info.device == "cpu" and encoder.info.dtype == "float32"


def test_embed_reports_token_counts_and_refuses_when_asked(encoder: Encoder) -> None:
    result = encoder.embed(["one two three", "x " * 300])
    assert result.token_counts[0] == 5 and result.truncated == [False, True]
    with pytest.raises(InvalidArgument, match=r"texts\[1\]") as caught:
        encoder.embed(["one two three", "x " * 300], truncate=False)
    assert caught.value.field == "texts[1]"


def test_normalize_option(encoder: Encoder) -> None:
    raw = encoder.encode(["seagrass meadow"], normalize=False)
    unit = encoder.encode(["seagrass meadow"], normalize=True)
    assert np.linalg.norm(raw) > 1.5
    np.testing.assert_allclose(np.linalg.norm(unit), 1.0, atol=1e-5)


def test_encode_of_nothing_is_an_empty_matrix(encoder: Encoder) -> None:
    assert encoder.encode([]).shape == (0, 384)
