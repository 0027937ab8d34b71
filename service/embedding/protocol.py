"""What the rest of the core needs from an encoder; service.embedding.encoder.Encoder satisfies it,
and tests put hand-built geometry behind it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # the encoder module loads torch; the protocol's users need not
    from service.embedding.encoder import TokenizedText


class TextEncoder(Protocol):
    @property
    def dimension(self) -> int: ...

    def encode(self, texts: Sequence[str], normalize: bool = True, background: bool = False) -> np.ndarray:
        """One row per text: unit length when normalize, else the model's raw output. `background`
        work (no caller waiting for it, such as the vocabulary build) yields the model to live calls."""
        ...

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[TokenizedText]:
        """The model's own tokens of each text."""
        ...
