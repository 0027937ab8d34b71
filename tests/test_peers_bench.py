"""The peers benchmark's own logic: recall, parameter steps, operating points, caching, missing peers.

The benchmark itself runs end to end (tiny sizes) in test_benchmarks.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from benchmarks import peers_bench
from benchmarks.common import Report
from benchmarks.peers_bench import Result


def test_exact_neighbours_match_a_full_sort() -> None:
    vectors = peers_bench.random_unit_vectors(500, seed=1)
    queries = peers_bench.random_unit_vectors(20, seed=2)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, : peers_bench.K]
    np.testing.assert_array_equal(peers_bench.exact_neighbours(vectors, queries), expected)


def test_recall_counts_shared_neighbours_in_any_order() -> None:
    truth = np.array([list(range(10)), list(range(10, 20))])
    found = [list(reversed(range(10))), [*range(10, 15), *range(100, 105)]]
    assert peers_bench.recall(found, truth) == pytest.approx(0.75)


@pytest.mark.parametrize(("count", "lists"), [(2_000, 32), (20_000, 512), (100_000, 1024), (1_000_000, 4096)])
def test_ivf_lists_near_four_square_roots_with_enough_training_vectors(count: int, lists: int) -> None:
    assert peers_bench.ivf_lists(count) == lists
    assert lists * 39 <= count


def test_next_ef_steps_down_after_reaching_the_target_and_up_otherwise() -> None:
    assert peers_bench.next_ef(192, reached=True) == 176
    assert peers_bench.next_ef(192, reached=False) == 208
    assert peers_bench.next_ef(peers_bench.EF_STEPS[0], reached=True) == peers_bench.EF_STEPS[0]
    assert peers_bench.next_ef(peers_bench.EF_STEPS[-1], reached=False) == peers_bench.EF_STEPS[-1]


def test_ef_steps_are_eight_per_doubling_from_16() -> None:
    steps = peers_bench.EF_STEPS
    assert steps[:12] == (10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32)
    assert (steps[-1], steps.index(256) - steps.index(128)) == (4096, 8)
    assert list(steps) == sorted(set(steps))


def test_sweep_walks_to_the_first_setting_across_the_target_recall() -> None:
    def walk(first: int, recall_at: Callable[[int], float] = lambda ef: min(1.0, ef / 100)) -> list[int]:
        measured: list[int] = []

        def measure_at(ef: int) -> Result:
            measured.append(ef)
            return Result(f"ef {ef}", recall=recall_at(ef), single_qps=1000 / ef, batched_qps=0)

        peers_bench.sweep(measure_at, first, peers_bench.next_ef)
        return measured

    assert walk(128) == [128, 120, 112, 104, 96, 88]  # cheaper while 0.95 holds, then one below it
    assert walk(80) == [80, 88, 96]  # broader until it is reached
    assert peers_bench.SWEEP_STEPS == 7
    # At most SWEEP_STEPS settings, even while the recall never crosses the target.
    assert walk(4096, lambda ef: 1.0) == [4096, 3840, 3584, 3328, 3072, 2816, 2560]
    halving = peers_bench.next_nprobe(lists=64)
    assert (halving(16, True), halving(16, False), halving(64, False), halving(1, True)) == (8, 32, 64, 1)


def test_fastest_ignores_setups_below_the_target_recall() -> None:
    results = [
        Result("exact", recall=1.0, single_qps=50, batched_qps=900),
        Result("graph", recall=0.97, single_qps=400, batched_qps=800),
        Result("fast but wrong", recall=0.80, single_qps=2000, batched_qps=9000),
    ]
    assert peers_bench.fastest(results, batched=False).system == "graph"
    assert peers_bench.fastest(results, batched=True).system == "exact"
    assert peers_bench.fastest(results[2:], batched=False) is None


def test_ratios_compare_at_the_target_recall_and_say_when_a_peer_misses_it() -> None:
    report = Report(size="tiny")
    dataset = peers_bench.Dataset("toy", np.zeros((1, 4)), np.zeros((1, 4)), np.zeros((1, 10)), "")
    ours = [Result("vecserve hnsw", recall=0.96, single_qps=300, batched_qps=1200)]
    peers = {
        "hnswlib": [Result("hnswlib ef=64", recall=0.95, single_qps=600, batched_qps=1200)],
        "chromadb": [Result("chromadb (defaults)", recall=0.80, single_qps=150, batched_qps=400)],
    }
    peers_bench.report_ratios(report, dataset, ours, peers)
    rows = {row.name: row for row in report.rows}
    assert rows["vecserve / hnswlib, 1 query/call"].value == pytest.approx(0.5)
    assert rows["vecserve / hnswlib, 100 queries/call"].value == pytest.approx(1.0)
    assert rows["vecserve / chromadb, 1 query/call"].value == pytest.approx(2.0)
    assert "below the target" in rows["vecserve / chromadb, 1 query/call"].note
    assert not any("milvus" in name for name in rows)


def test_cached_embeddings_serve_smaller_requests_without_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    np.save(tmp_path / f"minilm-w{peers_bench.WORDS_PER_TEXT}-s7-50.npy", stored)
    monkeypatch.setattr(peers_bench, "CACHE_DIR", tmp_path)
    np.testing.assert_array_equal(peers_bench.embedded_texts(20, seed=7), stored[:20])


def test_missing_peers_are_skipped_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        peers_bench, "PEERS", {name: f"{module}_not_installed" for name, module in peers_bench.PEERS.items()}
    )
    vectors = peers_bench.random_unit_vectors(100, seed=1)
    dataset = peers_bench.make_dataset("toy", vectors, vectors[:5], "")
    report = Report(size="tiny")
    data_path = peers_bench.save_dataset(dataset, tmp_path)
    assert peers_bench.peer_results(report, dataset, data_path, tmp_path, seconds=0.1) == {}
    assert report.rows == []
    printed = capsys.readouterr().out
    assert all(f"{peer} is not installed: skipped" in printed for peer in peers_bench.PEERS)


def test_batched_search_passes_again_until_its_time_is_up_and_keeps_the_first_pass_hits() -> None:
    queries = np.arange(250, dtype=np.float32).reshape(250, 1)
    calls: list[int] = []

    def search_many(batch: np.ndarray) -> list[list[int]]:
        calls.append(len(batch))
        return [[int(row[0])] for row in batch]

    rate, found = peers_bench.batched_search(search_many, queries, seconds=0.05)
    assert found == [[row] for row in range(250)]  # one pass's hits, in query order
    assert rate > 0 and calls[0] == peers_bench.QUERIES_PER_CALL  # the warm-up
    passes, remainder = divmod(len(calls) - 1, 3)  # whole passes of 100, 100 and 50 queries
    assert passes >= 1 and remainder == 0 and calls[1:4] == [100, 100, 50]
