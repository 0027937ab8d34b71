"""Word-vector files (word2vec text and binary, fastText, GloVe): checked whole, then read with gensim.

gensim's `KeyedVectors` readers load these files but let many faults through or report them without a
place: a duplicate word is only logged, a line of the wrong length fails inside numpy, a value that is
not a number names no line. So every file is first checked entry by entry, and a fault is a
WordVectorFileError naming the file and the line (the entry and byte offset in a binary file). Only a
file that passes is read with gensim, so what is imported is exactly what gensim reads.

Plain Python, numpy and gensim: no transport code.
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.index.model import MAX_ID_CHARACTERS

FORMATS = ("word2vec", "word2vec-binary", "fasttext", "glove")
FORMAT_HELP = """\
formats:
  word2vec         text: a 'COUNT DIMENSION' header line, then 'WORD V1 ... VN' per line
                   (the original C tool's -binary 0, and gensim's save_word2vec_format)
  word2vec-binary  the same header, then per word its bytes, a space and N little-endian float32
  fasttext         fastText's .vec (the word2vec text layout) or its .bin model (whole-word vectors
                   only: the service looks words up, it does not build vectors from subwords)
  glove            GloVe's text: 'WORD V1 ... VN' per line, no header
"""
# A fastText .bin model starts with this int32 (fastText's FASTTEXT_FILEFORMAT_MAGIC_INT32).
FASTTEXT_MAGIC = 793712314
# A binary entry's word is read up to its space; longer than this, the file is not what it claims.
MAX_WORD_BYTES = 4 * MAX_ID_CHARACTERS
FLOAT32_BYTES = 4
# No word holds these; in a binary file they mean the reader lost its place (a wrong dimension).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class WordVectorFileError(ValueError):
    """A word-vector file that cannot be imported as it is; the message names the file and the line."""


@dataclass(frozen=True)
class WordVectors:
    words: list[str]  # in the file's order
    vectors: np.ndarray  # (len(words), dimension) float32, as gensim reads them

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])


def read_word_vectors(path: Path, file_format: str, limit: int | None = None) -> WordVectors:
    """The first `limit` (all when None) words of a file and their vectors, checked, then read with
    gensim; raises WordVectorFileError naming the line of the first fault, OSError when unreadable."""
    if file_format not in FORMATS:
        raise ValueError(f"format {file_format!r} is not one of {', '.join(FORMATS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    path = Path(path)
    if file_format == "fasttext" and _is_fasttext_model(path):
        return _read_fasttext_model(path, limit)
    binary = file_format == "word2vec-binary"
    if binary:
        words = _check_binary(path, limit)
    else:
        words = _check_text(path, header=file_format != "glove", limit=limit)
    from gensim.models import KeyedVectors

    loaded = KeyedVectors.load_word2vec_format(
        str(path), binary=binary, no_header=file_format == "glove", limit=limit
    )
    if list(loaded.index_to_key) != words:  # the checks and gensim read the file alike
        raise WordVectorFileError(f"{path}: gensim read {len(loaded)} words where {len(words)} were checked")
    return WordVectors(words, np.ascontiguousarray(loaded.vectors, dtype=np.float32))


# Text formats


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its end) of a UTF-8 file."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                yield number, raw.decode("utf-8").rstrip()
            except UnicodeDecodeError as error:
                raise WordVectorFileError(f"{path}:{number}: not UTF-8 text ({error.reason})") from None


def _header(path: Path, number: int, line: str) -> tuple[int, int]:
    fields = line.split()
    if len(fields) != 2 or not all(field.isdigit() for field in fields):
        raise WordVectorFileError(
            f"{path}:{number}: expected the header 'COUNT DIMENSION' (two whole numbers), got {line[:80]!r}; "
            "a file without a header is --format glove"
        )
    count, dimension = int(fields[0]), int(fields[1])
    if count < 1 or dimension < 1:
        raise WordVectorFileError(
            f"{path}:{number}: the header announces {count} words of dimension {dimension}"
        )
    return count, dimension


def _check_text(path: Path, header: bool, limit: int | None) -> list[str]:
    """The words of a text file whose every line, up to the count to read, holds a new word and
    `dimension` finite float32 numbers."""
    lines = _lines(path)
    count, dimension, last_line = None, None, 0
    if header:
        first = next(lines, None)
        if first is None:
            raise WordVectorFileError(
                f"{path} is empty: expected a 'COUNT DIMENSION' header line, then the vectors"
            )
        count, dimension = _header(path, *first)
        last_line = 1
    wanted = min(count or math.inf, limit or math.inf)
    seen: dict[str, str] = {}
    for number, line in lines:
        if len(seen) >= wanted:
            if count is not None and wanted == count and line:
                raise WordVectorFileError(
                    f"{path}:{number}: a line after the {count} words the header announces: is it right?"
                )
            break
        last_line = number
        where = f"{path}:{number}"
        if not line:
            raise WordVectorFileError(f"{where}: blank line where a word and its vector were expected")
        # Split on single spaces after stripping the end, as gensim does.
        word, *values = line.split(" ")
        if not word:
            raise WordVectorFileError(f"{where}: the line starts with a space: no word before the values")
        dimension = dimension or len(values)
        if len(values) != dimension:
            raise WordVectorFileError(
                f"{where}: word {word!r} has {len(values)} values, expected {dimension} "
                f"(the {'header' if header else 'first line'}'s dimension)"
            )
        _check_numbers(where, word, values)
        _check_word(where, f"line {number}", word, seen)
    if not seen and count is None:
        raise WordVectorFileError(f"{path} is empty: no word vectors in it")
    if count is not None and len(seen) < wanted:
        raise WordVectorFileError(
            f"{path}:{last_line}: the file ends here, with {len(seen)} of the {count} words its header "
            "announces: truncated?"
        )
    return list(seen)


def _check_numbers(where: str, word: str, values: list[str]) -> None:
    try:
        parsed = np.array(values, dtype=np.float64)
    except ValueError:
        position, value = next((i, v) for i, v in enumerate(values) if not _is_number(v))
        raise WordVectorFileError(
            f"{where}: value {position + 1} of word {word!r} is {value[:40]!r}, not a number"
        ) from None
    with np.errstate(over="ignore"):
        finite = np.isfinite(parsed.astype(np.float32))
    if not finite.all():
        position = int(np.flatnonzero(~finite)[0])
        raise WordVectorFileError(
            f"{where}: value {position + 1} of word {word!r} is {values[position]!r}: not a finite float32"
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_word(where: str, place: str, word: str, seen: dict[str, str]) -> None:
    """Records a new word at `place` (line 3, entry 3); a repeat, or a word too long to be a document
    id, is an error starting with `where`."""
    if word in seen:
        raise WordVectorFileError(
            f"{where}: word {word!r} appears again (first at {seen[word]}): each word once"
        )
    if _CONTROL.search(word):
        raise WordVectorFileError(
            f"{where}: word {word[:40]!r} holds a control character: in a binary file, is the header's "
            "dimension the vectors'?"
        )
    if len(word) > MAX_ID_CHARACTERS:
        raise WordVectorFileError(
            f"{where}: word {word[:40]!r}... has {len(word)} characters, more than a document id's "
            f"{MAX_ID_CHARACTERS}"
        )
    seen[word] = place


# Binary word2vec


class _Cursor:
    """Reads a binary file forward in large chunks, with the byte offset of what it returns."""

    CHUNK_BYTES = 1 << 20

    def __init__(self, file: io.BufferedIOBase, offset: int) -> None:
        self._file = file
        self._buffer = b""
        self._position = 0
        self._start = offset  # file offset of _buffer[0]

    @property
    def offset(self) -> int:
        return self._start + self._position

    def _fill(self, needed: int) -> None:
        while len(self._buffer) - self._position < needed:
            chunk = self._file.read(self.CHUNK_BYTES)
            if not chunk:
                return
            self._start += self._position
            self._buffer = self._buffer[self._position :] + chunk
            self._position = 0

    def read(self, size: int) -> bytes:
        self._fill(size)
        data = self._buffer[self._position : self._position + size]
        self._position += len(data)
        return data

    def read_until_space(self, limit: int) -> tuple[bytes, bool]:
        """The bytes before the next space (consumed with it), and whether a space was found within limit."""
        while True:
            found = self._buffer.find(b" ", self._position, self._position + limit + 1)
            if found >= 0:
                data = self._buffer[self._position : found]
                self._position = found + 1
                return data, True
            available = len(self._buffer) - self._position
            if available > limit:
                return self._buffer[self._position : self._position + limit], False
            before = len(self._buffer) - self._position
            self._fill(before + 1)
            if len(self._buffer) - self._position == before:  # the end of the file
                data = self._buffer[self._position :]
                self._position = len(self._buffer)
                return data, False


def _check_binary(path: Path, limit: int | None) -> list[str]:
    """The words of a binary word2vec file: a text header, then per word its UTF-8 bytes, a space and
    `dimension` float32 (a newline before a word, as the C tool writes, is skipped as gensim does)."""
    with open(path, "rb") as file:
        first = file.readline()
        if not first:
            raise WordVectorFileError(
                f"{path} is empty: expected a 'COUNT DIMENSION' header line, then the vectors"
            )
        try:
            header_line = first.decode("utf-8").rstrip()
        except UnicodeDecodeError:
            header_line = repr(first[:80])
        count, dimension = _header(path, 1, header_line)
        wanted = min(count, limit or count)
        vector_bytes = dimension * FLOAT32_BYTES
        cursor = _Cursor(file, len(first))
        seen: dict[str, str] = {}
        for entry in range(1, wanted + 1):
            place = f"entry {entry} of {count} (byte {cursor.offset})"
            where = f"{path}: {place}"
            raw, ended = cursor.read_until_space(MAX_WORD_BYTES)
            raw = raw.lstrip(b"\n")
            if not ended:
                if len(raw) >= MAX_WORD_BYTES:
                    raise WordVectorFileError(
                        f"{where}: no space ends the word within {MAX_WORD_BYTES} bytes: is this really the "
                        "binary format, with vectors of the header's dimension?"
                    )
                raise WordVectorFileError(
                    f"{where}: the file ends {'inside a word' if raw else 'before this word'}: truncated?"
                )
            if not raw:
                raise WordVectorFileError(f"{where}: an empty word")
            try:
                word = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise WordVectorFileError(
                    f"{where}: the word {raw[:40]!r} is not UTF-8: is the header's dimension the vectors' (a "
                    "wrong one makes the reader start words inside vectors)?"
                ) from None
            vector = cursor.read(vector_bytes)
            if len(vector) < vector_bytes:
                raise WordVectorFileError(
                    f"{where}: the file ends inside the vector of {word!r} ({len(vector)} of {vector_bytes} "
                    "bytes): truncated, or is the header's dimension not the vectors'?"
                )
            values = np.frombuffer(vector, dtype="<f4")
            if not np.isfinite(values).all():
                position = int(np.flatnonzero(~np.isfinite(values))[0])
                raise WordVectorFileError(
                    f"{where}: value {position + 1} of word {word!r} is {values[position]}"
                )
            _check_word(where, f"entry {entry}", word, seen)
        if wanted == count:
            offset = cursor.offset
            if cursor.read(2).strip(b"\n"):
                raise WordVectorFileError(
                    f"{path}: byte {offset}: data after the {count} words the header announces: is its count "
                    "right, and its dimension the vectors'?"
                )
    return list(seen)


# fastText models


def _is_fasttext_model(path: Path) -> bool:
    with open(path, "rb") as file:
        start = file.read(4)
    return len(start) == 4 and struct.unpack("<i", start)[0] == FASTTEXT_MAGIC


def _read_fasttext_model(path: Path, limit: int | None) -> WordVectors:
    """The whole-word vectors of a fastText .bin model, as gensim's load_facebook_vectors gives them."""
    from gensim.models.fasttext import load_facebook_vectors

    try:
        loaded = load_facebook_vectors(str(path))
    except (EOFError, ValueError, struct.error, NotImplementedError, AssertionError) as error:
        raise WordVectorFileError(
            f"{path}: not a readable fastText model: {error or type(error).__name__}"
        ) from None
    words = list(loaded.index_to_key)[:limit]
    vectors = np.ascontiguousarray(loaded.vectors[: len(words)], dtype=np.float32)
    seen: dict[str, str] = {}
    for position, word in enumerate(words, start=1):
        _check_word(f"{path}: word {position}", f"word {position}", word, seen)
    if not words:
        raise WordVectorFileError(f"{path}: the fastText model holds no words")
    if not np.isfinite(vectors).all():
        position = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise WordVectorFileError(
            f"{path}: word {position + 1} ({words[position]!r}) has values that are not finite"
        )
    return WordVectors(words, vectors)
