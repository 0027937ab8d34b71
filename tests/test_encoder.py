"""The encoder core without a server: device choice, normalization, truncation."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from service.config import default_model_path
from service.embedding.batching import AUTO_MODEL_WORKERS, BatchingSettings
from service.embedding.encoder import Encoder
from service.embedding.model_inputs import InputPreparer
from service.errors import InvalidArgument, InvalidSettings


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


MIXED_TEXTS = [
    "seagrass meadow",
    "  spaces around  ",
    "",
    "Crème brûlée, 東京, Москва 😂",
    "a short one",
    "The tide came in over the flats. " * 40,  # past the 256-token limit: cut as the model would
    "word " * 254,  # 256 tokens with [CLS] and [SEP]: exactly at the limit
    "word " * 255,  # one over
]


@pytest.fixture(scope="module")
def reference_model() -> SentenceTransformer:
    """sentence-transformers on its own: it tokenizes and runs the model itself (Normalize dropped)."""
    model = SentenceTransformer(default_model_path(), device="cpu")
    del model[len(model) - 1]
    return model


def test_one_tokenization_gives_the_models_own_vectors(
    encoder: Encoder, reference_model: SentenceTransformer
) -> None:
    expected = reference_model.encode(MIXED_TEXTS, batch_size=3, convert_to_numpy=True)
    # Through the batcher (as one job) and one text per call.
    np.testing.assert_allclose(encoder.encode(MIXED_TEXTS, normalize=False), expected, atol=2e-5)
    singles = np.concatenate([encoder.encode([text], normalize=False) for text in MIXED_TEXTS])
    np.testing.assert_allclose(singles, expected, atol=2e-5)


def test_token_counts_are_the_whole_inputs(encoder: Encoder, reference_model: SentenceTransformer) -> None:
    tokenizer = reference_model.tokenizer
    expected = [len(tokenizer(text, truncation=False, verbose=False)["input_ids"]) for text in MIXED_TEXTS]
    result = encoder.embed(MIXED_TEXTS)
    assert result.token_counts == expected
    assert expected[6] == 256 and expected[7] == 257
    assert result.truncated == [count > 256 for count in expected]


def test_a_model_whose_preprocessing_differs_is_refused(reference_model: SentenceTransformer) -> None:
    prompted = SentenceTransformer(
        default_model_path(), device="cpu", prompts={"query": "query: "}, default_prompt_name="query"
    )
    with pytest.raises(InvalidSettings, match="default prompt"):
        InputPreparer(prompted).check_matches(prompted)
    # The shared tokenizer, told to keep fewer tokens than the model: its cut differs from ours.
    shorter = InputPreparer(reference_model)
    shorter.max_length = 128
    with pytest.raises(InvalidSettings, match="differently"):
        shorter.check_matches(reference_model)


def test_a_model_with_a_default_prompt_is_served_through_its_own_encode(tmp_path) -> None:
    """The preparer cannot reproduce a prompt, so such a model goes through `encode`: same vectors."""
    prompted = SentenceTransformer(
        default_model_path(), device="cpu", prompts={"query": "query: "}, default_prompt_name="query"
    )
    prompted.save(str(tmp_path / "prompted"))
    texts = ["hello world", "a quiet harbour at dawn", "word " * 300]
    expected = prompted.encode(texts, normalize_embeddings=True)
    # The prompt is applied: the vectors differ from the bare model's.
    assert not np.allclose(expected[0], Encoder(default_model_path(), device="cpu").encode(texts[:1])[0])
    with pytest.raises(InvalidSettings, match=r"model workers must be 1 here: .* not thread-safe"):
        Encoder(str(tmp_path / "prompted"), device="cpu", batching=BatchingSettings(model_workers=2))
    encoder = Encoder(
        str(tmp_path / "prompted"), device="cpu", batching=BatchingSettings(model_workers=AUTO_MODEL_WORKERS)
    )
    try:
        assert not encoder.tokenizes_once
        assert encoder.batcher is not None and encoder.batcher.workers == 1  # its encode is not thread-safe
        result = encoder.embed(texts)
        np.testing.assert_allclose(result.vectors, expected, atol=1e-5)
        assert result.token_counts[:2] == [4, 7] and result.truncated == [False, False, True]
        with pytest.raises(InvalidArgument, match="more than the model's maximum"):
            encoder.embed(texts, truncate=False)
    finally:
        encoder.close()
