"""Dynamic batching: callers get their own rows in order, overload is refused, bad settings too."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import VecserveClient
from clients.cli import build_parser
from clients.commands.serve import settings_from_args
from clients.local_server import ServerProcess
from service.config import Settings
from service.embedding import batching
from service.embedding.batching import BatchingSettings, DynamicBatcher
from service.embedding.encoder import Encoder
from service.errors import InvalidSettings, Overloaded
from service.grpc_server.server import create_server
from tests.waiting import wait_until

# A max wait that never runs out during a test: only the calls awaited, or the arrival gap, end a batch.
AN_HOUR = 3600.0


def fake_model(texts: list[str]) -> np.ndarray:
    """Isolates the batcher: row i encodes the text's number, so misrouted rows are visible."""
    return np.array([[float(text.split("-")[1]), len(texts)] for text in texts], dtype=np.float32)


class FirstCallHeld:
    """A model whose first call waits for `release`, so that the calls submitted meanwhile are all
    queued when it returns (for one worker: its calls never overlap)."""

    def __init__(self, model: Callable[[list[str]], np.ndarray]) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self._model = model

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not self.started.is_set():
            self.started.set()
            self.release.wait(30)
        return self._model(texts)


def test_each_caller_gets_its_own_rows_in_order() -> None:
    model = FirstCallHeld(fake_model)
    batcher = DynamicBatcher(model, BatchingSettings(max_batch_tokens=10_000, max_wait_seconds=0.01))
    try:

        def submit(caller: int) -> tuple[int, Future[np.ndarray]]:
            texts = [f"t-{caller * 100 + i}" for i in range(caller % 5 + 1)]
            lengths = [(caller * 7 + i) % 13 + 1 for i in range(len(texts))]
            return caller, batcher.submit(texts, lengths)

        # The first model call is held until every call is queued: the others then share a batch.
        with ThreadPoolExecutor(32) as pool:
            submitted = list(pool.map(submit, range(64)))
        model.release.set()
        results = [(caller, future.result(timeout=30)) for caller, future in submitted]
        for caller, rows in results:
            expected = [caller * 100 + i for i in range(caller % 5 + 1)]
            assert rows[:, 0].tolist() == expected
        assert batcher.batches_run < 64  # concurrent calls shared model calls
        assert max(rows[0, 1] for _, rows in results) > 1
    finally:
        batcher.close()


def test_token_budget_limits_the_batch() -> None:
    sizes: list[int] = []
    release = threading.Event()

    def recording_model(texts: list[str]) -> np.ndarray:
        release.wait(5)
        sizes.append(len(texts))
        return fake_model(texts)

    batcher = DynamicBatcher(recording_model, BatchingSettings(max_batch_tokens=100, max_wait_seconds=0.05))
    try:
        futures = [batcher.submit([f"t-{i}"], [50]) for i in range(6)]
        release.set()
        for future in futures:
            future.result(timeout=10)
        assert max(sizes) <= 2  # two texts of 50 padded tokens fill the budget of 100
        assert sum(sizes) == 6
    finally:
        batcher.close()


def recording(sizes: list[int]) -> Callable[[list[str]], np.ndarray]:
    def model(texts: list[str]) -> np.ndarray:
        sizes.append(len(texts))
        return fake_model(texts)

    return model


def test_a_lone_call_waits_only_the_arrival_gap() -> None:
    settings = BatchingSettings(max_wait_seconds=AN_HOUR, arrival_gap_seconds=0.002)
    batcher = DynamicBatcher(fake_model, settings)
    try:
        # Answered at all, the call was not held for the max wait.
        assert batcher.submit(["t-1"], [3]).result(timeout=60)[0, 0] == 1
    finally:
        batcher.close()


class ClockAhead:
    """Stands in for the batcher's `time` module: its clock, which the test puts forward instead of
    waiting for time to pass."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead


def test_callers_answered_together_are_awaited_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a batch of four calls, four calls arriving one by one (further apart than the arrival
    gap) still share one model call: the batcher expects the callers it just answered back. Once
    that batch is long past, each call runs alone again, at once."""
    sizes: list[int] = []
    clock = ClockAhead()
    monkeypatch.setattr(batching, "time", clock)
    model = FirstCallHeld(recording(sizes))
    batcher = DynamicBatcher(model, BatchingSettings(max_wait_seconds=AN_HOUR, arrival_gap_seconds=0.001))
    try:
        held = batcher.submit(["t-0"], [1])
        assert model.started.wait(30)  # the worker holds the first call in the model
        together = [batcher.submit([f"t-{i}"], [1]) for i in range(1, 5)]
        model.release.set()
        for future in [held, *together]:
            future.result(timeout=30)
        assert sizes == [1, 4]

        one_by_one = []
        for i in range(4):
            one_by_one.append(batcher.submit([f"t-{i}"], [1]))
            time.sleep(0.03)  # at least this far apart: more than the arrival gap
        for future in one_by_one:
            future.result(timeout=30)
        assert sizes == [1, 4, 4]

        clock.ahead = 2 * AN_HOUR  # longer than the max wait: the previous callers are not expected any more
        for i in range(4):
            # Answered at all, the call was not held for the max wait awaiting the others.
            batcher.submit([f"t-{i}"], [1]).result(timeout=60)
        assert sizes == [1, 4, 4, 1, 1, 1, 1]
    finally:
        batcher.close()


def test_full_queue_is_refused_at_once_and_recovers() -> None:
    started, release = threading.Event(), threading.Event()

    def blocked_model(texts: list[str]) -> np.ndarray:
        started.set()
        release.wait(10)
        return fake_model(texts)

    batcher = DynamicBatcher(blocked_model, BatchingSettings(max_queued_texts=4, max_wait_seconds=0))
    try:
        running = batcher.submit(["t-0"], [1])
        assert started.wait(10)  # the worker holds the first job; the queue is empty again
        queued = batcher.submit(["t-1", "t-2", "t-3", "t-4"], [1, 1, 1, 1])
        with pytest.raises(Overloaded, match="queue is full"):
            batcher.submit(["t-5"], [1])
        # Refused while the model still holds the first job: the call did not wait for room.
        assert not queued.done() and batcher.queued_texts == 4
        release.set()
        assert running.result(10)[0, 0] == 0
        assert queued.result(10)[:, 0].tolist() == [1, 2, 3, 4]
        assert batcher.run(["t-9"], [1])[0, 0] == 9
    finally:
        release.set()
        batcher.close()


def test_model_failure_reaches_the_callers_and_the_worker_survives() -> None:
    def flaky_model(texts: list[str]) -> np.ndarray:
        if "t-13" in texts:
            raise RuntimeError("boom")
        return fake_model(texts)

    batcher = DynamicBatcher(flaky_model, BatchingSettings(max_wait_seconds=0))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.run(["t-13"], [1])
        assert batcher.run(["t-2"], [1])[0, 0] == 2
    finally:
        batcher.close()


def test_workers_run_batches_at_the_same_time() -> None:
    """Two workers: a second batch starts while the first is still in the model (each model call
    waits for the other at a barrier, which a single worker could never pass)."""
    both_running = threading.Barrier(2, timeout=10)

    def meeting_model(texts: list[str]) -> np.ndarray:
        both_running.wait()
        return fake_model(texts)

    batcher = DynamicBatcher(meeting_model, BatchingSettings(max_wait_seconds=0, model_workers=2))
    try:
        assert batcher.workers == 2
        first = batcher.submit(["t-1"], [1])
        second = batcher.submit(["t-2"], [1])
        assert first.result(timeout=20)[:, 0].tolist() == [1]
        assert second.result(timeout=20)[:, 0].tolist() == [2]
    finally:
        batcher.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_callers_are_spread_over_the_workers(workers: int) -> None:
    """16 callers in a loop: with two workers the batches overlap in time and none holds every caller
    (one worker takes them all at once); every caller gets its own rows."""
    sizes: list[int] = []
    running, most_running = 0, 0
    lock = threading.Lock()

    def slow_model(texts: list[str]) -> np.ndarray:
        nonlocal running, most_running
        with lock:
            running += 1
            most_running = max(most_running, running)
            first = not sizes
            sizes.append(len(texts))
        if first:
            # The callers left out of the first batch are queued for the other worker, if any: the
            # first waits until every worker runs a batch, so that the overlap is not left to timing.
            wait_until(lambda: running == workers, f"{workers} batches running at once")
        time.sleep(0.02)  # a model call long enough for the other callers to queue behind it
        with lock:
            running -= 1
        return fake_model(texts)

    settings = BatchingSettings(max_wait_seconds=0.05, model_workers=workers)
    batcher = DynamicBatcher(slow_model, settings)
    try:

        def caller(number: int) -> None:
            for round_number in range(12):
                text = f"t-{number * 100 + round_number}"
                assert batcher.run([text], [1])[0, 0] == number * 100 + round_number

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(caller, range(16)))
        assert sum(sizes) == 16 * 12
        assert most_running == workers
        if workers == 2:
            assert max(sizes) < 16
    finally:
        batcher.close()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (BatchingSettings(max_batch_tokens=100), "max sequence length"),
        (BatchingSettings(max_wait_seconds=2), "between 0 and 1000 ms"),
        (BatchingSettings(max_queued_texts=10), "at least one full request"),
        (BatchingSettings(model_workers=17), "model workers must be between 1 and 16"),
        (BatchingSettings(model_workers=-1), "model workers must be between 1 and 16"),
    ],
)
def test_settings_that_cannot_work_are_refused(settings: BatchingSettings, message: str) -> None:
    with pytest.raises(InvalidSettings, match=message):
        settings.check(max_sequence_length=256, max_texts_per_request=64)


def test_the_served_encoder_runs_two_model_workers(encoder: Encoder) -> None:
    """Chosen for the torch model on a multi-core CPU (the session's encoder is built as served)."""
    assert encoder.batcher is not None
    assert encoder.batcher.workers == (2 if (os.cpu_count() or 1) >= 2 else 1)


def test_a_batch_that_starts_beside_another_gets_a_share_of_the_threads(
    encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two concurrent CPU model calls split torch's threads; a call running alone has them all."""
    import torch

    threads_seen: list[int] = []
    both_running = threading.Barrier(2, timeout=30)
    model = encoder._model

    class ThreadRecordingModel:
        """The real model, called through a wrapper that notes torch's threads as the call sees them."""

        device = model.device

        def __call__(self, features: dict) -> dict:
            threads_seen.append(torch.get_num_threads())
            both_running.wait()
            return model(features)

    monkeypatch.setattr(encoder, "_model", ThreadRecordingModel())
    inputs = encoder.prepare(["a sentence about manatees", "another about dugongs"])
    all_threads = encoder._torch_threads.threads
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(encoder._run_model, inputs[:1])
        wait_until(lambda: len(threads_seen) > 0, "the first call in the model before the second starts")
        second = pool.submit(encoder._run_model, inputs[1:])
        rows = np.vstack([first.result(timeout=60), second.result(timeout=60)])
    assert threads_seen == [all_threads, max(1, all_threads // 2)]
    monkeypatch.undo()
    np.testing.assert_allclose(rows, encoder._run_model(inputs), atol=1e-5)


def test_batched_vectors_equal_single_calls(encoder: Encoder) -> None:
    texts = [f"sentence {i} about {'whales ' * (i % 7)}and the sea" for i in range(48)]
    singles = [encoder.encode([text])[0] for text in texts[:8]]
    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(lambda text: encoder.encode([text])[0], texts))
    np.testing.assert_allclose(concurrent[:8], singles, atol=1e-5)
    np.testing.assert_allclose(np.array(concurrent), encoder.encode(texts), atol=1e-5)


def test_concurrent_embed_calls_through_the_server(client: VecserveClient, encoder: Encoder) -> None:
    texts = [f"query number {i} about dugongs" for i in range(40)]
    expected = encoder.encode(texts)
    with ThreadPoolExecutor(20) as pool:
        rows = list(pool.map(lambda text: client.embed_array([text])[0], texts))
    np.testing.assert_allclose(np.array(rows), expected, atol=1e-5)


def test_full_queue_gives_resource_exhausted_through_grpc(encoder: Encoder, tmp_path: Path) -> None:
    settings = Settings(listen="127.0.0.1:0", data_dir=tmp_path, max_texts_per_request=16)
    tiny_queue = Encoder(
        encoder.info.model_name,
        device="cpu",
        batching=BatchingSettings(max_queued_texts=16, max_wait_seconds=0),
        max_texts_per_request=16,
    )
    running = create_server(settings, encoder=tiny_queue)
    try:
        with VecserveClient(f"127.0.0.1:{running.port}", timeout=120) as client:
            batch = [f"a fairly long sentence number {i} " * 12 for i in range(16)]
            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(client.embed_array, batch) for _ in range(8)]
                outcomes = []
                for future in futures:
                    try:
                        outcomes.append(future.result().shape)
                    except grpc.RpcError as error:
                        outcomes.append(error.code())
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in outcomes
            assert (16, 384) in outcomes
            assert client.embed_array(["recovered"]).shape == (1, 384)
    finally:
        running.stop(5)
        tiny_queue.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--max-batch-tokens", "64"), "must be at least the model's max sequence length"),
        (("--model-workers", "17"), "model workers must be between 1 and 16"),
        (("--background-share", "1.5"), "background share must be between 0 and 1"),
    ],
)
def test_server_refuses_to_start_with_impossible_batching(
    tmp_path: Path, flags: tuple[str, str], message: str
) -> None:
    server = ServerProcess(tmp_path / "data", *flags)
    with pytest.raises(RuntimeError, match="exited with 2"):
        server.start(timeout=120)
    assert message in server.log()


def test_the_background_lane_is_set_by_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """`vecserve serve` flags (winning over VECSERVE_* variables) reach the batcher's settings."""
    monkeypatch.setenv("VECSERVE_BACKGROUND_SHARE", "0.4")
    monkeypatch.setenv("VECSERVE_BACKGROUND_QUIET_MS", "80")
    parser = build_parser()
    flagged = settings_from_args(
        parser.parse_args(["serve", "--background-batch-tokens=1024", "--background-quiet-ms=20"])
    ).batching
    assert flagged is not None
    assert (flagged.background_batch_tokens, flagged.background_share) == (1024, 0.4)
    assert flagged.background_quiet_seconds == pytest.approx(0.020)
    defaults = Settings().batching
    assert defaults is not None
    assert (defaults.background_batch_tokens, defaults.background_share) == (512, 0.1)
    assert defaults.background_quiet_seconds == pytest.approx(0.050)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"background_batch_tokens": 100}, "background batch tokens \\(100\\) must be at least"),
        ({"background_share": 0.0}, "background share must be between 0 and 1"),
        ({"background_quiet_ms": -1.0}, "background quiet time must be 0 ms or more, got -1 ms"),
    ],
)
def test_an_encoder_refuses_background_settings_that_cannot_work(
    encoder: Encoder, changes: dict[str, float], message: str
) -> None:
    """Checked with the model's limits when the encoder is built (the flags' values as they reach it)."""
    batching = Settings(max_batch_tokens=16384).replace(**changes).batching
    assert batching is not None
    with pytest.raises(InvalidSettings, match=message):
        batching.check(encoder.info.max_sequence_length, Settings().max_texts_per_request)
