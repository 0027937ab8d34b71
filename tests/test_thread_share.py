"""ThreadShare: concurrent compute calls split the threads evenly; a call alone gets them all."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from service.common.thread_share import ThreadShare


def test_a_lone_call_gets_every_thread_capped_by_its_need() -> None:
    threads = ThreadShare(8)
    with threads.share() as alone:
        assert alone == 8
    with threads.share(most=3) as small:
        assert small == 3
    with threads.share(most=0) as unbounded:  # no cap given
        assert unbounded == 8


def test_calls_running_together_split_the_threads_and_give_them_back() -> None:
    threads = ThreadShare(8)
    with threads.share() as first, threads.share() as second, threads.share() as third:
        assert (first, second, third) == (8, 4, 2)  # each decided when it started
        with threads.share() as fourth, threads.share() as fifth:
            assert (fourth, fifth) == (2, 1)
        with threads.share() as later:
            assert later == 2  # the two that ended gave their share back
    with threads.share() as again:
        assert again == 8


def test_never_less_than_one_thread() -> None:
    threads = ThreadShare(2)
    with threads.share(), threads.share(), threads.share() as crowded:
        assert crowded == 1
    assert ThreadShare(0).threads == 1


def test_concurrent_callers_from_many_threads() -> None:
    """16 threads meeting inside the share: each saw a count that fit the calls running then."""
    threads = ThreadShare(4)
    inside = threading.Barrier(16, timeout=10)
    seen: list[int] = []

    def call() -> None:
        with threads.share() as mine:
            seen.append(mine)
            inside.wait()

    with ThreadPoolExecutor(16) as pool:
        for future in [pool.submit(call) for _ in range(16)]:
            future.result()
    assert len(seen) == 16 and min(seen) == 1 and max(seen) <= 4
    with threads.share() as after:
        assert after == 4
