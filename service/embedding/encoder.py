"""The encoder: a sentence-transformers model that tokenizes and embeds text (no transport code here)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.common.thread_share import ThreadShare
from service.embedding import backends
from service.embedding.batching import (
    AUTO_BATCH_TOKENS,
    AUTO_MODEL_WORKERS,
    BatchingSettings,
    CancelCheck,
    DynamicBatcher,
)
from service.embedding.device import plan_for
from service.embedding.model_inputs import InputPreparer, TextInput, length_batches
from service.embedding.stages import StageClock, now
from service.errors import Cancelled, InvalidArgument, InvalidSettings

if TYPE_CHECKING:
    from typing import TypeAlias

    from tokenizers import Encoding

    # What the batcher carries to the model: a tokenized text, or a text the model's `encode` prepares.
    ModelInput: TypeAlias = Encoding | TextInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    model_name: str
    dimension: int
    max_sequence_length: int
    vocabulary_size: int
    device: str
    dtype: str
    # What runs the model: "torch" or one of the faster CPU backends in service/embedding/backends.py.
    backend: str = backends.TORCH


@dataclass(frozen=True)
class Token:
    text: str
    id: int
    start: int
    end: int
    special: bool


@dataclass(frozen=True)
class TokenizedText:
    tokens: list[Token]
    exceeds_max_length: bool


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # (len(texts), dimension) float32
    token_counts: list[int]  # whole input, special tokens included, before truncation
    truncated: list[bool]


class Encoder:
    """Wraps a sentence-transformers model; safe to call from many threads.

    With `batching` settings, concurrent calls are gathered by a DynamicBatcher into shared model
    calls; without, each call runs the model on its own, one at a time.
    """

    def __init__(
        self,
        model_name_or_path: str,
        device: str = "auto",
        batching: BatchingSettings | None = None,
        max_texts_per_request: int = 1024,
        backend: str = backends.TORCH,
        cache_dir: Path | None = None,
    ) -> None:
        """`backend` other than torch needs `cache_dir`, where its exported model is built once."""
        import torch
        from sentence_transformers import SentenceTransformer

        try:
            from sentence_transformers.sentence_transformer.modules import Normalize
        except ImportError:  # sentence-transformers < 6
            from sentence_transformers.models import Normalize

        backends.check_backend_name(backend)
        if backend != backends.TORCH:
            if device.startswith("cuda"):
                raise InvalidSettings(f"the {backend} backend runs on the CPU: use device cpu or auto")
            if cache_dir is None:
                raise InvalidSettings(f"the {backend} backend needs a cache directory for its exported model")
            device = "cpu"
        self.device_plan = plan_for(device, torch.cuda.is_available())
        device_name, dtype = self.device_plan.name, self.device_plan.dtype
        log.info("loading model %s on %s (%s)", model_name_or_path, device_name, dtype)
        model = SentenceTransformer(model_name_or_path, device=device_name)
        if dtype == "float16":
            model.half()
        # Normalization is a per-request option, so a model's own trailing Normalize layer is
        # dropped and normalize_embeddings applied instead.
        if len(model) and isinstance(model[len(model) - 1], Normalize):
            del model[len(model) - 1]
        model.eval()
        self._model = model
        # Hugging Face tokenizers are not safe for concurrent calls, and the model's own one changes
        # its settings on every call: the Tokenize RPC splits tokens with a copy of its own.
        self._tokenizer = copy.deepcopy(model.tokenizer)
        self._tokenizer_lock = threading.Lock()
        # Each text is tokenized once, in the request thread: the token count (for truncation reports
        # and the batcher's budget) and the model's input come from the same tokenization.
        self._inputs: InputPreparer | None = None
        try:
            self._inputs = InputPreparer(model)
            self._inputs.check_matches(model)
        except InvalidSettings as reason:
            if backend != backends.TORCH:
                raise
            # Served all the same, through the model's own encode: correct, a little slower.
            log.warning("%s; texts are prepared by sentence-transformers' encode instead", reason)
            self._inputs = None
        self._backend_run: backends.RunFunction | None = None
        if backend != backends.TORCH:
            assert cache_dir is not None
            loaded = backends.load_backend(backend, model, cache_dir)
            self._backend_run = loaded.run
            dtype = loaded.dtype
        self._model_lock = threading.Lock()
        # CPU and wall time by stage of live calls, and the model's real and padded tokens (for metrics).
        self.stages = StageClock()
        # The stages of background work (the vocabulary build), apart: they would skew the live figures.
        self.background_stages = StageClock()
        # Torch's threads, shared among the model calls running at once.
        self._torch_threads = ThreadShare(torch.get_num_threads())
        dimension = (
            model.get_embedding_dimension()
            if hasattr(model, "get_embedding_dimension")
            else model.get_sentence_embedding_dimension()
        )
        self.info = ModelInfo(
            model_name=model_name_or_path,
            dimension=int(dimension),
            max_sequence_length=int(model.max_seq_length),
            vocabulary_size=len(self._tokenizer),
            device=str(model.device),
            dtype=dtype,
            backend=backend,
        )
        self._batcher: DynamicBatcher | None = None
        if batching is not None:
            if batching.max_batch_tokens == AUTO_BATCH_TOKENS:
                batching = dataclasses.replace(batching, max_batch_tokens=self.device_plan.batch_tokens)
            batching.check(self.info.max_sequence_length, max_texts_per_request)
            workers = self._model_workers(batching.model_workers)
            self._batcher = DynamicBatcher(
                self._run_model,
                dataclasses.replace(batching, model_workers=workers),
                run_background_batch=self._run_background_model,
            )

    def _model_workers(self, requested: int) -> int:
        """How many batches may run at once: two by default where the model allows concurrent calls.

        On the CPU, one batch runs while the callers of the previous one are answered and send their
        next texts; two concurrent batches also keep both cores busier than one two-thread batch.
        On CUDA the second worker prepares its batch while the GPU computes."""
        if self._backend_run is not None:
            obstacle = f"the {self.info.backend} backend runs one batch at a time over all its streams"
        elif self._inputs is None:
            obstacle = "this model is served through sentence-transformers' encode, which is not thread-safe"
        else:
            obstacle = None
        if requested == AUTO_MODEL_WORKERS:
            return 1 if obstacle or (os.cpu_count() or 1) < 2 else 2
        if requested > 1 and obstacle:
            raise InvalidSettings(f"model workers must be 1 here: {obstacle}")
        return requested

    def close(self) -> None:
        """Stops the batching worker after it has finished the queued work."""
        if self._batcher is not None:
            self._batcher.close()

    @property
    def queued_texts(self) -> int:
        return self._batcher.queued_texts if self._batcher else 0

    @property
    def batcher(self) -> DynamicBatcher | None:
        """The dynamic batcher (None without batching), for its statistics."""
        return self._batcher

    @property
    def dimension(self) -> int:
        return self.info.dimension

    def _encode_ids(self, texts: Sequence[str], add_special_tokens: bool) -> dict:
        with self._tokenizer_lock:
            return self._tokenizer(
                list(texts),
                add_special_tokens=add_special_tokens,
                truncation=False,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
                verbose=False,
            )

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[TokenizedText]:
        encoded = self._encode_ids(texts, add_special_tokens)
        results = []
        limit = self.info.max_sequence_length
        for ids, offsets, special_mask in zip(
            encoded["input_ids"], encoded["offset_mapping"], encoded["special_tokens_mask"], strict=True
        ):
            pieces = self._tokenizer.convert_ids_to_tokens(ids)
            tokens = [
                Token(text=piece, id=int(token_id), start=int(start), end=int(end), special=bool(special))
                for piece, token_id, (start, end), special in zip(
                    pieces, ids, offsets, special_mask, strict=True
                )
            ]
            # Length with special tokens is what the model limit applies to.
            full_length = len(ids) + (
                0 if add_special_tokens else self._tokenizer.num_special_tokens_to_add()
            )
            results.append(TokenizedText(tokens=tokens, exceeds_max_length=full_length > limit))
        return results

    def embed(
        self,
        texts: Sequence[str],
        normalize: bool = True,
        truncate: bool = True,
        is_cancelled: CancelCheck | None = None,
    ) -> EmbedResult:
        """Vectors for texts; inputs over the max sequence length are cut, or refused when truncate=False.

        `is_cancelled` tells whether the caller has gone; then the model work is skipped (Cancelled)."""
        limit = self.info.max_sequence_length
        model_inputs, token_counts = self._prepare(texts)
        truncated = [count > limit for count in token_counts]
        if not truncate:
            for position, count in enumerate(token_counts):
                if count > limit:
                    raise InvalidArgument(
                        f"texts[{position}] has {count} tokens, more than the model's maximum of {limit}; "
                        "shorten it or allow truncation",
                        field=f"texts[{position}]",
                    )
        vectors = self._vectors(model_inputs, normalize, is_cancelled)
        return EmbedResult(vectors=vectors, token_counts=token_counts, truncated=truncated)

    def encode(
        self,
        texts: Sequence[str],
        normalize: bool = True,
        is_cancelled: CancelCheck | None = None,
        background: bool = False,
    ) -> np.ndarray:
        """Just the vectors, float32, one row per text (inputs over the limit are cut).

        `background` work (no caller waiting for it) yields the model to live calls: see the
        batcher's background lane. Its stages are timed in `background_stages`."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._vectors(self._prepare(texts, background)[0], normalize, is_cancelled, background)

    @property
    def tokenizes_once(self) -> bool:
        """Whether texts are tokenized once (False: the model's preprocessing is left to its encode)."""
        return self._inputs is not None

    def prepare(self, texts: Sequence[str]) -> list[ModelInput]:
        """The model inputs of texts (tokenized, cut to the limit), as the batcher takes them."""
        return self._prepare(texts)[0]

    def _stage_clock(self, background: bool) -> StageClock:
        return self.background_stages if background else self.stages

    def _prepare(self, texts: Sequence[str], background: bool = False) -> tuple[list[ModelInput], list[int]]:
        """Model inputs and each text's whole token count (special tokens included)."""
        began = now()
        if self._inputs is not None:
            prepared = self._inputs.prepare(texts)
        else:
            with self._tokenizer_lock:
                ids = self._tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
            counts = [len(row) for row in ids]
            limit = self.info.max_sequence_length
            inputs = [TextInput(text, min(count, limit)) for text, count in zip(texts, counts, strict=True)]
            prepared = inputs, counts
        self._stage_clock(background).record("tokenize", began, len(texts))
        return prepared

    def _vectors(
        self,
        model_inputs: list[ModelInput],
        normalize: bool,
        is_cancelled: CancelCheck | None = None,
        background: bool = False,
    ) -> np.ndarray:
        began = now()
        if self._batcher is not None:
            lengths = [len(item) for item in model_inputs]
            vectors = self._batcher.run(model_inputs, lengths, is_cancelled, background)
        else:
            with self._model_lock:
                # The wait for the lock is where a caller may give up.
                if is_cancelled is not None and is_cancelled():
                    raise Cancelled("the call ended before its texts reached the model")
                vectors = self._run_model(model_inputs, background)
        stages = self._stage_clock(background)
        began = stages.record("queue", began, len(model_inputs))
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        stages.record("normalize", began, len(model_inputs))
        return vectors

    def _run_model(self, model_inputs: list[ModelInput], background: bool = False) -> np.ndarray:
        """Raw pooled vectors; called by the batcher's workers (concurrently only on the torch path with
        texts tokenized here) or under the model lock."""
        began = now()
        vectors = self._model_vectors(model_inputs)
        self._stage_clock(background).record("model", began, len(model_inputs))
        return vectors

    def _run_background_model(self, model_inputs: list[ModelInput]) -> np.ndarray:
        return self._run_model(model_inputs, background=True)

    def _model_vectors(self, model_inputs: list[ModelInput]) -> np.ndarray:
        if self._backend_run is not None:
            return self._backend_run(model_inputs)
        if self._inputs is None:
            texts = [item.text for item in model_inputs]
            encoded = self._model.encode(
                texts, batch_size=self.device_plan.rows_per_model_call, convert_to_numpy=True
            )
            return np.asarray(encoded, dtype=np.float32)
        import torch

        vectors = np.empty((len(model_inputs), self.dimension), dtype=np.float32)
        lengths = np.array([len(item) for item in model_inputs])
        # Length-sorted mini-batches, cut where padding would cost more than another model call: a
        # request (or a gathered batch) of mixed lengths is not padded to its longest text.
        order = np.argsort(lengths, kind="stable")
        plan = self.device_plan
        with self._cpu_share(), torch.inference_mode():
            for batch in length_batches(lengths[order], plan.rows_per_model_call, plan.model_call_tokens):
                rows = order[batch.start : batch.stop]
                self.stages.count_batch(int(lengths[rows].sum()), len(rows) * int(lengths[rows[-1]]))
                features = self._inputs.torch_features(
                    [model_inputs[row] for row in rows], self._model.device, plan.pin_memory
                )
                pooled = self._model(features)["sentence_embedding"]
                vectors[rows] = pooled.float().cpu().numpy()
        return vectors

    @contextlib.contextmanager
    def _cpu_share(self) -> Iterator[None]:
        """Gives a CPU model call an even share of torch's threads among the calls running with it.

        Two batches on two threads each made four threads wait for each other on two cores; one
        thread each ran them 8% faster, while a batch running alone keeps every thread."""
        if self.info.device != "cpu":
            yield
            return
        import torch

        with self._torch_threads.share() as threads:
            torch.set_num_threads(threads)  # this thread's own setting
            yield

    def similarity_matrix(
        self, left: Sequence[str], right: Sequence[str], is_cancelled: CancelCheck | None = None
    ) -> np.ndarray:
        """Cosine similarity of every left text with every right text."""
        vectors = self.encode([*left, *right], normalize=True, is_cancelled=is_cancelled)
        return vectors[: len(left)] @ vectors[len(left) :].T
