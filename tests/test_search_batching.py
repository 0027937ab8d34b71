"""Search batching: concurrent searches share FAISS calls and each caller gets its own hits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.index.model import Document, IndexKind, Query
from service.index.search_batching import SearchCoalescer, SearchFunction
from service.index.store import IndexStore
from tests.waiting import wait_until

# Counts the callers whose rows make up one search call.
CallerCount = Callable[[np.ndarray, list[int | None]], int]


def echo(calls: list[int]) -> SearchFunction:
    """Isolates the coalescer: each row's result is its first component and its exclusion."""

    def run(queries: np.ndarray, excluded: list[int | None]) -> list[tuple[float, int | None]]:
        calls.append(len(queries))
        return [(float(row[0]), skip) for row, skip in zip(queries, excluded, strict=True)]

    return run


def slow_echo(calls: list[int]) -> SearchFunction:
    """`echo` costing 20 ms a call, as a FAISS search over many vectors does: what the coalescer
    waits for returning callers is a fraction of the last call's duration."""
    quick = echo(calls)

    def run(queries: np.ndarray, excluded: list[int | None]) -> list[tuple[float, int | None]]:
        time.sleep(0.02)
        return quick(queries, excluded)

    return run


def one_row_each(queries: np.ndarray, excluded: list[int | None]) -> int:
    return len(queries)


class FirstCallHeld:
    """Wraps search functions so that the first call made through them waits until all `callers` (the
    calling threads) are in it or queued behind it: the queued ones then certainly share the next
    call (a slow search left that to timing, and on a loaded machine none was merged). For one key:
    its calls never overlap, so no lock guards which call is the first."""

    def __init__(
        self, coalescer: SearchCoalescer, callers: int, callers_in: CallerCount = one_row_each
    ) -> None:
        self._coalescer = coalescer
        self._callers = callers
        self._callers_in = callers_in
        self._held_one = False

    def __call__(self, run: SearchFunction) -> SearchFunction:
        def held(queries: np.ndarray, excluded: list[int | None]) -> list:
            if not self._held_one:
                self._held_one = True
                wait_until(
                    lambda: self._all_in(queries, excluded),
                    f"{self._callers} callers in the first search call or queued behind it",
                )
            return run(queries, excluded)

        return held

    def _all_in(self, queries: np.ndarray, excluded: list[int | None]) -> bool:
        return self._callers_in(queries, excluded) + self._coalescer.queued_callers == self._callers


def test_concurrent_callers_share_calls_and_get_their_own_rows() -> None:
    coalescer, calls = SearchCoalescer(), []
    threads = 24
    # Each caller excludes its own number from its rows: a call's distinct exclusions are its callers.
    run = FirstCallHeld(coalescer, threads, callers_in=lambda _, excluded: len(set(excluded)))(echo(calls))

    def caller(number: int) -> list:
        rows = np.array([[number * 10 + i, 0] for i in range(number % 3 + 1)], dtype=np.float32)
        return coalescer.search("index", rows, [number] * len(rows), run)

    with ThreadPoolExecutor(threads) as pool:
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
    threads = 16
    run = FirstCallHeld(coalescer, threads)(echo(calls))
    with ThreadPoolExecutor(threads) as pool:
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
        assert started.wait(5)
        followers = [
            pool.submit(coalescer.search, "k", np.zeros((1, 2), np.float32), [None], failing)
            for _ in range(3)
        ]
        wait_until(lambda: coalescer.queued_callers == 3, "the followers queued behind the failing call")
        release.set()
        for future in [first, *followers]:
            with pytest.raises(RuntimeError, match="index gone"):
                future.result(5)
    assert coalescer.search("k", np.ones((1, 2), np.float32), [7], echo([])) == [(1.0, 7)]


def hold_the_first_search(coalescer: SearchCoalescer, callers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes the first FAISS call of the coalescer (of a store) wait as FirstCallHeld does."""
    hold = FirstCallHeld(coalescer, callers)
    search = coalescer.search

    def search_first_held(
        key: Hashable, queries: np.ndarray, excluded: Sequence[int | None], run: SearchFunction
    ) -> list:
        return search(key, queries, excluded, hold(run))

    monkeypatch.setattr(coalescer, "search", search_first_held)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_store_answers_concurrent_searches_like_sequential_ones(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    queries = rng.standard_normal((64, 32)).astype(np.float32)
    batched = IndexStore(tmp_path / "on")
    plain = IndexStore(tmp_path / "off", search_batching=False)
    threads = 16
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
        assert batched._coalescer is not None
        hold_the_first_search(batched._coalescer, threads, monkeypatch)
        with ThreadPoolExecutor(threads) as pool:
            got = list(
                pool.map(lambda q: [h.id for h in batched.search("v", [Query(vector=q)], k=5)[0]], queries)
            )
        assert got == expected
        assert batched._coalescer.calls < len(queries)
    finally:
        batched.close()
        plain.close()
