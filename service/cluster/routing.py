"""Which shard holds a document, and how the shards' hits become one answer."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from service.index.model import Hit, Metric

# Recorded in the manifest: the one hash every process and machine agrees on (Python's hash() is
# salted per process, so it would send the same id to different shards).
HASH_NAME = "crc32"


def shard_of(document_id: str, shard_count: int) -> int:
    """The shard of a document: crc32 of its UTF-8 id, modulo the shard count."""
    return zlib.crc32(document_id.encode("utf-8")) % shard_count


def shard_name(shard: int) -> str:
    """The name of a shard in messages, deployments and directories: shard-0, shard-1, ..."""
    return f"shard-{shard}"


def merge_hits(per_shard: Sequence[Sequence[Hit]], k: int, metric: Metric) -> list[Hit]:
    """The best k of the shards' hits for one query, best first, ties by id.

    Every shard returns its own best k, so the global best k are among them: for exact kinds the
    merge equals one flat index over all the documents. L2 scores are distances (lower is better).
    """
    hits = [hit for shard_hits in per_shard for hit in shard_hits]
    if metric is Metric.L2:
        hits.sort(key=lambda hit: (hit.score, hit.id))
    else:
        hits.sort(key=lambda hit: (-hit.score, hit.id))
    return hits[:k]
