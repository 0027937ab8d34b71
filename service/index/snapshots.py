"""Snapshots of the FAISS structure: durable files, a manifest naming one with its CRC-32s, checked reads."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

from service.common.durable import write_durably
from service.index.model import FORMAT_VERSION

log = logging.getLogger(__name__)

MANIFEST_FILE = "snapshot.json"
# Snapshots carry one CRC-32 per chunk of this size, so start-up verifies them in parallel.
CHECKSUM_CHUNK = 64 * 1024 * 1024


def serialize(structure: faiss.Index) -> np.ndarray:
    """The structure's bytes, to be written by write_snapshot (callers keep it from changing meanwhile)."""
    return faiss.serialize_index(structure)


def write_snapshot(directory: Path, data: np.ndarray, index_name: str) -> None:
    """Writes a new snapshot file durably, then the manifest naming it; older snapshots are removed.

    Until the manifest is replaced, the previous snapshot stays the one named, so a crash at any point
    leaves a complete snapshot or none.
    """
    manifest_path = directory / MANIFEST_FILE
    generation = 1
    if manifest_path.exists():
        with contextlib.suppress(OSError, ValueError, KeyError):
            generation = int(json.loads(manifest_path.read_text())["generation"]) + 1
    file_name = f"snapshot-{generation:08d}.faiss"
    view = memoryview(data)
    write_durably(directory / file_name, view)
    manifest = {
        "format": FORMAT_VERSION,
        "generation": generation,
        "file": file_name,
        "bytes": len(data),
        "crc32_chunk_bytes": CHECKSUM_CHUNK,
        "crc32_chunks": [
            zlib.crc32(view[i : i + CHECKSUM_CHUNK]) for i in range(0, len(data), CHECKSUM_CHUNK)
        ],
    }
    write_durably(manifest_path, json.dumps(manifest).encode())
    for old in directory.glob("snapshot-*.faiss*"):
        if old.name != file_name:
            old.unlink(missing_ok=True)
    log.info("index %s: snapshot %s written (%d bytes)", index_name, file_name, len(data))


def read_snapshot(
    directory: Path, matches: Callable[[faiss.Index], bool], index_name: str
) -> faiss.Index | None:
    """The snapshot named by the manifest, if complete, intact and `matches` it; None otherwise."""
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        snapshot_path = directory / manifest["file"]
        if snapshot_path.stat().st_size != manifest["bytes"]:
            raise ValueError("its size does not match the manifest")
        # Verified before FAISS reads a byte of it.
        if _file_checksums(snapshot_path) != manifest["crc32_chunks"]:
            raise ValueError("its CRC-32 does not match the manifest")
        structure = faiss.read_index(str(snapshot_path))
        if not matches(structure):
            raise ValueError("the structure does not match the index settings")
        return structure
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        log.warning("index %s: snapshot unusable (%s); rebuilding from the record", index_name, error)
        return None


def _file_checksums(path: Path) -> list[int]:
    """CRC-32 of each CHECKSUM_CHUNK of a file, computed on all cores (zlib releases the GIL)."""

    def checksum(offset: int) -> int:
        with open(path, "rb", buffering=0) as handle:
            handle.seek(offset)
            return zlib.crc32(handle.read(CHECKSUM_CHUNK))

    offsets = range(0, path.stat().st_size, CHECKSUM_CHUNK)
    with ThreadPoolExecutor(max_workers=min(len(offsets), os.cpu_count() or 1) or 1) as pool:
        return list(pool.map(checksum, offsets))
