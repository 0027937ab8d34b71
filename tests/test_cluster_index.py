"""`vecserve cluster index` on a local Ray: the same documents and vectors as `vecserve add` of the same
files (JSON Lines, CSV, text, Parquet), each on the shard of its id; re-running upserts; bad records
reported by file and line within --max-errors; --to streams into a running server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as parquet
import pytest
import ray

from clients import VecserveClient
from clients.cli import main
from clients.client import python_value
from service.cluster.manifest import load_manifest
from service.cluster.routing import shard_name, shard_of
from service.common.document_files import ReadOptions, read_documents
from service.errors import NotFound
from service.index.model import Document
from service.index.store import IndexStore

# Ray warns about its own use of deprecated pydantic and Ray Data options.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")]
RNG = np.random.default_rng(5)
GIVEN_VECTOR = RNG.standard_normal(384).round(4).tolist()


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local Ray for the module; `cluster index` run in this process connects to it."""
    ray.init(num_cpus=3, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("inputs")
    jsonl = folder / "articles.jsonl"
    records = [
        {"id": f"a{number}", "text": f"article number {number} about {topic}", "metadata": {"n": number}}
        for number, topic in enumerate(["rivers", "trains", "temples", "mountains", "sushi", "skiing"] * 5)
    ]
    records += [{"id": "with-vector", "text": "carries its own vector", "vector": GIVEN_VECTOR}]
    records += [{"id": "a3", "text": "a later version of article 3 wins"}]
    jsonl.write_text("".join(json.dumps(record) + "\n" for record in records))
    csv = folder / "places.csv"
    csv.write_text(
        "id,text,region,year\nparis,Paris has the Louvre,europe,2019\nkyoto,Kyoto has temples,asia,\n"
    )
    text = folder / "lines.txt"
    text.write_text("a line without an id\n\nanother line, id from its content\n")
    table = pa.table({"id": ["p1", "p2"], "text": ["from parquet one", "from parquet two"]})
    parquet.write_table(table, folder / "rows.parquet")
    return [jsonl, csv, text, folder / "rows.parquet"]


def cluster_index(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["cluster", "index", "--no-progress", "--cpus-per-actor", "1", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def stored_documents(out: Path, index: str, ids: list[str]) -> dict[str, Document]:
    """The documents of `ids` as the shards hold them, checking each is on the shard of its id only."""
    shard_count = load_manifest(out).shard_count  # type: ignore[union-attr]
    stores = [IndexStore(out / shard_name(shard)) for shard in range(shard_count)]
    try:
        found: dict[str, Document] = {}
        for document_id in ids:
            for shard, store in enumerate(stores):
                try:
                    document = store.get_document(index, document_id)
                except NotFound:
                    continue
                assert shard == shard_of(document_id, shard_count), document_id
                found[document_id] = document
        return found
    finally:
        for store in stores:
            store.close()


def expected_ids(inputs: list[Path]) -> list[str]:
    return list(dict.fromkeys(d.id for path in inputs for d in read_documents(path, ReadOptions())))


def test_cluster_index_stores_what_vecserve_add_stores(
    capsys: pytest.CaptureFixture[str], address: str, inputs: list[Path], tmp_path: Path
) -> None:
    name = f"articles-{uuid.uuid4().hex[:6]}"
    assert main(["--address", address, "index", "create", name]) == 0
    assert main(["--address", address, "add", name, *map(str, inputs), "--no-progress"]) == 0
    out = tmp_path / "sharded"
    code, printed, errors = cluster_index(
        capsys, *map(str, inputs), "--out", str(out), "--index", name, "--shards", "3", "--actors", "2"
    )
    assert code == 0, errors
    ids = expected_ids(inputs)
    assert f"stored {len(ids) + 1} documents" in printed  # a3 twice: stored twice, kept once
    manifest = load_manifest(out)
    assert manifest is not None
    assert (manifest.shard_count, manifest.hash, manifest.dimension) == (3, "crc32", 384)
    assert manifest.indexes[name]["kind"] == "flat" and manifest.indexes[name]["metric"] == "cosine"
    held = stored_documents(out, name, ids)
    assert sorted(held) == sorted(ids)
    with VecserveClient(address) as client:
        for document_id in ids:
            served = client.get_document(name, document_id)
            document = held[document_id]
            assert document.text == served.text
            assert document.metadata == {key: python_value(value) for key, value in served.metadata.items()}
            np.testing.assert_allclose(document.vector, np.array(served.vector), atol=1e-5)
    assert held["a3"].text == "a later version of article 3 wins"
    given = np.array(GIVEN_VECTOR, dtype=np.float32)
    np.testing.assert_allclose(held["with-vector"].vector, given / np.linalg.norm(given), atol=1e-6)

    # Re-running, with one more file, upserts: nothing is duplicated.
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "extra", "text": "one more document"}) + "\n")
    code, _, errors = cluster_index(capsys, str(inputs[0]), str(more), "--out", str(out), "--index", name)
    assert code == 0, errors
    counts = []
    for shard in range(3):
        store = IndexStore(out / shard_name(shard))
        counts.append(store.get_index(name).document_count)
        store.close()
    assert sum(counts) == len(ids) + 1
    # The shard count of an existing directory cannot change.
    code, _, errors = cluster_index(capsys, str(more), "--out", str(out), "--index", name, "--shards", "2")
    assert code == 2 and "holds 3 shards, not 2" in errors


def test_bad_records_are_reported_by_file_and_line_within_max_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "mixed.jsonl"
    source.write_text(
        '{"id": "good-1", "text": "fine"}\n'
        "not json\n"
        '{"id": "short", "vector": [1, 2, 3]}\n'
        '{"id": "good-2", "text": "also fine", "colour": "red"}\n'
        '{"id": "good-3", "text": "fine too"}\n'
    )
    out = tmp_path / "out"
    args = [str(source), "--out", str(out), "--index", "mixed", "--shards", "2"]
    code, printed, errors = cluster_index(capsys, *args, "--max-errors", "3")
    assert code == 1, errors
    assert f"{source}:2: not valid JSON" in errors
    assert f"{source}:3: vector has 3 values but the index has dimension 384" in errors
    assert f"{source}:4: unknown keys ['colour']" in errors
    assert "stored 2 documents" in printed and "3 bad records skipped" in printed
    assert sorted(stored_documents(out, "mixed", ["good-1", "good-2", "good-3", "short"])) == [
        "good-1",
        "good-3",
    ]
    code, printed, errors = cluster_index(capsys, *args, "--max-errors", "1", "--json")
    assert code == 2
    summary = json.loads(printed)
    assert summary["bad_records"] == 2 and "more than 1 bad records" in summary["stopped"]


def test_to_streams_the_vectors_into_a_running_server(
    capsys: pytest.CaptureFixture[str], address: str, inputs: list[Path]
) -> None:
    name = f"streamed-{uuid.uuid4().hex[:6]}"
    code, _, errors = cluster_index(
        capsys, *map(str, inputs), "--to", address, "--index", name, "--metric", "l2"
    )
    assert code == 0, errors
    ids = expected_ids(inputs)
    with VecserveClient(address) as client:
        index = client.get_index(name)
        assert index.document_count == len(ids) and index.metric == 3  # METRIC_L2
        reference = client.embed_array(["article number 0 about rivers"], normalize=False)[0]
        np.testing.assert_allclose(np.array(client.get_document(name, "a0").vector), reference, atol=1e-5)
