"""The one-query search's fast paths answer exactly as the general paths do: query vectors read from
their packed form, query vectors checked all at once, and a lone search run without queueing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from vecserve.v1 import index_pb2 as pb

from service.api.index import float_values, query_from_message
from service.errors import InvalidArgument
from service.index.model import Document, Metric, Query
from service.index.search_batching import SearchCoalescer
from service.index.store import IndexStore

DIMENSION = 8


def parsed_vector(values: list[float], extra: bytes = b"") -> pb.Vector:
    """A Vector as the server receives it: parsed from the wire, with any extra (unknown) fields."""
    return pb.Vector.FromString(pb.Vector(values=values).SerializeToString() + extra)


@pytest.mark.parametrize(
    "values",
    [[], [1.5], [0.1, -2.0, 3.0e38, float("inf"), float("nan"), -0.0], list(np.linspace(-1, 1, 384))],
)
def test_packed_vector_values_equal_value_by_value_conversion(values: list[float]) -> None:
    message = parsed_vector(values)
    fast = float_values(message.values, message)
    slow = np.array(message.values, dtype=np.float32)
    assert fast.dtype == np.float32 and fast.shape == slow.shape
    assert np.array_equal(fast, slow, equal_nan=True)
    assert fast.flags.writeable


def test_a_vector_with_unknown_fields_is_read_value_by_value() -> None:
    unknown_field = b"\x10\x07"  # field 2, varint 7: not in this version's Vector
    message = parsed_vector([1.0, 2.0, 3.0], unknown_field)
    assert np.array_equal(float_values(message.values, message), [1.0, 2.0, 3.0])


def test_query_message_vector_becomes_the_query_vector() -> None:
    query = query_from_message(pb.Query(vector=pb.Vector(values=[0.5, -0.25])), "queries[0]")
    assert query.vector is not None and query.vector.tolist() == [0.5, -0.25]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[IndexStore]:
    opened = IndexStore(tmp_path / "data")
    rows = np.random.default_rng(5).standard_normal((50, DIMENSION)).astype(np.float32)
    for name, metric in (("cosine", Metric.COSINE), ("l2", Metric.L2)):
        opened.create_index(name, dimension=DIMENSION, metric=metric)
        opened.upsert(
            name,
            [
                Document(id=f"d{i}", text=f"text {i}", metadata={"i": i}, vector=row)
                for i, row in enumerate(rows)
            ],
        )
    yield opened
    opened.close()


def one_by_one(store: IndexStore, name: str, queries: list[Query]) -> list[list[tuple]]:
    """Each query searched alone: what a batch of them must answer."""
    return [
        [(h.id, h.score, h.text, h.metadata) for h in store.search(name, [query], k=5)[0]]
        for query in queries
    ]


@pytest.mark.parametrize("name", ["cosine", "l2"])
def test_a_batch_of_vectors_checked_at_once_answers_like_single_queries(store: IndexStore, name: str) -> None:
    vectors = np.random.default_rng(6).standard_normal((7, DIMENSION)).astype(np.float32)
    queries = [Query(vector=vector) for vector in vectors]
    queries.insert(3, Query(document_id="d4"))
    batch = store.search(name, queries, k=5)
    assert [[(h.id, h.score, h.text, h.metadata) for h in hits] for hits in batch] == one_by_one(
        store, name, queries
    )


@pytest.mark.parametrize(
    ("queries", "field"),
    [
        # An invalid vector before an invalid document id is the one reported, and the other way round.
        ([Query(vector=np.ones(3)), Query(document_id="\ud800")], r"queries\[0\]\.vector has 3 values"),
        ([Query(document_id="\ud800"), Query(vector=np.ones(3))], r"queries\[0\]\.document_id"),
        (
            [Query(vector=np.ones(DIMENSION)), Query(vector=[np.nan] * DIMENSION)],
            r"queries\[1\]\.vector contains NaN",
        ),
        ([Query(vector=np.ones(DIMENSION)), Query(vector=np.ones(5))], r"queries\[1\]\.vector has 5 values"),
        ([Query(vector=np.ones((2, DIMENSION)))], r"queries\[0\]\.vector has 16 values"),
        ([Query(vector=np.zeros(DIMENSION))], r"queries\[0\]\.vector is a zero vector"),
        ([Query(vector=np.ones(DIMENSION)), Query()], r"queries\[1\] needs exactly one"),
    ],
)
def test_the_first_invalid_query_is_reported(store: IndexStore, queries: list[Query], field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        store.search("cosine", queries, k=3)


def test_an_l2_vector_too_long_is_refused_as_one_by_one_checks_refuse_it(store: IndexStore) -> None:
    with pytest.raises(InvalidArgument, match=r"queries\[1\]\.vector has length"):
        store.search("l2", [Query(vector=np.ones(DIMENSION)), Query(vector=np.full(DIMENSION, 1e18))], k=3)


def test_a_lone_search_runs_directly_and_later_ones_still_merge() -> None:
    coalescer = SearchCoalescer()
    seen: list[np.ndarray] = []

    def run(queries: np.ndarray, excluded: list[int | None]) -> list[int]:
        seen.append(queries)
        return [int(row[0]) for row in queries]

    queries = np.array([[3.0], [4.0]], dtype=np.float32)
    assert coalescer.search("key", queries, [None, None], run) == [3, 4]
    assert seen[0] is queries  # no copy: nothing was merged
    assert coalescer.calls == 1 and coalescer.queued_callers == 0
    assert coalescer.search("key", queries[:1], [None], run) == [3]
