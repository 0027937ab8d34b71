"""The search's fast paths answer exactly as the general paths do: query vectors read from their packed
form, query vectors checked all at once, a lone vector query checked and normalized on its own, a lone
search run without queueing, and hits read from the hit_fields index (without vectors) or with ids
bound as parameters (up to HIT_INLINE_ID_LIMIT)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from vecserve.v1 import index_pb2 as pb

from service.api.index import float_values, query_from_message
from service.errors import InvalidArgument
from service.index import record
from service.index.model import (
    MAX_VECTOR_NORM,
    Document,
    Hit,
    Metric,
    Query,
    check_vector,
    normalize_rows,
    plain_query_vector,
)
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


ODD_VECTORS = [
    [],
    [1.0] * (DIMENSION - 1),
    [[1.0] * DIMENSION],
    [0.0] * DIMENSION,
    [1e-30] * DIMENSION,  # squares underflow float32, not float64
    [1e-45] * DIMENSION,  # subnormal
    [3.0e38] * DIMENSION,  # squares overflow float32, not float64
    [1e39] + [1.0] * (DIMENSION - 1),  # beyond float32: infinite once converted
    [float("nan")] + [1.0] * (DIMENSION - 1),
    [float("-inf")] + [1.0] * (DIMENSION - 1),
    [MAX_VECTOR_NORM / DIMENSION**0.5] * DIMENSION,  # at the limit of L2 and inner-product indexes
    [2 * MAX_VECTOR_NORM] + [0.0] * (DIMENSION - 1),
    ["a"] * DIMENSION,
    [-0.0] * (DIMENSION - 1) + [2.5],
]


def checked_one_by_one(values: object, metric: Metric) -> np.ndarray | None:
    """What check_vector and normalize_rows make of one vector, None where either refuses it."""
    try:
        vector = check_vector(values, DIMENSION, metric, "v")  # type: ignore[arg-type]
        return normalize_rows(vector[None, :], ["v"]) if metric is Metric.COSINE else vector[None, :]
    except InvalidArgument:
        return None


@pytest.mark.parametrize("metric", list(Metric))
@pytest.mark.parametrize(
    "values",
    [
        *ODD_VECTORS,
        *np.random.default_rng(12).standard_normal((20, DIMENSION)) * 10.0 ** np.arange(-9, 11)[:, None],
    ],
)
def test_a_plain_query_vector_is_what_the_general_checks_make_of_it(values: object, metric: Metric) -> None:
    """Bit for bit where it accepts a vector; where it does not, the general checks decide (and report)."""
    plain = plain_query_vector(values, DIMENSION, metric)
    general = checked_one_by_one(values, metric)
    if plain is not None:
        assert general is not None
        assert plain.dtype == np.float32 and plain.shape == (1, DIMENSION)
        assert np.array_equal(plain, general)
    if general is None:
        assert plain is None


@pytest.mark.parametrize("name", ["cosine", "l2"])
def test_a_lone_vector_query_answers_as_in_a_batch(store: IndexStore, name: str) -> None:
    """A lone vector query takes the fast path; the same vector in a batch of two takes the general one."""
    for vector in np.random.default_rng(13).standard_normal((5, DIMENSION)).astype(np.float32):
        alone = store.search(name, [Query(vector=vector)], k=5)
        in_batch = store.search(name, [Query(vector=vector), Query(document_id="d1")], k=5)
        assert hit_fields(alone) == hit_fields(in_batch[:1])
        listed = store.search(name, [Query(vector=vector.tolist())], k=5)  # a list, not an array
        assert hit_fields(listed) == hit_fields(alone)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("values", ODD_VECTORS)
def test_a_lone_odd_vector_is_answered_or_refused_as_in_a_batch(
    store: IndexStore, metric: str, values: list
) -> None:
    """The same answer, or the same error, as the general path's for the vector first in a batch."""

    def outcome(queries: list[Query]) -> tuple:
        try:
            return ("hits", hit_fields(store.search(metric, queries, k=5)[:1]))
        except InvalidArgument as error:
            return ("refused", str(error), error.field)

    assert outcome([Query(vector=values)]) == outcome([Query(vector=values), Query(document_id="d1")])


@pytest.mark.parametrize("values", [["a"] * DIMENSION, [[1.0, 2.0], [3.0]], [object()] * DIMENSION])
def test_a_vector_of_what_is_not_numbers_is_an_invalid_argument(store: IndexStore, values: list) -> None:
    with pytest.raises(InvalidArgument, match=r"queries\[0\]\.vector must be a list of numbers"):
        store.search("cosine", [Query(vector=values)], k=3)
    with pytest.raises(InvalidArgument, match=r"must be a list of numbers"):
        store.upsert("cosine", [Document("bad", "text", {}, values)])  # type: ignore[arg-type]
    assert store.search("cosine", [Query(document_id="d1")], k=1)[0]  # the index serves on


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


def hit_fields(results: list[list[Hit]]) -> list[list[tuple]]:
    return [[(h.id, h.score, h.text, h.metadata) for h in hits] for hits in results]


def test_hits_from_the_hit_fields_index_match_the_documents_rows(store: IndexStore) -> None:
    """Without vectors, a batch's hits are read from the hit_fields index alone; with them, from the
    rows: the same documents, kept in step with replacements and deletions."""
    replaced = np.random.default_rng(8).standard_normal(DIMENSION).astype(np.float32)
    store.upsert(
        "cosine", [Document(id="d3", text="replaced: ünïcode", metadata={"k": "v"}, vector=replaced)]
    )
    store.delete_documents("cosine", ["d7"])
    queries = [Query(vector=row) for row in np.random.default_rng(9).standard_normal((20, DIMENSION))]
    queries.append(Query(vector=replaced))
    without_vectors = store.search("cosine", queries, k=10)
    with_vectors = store.search("cosine", queries, k=10, include_vectors=True)
    assert hit_fields(without_vectors) == hit_fields(with_vectors)
    found = {hit.id for hits in without_vectors for hit in hits}
    assert "d7" not in found and len(found) > 10
    assert (without_vectors[-1][0].id, without_vectors[-1][0].text) == ("d3", "replaced: ünïcode")
    assert without_vectors[-1][0].metadata == {"k": "v"}
    for hit in (hit for hits in with_vectors for hit in hits):
        assert np.array_equal(hit.vector, store.get_document("cosine", hit.id).vector)


def test_hit_lookups_through_json_each_match_bound_ids(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    queries = [Query(vector=row) for row in np.random.default_rng(10).standard_normal((20, DIMENSION))]
    for include_vectors in (False, True):
        bound = store.search("l2", queries, k=10, include_vectors=include_vectors)
        with monkeypatch.context() as patched:
            patched.setattr(record, "HIT_INLINE_ID_LIMIT", 3)  # every call's ids through json_each
            through_json = store.search("l2", queries, k=10, include_vectors=include_vectors)
        assert hit_fields(through_json) == hit_fields(bound)
        for ours, theirs in zip(through_json, bound, strict=True):
            for one, other in zip(ours, theirs, strict=True):
                assert (one.vector is None and other.vector is None) or np.array_equal(
                    one.vector, other.vector
                )


def test_a_record_made_before_the_hit_fields_index_gets_it_when_opened(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    rows = np.random.default_rng(11).standard_normal((30, DIMENSION)).astype(np.float32)
    queries = [Query(vector=row) for row in rows[:5]]
    first = IndexStore(data_dir)
    first.create_index("old", dimension=DIMENSION)
    first.upsert("old", [Document(id=f"d{i}", text=f"t{i}", vector=row) for i, row in enumerate(rows)])
    expected = hit_fields(first.search("old", queries, k=4))
    first.close()
    database = data_dir / "old" / record.DATABASE_FILE
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("DROP INDEX hit_fields")

    reopened = IndexStore(data_dir)
    try:
        assert hit_fields(reopened.search("old", queries, k=4)) == expected
    finally:
        reopened.close()
    with contextlib.closing(sqlite3.connect(database)) as connection:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "hit_fields" in names
