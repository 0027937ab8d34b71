"""ShardedStore over local IndexStores: the same answers as one index of the same data, exactly for exact
kinds (filters, deletes, re-upserts, every metric, 1 to 3 shards), within 0.02 recall for HNSW; index
management over every shard; a shard that fails makes the call fail, naming it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.cluster.routing import shard_name, shard_of
from service.cluster.sharded_store import LocalShard, ShardedStore
from service.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from service.index.filters import Condition, NumericRange
from service.index.model import Document, HnswParams, IndexKind, Metric, Query
from service.index.store import IndexStore

DIMENSION = 12
COLOURS = ("red", "green", "blue")


class HashEncoder:
    """A deterministic stand-in model: each text's vector comes from a hash of the text."""

    dimension = DIMENSION

    def encode(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        rows = [
            np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)).standard_normal(
                DIMENSION
            )
            for text in texts
        ]
        vectors = np.array(rows, dtype=np.float32).reshape(len(texts), DIMENSION)
        if normalize:
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors


class DownShard:
    """A shard whose deployment is down: every call fails as the Ray shard reports it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        raise Unavailable(f"{self.name} is unavailable")

    def close(self) -> None:
        pass


def sharded(root: Path, shard_count: int) -> ShardedStore:
    shards = [
        LocalShard(IndexStore(root / shard_name(shard)), shard_name(shard)) for shard in range(shard_count)
    ]
    return ShardedStore(shards, HashEncoder())


@pytest.fixture
def flat(tmp_path: Path) -> Iterator[IndexStore]:
    store = IndexStore(tmp_path / "flat", HashEncoder())
    yield store
    store.close()


def documents(count: int, seed: int, prefix: str = "doc") -> list[Document]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIMENSION)).astype(np.float32)
    return [
        Document(
            id=f"{prefix}-{number}",
            text=f"text {prefix} {number}",
            metadata={"colour": COLOURS[number % 3], "rank": float(number)},
            vector=vectors[number] if number % 4 else None,  # every fourth is embedded from its text
        )
        for number in range(count)
    ]


def write_same_data(stores: Sequence[IndexStore | ShardedStore], metric: Metric) -> None:
    """Upserts, re-upserts with new vectors and deletes: the same history on every store."""
    for store in stores:
        store.create_index("items", metric=metric)
        for start in range(0, 300, 100):
            store.upsert("items", documents(300, seed=1)[start : start + 100])
        store.upsert("items", documents(40, seed=2))  # doc-0 .. doc-39 replaced
        store.delete_documents("items", [f"doc-{number}" for number in range(50, 80)] + ["no-such-id"])


def queries() -> list[Query]:
    rng = np.random.default_rng(7)
    return [
        *(Query(vector=vector) for vector in rng.standard_normal((4, DIMENSION)).astype(np.float32)),
        Query(text="text doc 8"),
        Query(text="something else"),
        Query(document_id="doc-5"),
        Query(document_id="doc-123"),
    ]


def assert_same_hits(expected: list[list[Any]], actual: list[list[Any]]) -> None:
    assert [[hit.id for hit in hits] for hits in actual] == [[hit.id for hit in hits] for hits in expected]
    for expected_hits, actual_hits in zip(expected, actual, strict=True):
        np.testing.assert_allclose(
            [hit.score for hit in actual_hits], [hit.score for hit in expected_hits], rtol=1e-5, atol=1e-5
        )
        for expected_hit, actual_hit in zip(expected_hits, actual_hits, strict=True):
            assert (actual_hit.text, actual_hit.metadata) == (expected_hit.text, expected_hit.metadata)


FILTERS = {
    "none": [],
    "equals": [Condition("colour", equals="red")],
    "any_of and range": [
        Condition("colour", any_of=["green", "blue"]),
        Condition("rank", range=NumericRange(gte=100)),
    ],
    "matches nothing": [Condition("colour", equals="purple")],
}


@pytest.mark.parametrize("shard_count", [1, 2, 3])
@pytest.mark.parametrize("metric", list(Metric))
def test_sharded_search_equals_one_flat_index(
    tmp_path: Path, flat: IndexStore, shard_count: int, metric: Metric
) -> None:
    store = sharded(tmp_path / "shards", shard_count)
    try:
        write_same_data([flat, store], metric)
        assert store.get_index("items").document_count == flat.get_index("items").document_count == 270
        for conditions in FILTERS.values():
            for k in (1, 10, 300):
                expected = flat.search("items", queries(), k=k, conditions=conditions, include_vectors=True)
                actual = store.search("items", queries(), k=k, conditions=conditions, include_vectors=True)
                assert_same_hits(expected, actual)
        for document_id in ("doc-0", "doc-100", "doc-299"):
            expected_document = flat.get_document("items", document_id)
            actual_document = store.get_document("items", document_id)
            assert actual_document.text == expected_document.text
            np.testing.assert_array_equal(actual_document.vector, expected_document.vector)
        with pytest.raises(NotFound):
            store.get_document("items", "doc-60")  # deleted
    finally:
        store.close()


def test_documents_go_to_the_shard_of_their_id(tmp_path: Path) -> None:
    store = sharded(tmp_path, 3)
    try:
        store.create_index("items", dimension=DIMENSION)
        ids = store.upsert("items", documents(60, seed=3))
        shards = store.shards
        for document_id in ids:
            owner = shard_of(document_id, 3)
            for number, shard in enumerate(shards):
                assert isinstance(shard, LocalShard)
                held = True
                try:
                    shard.store.get_document("items", document_id)
                except NotFound:
                    held = False
                assert held == (number == owner)
        counts = [shard.store.get_index("items").document_count for shard in shards]  # type: ignore[attr-defined]
        assert sum(counts) == 60 and min(counts) > 0
        # Ids the store assigns are routed the same way, and returned in request order.
        assigned = store.upsert("items", [Document(text="no id one"), Document(text="no id two")])
        assert all(store.get_document("items", document_id) for document_id in assigned)
    finally:
        store.close()


def test_hnsw_recall_stays_within_0_02_of_one_hnsw_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((30, DIMENSION))
    vectors = (centres[rng.integers(0, 30, 3000)] + 0.3 * rng.standard_normal((3000, DIMENSION))).astype(
        np.float32
    )
    batch = [Document(id=f"v{number}", vector=vector) for number, vector in enumerate(vectors)]
    probes = [Query(vector=vector) for vector in rng.standard_normal((100, DIMENSION)).astype(np.float32)]
    params = HnswParams(m=8, ef_construction=32, ef_search=16)
    exact = IndexStore(tmp_path / "exact")
    single = IndexStore(tmp_path / "single")
    store = sharded(tmp_path / "shards", 3)
    try:
        exact.create_index("items", dimension=DIMENSION)
        single.create_index("items", dimension=DIMENSION, kind=IndexKind.HNSW, params=params)
        store.create_index("items", dimension=DIMENSION, kind=IndexKind.HNSW, params=params)
        for target in (exact, single, store):
            for start in range(0, len(batch), 1000):
                target.upsert("items", batch[start : start + 1000])
        truth = [{hit.id for hit in hits} for hits in exact.search("items", probes, k=10)]

        def recall(results: list[list[Any]]) -> float:
            return float(
                np.mean(
                    [
                        len({hit.id for hit in hits} & true) / 10
                        for hits, true in zip(results, truth, strict=True)
                    ]
                )
            )

        assert (
            recall(store.search("items", probes, k=10)) >= recall(single.search("items", probes, k=10)) - 0.02
        )
    finally:
        store.close()
        single.close()
        exact.close()


def test_index_management_reaches_every_shard(tmp_path: Path) -> None:
    store = sharded(tmp_path, 2)
    try:
        created = store.create_index("alpha", metric=Metric.L2)
        assert (created.spec.dimension, created.spec.metric, created.document_count) == (
            DIMENSION,
            Metric.L2,
            0,
        )
        store.create_index("beta", dimension=3)
        with pytest.raises(AlreadyExists):
            store.create_index("alpha")
        store.upsert("alpha", documents(20, seed=4))
        infos, token = store.list_indexes(page_size=1)
        assert [info.name for info in infos] == ["alpha"] and infos[0].document_count == 20
        infos, token = store.list_indexes(page_size=1, page_token=token)
        assert [info.name for info in infos] == ["beta"] and token == ""
        store.delete_index("alpha")
        with pytest.raises(NotFound):
            store.get_index("alpha")
        with pytest.raises(NotFound):
            store.upsert("alpha", documents(1, seed=5))
        with pytest.raises(NotFound):
            store.delete_index("alpha")
    finally:
        store.close()


def test_a_create_that_missed_a_shard_is_reported_and_completed_by_creating_again(tmp_path: Path) -> None:
    store = sharded(tmp_path, 2)
    try:
        first = store.shards[0]
        assert isinstance(first, LocalShard)
        first.store.create_index("half", dimension=4)  # as if shard-1 had been down during the create
        with pytest.raises(FailedPrecondition, match="missing on shard-1"):
            store.get_index("half")
        with pytest.raises(FailedPrecondition, match="missing on shard-1"):
            store.list_indexes()
        assert store.create_index("half", dimension=4).spec.dimension == 4
        assert store.get_index("half").document_count == 0
        first.store.delete_index("half")  # as if shard-1 had been down during the delete
        store.delete_index("half")
        assert store.list_indexes() == ([], "")
    finally:
        store.close()


def test_input_errors_name_the_request_fields_and_store_nothing(tmp_path: Path, flat: IndexStore) -> None:
    store = sharded(tmp_path, 3)
    try:
        for target in (flat, store):
            target.create_index("items")
        batch = documents(10, seed=6)
        bad_batches = {
            "documents[7].vector": [*batch[:7], Document(id="x", vector=np.ones(3, dtype=np.float32))],
            "documents[2].text": [*batch[:2], Document(id="y", text="   ")],
            "documents[1].vector": [batch[0], Document(id="z", vector=np.zeros(DIMENSION, dtype=np.float32))],
            "documents[0].metadata": [Document(id="m", text="t", metadata={"k": [1]})],  # type: ignore[dict-item]
        }
        for field, bad in bad_batches.items():
            for target in (flat, store):
                with pytest.raises(InvalidArgument) as raised:
                    target.upsert("items", bad)
                assert raised.value.field is not None and raised.value.field.startswith(field), field
        assert store.get_index("items").document_count == 0
        for bad_query, field in [
            (Query(text=""), "queries[0].text"),
            (Query(), "queries[0]"),
            (Query(vector=np.ones(2, dtype=np.float32)), "queries[0].vector"),
        ]:
            for target in (flat, store):
                with pytest.raises(InvalidArgument) as raised:
                    target.search("items", [bad_query])
                assert raised.value.field == field
        # Both stores check queries with the same code: the first invalid query is the one named.
        good = Query(vector=np.ones(DIMENSION, dtype=np.float32))
        zero = Query(vector=np.zeros(DIMENSION, dtype=np.float32))
        for several, field in [
            ([good, Query(vector=["a"] * DIMENSION), Query(text="")], "queries[1].vector"),  # type: ignore[list-item]
            ([good, Query(text=""), Query(vector=np.ones(2, dtype=np.float32))], "queries[1].text"),
            ([good, Query(text="fine"), zero], "queries[2].vector"),
            ([good, Query(text="x", document_id="y")], "queries[1]"),
        ]:
            for target in (flat, store):
                with pytest.raises(InvalidArgument) as raised:
                    target.search("items", several)
                assert raised.value.field == field, (target, field)
        with pytest.raises(NotFound, match=r"queries\[0\]\.document_id"):
            store.search("items", [Query(document_id="absent")])
        with pytest.raises(NotFound, match="index 'nothing' does not exist"):
            store.search("nothing", [Query(text="a")])
    finally:
        store.close()


def test_a_shard_that_is_down_fails_the_call_naming_it(tmp_path: Path) -> None:
    up = LocalShard(IndexStore(tmp_path / "shard-0"), "shard-0")
    up.store.create_index("items", dimension=DIMENSION)
    store = ShardedStore([up, DownShard("shard-1")], HashEncoder())
    try:
        with pytest.raises(Unavailable, match="shard-1"):
            store.search("items", [Query(text="anything")])
        with pytest.raises(Unavailable, match="shard-1"):
            store.get_index("items")
        with pytest.raises(Unavailable, match="shard-1"):
            store.list_indexes()
        on_shard_1 = next(f"id-{number}" for number in range(100) if shard_of(f"id-{number}", 2) == 1)
        on_shard_0 = next(f"id-{number}" for number in range(100) if shard_of(f"id-{number}", 2) == 0)
        with pytest.raises(Unavailable, match="shard-1"):
            store.upsert("items", [Document(id=on_shard_1, text="a")])
        # Documents of the shard that is up are still written and read.
        assert store.upsert("items", [Document(id=on_shard_0, text="b")]) == [on_shard_0]
        assert store.get_document("items", on_shard_0).text == "b"
    finally:
        store.close()


def test_the_shard_of_an_id_is_stable() -> None:
    """crc32 of the UTF-8 id: the same shard in every process and on every machine."""
    # crc32: "a" 0xE8B7BE43, "doc-1" 0xF2B0EE69, "ü" 0x63D969D5, "" 0.
    assert [shard_of(document_id, 3) for document_id in ("a", "doc-1", "ü", "")] == [0, 2, 1, 0]


def test_concurrent_searches_share_shard_calls_and_keep_their_own_answers(tmp_path: Path) -> None:
    store = sharded(tmp_path, 2)
    calls: list[str] = []
    for shard in store.shards:
        original = shard.call

        def counting(method: str, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(method)
            return _original(method, *args, **kwargs)

        shard.call = counting  # type: ignore[method-assign]
    try:
        store.create_index("items", dimension=DIMENSION)
        store.upsert("items", documents(200, seed=8))
        probes = [
            Query(vector=vector) for vector in np.random.default_rng(9).standard_normal((32, DIMENSION))
        ]
        alone = [store.search("items", [probe], k=5) for probe in probes]
        calls.clear()
        with ThreadPoolExecutor(16) as callers:
            together = list(callers.map(lambda probe: store.search("items", [probe], k=5), probes))
            # One caller's bad query fails that caller only, even when it arrives with the others.
            bad = callers.submit(store.search, "items", [Query(vector=np.ones(3, dtype=np.float32))], 5)
            good = [callers.submit(store.search, "items", [probe], 5) for probe in probes[:8]]
            with pytest.raises(InvalidArgument):
                bad.result()
            assert [future.result() for future in good] == alone[:8]
        assert together == alone
        assert calls.count("search") < 2 * len(probes)  # merged: fewer than one call per shard per caller
    finally:
        store.close()
