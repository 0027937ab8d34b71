"""The IndexStore core on real files and real FAISS: lifecycle, writes, search, filters, kinds, recovery."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from service.embedding.encoder import Encoder
from service.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from service.index import open_index, snapshots
from service.index import store as index_store
from service.index.filters import Condition, NumericRange
from service.index.model import Document, HnswParams, IvfParams, IvfPqParams, Query, Sq8Params
from service.index.store import IndexStore

DIMENSION = 16
APPROXIMATE_KINDS = {
    "hnsw": HnswParams(m=16, ef_construction=64, ef_search=64),
    "ivf_flat": IvfParams(nlist=16, nprobe=4),
    "ivf_pq": IvfPqParams(nlist=16, nprobe=4, m=8, nbits=6),
    "sq8": Sq8Params(),
}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Iterator[IndexStore]:
    opened = IndexStore(data_dir)
    yield opened
    opened.close()


def random_vectors(count: int, dimension: int = DIMENSION, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, dimension)).astype(np.float32)


def clustered_vectors(count: int, dimension: int, seed: int) -> np.ndarray:
    """Points around 40 centres: structure that approximate indexes can exploit, like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((40, dimension))
    points = centres[rng.integers(0, len(centres), count)] + 0.35 * rng.standard_normal((count, dimension))
    return points.astype(np.float32)


def add_vectors(store: IndexStore, name: str, vectors: np.ndarray, start: int = 0, batch: int = 500) -> None:
    for offset in range(0, len(vectors), batch):
        store.upsert(
            name,
            [
                Document(id=f"doc-{start + i}", vector=vectors[i], metadata={"number": start + i})
                for i in range(offset, min(offset + batch, len(vectors)))
            ],
        )


def ids_of(hits: list) -> list[str]:
    return [hit.id for hit in hits]


def reopen(store: IndexStore) -> IndexStore:
    store.close()
    return IndexStore(store.data_dir)


def crash_image(data_dir: Path, destination: Path) -> Path:
    """A copy of the files as they are now, as a crash at this moment would leave them."""
    shutil.copytree(data_dir, destination, ignore=shutil.ignore_patterns(index_store.LOCK_FILE))
    return destination


# -- index management ---------------------------------------------------------------------------


def test_create_get_list_delete(store: IndexStore, data_dir: Path) -> None:
    created = store.create_index("alpha", DIMENSION, metric="l2", kind="hnsw", params=HnswParams(m=8))
    assert created.spec.dimension == DIMENSION and created.spec.metric == "l2" and created.spec.kind == "hnsw"
    assert created.spec.params == HnswParams(m=8, ef_construction=80, ef_search=64)
    assert created.document_count == 0 and created.disk_bytes > 0
    store.create_index("beta", DIMENSION)
    store.create_index("gamma", 8, kind="ivf_pq")
    assert store.get_index("gamma").spec.params == IvfPqParams(nlist=1024, nprobe=16, m=1, nbits=8)
    with pytest.raises(AlreadyExists):
        store.create_index("alpha", DIMENSION)

    first, token = store.list_indexes(page_size=2)
    assert [info.name for info in first] == ["alpha", "beta"] and token
    second, last_token = store.list_indexes(page_size=2, page_token=token)
    assert [info.name for info in second] == ["gamma"] and last_token == ""
    with pytest.raises(InvalidArgument):
        store.list_indexes(page_token="not a token")
    with pytest.raises(InvalidArgument):
        store.list_indexes(page_size=1001)

    store.delete_index("beta")
    assert not (data_dir / "beta").exists()
    assert [info.name for info in store.list_indexes()[0]] == ["alpha", "gamma"]
    for call in (store.get_index, store.delete_index):
        with pytest.raises(NotFound):
            call("beta")
    with pytest.raises(NotFound):
        store.upsert("beta", [Document(vector=random_vectors(1)[0])])
    store.create_index("beta", 4)  # the name is free again
    assert store.get_index("beta").spec.dimension == 4


@pytest.mark.parametrize("name", ["../x", "", "a" * 65, "a/b", ".hidden", "a b", "naïve", "x\x00"])
def test_bad_names_are_invalid_arguments(store: IndexStore, data_dir: Path, name: str) -> None:
    with pytest.raises(InvalidArgument):
        store.create_index(name, DIMENSION)
    for call in (store.get_index, store.delete_index):
        with pytest.raises(InvalidArgument):
            call(name)
    assert sorted(p.name for p in data_dir.iterdir()) == [index_store.LOCK_FILE]


def test_longest_valid_name(store: IndexStore) -> None:
    name = "A-z_9" + "x" * 59
    assert store.create_index(name, DIMENSION).name == name


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("flat", HnswParams(), "params"),
        ("hnsw", IvfParams(), "params"),
        ("hnsw", HnswParams(m=1), "hnsw.m"),
        ("ivf_flat", IvfParams(nlist=4, nprobe=5), "ivf_flat.nprobe"),
        ("ivf_pq", IvfPqParams(m=5), "ivf_pq.m"),
        ("ivf_pq", IvfPqParams(m=4, nbits=17), "ivf_pq.nbits"),
        ("cube", None, "kind"),
    ],
)
def test_bad_parameters_are_invalid_arguments(
    store: IndexStore, kind: str, params: object, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        store.create_index("bad", DIMENSION, kind=kind, params=params)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_dimension_defaults_to_the_model_and_is_bounded(data_dir: Path, encoder: Encoder) -> None:
    store = IndexStore(data_dir, encoder)
    try:
        assert store.create_index("text").spec.dimension == encoder.dimension
        for dimension in (-1, 8193):
            with pytest.raises(InvalidArgument):
                store.create_index("bad", dimension)
    finally:
        store.close()
    without_model = IndexStore(data_dir.parent / "other")
    try:
        with pytest.raises(InvalidArgument):
            without_model.create_index("needs-dimension")
    finally:
        without_model.close()


def test_one_process_per_data_directory(store: IndexStore, data_dir: Path) -> None:
    with pytest.raises(FailedPrecondition):
        IndexStore(data_dir)


def test_half_created_and_half_deleted_indexes_are_cleaned_at_start(
    store: IndexStore, data_dir: Path
) -> None:
    store.create_index("kept", DIMENSION)
    store.close()
    (data_dir / ".creating-new-0123").mkdir()
    (data_dir / ".deleting-old-4567").mkdir()
    (data_dir / "kept" / "snapshot-00000009.faiss.tmp").write_bytes(b"torn")
    reopened = IndexStore(data_dir)
    try:
        assert sorted(p.name for p in data_dir.iterdir()) == [index_store.LOCK_FILE, "kept"]
        assert not list((data_dir / "kept").glob("*.tmp"))
        assert [info.name for info in reopened.list_indexes()[0]] == ["kept"]
    finally:
        reopened.close()


# -- documents ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", *APPROXIMATE_KINDS])
def test_upsert_replace_and_delete(store: IndexStore, kind: str) -> None:
    store.create_index("docs", DIMENSION, kind=kind, params=APPROXIMATE_KINDS.get(kind))
    vectors = random_vectors(1200)
    add_vectors(store, "docs", vectors)
    assert store.get_index("docs").document_count == 1200

    # Replace doc-7 with doc-8's direction: searching with it now finds both.
    store.upsert("docs", [Document(id="doc-7", text="replaced", metadata={"v": 2}, vector=vectors[8])])
    assert store.get_index("docs").document_count == 1200
    replaced = store.get_document("docs", "doc-7")
    assert replaced.text == "replaced" and replaced.metadata == {"v": 2.0}
    np.testing.assert_allclose(replaced.vector, vectors[8] / np.linalg.norm(vectors[8]), rtol=1e-6)
    hits = store.search("docs", [Query(vector=vectors[8])], k=2)[0]
    assert sorted(ids_of(hits)) == ["doc-7", "doc-8"]
    assert store.search("docs", [Query(vector=vectors[7])], k=1)[0][0].id != "doc-7"

    assert store.delete_documents("docs", ["doc-8", "doc-9", "unknown"]) == 2
    assert store.get_index("docs").document_count == 1198
    for deleted in ("doc-8", "doc-9"):
        with pytest.raises(NotFound):
            store.get_document("docs", deleted)
    top = store.search("docs", [Query(vector=vectors[8]), Query(vector=vectors[9])], k=5)
    assert top[0][0].id == "doc-7"
    assert not {"doc-8", "doc-9"} & {hit.id for hits in top for hit in hits}


def test_assigned_ids_and_repeated_ids_in_one_batch(store: IndexStore) -> None:
    store.create_index("docs", DIMENSION)
    vectors = random_vectors(3)
    ids = store.upsert(
        "docs",
        [
            Document(vector=vectors[0]),
            Document(id="same", vector=vectors[1]),
            Document(id="same", vector=vectors[2]),
        ],
    )
    assert len(ids[0]) == 32 and ids[1:] == ["same", "same"]
    assert store.get_index("docs").document_count == 2
    np.testing.assert_allclose(
        store.get_document("docs", "same").vector, vectors[2] / np.linalg.norm(vectors[2]), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("vector", "field"),
    [
        (np.ones(DIMENSION + 1), "documents[0].vector"),
        (np.ones(DIMENSION - 1), "documents[0].vector"),
        (np.array([np.nan] + [1.0] * (DIMENSION - 1)), "documents[0].vector"),
        (np.array([np.inf] + [1.0] * (DIMENSION - 1)), "documents[0].vector"),
        (np.zeros(DIMENSION), "documents[0].vector"),  # no direction for cosine
    ],
)
def test_bad_vectors_are_rejected_and_nothing_is_written(
    store: IndexStore, vector: np.ndarray, field: str
) -> None:
    store.create_index("docs", DIMENSION)
    with pytest.raises(InvalidArgument) as caught:
        store.upsert("docs", [Document(id="bad", vector=vector)])
    assert caught.value.field == field
    with pytest.raises(InvalidArgument):
        store.search("docs", [Query(vector=vector)])
    assert store.get_index("docs").document_count == 0


def test_bad_documents_and_requests(store: IndexStore) -> None:
    store.create_index("docs", DIMENSION)
    vector = random_vectors(1)[0]
    bad_batches = [
        [],
        [Document(id="x" * 257, vector=vector)],
        [Document(text="   ")],  # nothing to embed
        [Document(id="m", vector=vector, metadata={"": 1})],
        [Document(id="m", vector=vector, metadata={"k": float("nan")})],
        [Document(id="m", vector=vector, metadata={"k": [1, 2]})],  # type: ignore[dict-item]
        [Document(id="m", vector=vector, metadata={f"k{i}": i for i in range(65)})],
        [Document(id=str(i), vector=vector) for i in range(1025)],
    ]
    for batch in bad_batches:
        with pytest.raises(InvalidArgument):
            store.upsert("docs", batch)
    with pytest.raises(InvalidArgument):
        store.delete_documents("docs", [])
    store.upsert("docs", [Document(id="one", vector=vector)])
    for k in (-1, 1001):
        with pytest.raises(InvalidArgument):
            store.search("docs", [Query(vector=vector)], k=k)
    with pytest.raises(InvalidArgument):
        store.search("docs", [Query()])
    with pytest.raises(InvalidArgument):
        store.search("docs", [Query(vector=vector, document_id="one")])
    with pytest.raises(InvalidArgument):
        store.search("docs", [])
    with pytest.raises(NotFound):
        store.search("docs", [Query(document_id="missing")])
    with pytest.raises(InvalidArgument, match=r"queries\[2\]\.vector is a zero vector") as caught:
        store.search("docs", [Query(vector=vector), Query(document_id="one"), Query(vector=0 * vector)])
    assert caught.value.field == "queries[2].vector"
    with pytest.raises(FailedPrecondition):  # no model to embed with
        store.search("docs", [Query(text="hello")])
    assert store.get_index("docs").document_count == 1


def test_k_defaults_to_ten_and_caps_at_the_document_count(store: IndexStore) -> None:
    store.create_index("docs", DIMENSION)
    add_vectors(store, "docs", random_vectors(30))
    assert len(store.search("docs", [Query(vector=random_vectors(1, seed=5)[0])])[0]) == 10
    assert len(store.search("docs", [Query(vector=random_vectors(1, seed=5)[0])], k=1000)[0]) == 30


# -- search -------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "inner_product", "l2"])
def test_scores_follow_the_metric(store: IndexStore, metric: str) -> None:
    store.create_index("docs", DIMENSION, metric=metric)
    vectors = random_vectors(200)
    add_vectors(store, "docs", vectors)
    query = random_vectors(1, seed=9)[0]
    hits = store.search("docs", [Query(vector=query)], k=5)[0]
    stored = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if metric == "cosine" else vectors
    probe = query / np.linalg.norm(query) if metric == "cosine" else query
    if metric == "l2":
        expected = ((stored - probe) ** 2).sum(axis=1)
        order = np.argsort(expected)[:5]
    else:
        expected = stored @ probe
        order = np.argsort(-expected)[:5]
    assert ids_of(hits) == [f"doc-{i}" for i in order]
    np.testing.assert_allclose([hit.score for hit in hits], expected[order], rtol=1e-4, atol=1e-4)


def test_search_by_document_excludes_it_and_answers_several_queries(store: IndexStore) -> None:
    store.create_index("docs", DIMENSION)
    vectors = random_vectors(100)
    vectors[51] = vectors[50] * 2  # same direction as doc-50
    add_vectors(store, "docs", vectors)
    by_document, by_vector = store.search(
        "docs", [Query(document_id="doc-50"), Query(vector=vectors[50])], k=3, include_vectors=True
    )
    assert "doc-50" not in ids_of(by_document) and by_document[0].id == "doc-51"
    assert len(by_document) == 3
    assert set(ids_of(by_vector)[:2]) == {"doc-50", "doc-51"}
    assert by_vector[0].vector is not None and by_vector[0].vector.shape == (DIMENSION,)
    assert by_document[0].metadata == {"number": 51.0}


def filtered_corpus(store: IndexStore, kind: str) -> np.ndarray:
    """3000 documents: 2500 near the query direction (group "near"), 500 pointing away ("far")."""
    # Every list probed, so that IVF's ranking is exact here; a starved IVF search has its own test.
    params = IvfParams(nlist=16, nprobe=16) if kind == "ivf_flat" else APPROXIMATE_KINDS.get(kind)
    store.create_index("docs", DIMENSION, kind=kind, params=params)
    rng = np.random.default_rng(3)
    query = np.zeros(DIMENSION, dtype=np.float32)
    query[0] = 1.0
    vectors = 0.3 * rng.standard_normal((3000, DIMENSION)).astype(np.float32)
    vectors[:2500, 0] += 1.0
    vectors[2500:, 0] -= 1.0
    tags = ["red", "green", "blue"]
    for offset in range(0, 3000, 1000):
        store.upsert(
            "docs",
            [
                Document(
                    id=f"doc-{i}",
                    vector=vectors[i],
                    metadata={
                        "group": "near" if i < 2500 else "far",
                        "year": 1900 + i % 200,
                        "tag": tags[i % 3],
                    },
                )
                for i in range(offset, offset + 1000)
            ],
        )
    return query


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_flat", "sq8"])
@pytest.mark.parametrize("exact_filter_limit", [open_index.EXACT_FILTER_LIMIT, 0])
def test_filters_return_k_hits_where_a_post_filter_would_not(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch, kind: str, exact_filter_limit: int
) -> None:
    # A limit of 0 sends every filter through the FAISS selector (and its exact fallback).
    monkeypatch.setattr(open_index, "EXACT_FILTER_LIMIT", exact_filter_limit)
    query = filtered_corpus(store, kind)
    k = 20
    unfiltered = store.search("docs", [Query(vector=query)], k=k)[0]
    assert all(hit.metadata["group"] == "near" for hit in unfiltered)  # a post-filter would keep none

    far = store.search("docs", [Query(vector=query)], k=k, conditions=[Condition("group", equals="far")])[0]
    assert len(far) == k and all(hit.metadata["group"] == "far" for hit in far)

    far_old_red_or_blue = store.search(
        "docs",
        [Query(vector=query)],
        k=k,
        conditions=[
            Condition("group", equals="far"),
            Condition("tag", any_of=["red", "blue"]),
            Condition("year", range=NumericRange(gte=1950, lt=2000)),
        ],
    )[0]
    matching = [
        i
        for i in range(2500, 3000)
        if ["red", "green", "blue"][i % 3] in ("red", "blue") and 1950 <= 1900 + i % 200 < 2000
    ]
    assert len(matching) > k
    assert len(far_old_red_or_blue) == k
    for hit in far_old_red_or_blue:
        assert hit.metadata["group"] == "far" and hit.metadata["tag"] in ("red", "blue")
        assert 1950 <= hit.metadata["year"] < 2000

    # The exact (flat) ranking of the allowed documents is what comes back.
    allowed = store.search("docs", [Query(vector=query)], k=k, conditions=[Condition("tag", equals="green")])[
        0
    ]
    flat_ranking = sorted(
        (i for i in range(3000) if i % 3 == 1),
        key=lambda i: -float(store.get_document("docs", f"doc-{i}").vector @ query),  # type: ignore[operator]
    )[:k]
    recall = len(set(ids_of(allowed)) & {f"doc-{i}" for i in flat_ranking}) / k
    assert recall >= 0.9


def test_a_starved_approximate_search_falls_back_to_exact(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(open_index, "EXACT_FILTER_LIMIT", 0)
    store.create_index("exact", DIMENSION)
    store.create_index("ivf", DIMENSION, kind="ivf_flat", params=IvfParams(nlist=16, nprobe=1))
    vectors = clustered_vectors(2000, DIMENSION, seed=6)
    query = vectors[0]
    # The documents least like the query: none of them sits in the one list probed for it.
    allowed = set(np.argsort(vectors @ query / np.linalg.norm(vectors, axis=1))[:60].tolist())
    documents = [
        Document(id=f"doc-{i}", vector=v, metadata={"allowed": i in allowed}) for i, v in enumerate(vectors)
    ]
    for name in ("exact", "ivf"):
        store.upsert(name, documents[:1000])
        store.upsert(name, documents[1000:])
    store.wait_for_builds("ivf")  # training runs in the background
    assert store.get_index("ivf").trained
    condition = [Condition("allowed", equals=True)]
    found = store.search("ivf", [Query(vector=query)], k=25, conditions=condition)[0]
    truth = store.search("exact", [Query(vector=query)], k=25, conditions=condition)[0]
    assert ids_of(found) == ids_of(truth) and len(found) == 25


def test_filter_values_keep_their_types(store: IndexStore) -> None:
    store.create_index("docs", DIMENSION)
    vectors = random_vectors(4)
    store.upsert(
        "docs",
        [
            Document(id="string-1", vector=vectors[0], metadata={"v": "1"}),
            Document(id="number-1", vector=vectors[1], metadata={"v": 1}),
            Document(id="true", vector=vectors[2], metadata={"v": True}),
            Document(id="missing", vector=vectors[3]),
        ],
    )

    def matching(condition: Condition) -> set[str]:
        return set(ids_of(store.search("docs", [Query(vector=vectors[0])], k=10, conditions=[condition])[0]))

    assert matching(Condition("v", equals="1")) == {"string-1"}
    assert matching(Condition("v", equals=1.0)) == {"number-1"}
    assert matching(Condition("v", equals=True)) == {"true"}
    assert matching(Condition("v", any_of=["1", True])) == {"string-1", "true"}
    assert matching(Condition("v", range=NumericRange(gte=0, lte=5))) == {"number-1"}
    assert matching(Condition("v", range=NumericRange(gt=1))) == set()
    assert matching(Condition("other", equals="1")) == set()
    for bad in (
        Condition("v"),
        Condition("v", equals="1", any_of=["1"]),
        Condition("v", any_of=[]),
        Condition("v", range=NumericRange()),
        Condition("v", range=NumericRange(gt=float("nan"))),
        Condition("", equals="1"),
    ):
        with pytest.raises(InvalidArgument):
            matching(bad)


# -- approximate kinds --------------------------------------------------------------------------


def test_a_search_running_alone_uses_every_faiss_thread_and_one_query_one(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAISS's OpenMP threads, as set for each search: a batch alone gets all, one query gets one."""
    store.create_index("threads", dimension=DIMENSION, kind="hnsw", params=APPROXIMATE_KINDS["hnsw"])
    add_vectors(store, "threads", random_vectors(200))
    settings: list[int] = []
    set_threads = faiss.omp_set_num_threads

    def recording(threads: int) -> None:
        settings.append(threads)
        set_threads(threads)

    monkeypatch.setattr(faiss, "omp_set_num_threads", recording)
    before = faiss.omp_get_max_threads()
    queries = [Query(vector=vector) for vector in random_vectors(100, seed=5)]
    assert len(store.search("threads", queries, k=5)) == 100
    assert settings[0] == store._search_threads.threads  # one per core
    settings.clear()
    store.search("threads", queries[:1], k=5)
    assert settings[0] == 1
    assert faiss.omp_get_max_threads() == before  # this thread's setting is restored


@pytest.mark.parametrize("kind", list(APPROXIMATE_KINDS))
def test_approximate_kinds_reach_recall_at_10_against_flat(store: IndexStore, kind: str) -> None:
    dimension = 32
    params = APPROXIMATE_KINDS[kind]
    if isinstance(params, IvfPqParams):
        params = IvfPqParams(nlist=32, nprobe=8, m=16, nbits=6)
    elif isinstance(params, IvfParams):
        params = IvfParams(nlist=32, nprobe=8)
    vectors = clustered_vectors(3000, dimension, seed=11)
    queries = [Query(vector=v) for v in clustered_vectors(50, dimension, seed=12)]
    store.create_index("exact", dimension)
    store.create_index("approximate", dimension, kind=kind, params=params)
    add_vectors(store, "exact", vectors, batch=1000)
    add_vectors(store, "approximate", vectors, batch=1000)
    store.wait_for_builds("approximate")
    info = store.get_index("approximate")
    assert info.trained == bool(info.spec.training_threshold)
    truth = store.search("exact", queries, k=10)
    found = store.search("approximate", queries, k=10)
    recall = np.mean([len(set(ids_of(a)) & set(ids_of(b))) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= 0.9, f"{kind}: recall@10 {recall:.3f}"


@pytest.mark.parametrize(
    ("kind", "params", "threshold"),
    [
        ("ivf_flat", IvfParams(nlist=8, nprobe=1), 39 * 8),
        ("ivf_pq", IvfPqParams(nlist=4, nprobe=1, m=8, nbits=4), 39 * 16),
        ("sq8", Sq8Params(), 1000),
    ],
)
def test_kinds_that_train_search_exactly_until_the_threshold(
    store: IndexStore, kind: str, params: object, threshold: int
) -> None:
    store.create_index("exact", DIMENSION)
    store.create_index("trains", DIMENSION, kind=kind, params=params)  # type: ignore[arg-type]
    assert store.get_index("trains").spec.training_threshold == threshold
    vectors = clustered_vectors(threshold, DIMENSION, seed=4)
    queries = [Query(vector=v) for v in clustered_vectors(20, DIMENSION, seed=5)]
    add_vectors(store, "exact", vectors[:-1])
    add_vectors(store, "trains", vectors[:-1])
    assert not store.get_index("trains").trained
    # Untrained, the answers are exact: the same ids and scores as flat.
    before = store.search("trains", queries, k=10)
    truth = store.search("exact", queries, k=10)
    assert [ids_of(hits) for hits in before] == [ids_of(hits) for hits in truth]
    add_vectors(store, "exact", vectors[-1:], start=threshold - 1)
    add_vectors(store, "trains", vectors[-1:], start=threshold - 1)
    store.wait_for_builds("trains")
    info = store.get_index("trains")
    assert info.trained and info.document_count == threshold
    assert info.memory_bytes < store.get_index("exact").memory_bytes or kind == "ivf_flat"
    # Trained and reopened, it is still trained and still finds every document by its own vector.
    reopened = reopen(store)
    try:
        assert reopened.get_index("trains").trained
        hits = reopened.search("trains", [Query(vector=vectors[i]) for i in range(0, threshold, 97)], k=1)
        assert [h[0].id for h in hits] == [f"doc-{i}" for i in range(0, threshold, 97)]
    finally:
        reopened.close()


# -- durability and recovery --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", *APPROXIMATE_KINDS])
def test_restart_restores_everything(store: IndexStore, kind: str) -> None:
    store.create_index("docs", DIMENSION, metric="l2", kind=kind, params=APPROXIMATE_KINDS.get(kind))
    vectors = random_vectors(1500)
    add_vectors(store, "docs", vectors)
    store.upsert("docs", [Document(id="doc-3", text="third", metadata={"tag": "x"}, vector=vectors[4])])
    store.delete_documents("docs", [f"doc-{i}" for i in range(100, 200)])
    queries = [Query(vector=v) for v in random_vectors(10, seed=2)]
    store.wait_for_builds("docs")
    before_info = store.get_index("docs")
    before = store.search("docs", queries, k=10)
    reopened = reopen(store)
    try:
        after_info = reopened.get_index("docs")
        assert after_info.spec == before_info.spec
        assert after_info.document_count == before_info.document_count == 1400
        assert after_info.trained == before_info.trained
        assert [ids_of(h) for h in reopened.search("docs", queries, k=10)] == [ids_of(h) for h in before]
        document = reopened.get_document("docs", "doc-3")
        assert document.text == "third" and document.metadata == {"tag": "x"}
        with pytest.raises(NotFound):
            reopened.get_document("docs", "doc-150")
    finally:
        reopened.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_flat"])
def test_a_crash_after_a_snapshot_catches_up_from_the_record(
    store: IndexStore, tmp_path: Path, kind: str
) -> None:
    store.create_index("docs", DIMENSION, kind=kind, params=APPROXIMATE_KINDS.get(kind))
    vectors = random_vectors(1000)
    add_vectors(store, "docs", vectors[:600])
    store.snapshot("docs")
    # After the snapshot: adds, a replacement and deletions, all only in the record.
    add_vectors(store, "docs", vectors[600:], start=600)
    store.upsert("docs", [Document(id="doc-1", vector=vectors[999])])
    store.delete_documents("docs", [f"doc-{i}" for i in range(10, 20)] + ["doc-700"])
    expected = store.search("docs", [Query(vector=v) for v in vectors[::50]], k=5)
    image = crash_image(store.data_dir, tmp_path / "crashed")

    recovered = IndexStore(image)
    try:
        info = recovered.get_index("docs")
        assert info.document_count == 1000 - 11
        got = recovered.search("docs", [Query(vector=v) for v in vectors[::50]], k=5)
        if kind == "flat":
            assert [ids_of(h) for h in got] == [ids_of(h) for h in expected]
        # Approximate structures rebuilt in another order may rank differently, but every
        # surviving document is still found by its own vector.
        survivors = [i for i in range(2, 1000, 7) if not 10 <= i < 20 and i not in (700, 999)]
        hits = recovered.search("docs", [Query(vector=vectors[i]) for i in survivors], k=1)
        assert [h[0].id for h in hits] == [f"doc-{i}" for i in survivors]
        assert {h.id for h in recovered.search("docs", [Query(vector=vectors[999])], k=2)[0]} == {
            "doc-1",
            "doc-999",
        }
        for deleted in ("doc-10", "doc-700"):
            assert deleted not in {h.id for hits in got for h in hits}
            with pytest.raises(NotFound):
                recovered.get_document("docs", deleted)
    finally:
        recovered.close()


@pytest.mark.parametrize("damage", ["flip-bytes", "truncate", "missing-file", "garbage-manifest"])
def test_a_damaged_snapshot_is_rebuilt_from_the_record(store: IndexStore, damage: str) -> None:
    store.create_index("docs", DIMENSION, kind="hnsw", params=APPROXIMATE_KINDS["hnsw"])
    vectors = random_vectors(800)
    add_vectors(store, "docs", vectors)
    store.close()
    index_dir = store.data_dir / "docs"
    manifest = json.loads((index_dir / snapshots.MANIFEST_FILE).read_text())
    snapshot = index_dir / manifest["file"]
    data = bytearray(snapshot.read_bytes())
    if damage == "flip-bytes":
        data[len(data) // 2] ^= 0xFF
        snapshot.write_bytes(bytes(data))
    elif damage == "truncate":
        snapshot.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "missing-file":
        snapshot.unlink()
    else:
        (index_dir / snapshots.MANIFEST_FILE).write_text("{not json")
    reopened = IndexStore(store.data_dir)
    try:
        assert reopened.get_index("docs").document_count == 800
        hits = reopened.search("docs", [Query(vector=vectors[i]) for i in range(0, 800, 40)], k=1)
        assert [h[0].id for h in hits] == [f"doc-{i}" for i in range(0, 800, 40)]
    finally:
        reopened.close()
    # The rebuilt structure was snapshotted again, intact.
    manifest = json.loads((index_dir / snapshots.MANIFEST_FILE).read_text())
    assert (index_dir / manifest["file"]).stat().st_size == manifest["bytes"]


def test_hnsw_tombstones_survive_restarts_and_compaction_drops_them(store: IndexStore) -> None:
    store.create_index("docs", DIMENSION, kind="hnsw", params=APPROXIMATE_KINDS["hnsw"])
    vectors = random_vectors(500)
    add_vectors(store, "docs", vectors)
    store.snapshot("docs")
    store.delete_documents("docs", [f"doc-{i}" for i in range(50)])  # 10%: below the compaction fraction
    store = reopen(store)
    assert not {f"doc-{i}" for i in range(50)} & set(
        ids_of(store.search("docs", [Query(vector=vectors[0])], k=100)[0])
    )
    assert store.get_index("docs").document_count == 450
    memory_before = store.get_index("docs").memory_bytes
    store.delete_documents("docs", [f"doc-{i}" for i in range(50, 200)])  # 40%: the graph is rebuilt
    # Rebuilt in the background, from the moment the deletions pass the compaction fraction.
    store.wait_for_builds("docs")
    assert store.get_index("docs").memory_bytes < 0.7 * memory_before
    hits = store.search("docs", [Query(vector=vectors[i]) for i in range(200, 500, 30)], k=1)
    assert [h[0].id for h in hits] == [f"doc-{i}" for i in range(200, 500, 30)]
    store = reopen(store)
    assert store.get_index("docs").document_count == 300
    store.close()


def test_snapshots_are_taken_every_n_changes(data_dir: Path) -> None:
    store = IndexStore(data_dir, snapshot_every=300)
    try:
        store.create_index("docs", DIMENSION)
        manifest = data_dir / "docs" / snapshots.MANIFEST_FILE
        add_vectors(store, "docs", random_vectors(200), batch=100)
        store._snapshots.submit(lambda: None).result()  # wait for queued snapshots
        assert not manifest.exists()
        add_vectors(store, "docs", random_vectors(200, seed=1), start=200, batch=100)
        store._snapshots.submit(lambda: None).result()
        assert json.loads(manifest.read_text())["generation"] == 1
        assert len(list((data_dir / "docs").glob("snapshot-*.faiss"))) == 1
    finally:
        store.close()


def test_concurrent_writers_and_readers(store: IndexStore) -> None:
    store.create_index("docs", DIMENSION, kind="hnsw", params=APPROXIMATE_KINDS["hnsw"])
    vectors = random_vectors(800)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for batch in range(10):
                start = worker * 200 + batch * 20
                store.upsert(
                    "docs", [Document(id=f"doc-{i}", vector=vectors[i]) for i in range(start, start + 20)]
                )
                store.delete_documents("docs", [f"doc-{start}"])
        except BaseException as error:
            errors.append(error)

    def read() -> None:
        try:
            for _ in range(40):
                for hits in store.search("docs", [Query(vector=v) for v in vectors[:5]], k=5):
                    assert len({hit.id for hit in hits}) == len(hits)
                store.get_index("docs")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)] + [
        threading.Thread(target=read) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert store.get_index("docs").document_count == 800 - 40
    hits = store.search("docs", [Query(vector=vectors[i]) for i in (1, 221, 799)], k=1)
    assert [h[0].id for h in hits] == ["doc-1", "doc-221", "doc-799"]


# -- text ---------------------------------------------------------------------------------------


def test_text_is_embedded_with_the_encoder_and_served_back_as_vocabulary(
    data_dir: Path, encoder: Encoder
) -> None:
    store = IndexStore(data_dir, encoder)
    try:
        store.create_index("words")
        store.upsert(
            "words",
            [
                Document(id="k", text="king"),
                Document(id="q", text="queen"),
                Document(id="v", vector=np.ones(encoder.dimension)),  # no text: not vocabulary
                Document(id="c", text="cabbage"),
            ],
        )
        texts, vectors = store.texts_and_vectors("words")
        assert texts == ["king", "queen", "cabbage"]
        assert vectors.shape == (3, encoder.dimension) and vectors.dtype == np.float32
        np.testing.assert_allclose(vectors, encoder.encode(texts, normalize=True), atol=1e-5)
        assert store.dimension("words") == encoder.dimension and store.metric("words") == "cosine"
        hits = store.search("words", [Query(text="a monarch"), Query(text="a vegetable")], k=1)
        assert [h[0].id for h in hits] == ["k", "c"]
        store.create_index("small", 8)
        with pytest.raises(FailedPrecondition):
            store.upsert("small", [Document(text="no model of this dimension")])
    finally:
        store.close()
