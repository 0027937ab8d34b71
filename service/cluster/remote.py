"""The ingress's view of the Ray Serve deployments: each shard as a `Shard`, the encoder replicas as
one TextEncoder, with the failures of Ray (a replica gone, no answer in time) as domain errors.

Replicas return `Outcome`s rather than raising domain errors, so a NotFound is a value travelling back,
not a traceback in the replica's log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from service.embedding.batching import CancelCheck
from service.embedding.encoder import EmbedResult, ModelInfo, TokenizedText
from service.embedding.stages import StageClock
from service.errors import Cancelled, Overloaded, Unavailable, VecserveError

log = logging.getLogger(__name__)

# How often a waiting embed call looks whether its caller has gone.
CANCEL_POLL_SECONDS = 0.1
# Attempts of an encoder call whose replica died under it: the router sends the next to a live one.
ENCODER_ATTEMPTS = 3


class ReplicaFailed(Unavailable):
    """The replica serving the call died (or its node went) before answering."""


@dataclass(frozen=True)
class Outcome:
    """What a replica's method gave: its value, or the domain error it raised."""

    value: Any = None
    error: VecserveError | None = None

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def outcome_of(run: Callable[[], Any]) -> Outcome:
    try:
        return Outcome(value=run())
    except VecserveError as error:
        return Outcome(error=error)


def _answer(response: DeploymentResponse, what: str, timeout: float, is_cancelled: CancelCheck | None) -> Any:
    """The unwrapped outcome of a deployment call, waiting at most `timeout` seconds; Ray's failures
    become Unavailable or Overloaded naming `what`. An abandoned call is cancelled, so that it is not
    run later (a write applied after its caller was told it failed)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            step = remaining if is_cancelled is None else min(remaining, CANCEL_POLL_SECONDS)
            try:
                outcome = response.result(timeout_s=max(step, 0.0))
                break
            except TimeoutError:
                if is_cancelled is not None and is_cancelled():
                    response.cancel()
                    raise Cancelled(f"the call ended while {what} was working on it") from None
                if time.monotonic() >= deadline:
                    response.cancel()
                    raise Unavailable(
                        f"{what} did not answer within {timeout:g} s: it is down or restarting; retry later"
                    ) from None
    except BackPressureError:
        raise Overloaded(f"{what} has too many calls queued; retry later") from None
    except (RayActorError, RayServeException) as error:
        raise ReplicaFailed(f"{what} failed during the call ({type(error).__name__}); retry later") from None
    return outcome.unwrap()


class _PendingShardCall:
    def __init__(self, response: DeploymentResponse, name: str, timeout: float) -> None:
        self._response = response
        self._name = name
        self._timeout = timeout

    def result(self) -> Any:
        return _answer(self._response, self._name, self._timeout, None)


class ServeShard:
    """A shard served by its Ray Serve deployment (one replica owning the shard's IndexStore)."""

    def __init__(self, handle: DeploymentHandle, name: str, timeout_seconds: float) -> None:
        self._handle = handle
        self.name = name
        self._timeout = timeout_seconds

    def call(self, method: str, *args: Any, **kwargs: Any) -> _PendingShardCall:
        return _PendingShardCall(self._handle.call.remote(method, args, kwargs), self.name, self._timeout)

    def close(self) -> None:
        """The replica owns the store; nothing is held here."""


class RemoteEncoder:
    """The encoder deployment as the core's encoder: the same methods as Encoder, run on a replica
    (whose own dynamic batcher gathers the calls of every ingress thread).

    A call whose replica dies is sent again (embedding has no side effects); the router picks a
    live replica, or waits for the restarted one within the timeout.
    """

    def __init__(self, handle: DeploymentHandle, timeout_seconds: float) -> None:
        self._handle = handle
        self._timeout = timeout_seconds
        self.info: ModelInfo = self._call("info")
        # The ingress's own stages (parse, response); the model's stages are the replicas' to count.
        self.stages = StageClock()

    @property
    def dimension(self) -> int:
        return self.info.dimension

    # The batching happens in the replicas: here nothing queues, and there is no batcher to watch.
    queued_texts = 0
    batcher = None

    def _call(self, method: str, *args: Any, is_cancelled: CancelCheck | None = None) -> Any:
        for attempt in range(1, ENCODER_ATTEMPTS + 1):
            try:
                return _answer(
                    getattr(self._handle, method).remote(*args),
                    "the encoder deployment",
                    self._timeout,
                    is_cancelled,
                )
            except ReplicaFailed:
                if attempt == ENCODER_ATTEMPTS:
                    raise
                log.warning("encoder call %s failed (attempt %d); sending it again", method, attempt)
        raise AssertionError("unreachable")

    def embed(
        self,
        texts: Sequence[str],
        normalize: bool = True,
        truncate: bool = True,
        is_cancelled: CancelCheck | None = None,
    ) -> EmbedResult:
        return self._call("embed", list(texts), normalize, truncate, is_cancelled=is_cancelled)

    def encode(
        self,
        texts: Sequence[str],
        normalize: bool = True,
        is_cancelled: CancelCheck | None = None,
        background: bool = False,
    ) -> np.ndarray:
        return self._call("encode", list(texts), normalize, background, is_cancelled=is_cancelled)

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[TokenizedText]:
        return self._call("tokenize", list(texts), add_special_tokens)

    def similarity_matrix(
        self, left: Sequence[str], right: Sequence[str], is_cancelled: CancelCheck | None = None
    ) -> np.ndarray:
        return self._call("similarity_matrix", list(left), list(right), is_cancelled=is_cancelled)
