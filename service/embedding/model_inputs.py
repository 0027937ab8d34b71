"""Texts to model inputs, tokenized once: token counts for limits and batching, padded arrays for the model.

sentence-transformers' `encode` tokenizes its texts itself, so a service that also needs each text's
token count (truncation reports, the batcher's token budget) would tokenize every text twice.
InputPreparer tokenizes once with its own copy of the model's Rust tokenizer (no truncation, so the
count is the whole input's), truncates the token sequence as the model's preprocessing would, and later
pads a batch of sequences into the arrays the model takes. `check_matches` proves on load that these
arrays equal the model's own preprocessing; a model whose preprocessing differs goes through `encode`
as TextInput instead (and pays the second tokenization).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import InvalidSettings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Encoding

# The token arrays a transformer may take, in the order backends list their inputs.
FEATURE_NAMES = ("input_ids", "attention_mask", "token_type_ids")

# Texts whose preparation must match the model's own: spacing, case, accents, scripts, emoji,
# an empty text, and texts past the sequence limit (which must be cut the same way).
PROBE_TEXTS = (
    "hello world",
    "  Leading and trailing spaces  ",
    "Crème brûlée à la française, s'il vous plaît!",
    "東京は日本の首都です。 Москва — столица России. 😂🎉",
    "",
    "item " * 600,
    "The history of the region is long and complicated. " * 60,
)


# What another model call costs, in padded tokens: its fixed cost and the lower efficiency of smaller
# matrix products. Measured with all-MiniLM-L6-v2 on 2 CPU cores: splitting a request of 64 texts of 7-15
# words at this cost ran 13% faster than one batch of 64, while splitting gathered batches of 16
# one-text calls at 32 tokens made them 15% slower than not splitting them.
MODEL_CALL_TOKENS = 128


def length_batches(
    sorted_lengths: Sequence[int], max_rows: int, call_tokens: int = MODEL_CALL_TOKENS
) -> list[range]:
    """Splits length-sorted sequences into consecutive batches of at most `max_rows` with the least
    padded tokens plus `call_tokens` per batch: mixed lengths are cut where padding would cost more
    than another model call.

    Exact by dynamic programming over the cut points: cheapest[j] is the least cost of the first j
    sequences, whose last batch ends at j and is as wide as sorted_lengths[j - 1]."""
    count = len(sorted_lengths)
    lengths = np.asarray(sorted_lengths, dtype=np.int64)
    cheapest = np.zeros(count + 1, dtype=np.int64)
    batch_start = np.zeros(count + 1, dtype=np.int64)
    for end in range(1, count + 1):
        first = max(0, end - max_rows)
        starts = np.arange(first, end)
        costs = cheapest[first:end] + call_tokens + (end - starts) * lengths[end - 1]
        best = int(np.argmin(costs))  # the first minimum: the larger batch on a tie
        cheapest[end] = costs[best]
        batch_start[end] = first + best
    batches = []
    end = count
    while end > 0:
        start = int(batch_start[end])
        batches.append(range(start, end))
        end = start
    return batches[::-1]


@dataclass(frozen=True)
class TextInput:
    """A text left to the model's own `encode` to prepare: the route for models whose preprocessing
    InputPreparer does not reproduce (a default prompt, a tokenizer without a fast version)."""

    text: str
    # Tokens the model sees (capped at its limit), for the batcher's budget and length sorting.
    length: int

    def __len__(self) -> int:
        return self.length


def _raw_tokenizer(model: SentenceTransformer) -> Any:
    backend = getattr(model.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InvalidSettings(
            f"the model's tokenizer ({type(model.tokenizer).__name__}) has no fast (Rust) tokenizer; "
            "vecserve serves models with a Hugging Face fast tokenizer"
        )
    from tokenizers import Tokenizer

    # A private copy: the model's own tokenizer changes its truncation and padding on every call,
    # which would fail concurrent calls. This one is set once and only read afterwards, so request
    # threads may use it at the same time without a lock.
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class InputPreparer:
    """Tokenizes texts once and pads token sequences into model inputs, as the model's preprocessing does."""

    def __init__(self, model: SentenceTransformer) -> None:
        self._tokenizer = _raw_tokenizer(model)
        self.max_length = int(model.max_seq_length)
        self._special_tokens = self._tokenizer.num_special_tokens_to_add(False)
        self._truncation_side = getattr(model.tokenizer, "truncation_side", "right")
        padding = model.tokenizer.backend_tokenizer.padding or {}
        pad_id = model.tokenizer.pad_token_id
        self._pad_id = int(padding.get("pad_id", pad_id if pad_id is not None else 0))
        self._pad_type_id = int(padding.get("pad_type_id", 0))
        self.feature_names: tuple[str, ...] = ()
        # Non-array entries of the model's features (such as the modality), passed on unchanged.
        self._extra_features: dict[str, Any] = {}

    def prepare(self, texts: Sequence[str]) -> tuple[list[Encoding], list[int]]:
        """Token sequences ready for the model (cut to its limit) and each text's whole token count."""
        if len(texts) == 1:
            encodings = [self._tokenizer.encode(texts[0], add_special_tokens=False)]
        else:
            encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        counts = []
        prepared = []
        for encoding in encodings:
            count = len(encoding.ids) + self._special_tokens
            counts.append(count)
            if count > self.max_length:
                encoding.truncate(self.max_length - self._special_tokens, direction=self._truncation_side)
            prepared.append(self._tokenizer.post_process(encoding))
        return prepared, counts

    def arrays(self, encodings: Sequence[Encoding]) -> dict[str, np.ndarray]:
        """The padded int64 arrays of a batch, as wide as its longest sequence."""
        width = max(len(encoding.ids) for encoding in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.full((len(encodings), width), self._pad_type_id, dtype=np.int64)
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            ids[row, :length] = encoding.ids
            mask[row, :length] = 1
            types[row, :length] = encoding.type_ids
        every = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: every[name] for name in self.feature_names}

    def torch_features(
        self, encodings: Sequence[Encoding], device: Any, pin_memory: bool = False
    ) -> dict[str, Any]:
        """The batch as the model's forward takes it: tensors on `device` plus the model's extra entries.

        With `pin_memory` (CUDA) the arrays are staged in page-locked memory and copied without
        blocking; the forward, queued on the same stream, runs after the copy."""
        import torch

        features: dict[str, Any] = {}
        for name, array in self.arrays(encodings).items():
            tensor = torch.from_numpy(array)
            features[name] = (
                tensor.pin_memory().to(device, non_blocking=True) if pin_memory else tensor.to(device)
            )
        features.update(self._extra_features)
        return features

    def check_matches(self, model: SentenceTransformer) -> None:
        """Learns which arrays the model takes and proves they equal its own preprocessing on PROBE_TEXTS.

        Raises InvalidSettings for a model that prepares text differently (for example a default
        prompt, or a tokenizer setting the copy does not reproduce)."""
        import torch

        expected = model.preprocess(list(PROBE_TEXTS))
        self.feature_names = tuple(name for name in FEATURE_NAMES if name in expected)
        self._extra_features = {k: v for k, v in expected.items() if not isinstance(v, torch.Tensor)}
        unknown = [k for k, v in expected.items() if isinstance(v, torch.Tensor) and k not in FEATURE_NAMES]
        if "input_ids" not in self.feature_names or unknown:
            raise InvalidSettings(
                f"the model takes inputs {sorted(expected)}; vecserve serves text models that take "
                f"{', '.join(FEATURE_NAMES)}"
            )
        if model.default_prompt_name and model.prompts.get(model.default_prompt_name):
            raise InvalidSettings(
                f"the model has a default prompt ({model.default_prompt_name!r}); vecserve applies none"
            )
        prepared, _ = self.prepare(PROBE_TEXTS)
        # Compared one by one: the model pads the probe batch to its longest text.
        for position, encoding in enumerate(prepared):
            mine = self.arrays([encoding])
            length = len(encoding.ids)
            for name in self.feature_names:
                theirs = expected[name][position].numpy()
                padding_only = (
                    "attention_mask" not in expected
                    or not expected["attention_mask"][position][length:].any()
                )
                if not (np.array_equal(mine[name][0], theirs[:length]) and padding_only):
                    raise InvalidSettings(
                        f"the model prepares {PROBE_TEXTS[position][:40]!r} differently from vecserve's "
                        f"tokenization ({name}); this model's preprocessing is not supported"
                    )
