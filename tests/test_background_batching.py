"""The batcher's background lane: background work yields to live calls, runs in small batches, and
still gets its share under steady live load; the vocabulary build uses it in a real server."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from clients import VecserveClient
from service.config import Settings
from service.embedding.batching import BatchingSettings, DynamicBatcher
from service.embedding.encoder import Encoder
from service.errors import InvalidSettings
from service.grpc_server.server import create_server
from tests.test_metrics import scrape, value

# A quiet time or a wait that never runs out during a test.
AN_HOUR = 3600.0


def numbered_model(texts: list[str]) -> np.ndarray:
    """Row i holds the text's number, so misrouted rows are visible."""
    return np.array([[float(text.split("-")[1])] for text in texts], dtype=np.float32)


class RecordingModel:
    """Notes each batch it runs (its texts, and its lane's letter with its start and end on the clock);
    with `held`, the first batch waits for `release`. Its clock moves by `seconds_per_text` of each
    text's lane (t: live, b: background) per batch."""

    def __init__(self, held: bool = False, seconds_per_text: dict[str, float] | None = None) -> None:
        self.now = 0.0
        self._seconds_per_text = seconds_per_text or {"t": 0.0, "b": 0.0}
        self.batches: list[list[str]] = []
        self.spans: list[tuple[str, float, float]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self._held = held
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            first = not self.batches
            self.batches.append(texts)
        if first and self._held:
            self.started.set()
            self.release.wait(30)
        start = self.now
        self.now += sum(self._seconds_per_text[text.split("-")[0]] for text in texts)
        self.spans.append(("B" if texts[0].startswith("b-") else "L", start, self.now))
        return numbered_model(texts)

    def clock(self) -> float:
        return self.now

    def lanes(self) -> str:
        """The batches in the order they ran: L for a live one, B for a background one."""
        return "".join("B" if texts[0].startswith("b-") else "L" for texts in self.batches)


def texts(prefix: str, first: int, count: int) -> list[str]:
    return [f"{prefix}-{number}" for number in range(first, first + count)]


def test_background_work_is_cut_into_small_batches_and_answered_in_order() -> None:
    model = RecordingModel()
    settings = BatchingSettings(background_batch_tokens=12, background_quiet_seconds=0)
    batcher = DynamicBatcher(model, settings)
    try:
        lengths = [2, 3, 3, 1, 6, 2, 2, 12, 1, 1]
        rows = batcher.run(texts("b", 0, len(lengths)), lengths, background=True)
        assert rows[:, 0].tolist() == list(range(len(lengths)))
        length_of = dict(zip(texts("b", 0, len(lengths)), lengths, strict=True))
        for batch in model.batches:
            assert len(batch) * max(length_of[text] for text in batch) <= 12
        assert [len(batch) for batch in model.batches] == [4, 2, 1, 1, 2]
        assert batcher.background_texts_run == len(lengths) and batcher.queued_texts == 0
    finally:
        batcher.close()


def test_a_live_call_waits_at_most_one_background_batch_with_one_worker() -> None:
    """A background batch holds the only worker when a live call arrives: the live call runs next,
    before the rest of the background work."""
    model = RecordingModel(held=True)
    settings = BatchingSettings(max_wait_seconds=0, background_batch_tokens=2, background_quiet_seconds=0)
    batcher = DynamicBatcher(model, settings)
    try:
        background = batcher.submit(texts("b", 0, 6), [1] * 6, background=True)
        assert model.started.wait(30)
        live = batcher.submit(texts("t", 100, 1), [1])
        model.release.set()
        assert live.result(30)[:, 0].tolist() == [100]
        assert background.result(30)[:, 0].tolist() == list(range(6))
        assert model.lanes() == "BLBB"
    finally:
        model.release.set()
        batcher.close()


def test_under_steady_live_load_the_background_lane_gets_its_share() -> None:
    """Live calls are never quiet (queued all along), and time is read on the model's own clock: after
    each background batch of 20 s, live batches run 20 x (1 - 0.25) / 0.25 = 60 s (six calls of
    10 s), then the next background batch goes ahead of the live calls still queued. The first wait
    is one call shorter: the lane earned 2.5 s while it waited for the first live call to end."""
    model = RecordingModel(held=True, seconds_per_text={"t": 10.0, "b": 4.0})
    settings = BatchingSettings(
        max_batch_tokens=10,  # one live call per batch
        max_wait_seconds=0,
        background_batch_tokens=10,
        background_share=0.25,
        background_quiet_seconds=AN_HOUR,
    )
    batcher = DynamicBatcher(model, settings, clock=model.clock)
    try:
        first = batcher.submit(texts("t", 0, 1), [10])
        assert model.started.wait(30)
        live = [batcher.submit(texts("t", number, 1), [10]) for number in range(1, 13)]
        background = batcher.submit(texts("b", 0, 15), [2] * 15, background=True)
        model.release.set()
        assert background.result(30)[:, 0].tolist() == list(range(15))
        assert [call.result(30)[0, 0] for call in [first, *live]] == list(range(13))
        assert model.lanes() == "LB" + "L" * 5 + "B" + "L" * 6 + "B" + "L"
        assert batcher.background_seconds_run == 3 * 20.0
    finally:
        model.release.set()
        batcher.close()


def test_at_the_default_share_background_work_is_done_within_its_time_over_the_share() -> None:
    """The bound the README states, at the default share: under live calls queued all along (10 s
    each), background work of T = 20 s (ten batches of 2 s) has ended by T / share of the clock, give
    or take the live batch it may wait for; and before each background batch, the lane has taken no
    more than its share of the time so far (what live calls lose to it)."""
    share = BatchingSettings().background_share
    model = RecordingModel(held=True, seconds_per_text={"t": 10.0, "b": 2.0})
    settings = BatchingSettings(
        max_batch_tokens=10,  # one live call per batch
        max_wait_seconds=0,
        background_batch_tokens=10,
        background_quiet_seconds=AN_HOUR,
    )
    batcher = DynamicBatcher(model, settings, clock=model.clock)
    try:
        first = batcher.submit(texts("t", 0, 1), [10])
        assert model.started.wait(30)
        live = [batcher.submit(texts("t", number, 1), [10]) for number in range(1, 31)]
        background = batcher.submit(texts("b", 0, 10), [10] * 10, background=True)
        model.release.set()
        assert background.result(30)[:, 0].tolist() == list(range(10))
        assert [call.result(30)[0, 0] for call in [first, *live]] == list(range(31))
    finally:
        model.release.set()
        batcher.close()
    background_spans = [(start, end) for lane, start, end in model.spans if lane == "B"]
    background_seconds = sum(end - start for start, end in background_spans)
    assert background_seconds == 20.0
    assert background_spans[-1][1] <= background_seconds / share + 10.0
    taken = 0.0
    for start, end in background_spans:
        assert taken <= share * start + 1e-9
        taken += end - start


class GatedModel:
    """Each batch whose first text has a gate waits for it; the clock moves by the batch's cost (per
    lane, t or b) when the batch is let go. Notes every batch that entered while one of the other
    lane was inside."""

    def __init__(self, costs: dict[str, float]) -> None:
        self.now = 0.0
        self.batches: list[str] = []
        self.entered: dict[str, threading.Event] = {}
        self.gates: dict[str, threading.Event] = {}
        self.beside_other_lane: list[str] = []
        self._inside: list[str] = []
        self._costs = costs
        self._lock = threading.Lock()

    def gate(self, text: str) -> None:
        self.entered[text], self.gates[text] = threading.Event(), threading.Event()

    def __call__(self, texts: list[str]) -> np.ndarray:
        first = texts[0]
        lane = first.split("-")[0]
        with self._lock:
            self.batches.append(first)
            if any(inside.split("-")[0] != lane for inside in self._inside):
                self.beside_other_lane.append(first)
            self._inside.append(first)
        if first in self.gates:
            self.entered[first].set()
            self.gates[first].wait(30)
        with self._lock:
            self._inside.remove(first)
            self.now += self._costs[lane]
        return numbered_model(texts)

    def clock(self) -> float:
        return self.now

    def open_all_gates(self) -> None:
        for gate in self.gates.values():
            gate.set()


def test_with_two_workers_a_live_call_waits_for_the_background_batch_running() -> None:
    """A background batch has the model to itself: a live call arriving meanwhile is not run on the
    free worker beside it (which would split the cores), but as soon as it ends, ahead of the next
    background batch."""
    model = GatedModel({"t": 1.0, "b": 1.0})
    model.gate("b-0")
    settings = BatchingSettings(
        max_wait_seconds=0, model_workers=2, background_batch_tokens=1, background_quiet_seconds=0
    )
    batcher = DynamicBatcher(model, settings, clock=model.clock)
    try:
        background = batcher.submit(texts("b", 0, 2), [1, 1], background=True)
        assert model.entered["b-0"].wait(30)
        live = batcher.submit(texts("t", 7, 1), [1])
        assert batcher.queued_texts == 1
        model.gates["b-0"].set()
        assert live.result(30)[:, 0].tolist() == [7]
        assert background.result(30)[:, 0].tolist() == [0, 1]
        assert model.batches == ["b-0", "t-7", "b-1"]
        assert model.beside_other_lane == []
    finally:
        model.open_all_gates()
        batcher.close()


def test_a_due_background_batch_waits_for_the_running_live_batch_and_goes_before_queued_ones() -> None:
    """Two workers, share 0.2: background work arrives while live t-0 (10 s) runs, so its first batch
    is due at once. It does not start beside t-0, and neither does the queued live call t-1: b-0 goes
    when t-0 ends. t-0's 10 s earned the lane 2 s, b-0 cost 4 s (and earned 0.8): the lane owes
    1.2 s, which t-1's 10 s make up, so b-1 goes next."""
    model = GatedModel({"t": 10.0, "b": 4.0})
    model.gate("t-0")
    settings = BatchingSettings(
        max_wait_seconds=0,
        model_workers=2,
        background_batch_tokens=1,
        background_share=0.2,
        background_quiet_seconds=AN_HOUR,
    )
    batcher = DynamicBatcher(model, settings, clock=model.clock)
    try:
        first = batcher.submit(texts("t", 0, 1), [1])
        assert model.entered["t-0"].wait(30)
        background = batcher.submit(texts("b", 0, 2), [1, 1], background=True)
        queued = batcher.submit(texts("t", 1, 1), [1])
        assert model.batches == ["t-0"]
        model.gates["t-0"].set()
        assert [first.result(30)[0, 0], queued.result(30)[0, 0]] == [0, 1]
        assert background.result(30)[:, 0].tolist() == [0, 1]
        assert model.batches == ["t-0", "b-0", "t-1", "b-1"]
        assert model.beside_other_lane == []
    finally:
        model.open_all_gates()
        batcher.close()


def test_batches_run_while_live_calls_were_quiet_cost_the_lane_one_wait() -> None:
    """Share 0.5, background batches of 4 s: b-0 to b-3 run while no live call is there. When live
    calls then keep coming, each background batch waits for 4 x (1 - 0.5) / 0.5 = 4 s of them (two
    calls of 2 s), however many background batches ran before: quiet time is not held against the
    lane."""
    model = GatedModel({"t": 2.0, "b": 4.0})
    model.gate("b-3")
    settings = BatchingSettings(
        max_batch_tokens=10,  # one live call per batch
        max_wait_seconds=0,
        background_batch_tokens=1,
        background_share=0.5,
        background_quiet_seconds=0,
    )
    batcher = DynamicBatcher(model, settings, clock=model.clock)
    try:
        background = batcher.submit(texts("b", 0, 6), [1] * 6, background=True)
        assert model.entered["b-3"].wait(30)
        live = [batcher.submit(texts("t", number, 1), [10]) for number in range(1, 7)]
        model.gates["b-3"].set()
        assert [call.result(30)[0, 0] for call in live] == list(range(1, 7))
        assert background.result(30)[:, 0].tolist() == list(range(6))
        lanes = "".join(first[0].upper() for first in model.batches).replace("T", "L")
        assert lanes == "BBBB" + "LL" + "B" + "LL" + "B" + "LL"
    finally:
        model.open_all_gates()
        batcher.close()


def test_live_calls_are_not_refused_because_background_work_is_queued() -> None:
    """Each lane has its own queue limit: a full background queue leaves room for live calls."""
    model = RecordingModel(held=True)
    settings = BatchingSettings(max_queued_texts=4, max_wait_seconds=0, background_quiet_seconds=0)
    batcher = DynamicBatcher(model, settings)
    try:
        running = batcher.submit(texts("t", 0, 1), [1])
        assert model.started.wait(30)
        background = batcher.submit(texts("b", 1, 4), [1] * 4, background=True)
        live = batcher.submit(texts("t", 5, 4), [1] * 4)
        model.release.set()
        assert running.result(30)[0, 0] == 0
        assert live.result(30)[:, 0].tolist() == [5, 6, 7, 8]
        assert background.result(30)[:, 0].tolist() == [1, 2, 3, 4]
    finally:
        model.release.set()
        batcher.close()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (BatchingSettings(background_batch_tokens=100), "background batch tokens"),
        (BatchingSettings(background_share=0), "background share"),
        (BatchingSettings(background_share=1), "background share"),
        (BatchingSettings(background_quiet_seconds=-0.001), "background quiet time"),
        (BatchingSettings(background_quiet_seconds=float("inf")), "background quiet time"),
    ],
)
def test_background_settings_that_cannot_work_are_refused(settings: BatchingSettings, message: str) -> None:
    with pytest.raises(InvalidSettings, match=message):
        settings.check(max_sequence_length=256, max_texts_per_request=64)


def test_a_fresh_server_builds_its_vocabulary_in_the_background_under_steady_embed_calls(
    encoder: Encoder, tmp_path: Path
) -> None:
    """The real model over loopback: Embed calls keep coming while the vocabulary is built; each gets
    the vectors of a call on an idle encoder, the vocabulary still becomes ready, and the metrics
    count its words as background texts."""
    assert encoder.batcher is not None
    settings = Settings(
        listen="127.0.0.1:0", data_dir=tmp_path, vocabulary_size=600, metrics_listen="127.0.0.1:0"
    )
    batch = [f"a sentence about sea cows, number {number}" for number in range(32)]
    expected = encoder.encode(batch)
    background_before = encoder.batcher.background_texts_run
    running = create_server(settings, encoder=encoder)
    ready: Future[int] = Future()
    try:
        with VecserveClient(f"127.0.0.1:{running.port}", timeout=300) as client:

            def embed_until_ready() -> int:
                calls = 0
                while not ready.done():
                    np.testing.assert_allclose(client.embed_array(batch), expected, atol=1e-5)
                    calls += 1
                return calls

            with ThreadPoolExecutor(2) as pool:
                embedding = pool.submit(embed_until_ready)
                running.vocabulary.start()
                ready.set_result(client.get_vocabulary(timeout=300).word_count)
                assert embedding.result(300) > 0
        assert ready.result() == 600
        assert encoder.batcher.background_texts_run - background_before == 600
        counted = value(scrape(running), "vecserve_encoder_background_texts_total")
        assert counted == encoder.batcher.background_texts_run
        seconds = value(scrape(running), "vecserve_encoder_background_seconds_total")
        assert seconds == pytest.approx(encoder.batcher.background_seconds_run) and seconds > 0
    finally:
        running.stop(5)
