"""The built-in English vocabulary: frequent words embedded once per model and kept on disk.

The words are the most frequent English words of the `wordfreq` package that consist of lower-case
ASCII letters only (wordfreq lower-cases its lists; numbers, punctuation, contractions and other
scripts are left out). They are embedded in the background the first time they are needed and
saved under `<data_dir>/.vocabulary/` (a leading dot cannot start an index name, so no index can
clash with it), one file per model and size, written atomically; later starts load the file.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

from service.analogy.space import WORD_TEMPLATE, Vocabulary
from service.common.durable import durable_replacement
from service.embedding.protocol import TextEncoder
from service.errors import FailedPrecondition

log = logging.getLogger(__name__)

VOCABULARY_DIRECTORY = ".vocabulary"
# Bumped whenever the word selection or the file layout changes, so old files are not reused.
FORMAT_VERSION = 1
# Words per encode call, for the progress reports; the encoder's background lane cuts them into
# small batches and runs them only when live calls leave the model idle or have had their share.
EMBED_CHUNK_WORDS = 512
# wordfreq's English list holds about 320,000 entries; about 90% of them pass the filter.
_WORDFREQ_LIST_SIZE = 1_000_000
_WORD = re.compile(r"[a-z]+")


def english_words(size: int) -> list[str]:
    """The `size` most frequent English words made of the letters a-z, most frequent first."""
    import wordfreq

    words = [word for word in wordfreq.top_n_list("en", _WORDFREQ_LIST_SIZE) if _WORD.fullmatch(word)]
    return words[:size]


def model_key(model_name: str, dimension: int, dtype: str, backend: str) -> str:
    """A file-name-safe key of one model: readable name plus a hash of what shapes its vectors."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model_name.rstrip("/\\")).name)[:48] or "model"
    shape = f"{model_name}|{dimension}|{dtype}|{backend}|{WORD_TEMPLATE}|{FORMAT_VERSION}"
    digest = hashlib.sha256(shape.encode()).hexdigest()
    return f"{readable}-{digest[:12]}"


def save_vocabulary_file(path: Path, words: list[str], vectors: np.ndarray) -> None:
    """Writes words and vectors to path atomically: temporary file, fsync, rename, fsync directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with durable_replacement(path) as file:
        np.savez(file, words=np.array(words, dtype=str), vectors=vectors.astype(np.float32))


def load_vocabulary_file(path: Path, dimension: int) -> tuple[list[str], np.ndarray] | None:
    """Words and vectors saved by save_vocabulary_file, or None when the file is absent or unusable."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            words = saved["words"].tolist()
            vectors = np.ascontiguousarray(saved["vectors"], dtype=np.float32)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        log.warning("vocabulary file %s is unreadable (%s); rebuilding it", path, error)
        return None
    if vectors.shape != (len(words), dimension) or not np.isfinite(vectors).all():
        log.warning(
            "vocabulary file %s has shape %s, not (%d, %d); rebuilding it",
            path,
            vectors.shape,
            len(words),
            dimension,
        )
        return None
    return words, vectors


class DefaultVocabulary:
    """Builds (or loads) the English vocabulary once, in a background thread; safe for many threads.

    Calling the object waits for the vocabulary, at most `timeout` seconds, and raises
    FailedPrecondition with the build's progress when it is not ready by then.
    """

    def __init__(self, encoder: TextEncoder, data_dir: Path, key: str, size: int, dimension: int) -> None:
        if size < 1:
            raise ValueError(f"vocabulary size must be at least 1, got {size}")
        self._encoder = encoder
        self._dimension = dimension
        self.size = size
        self.path = Path(data_dir) / VOCABULARY_DIRECTORY / f"{key}-{size}.npz"
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._vocabulary: Vocabulary | None = None
        self._embedded = 0
        self._total = size
        # Counts words the encoder embedded for this vocabulary (0 when it was loaded from disk).
        self.words_embedded = 0

    def start(self) -> None:
        """Starts building or loading in the background, unless that is done or under way."""
        with self._lock:
            if self._ready.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._build, name="vocabulary-build", daemon=True)
            self._thread.start()

    def __call__(self, timeout: float | None = None) -> Vocabulary:
        if self._vocabulary is None:
            self.start()
            self._ready.wait(timeout)
        vocabulary = self._vocabulary
        if vocabulary is None:
            running = self._thread is not None and self._thread.is_alive()
            if not running:
                raise FailedPrecondition(
                    "building the vocabulary failed (see the server log); retry to try again"
                )
            raise FailedPrecondition(
                f"the vocabulary is still being built ({self._embedded:,} of {self._total:,} words "
                "embedded); retry in a minute"
            )
        return vocabulary

    def _build(self) -> None:
        try:
            started = time.monotonic()
            loaded = load_vocabulary_file(self.path, self._dimension)
            if loaded is None:
                words, vectors = self._embed_words(english_words(self.size))
                save_vocabulary_file(self.path, words, vectors)
                log.info("vocabulary of %d words saved to %s", len(words), self.path)
            else:
                words, vectors = loaded
            # Kept in wordfreq's order, so analogies can prefer frequent words (see AnalogyScoring).
            self._vocabulary = Vocabulary.from_vectors(words, vectors, frequency_ordered=True)
            self._ready.set()
            log.info("vocabulary of %d words ready in %.1f s", len(words), time.monotonic() - started)
        except Exception:
            log.exception("building the vocabulary %s failed", self.path)

    def _embed_words(self, words: list[str]) -> tuple[list[str], np.ndarray]:
        self._total = len(words)
        log.info("embedding a vocabulary of %d words (once per model; saved to %s)", len(words), self.path)
        started = time.monotonic()
        chunks = []
        for start in range(0, len(words), EMBED_CHUNK_WORDS):
            chunk = words[start : start + EMBED_CHUNK_WORDS]
            texts = [WORD_TEMPLATE.format(word) for word in chunk]
            chunks.append(self._encoder.encode(texts, normalize=True, background=True))
            self._embedded = start + len(chunk)
            self.words_embedded += len(chunk)
            elapsed = time.monotonic() - started
            remaining = elapsed / self._embedded * (len(words) - self._embedded)
            log.info(
                "vocabulary: %d of %d words embedded (%.0f%%), about %.0f s left",
                self._embedded,
                len(words),
                100 * self._embedded / len(words),
                remaining,
            )
        vectors = np.concatenate(chunks) if chunks else np.zeros((0, self._dimension), np.float32)
        return words, vectors
