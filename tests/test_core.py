"""The gRPC-free core built from Settings: it serves a library caller, and a failed start releases
what was already built; `vecserve serve` reports such a failure in one line with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.core import build_core
from service.embedding.encoder import Encoder
from service.errors import FailedPrecondition
from service.index.model import Document, Metric, Query
from service.index.store import IndexStore


def batching_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if "-batcher-" in thread.name]


def test_the_core_embeds_stores_and_answers_analogies_without_a_server(
    encoder: Encoder, tmp_path: Path
) -> None:
    core = build_core(Settings(data_dir=tmp_path), encoder)
    try:
        core.store.create_index("notes")
        core.store.upsert("notes", [Document(id="d", text="Dugongs graze on seagrass")])
        (hits,) = core.store.search("notes", [Query(text="sea cows eating")], k=1)
        assert hits[0].id == "d"
        core.store.create_index("royals")
        words = ["queen", "banana", "car"]
        core.store.upsert("royals", [Document(id=word, text=word) for word in words])
        answers = core.analogies.solve_analogy(["king", "woman"], ["man"], k=1, vocabulary_index="royals")
        assert answers[0].word == "queen"
    finally:
        core.close()
    IndexStore(tmp_path).close()  # the data directory's lock was released


def test_a_locked_data_directory_closes_the_encoder_already_loaded(tmp_path: Path) -> None:
    holder = IndexStore(tmp_path)  # another server holds the directory
    before = batching_threads()
    try:
        with pytest.raises(FailedPrecondition, match="in use by another vecserve process"):
            build_core(Settings(data_dir=tmp_path, device="cpu"))
    finally:
        holder.close()
    # The encoder build_core loaded for itself was closed: its batching workers are gone.
    assert batching_threads() == before


def test_serve_reports_a_start_up_failure_in_one_line_with_status_2(tmp_path: Path) -> None:
    holder = IndexStore(tmp_path)
    try:
        command = [sys.executable, "-m", "clients.cli", "serve", "--data-dir", str(tmp_path)]
        result = subprocess.run(
            [*command, "--listen", "127.0.0.1:0"],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "VECSERVE_DEVICE": "cpu"},
            timeout=300,
        )
    finally:
        holder.close()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot start: data directory ") and "in use" in lines[-1]
    assert "Traceback" not in result.stderr


def test_vectors_given_to_the_core_are_not_re_embedded(encoder: Encoder, tmp_path: Path) -> None:
    core = build_core(Settings(data_dir=tmp_path), encoder)
    try:
        core.store.create_index("given", dimension=3, metric=Metric.L2)
        core.store.upsert("given", [Document(id="v", text="any text", vector=np.array([1.0, 2.0, 3.0]))])
        assert list(core.store.get_document("given", "v").vector) == [1.0, 2.0, 3.0]
    finally:
        core.close()
