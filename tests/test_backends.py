"""Faster CPU backends: quality against float32 torch, the build cache, refusal and a real server.

Tests that need a backend build are marked slow: the first one exports and calibrates the model
(half a minute to a minute on 2 cores); the rest reuse that build from a session-wide cache.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from clients import VecserveClient
from service.config import Settings, default_model_path
from service.embedding import backends
from service.embedding.batching import AUTO_MODEL_WORKERS, BatchingSettings
from service.embedding.encoder import Encoder
from service.errors import InvalidSettings
from service.grpc_server.server import create_server

# Texts outside the guard set, so that the guard is not the only evidence of quality.
SEARCH_STYLE_TEXTS = [
    "how to cook rice without a rice cooker",
    "symptoms of vitamin D deficiency",
    "best hiking trails near the coast",
    "A rice cooker is not needed: simmer one cup of rice in two cups of water for 18 minutes.",
    "Low vitamin D can cause tiredness, bone pain and muscle weakness.",
    "The coastal path offers views of cliffs, beaches and lighthouses.",
]


@pytest.fixture(scope="session")
def int8_encoder(model_cache: Path) -> Iterator[Encoder]:
    loaded = Encoder(
        default_model_path(),
        device="cpu",
        batching=BatchingSettings(model_workers=AUTO_MODEL_WORKERS),
        backend=backends.OPENVINO_INT8,
        cache_dir=model_cache,
    )
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def float_encoder(model_cache: Path) -> Encoder:
    return Encoder(default_model_path(), device="cpu", backend=backends.OPENVINO, cache_dir=model_cache)


def per_text_cosines(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.sum(left * right, axis=1) / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1))


@pytest.mark.slow
@pytest.mark.parametrize("backend_fixture", ["int8_encoder", "float_encoder"])
def test_backend_vectors_match_float32_torch(
    backend_fixture: str, request: pytest.FixtureRequest, encoder: Encoder
) -> None:
    backend_encoder: Encoder = request.getfixturevalue(backend_fixture)
    texts = list(backends.QUALITY_CHECK_TEXTS)
    assert len(texts) >= 100
    fast = backend_encoder.encode(texts, normalize=False)
    reference = encoder.encode(texts, normalize=False)
    assert fast.shape == reference.shape == (len(texts), encoder.dimension)
    assert fast.dtype == np.float32
    cosines = per_text_cosines(fast, reference)
    assert cosines.mean() >= backends.MIN_MEAN_COSINE
    # No single text may be far off even when the mean holds.
    assert cosines.min() >= 0.95
    # Raw (unnormalized) vectors keep their scale, as the torch path returns them.
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), np.linalg.norm(reference, axis=1), rtol=0.1)


@pytest.mark.slow
def test_backend_keeps_the_ranking_of_a_search(int8_encoder: Encoder, encoder: Encoder) -> None:
    queries, passages = SEARCH_STYLE_TEXTS[:3], SEARCH_STYLE_TEXTS[3:]
    fast = int8_encoder.similarity_matrix(queries, passages)
    reference = encoder.similarity_matrix(queries, passages)
    assert list(fast.argmax(axis=1)) == list(reference.argmax(axis=1)) == [0, 1, 2]
    assert np.abs(fast - reference).max() < 0.05


@pytest.mark.slow
def test_backend_info_names_backend_and_precision(int8_encoder: Encoder, float_encoder: Encoder) -> None:
    assert int8_encoder.info.backend == "openvino-int8"
    assert int8_encoder.info.dtype == "int8"
    assert int8_encoder.info.device == "cpu"
    assert float_encoder.info.backend == "openvino"
    assert float_encoder.info.dtype in ("float32", "bfloat16", "float16")
    assert int8_encoder.info.dimension == float_encoder.info.dimension == 384


@pytest.mark.slow
def test_backend_handles_truncation_empty_batches_and_order(int8_encoder: Encoder, encoder: Encoder) -> None:
    long_text = "The river rises in the hills and winds through farmland to the sea. " * 80
    texts = ["short", long_text, "a medium length sentence about the weather", "short"]
    result = int8_encoder.embed(texts)
    assert result.truncated == [False, True, False, False]
    np.testing.assert_allclose(result.vectors[0], result.vectors[3], atol=1e-6)
    assert per_text_cosines(result.vectors, encoder.encode(texts)).min() >= 0.95
    assert int8_encoder.encode([]).shape == (0, 384)


@pytest.mark.slow
def test_second_load_reuses_the_cached_build(int8_encoder: Encoder, model_cache: Path) -> None:
    def snapshot() -> dict[Path, float]:
        return {path: path.stat().st_mtime_ns for path in model_cache.rglob("*") if path.is_file()}

    before = snapshot()
    builds = sorted(path.parent.name for path in model_cache.glob("*/*/build.json"))
    assert "openvino-int8" in builds
    assert any(path.name == "model.xml" for path in before)
    again = Encoder(default_model_path(), device="cpu", backend=backends.OPENVINO_INT8, cache_dir=model_cache)
    assert again.info.dtype == "int8"
    # Its streams already use every core, one batch at a time: a second model worker is refused.
    assert int8_encoder.batcher is not None and int8_encoder.batcher.workers == 1
    with pytest.raises(InvalidSettings, match="model workers must be 1 here: the openvino-int8 backend"):
        Encoder(
            default_model_path(),
            device="cpu",
            batching=BatchingSettings(model_workers=2),
            backend=backends.OPENVINO_INT8,
            cache_dir=model_cache,
        )
    # Same files, untouched: nothing was exported or quantized again, and no scratch folder is left.
    assert snapshot() == before


@pytest.fixture(scope="module")
def torch_model() -> SentenceTransformer:
    """The float32 model as the encoder holds it (its Normalize layer dropped)."""
    model = SentenceTransformer(default_model_path(), device="cpu")
    del model[len(model) - 1]
    return model


@pytest.mark.slow
def test_load_backend_reports_the_cached_build(
    int8_encoder: Encoder, model_cache: Path, torch_model: SentenceTransformer
) -> None:
    loaded = backends.load_backend(backends.OPENVINO_INT8, torch_model, model_cache)
    assert not loaded.built
    assert loaded.dtype == "int8"
    assert loaded.mean_cosine >= backends.MIN_MEAN_COSINE
    fingerprint = backends.model_fingerprint(torch_model)
    assert loaded.model_dir == model_cache / fingerprint / backends.OPENVINO_INT8
    assert (loaded.model_dir / "model.xml").is_file()
    # Other weights are another model: it gets its own build folder.
    changed = copy.deepcopy(torch_model)
    next(iter(changed.parameters())).data[0, 0] += 1.0
    assert backends.model_fingerprint(changed) != fingerprint


@pytest.mark.slow
def test_scratch_folders_of_killed_builds_are_removed(
    int8_encoder: Encoder, model_cache: Path, torch_model: SentenceTransformer
) -> None:
    fingerprint_dir = model_cache / backends.model_fingerprint(torch_model)
    killed = fingerprint_dir / ".build-openvino-int8-killed"
    killed.mkdir()
    long_ago = time.time() - backends.STALE_BUILD_SECONDS - 60
    os.utime(killed, (long_ago, long_ago))
    running = fingerprint_dir / ".build-openvino-int8-running"
    running.mkdir()
    _, built = backends.ensure_built(backends.OPENVINO_INT8, torch_model, model_cache)
    assert not built
    assert not killed.exists()
    assert running.exists()  # young: another process may still be building into it
    running.rmdir()


@pytest.mark.slow
def test_backend_below_the_quality_guard_is_refused(
    int8_encoder: Encoder, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real cached int8 build, held to a bar that int8 cannot reach.
    monkeypatch.setattr(backends, "MIN_MEAN_COSINE", 0.99999)
    with pytest.raises(InvalidSettings, match="mean cosine"):
        Encoder(default_model_path(), device="cpu", backend=backends.OPENVINO_INT8, cache_dir=model_cache)


def test_calibration_texts_are_deterministic_and_varied() -> None:
    texts = backends.calibration_texts(200)
    assert texts == backends.calibration_texts(200)
    assert len(set(texts)) == 200
    lengths = [len(text.split()) for text in texts]
    assert min(lengths) <= 5 and max(lengths) >= 60
    assert not set(texts) & set(backends.QUALITY_CHECK_TEXTS)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backend": "onnx-magic"}, "backend must be one of"),
        ({"backend": "openvino", "device": "cuda"}, "runs on the CPU"),
    ],
)
def test_settings_refuse_unusable_backends(changes: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidSettings, match=message):
        Settings(**changes)  # type: ignore[arg-type]


def test_encoder_refuses_backend_without_cache_dir() -> None:
    with pytest.raises(InvalidSettings, match="cache directory"):
        Encoder(default_model_path(), device="cpu", backend=backends.OPENVINO)


def test_backend_setting_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config import settings_from_env

    monkeypatch.setenv("VECSERVE_BACKEND", "openvino-int8")
    assert settings_from_env().backend == "openvino-int8"
    assert settings_from_env(backend="torch").backend == "torch"


@pytest.mark.slow
def test_server_with_int8_backend(int8_encoder: Encoder, backend_data_dir: Path, encoder: Encoder) -> None:
    # create_server builds its own Encoder from the settings; the int8 build is already cached in
    # this data directory's .models folder, which must not show up as an index.
    settings = Settings(
        listen="127.0.0.1:0", data_dir=backend_data_dir, backend="openvino-int8", device="cpu"
    )
    running = create_server(settings)
    try:
        with VecserveClient(f"127.0.0.1:{running.port}", timeout=120) as client:
            info = client.model_info()
            assert info.backend == "openvino-int8"
            assert info.dtype == "int8"
            texts = SEARCH_STYLE_TEXTS
            served = client.embed_array(texts)
            assert per_text_cosines(served, encoder.encode(texts)).mean() >= backends.MIN_MEAN_COSINE
            np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
            assert client.all_indexes() == []
    finally:
        running.stop(grace=5)


def test_default_server_reports_torch_backend(client: VecserveClient) -> None:
    info = client.model_info()
    assert info.backend == "torch"
    assert info.dtype == "float32"
