"""Search batching: concurrent searches share FAISS calls and each caller gets its own hits."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.index_store import Document, IndexKind, IndexStore, Query
from service.search_batching import SearchCoalescer


def slow_echo(calls: list[int]):
    """Isolates the coalescer: each row's result is its first component and its exclusion."""

    def run(queries: np.ndarray, excluded: list[int | None]) -> list[tuple[float, int | None]]:
        calls.append(len(queries))
        time.sleep(0.02)
        return [(float(row[0]), skip) for row, skip in zip(queries, excluded, strict=True)]

    return run


def test_concurrent_callers_share_calls_and_get_their_own_rows() -> None:
    coalescer, calls = SearchCoalescer(), []
    run = slow_echo(calls)

    def caller(number: int) -> list:
        rows = np.array([[number * 10 + i, 0] for i in range(number % 3 + 1)], dtype=np.float32)
        return coalescer.search("index", rows, [number] * len(rows), run)

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(caller, range(96)))
    for number, result in enumerate(results):
        assert result == [(float(number * 10 + i), number) for i in range(number % 3 + 1)]
    assert len(calls) < 96 and max(calls) > 3


def test_steady_concurrent_callers_are_gathered_into_full_batches() -> None:
    """Callers that come straight back would otherwise split into alternating small and large runs."""
    coalescer, calls = SearchCoalescer(), []
    run = slow_echo(calls)
    clients, rounds = 8, 12

    def client(number: int) -> None:
        for _ in range(rounds):
            coalescer.search("k", np.array([[number, 0]], dtype=np.float32), [None], run)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    assert sum(calls) == clients * rounds
    # Ungathered, this went 1, 8, 1, 8, ...: twice the calls.
    assert len(calls) <= rounds + 3, calls


def test_different_keys_are_never_merged() -> None:
    coalescer, calls = SearchCoalescer(), []
    run = slow_echo(calls)
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda n: coalescer.search(n % 2, np.array([[n, 0]], dtype=np.float32), [None], run),
                range(40),
            )
        )
    assert [r[0][0] for r in results] == [float(n) for n in range(40)]


def test_batch_size_is_bounded() -> None:
    coalescer, calls = SearchCoalescer(max_batch_queries=4), []
    run = slow_echo(calls)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: coalescer.search("k", np.zeros((1, 2), np.float32), [None], run), range(64)))
    assert max(calls) <= 4 and sum(calls) == 64


def test_a_failure_reaches_every_caller_of_the_batch_and_the_key_recovers() -> None:
    coalescer = SearchCoalescer()
    started, release = threading.Event(), threading.Event()

    def failing(queries: np.ndarray, excluded: list[int | None]) -> list:
        started.set()
        release.wait(5)
        raise RuntimeError("index gone")

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(coalescer.search, "k", np.zeros((1, 2), np.float32), [None], failing)
        started.wait(5)
        followers = [
            pool.submit(coalescer.search, "k", np.zeros((1, 2), np.float32), [None], failing)
            for _ in range(3)
        ]
        time.sleep(0.05)
        release.set()
        for future in [first, *followers]:
            with pytest.raises(RuntimeError, match="index gone"):
                future.result(5)
    assert coalescer.search("k", np.ones((1, 2), np.float32), [7], slow_echo([])) == [(1.0, 7)]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_store_answers_concurrent_searches_like_sequential_ones(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    queries = rng.standard_normal((64, 32)).astype(np.float32)
    batched = IndexStore(tmp_path / "on")
    plain = IndexStore(tmp_path / "off", search_batching=False)
    try:
        for store in (batched, plain):
            store.create_index("v", dimension=32, kind=IndexKind(kind))
            for start in range(0, len(vectors), 1000):
                store.upsert(
                    "v",
                    [
                        Document(id=f"d{start + i}", vector=v)
                        for i, v in enumerate(vectors[start : start + 1000])
                    ],
                )
        expected = [[h.id for h in plain.search("v", [Query(vector=q)], k=5)[0]] for q in queries]
        with ThreadPoolExecutor(16) as pool:
            got = list(
                pool.map(lambda q: [h.id for h in batched.search("v", [Query(vector=q)], k=5)[0]], queries)
            )
        assert got == expected
        assert batched._coalescer is not None and batched._coalescer.calls < len(queries)
    finally:
        batched.close()
        plain.close()
