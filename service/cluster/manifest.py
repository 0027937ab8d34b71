"""The manifest of a sharded data directory: how many shards, by which hash, which model, which indexes.

Layout::

    <dir>/cluster.json     this manifest
    <dir>/shard-<k>/       an ordinary vecserve data directory (`vecserve serve --data-dir` serves it)

The shard count is fixed once documents are routed by it: a directory with a manifest is only ever
opened with its own count (resharding is a new directory, see docs/scale-out.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.cluster.routing import HASH_NAME, shard_name
from service.common.durable import durable_replacement
from service.errors import InvalidSettings
from service.index.model import IndexSpec

log = logging.getLogger(__name__)

MANIFEST_FILE = "cluster.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClusterManifest:
    shard_count: int
    # The model whose vectors the shards hold (its name as given, and its dimension); "" and 0 until
    # the first documents or the first start of `cluster serve` record it.
    model_name: str = ""
    dimension: int = 0
    # Index name -> its settings (IndexSpec.to_json), as created on every shard.
    indexes: dict[str, Any] = field(default_factory=dict)
    hash: str = HASH_NAME

    def shard_directory(self, directory: Path, shard: int) -> Path:
        return directory / shard_name(shard)

    def with_index(self, spec: IndexSpec) -> ClusterManifest:
        return dataclasses.replace(self, indexes={**self.indexes, spec.name: json.loads(spec.to_json())})

    def with_model(self, model_name: str, dimension: int) -> ClusterManifest:
        """The manifest recording the model, when it records none yet. Refuses a model of another
        dimension than the one recorded; one of another name with the same dimension is only warned
        about (a path to the same model differs between machines)."""
        if not self.dimension:
            return dataclasses.replace(self, model_name=model_name, dimension=dimension)
        if dimension != self.dimension:
            raise InvalidSettings(
                f"the shards hold vectors of dimension {self.dimension} from {self.model_name}; the model "
                f"{model_name} produces {dimension}"
            )
        if Path(model_name).name != Path(self.model_name).name:
            log.warning(
                "the shards were indexed with the model %s; now using %s", self.model_name, model_name
            )
        return self

    def save(self, directory: Path) -> None:
        """Written whole or not at all (temporary file, fsync, rename)."""
        directory.mkdir(parents=True, exist_ok=True)
        fields = {"format": FORMAT_VERSION, **dataclasses.asdict(self)}
        with durable_replacement(directory / MANIFEST_FILE) as handle:
            handle.write(json.dumps(fields, indent=2, sort_keys=True).encode())


def load_manifest(directory: Path) -> ClusterManifest | None:
    """The directory's manifest, None when it has none; InvalidSettings when it is unreadable."""
    path = directory / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        fields = json.loads(path.read_text())
        version = fields.pop("format", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"format {version} is not {FORMAT_VERSION}")
        manifest = ClusterManifest(**fields)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise InvalidSettings(f"{path} is not a readable cluster manifest: {error}") from error
    if manifest.hash != HASH_NAME:
        raise InvalidSettings(f"{path} routes by {manifest.hash!r}; this version routes by {HASH_NAME!r}")
    return manifest


def open_manifest(directory: Path, shard_count: int | None) -> ClusterManifest:
    """The directory's manifest, created (and saved) with `shard_count` shards when it has none;
    refuses another shard count than the directory's."""
    manifest = load_manifest(directory)
    if manifest is None:
        if shard_count is None:
            raise InvalidSettings(
                f"{directory} is not a sharded data directory yet: give the number of shards"
            )
        if shard_count < 1:
            raise InvalidSettings(f"the number of shards must be at least 1, got {shard_count}")
        manifest = ClusterManifest(shard_count=shard_count)
        manifest.save(directory)
        return manifest
    if shard_count is not None and shard_count != manifest.shard_count:
        raise InvalidSettings(
            f"{directory} holds {manifest.shard_count} shards, not {shard_count}: documents are placed by "
            "crc32(id) % shards, so the count cannot change in place (see 'Resharding' in docs/scale-out.md)"
        )
    return manifest
