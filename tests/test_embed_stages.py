"""Length buckets for the model's batches, the padded and real tokens they count, and the time by stage
of an Embed call (service/embedding/stages.py), read from a real server's metrics."""

from __future__ import annotations

import random
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sentence_transformers import SentenceTransformer

from clients import VecserveClient
from service.config import Settings, default_model_path
from service.embedding.encoder import Encoder
from service.embedding.model_inputs import length_batches
from service.embedding.stages import STAGES
from service.grpc_server.server import RunningServer, create_server


def padded(sorted_lengths: list[int], batches: list[range]) -> int:
    return sum(len(batch) * sorted_lengths[batch.stop - 1] for batch in batches)


def test_length_batches_cut_where_padding_costs_more_than_a_call() -> None:
    assert length_batches([12] * 64, 64, call_tokens=32) == [range(0, 64)]
    # Three short texts and a long one: padding the short ones to 256 would cost far more than a call.
    assert length_batches([5, 5, 6, 256], 64, call_tokens=32) == [range(0, 3), range(3, 4)]
    # Two lengths close together stay one batch: splitting saves 4 tokens for a call of 32.
    assert length_batches([10, 10, 10, 10, 11], 64, call_tokens=32) == [range(0, 5)]
    assert sorted(len(batch) for batch in length_batches([7] * 130, 64, call_tokens=32)) == [2, 64, 64]
    assert length_batches([], 64) == []


def every_split(count: int, max_rows: int, start: int = 0) -> Iterator[list[range]]:
    """Every split of `count` sequences, from `start` on, into consecutive batches of at most max_rows."""
    if start == count:
        yield []
    for stop in range(start + 1, min(count, start + max_rows) + 1):
        for rest in every_split(count, max_rows, stop):
            yield [range(start, stop), *rest]


def test_length_batches_are_the_cheapest_split() -> None:
    """Against every split of short length lists (brute force)."""
    rng = random.Random(3)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 40) for _ in range(rng.randint(1, 9)))
        max_rows = rng.randint(1, 5)
        chosen = length_batches(lengths, max_rows, call_tokens=8)
        assert [index for batch in chosen for index in batch] == list(range(len(lengths)))
        assert all(len(batch) <= max_rows for batch in chosen)
        cheapest = min(
            padded(lengths, split) + 8 * len(split) for split in every_split(len(lengths), max_rows)
        )
        assert padded(lengths, chosen) + 8 * len(chosen) == cheapest


@pytest.fixture(scope="module")
def reference_model() -> SentenceTransformer:
    """sentence-transformers on its own (its Normalize layer dropped, as the encoder does)."""
    model = SentenceTransformer(default_model_path(), device="cpu")
    del model[len(model) - 1]
    return model


def token_lengths(model: SentenceTransformer, texts: list[str]) -> list[int]:
    """Tokens the model sees of each text: special tokens included, cut at its limit."""
    ids = model.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    return [min(len(row), model.max_seq_length) for row in ids]


def test_padded_and_real_tokens_are_counted_per_model_batch(
    encoder: Encoder, reference_model: SentenceTransformer
) -> None:
    short = ["a seagrass meadow", "the dugong grazes", "manatees are slow"]
    long = "The tide came in over the flats. " * 40  # past the 256-token limit
    lengths = token_lengths(reference_model, [*short, long])
    assert lengths[-1] == 256 and max(lengths[:-1]) < 10
    before = (encoder.stages.real_tokens, encoder.stages.padded_tokens, encoder.stages.model_batches)
    encoder.encode([short[0], long, short[1], short[2]])
    real = encoder.stages.real_tokens - before[0]
    padding = encoder.stages.padded_tokens - before[1]
    batches = encoder.stages.model_batches - before[2]
    assert real == sum(lengths)
    # The short texts in one batch as wide as the longest of them, the long one alone.
    assert (padding, batches) == (3 * max(lengths[:-1]) + 256, 2)


def test_length_buckets_keep_the_models_own_vectors_in_request_order(
    encoder: Encoder, reference_model: SentenceTransformer
) -> None:
    rng = random.Random(5)
    words = ["seagrass", "dugong", "manatee", "tide", "meadow", "river", "delta", "coral", "reef", "kelp"]
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 40))) for _ in range(150)]
    texts[17] = "The tide came in over the flats. " * 40  # cut at the limit, as the model cuts it
    texts[90] = "word " * 255
    lengths = token_lengths(reference_model, texts)
    assert len(length_batches(sorted(lengths), 64)) > 3  # several buckets, not chunks of 64
    expected = reference_model.encode(texts, batch_size=64, convert_to_numpy=True)
    np.testing.assert_allclose(encoder.encode(texts, normalize=False), expected, atol=1e-5)


@pytest.fixture
def metered(encoder: Encoder, tmp_path: Path) -> Iterator[RunningServer]:
    settings = Settings(listen="127.0.0.1:0", data_dir=tmp_path / "data", metrics_listen="127.0.0.1:0")
    running = create_server(settings, encoder=encoder)
    yield running
    running.stop(grace=2)


def stage_samples(running: RunningServer) -> dict[tuple[str, str], float]:
    """The stage metrics as {(sample name, stage): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, sample.labels["stage"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("vecserve_embed_stage_")
        for sample in family.samples
    }


def test_every_stage_of_an_embed_call_is_timed(metered: RunningServer) -> None:
    texts = ["the dugong grazes on seagrass", "manatees are slow", "coral reef"]
    with VecserveClient(f"127.0.0.1:{metered.port}", timeout=60) as client:
        client.embed(["warm"])
        before = stage_samples(metered)
        client.embed(texts)
    after = stage_samples(metered)
    for stage in STAGES:
        assert (
            after["vecserve_embed_stage_texts_total", stage]
            == before["vecserve_embed_stage_texts_total", stage] + 3
        )
        for name in ("vecserve_embed_stage_cpu_seconds_total", "vecserve_embed_stage_text_seconds_total"):
            assert after[name, stage] > before[name, stage], (name, stage)


def test_background_work_is_timed_apart_from_the_embed_stages(
    metered: RunningServer, encoder: Encoder
) -> None:
    """The vocabulary build's texts (background work) leave the per-Embed stage metrics as they were
    and are counted in the encoder's background stages instead; the model's token counts hold both."""
    words = ['"seagrass"', '"dugong"', '"kelp"', '"reef"']
    before = stage_samples(metered)
    background_before = encoder.background_stages.totals()
    batches_before = encoder.stages.model_batches
    encoder.encode(words, background=True)
    assert stage_samples(metered) == before
    background_after = encoder.background_stages.totals()
    for stage in ("tokenize", "queue", "model", "normalize"):
        assert background_after[stage].texts == background_before[stage].texts + len(words), stage
        assert background_after[stage].text_seconds > background_before[stage].text_seconds, stage
    assert encoder.stages.model_batches == batches_before + 1
