"""Index kinds, one strategy each: parameters, FAISS structure, training, search settings, removal."""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, ClassVar, Generic, TypeVar, cast

import faiss
import numpy as np

from service.errors import InvalidArgument
from service.index.model import (
    PARAMS_OF_KIND,
    HnswParams,
    IndexKind,
    IndexSpec,
    IvfParams,
    IvfPqParams,
    KindParams,
    Metric,
    Sq8Params,
)

log = logging.getLogger(__name__)

DEFAULT_NPROBE = 16
MAX_EF_SEARCH = 4096
HNSW_COMPACT_FRACTION = 0.2

# A search's override of the index's ef_search (hnsw) or nprobe (ivf kinds); None keeps the index's.
SearchTuning = int | None

P = TypeVar("P", bound=KindParams | None)
IvfKindParams = TypeVar("IvfKindParams", IvfParams, IvfPqParams)


def faiss_metric(metric: Metric) -> int:
    return faiss.METRIC_L2 if metric is Metric.L2 else faiss.METRIC_INNER_PRODUCT


def exact_structure(spec: IndexSpec) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlat(spec.dimension, faiss_metric(spec.metric)))


def _id_map_over(structure: faiss.Index, inner: type[faiss.Index]) -> bool:
    return isinstance(structure, faiss.IndexIDMap2) and isinstance(
        faiss.downcast_index(structure.index), inner
    )


def structure_ids(structure: faiss.Index) -> np.ndarray:
    """The ids a structure holds."""
    if isinstance(structure, faiss.IndexIVF):
        lists = structure.invlists
        chunks = [
            faiss.rev_swig_ptr(lists.get_ids(number), lists.list_size(number)).copy()
            for number in range(structure.nlist)
            if lists.list_size(number)
        ]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    return faiss.vector_to_array(structure.id_map).astype(np.int64, copy=False)


def memory_bytes(structure: faiss.Index) -> int:
    """Approximate bytes held by a structure: its codes, graph links, lists and id maps."""
    if isinstance(structure, faiss.IndexIDMap2):
        # id_map (8 bytes) plus the reverse hash map (about 32 bytes) per vector.
        return 40 * structure.ntotal + memory_bytes(faiss.downcast_index(structure.index))
    if isinstance(structure, faiss.IndexHNSW):
        links = structure.hnsw
        graph = 4 * links.neighbors.size() + 8 * links.offsets.size() + 4 * links.levels.size()
        return graph + memory_bytes(faiss.downcast_index(structure.storage))
    if isinstance(structure, faiss.IndexIVF):
        quantizer = faiss.downcast_index(structure.quantizer)
        return structure.ntotal * (structure.code_size + 8) + memory_bytes(quantizer)
    return structure.ntotal * structure.sa_code_size()


def _check_range(value: int, low: int, high: int, name: str) -> None:
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be between {low} and {high}, got {value}", field=name)


class KindStrategy(Generic[P]):
    """What depends on the kind of one index. These defaults are flat's: an exact structure, nothing to
    train, no per-call settings, vectors removed from the structure itself."""

    # Quantized kinds hold codes, not vectors, once trained: their best candidates are re-scored
    # exactly with the stored vectors.
    quantized: ClassVar[bool] = False
    # Kinds that train build their structure from a training on the stored vectors (trained_structure).
    trains: ClassVar[bool] = False

    def __init__(self, spec: IndexSpec) -> None:
        self.spec = spec
        # check_params and IndexSpec.from_json give every spec the parameters type of its kind.
        self.params = cast(P, spec.params)

    @classmethod
    def check_params(cls, params: P, dimension: int) -> P:
        """The parameters with defaults filled in; InvalidArgument when they do not fit."""
        return params

    def empty_structure(self) -> faiss.Index:
        """The structure of a new index; kinds that train start with an exact one."""
        return exact_structure(self.spec)

    def matches(self, structure: faiss.Index) -> bool:
        """Whether a structure read from a snapshot is one this index can have."""
        return (
            structure.d == self.spec.dimension
            and structure.metric_type == faiss_metric(self.spec.metric)
            and self._is_own_type(structure)
        )

    def _is_own_type(self, structure: faiss.Index) -> bool:
        return _id_map_over(structure, faiss.IndexFlat)

    def is_trained(self, structure: faiss.Index) -> bool:
        """For kinds that train: whether the trained structure (not the exact stand-in) is in place."""
        return False

    def rebuild_due(self, structure: faiss.Index, tombstones: int) -> bool:
        """Whether the structure should be replaced by one built afresh from the record (in the
        background): the trained structure once training_threshold vectors are stored, a graph without
        its tombstoned vectors once they are many."""
        return False

    def trained_structure(self, vectors: np.ndarray) -> faiss.Index:
        """For kinds that train: their structure, trained on `vectors` and still empty."""
        raise NotImplementedError

    def reranks(self, structure: faiss.Index) -> bool:
        """Whether searches of this structure re-score their candidates exactly."""
        return self.quantized and self.is_trained(structure)

    def check_search_settings(self, ef_search: int | None, nprobe: int | None) -> SearchTuning:
        """The per-call override that applies to the index's kind; InvalidArgument for any other."""
        if ef_search is not None:
            self._check_ef_search(ef_search)
        if nprobe is not None:
            self._check_nprobe(nprobe)
        return ef_search if ef_search is not None else nprobe

    def _check_ef_search(self, ef_search: int) -> None:
        raise InvalidArgument(
            f"ef_search applies to hnsw indexes; index {self.spec.name!r} is {self.spec.kind.value}",
            "ef_search",
        )

    def _check_nprobe(self, nprobe: int) -> None:
        raise InvalidArgument(
            f"nprobe applies to ivf_flat and ivf_pq indexes; index {self.spec.name!r} is "
            f"{self.spec.kind.value}",
            "nprobe",
        )

    def search_parameters(
        self, structure: faiss.Index, tuning: SearchTuning, k: int
    ) -> faiss.SearchParameters | None:
        """FAISS parameters of one search for the kind's own settings (a new object each call); None
        when it has none."""
        return None

    def remove(self, structure: faiss.Index, faiss_ids: np.ndarray, tombstones: set[int]) -> int:
        """Takes the vectors out of every search; returns how many left the structure itself."""
        structure.remove_ids(faiss.IDSelectorBatch(faiss_ids))
        return len(faiss_ids)


class FlatKind(KindStrategy[None]):
    """Exact search over every vector."""


class HnswKind(KindStrategy[HnswParams]):
    """A graph searched approximately, nothing to train. HNSW cannot remove vectors: deleted ones are
    tombstoned (excluded from every search) and the graph rebuilt once they pass HNSW_COMPACT_FRACTION."""

    @classmethod
    def check_params(cls, params: HnswParams, dimension: int) -> HnswParams:
        _check_range(params.m, 2, 256, "hnsw.m")
        _check_range(params.ef_construction, 1, 4096, "hnsw.ef_construction")
        _check_range(params.ef_search, 1, MAX_EF_SEARCH, "hnsw.ef_search")
        return params

    def empty_structure(self) -> faiss.Index:
        graph = faiss.IndexHNSWFlat(self.spec.dimension, self.params.m, faiss_metric(self.spec.metric))
        graph.hnsw.efConstruction = self.params.ef_construction
        return faiss.IndexIDMap2(graph)

    def _is_own_type(self, structure: faiss.Index) -> bool:
        return _id_map_over(structure, faiss.IndexHNSWFlat)

    def _check_ef_search(self, ef_search: int) -> None:
        if not 1 <= ef_search <= MAX_EF_SEARCH:
            raise InvalidArgument(
                f"ef_search must be between 1 and {MAX_EF_SEARCH}, got {ef_search}", "ef_search"
            )

    def search_parameters(
        self, structure: faiss.Index, tuning: SearchTuning, k: int
    ) -> faiss.SearchParameters | None:
        return faiss.SearchParametersHNSW(efSearch=max(tuning or self.params.ef_search, k))

    def remove(self, structure: faiss.Index, faiss_ids: np.ndarray, tombstones: set[int]) -> int:
        tombstones.update(faiss_ids.tolist())
        return 0

    def rebuild_due(self, structure: faiss.Index, tombstones: int) -> bool:
        return tombstones > HNSW_COMPACT_FRACTION * structure.ntotal


class _TrainingKind(KindStrategy[P]):
    """A kind that trains: exact search until training_threshold vectors are stored, then trained on all
    of them (see IndexSpec.training_threshold)."""

    trains = True

    def _untrained_structure(self) -> faiss.Index:
        raise NotImplementedError

    def _train(self, structure: faiss.Index, vectors: np.ndarray) -> None:
        structure.train(vectors)

    def rebuild_due(self, structure: faiss.Index, tombstones: int) -> bool:
        return structure.ntotal >= self.spec.training_threshold and not self.is_trained(structure)

    def trained_structure(self, vectors: np.ndarray) -> faiss.Index:
        log.info("index %s: training %s on %d vectors", self.spec.name, self.spec.kind.value, len(vectors))
        trained = self._untrained_structure()
        self._train(trained, vectors)
        return trained

    def _is_own_type(self, structure: faiss.Index) -> bool:
        return self.is_trained(structure) or super()._is_own_type(structure)


class _IvfKind(_TrainingKind[IvfKindParams]):
    """Inverted lists: a search probes the nprobe lists nearest to the query."""

    # The parameters' field names start with it (ivf_flat.nlist, ivf_pq.nprobe).
    field_prefix: ClassVar[str]

    @classmethod
    def check_params(cls, params: IvfKindParams, dimension: int) -> IvfKindParams:
        _check_range(params.nlist, 1, 65536, f"{cls.field_prefix}.nlist")
        if params.nprobe == 0:
            params = dataclasses.replace(params, nprobe=min(DEFAULT_NPROBE, params.nlist))
        _check_range(params.nprobe, 1, params.nlist, f"{cls.field_prefix}.nprobe")
        return params

    def is_trained(self, structure: faiss.Index) -> bool:
        return isinstance(structure, faiss.IndexIVF)

    def _check_nprobe(self, nprobe: int) -> None:
        nlist = self.params.nlist
        if not 1 <= nprobe <= nlist:
            raise InvalidArgument(
                f"nprobe must be between 1 and the index's nlist {nlist}, got {nprobe}", "nprobe"
            )

    def search_parameters(
        self, structure: faiss.Index, tuning: SearchTuning, k: int
    ) -> faiss.SearchParameters | None:
        if not self.is_trained(structure):
            return None
        return faiss.SearchParametersIVF(nprobe=tuning or self.params.nprobe)


class IvfFlatKind(_IvfKind[IvfParams]):
    field_prefix = "ivf_flat"

    def _untrained_structure(self) -> faiss.Index:
        dimension, metric = self.spec.dimension, faiss_metric(self.spec.metric)
        return faiss.IndexIVFFlat(faiss.IndexFlat(dimension, metric), dimension, self.params.nlist, metric)


_pq_training_lock = threading.Lock()


class IvfPqKind(_IvfKind[IvfPqParams]):
    """Inverted lists of product-quantized codes."""

    field_prefix = "ivf_pq"
    quantized = True

    @classmethod
    def check_params(cls, params: IvfPqParams, dimension: int) -> IvfPqParams:
        params = super().check_params(params, dimension)
        if params.m == 0:
            if dimension % 8:
                raise InvalidArgument(
                    f"the default ivf_pq.m (dimension / 8) needs a dimension divisible by 8, "
                    f"got {dimension}; set m to a divisor of the dimension",
                    field="ivf_pq.m",
                )
            params = dataclasses.replace(params, m=dimension // 8)
        _check_range(params.m, 1, dimension, "ivf_pq.m")
        if dimension % params.m:
            raise InvalidArgument(
                f"ivf_pq.m={params.m} must divide the dimension {dimension}", field="ivf_pq.m"
            )
        _check_range(params.nbits, 1, 16, "ivf_pq.nbits")
        return params

    def _untrained_structure(self) -> faiss.Index:
        dimension, metric = self.spec.dimension, faiss_metric(self.spec.metric)
        params = self.params
        return faiss.IndexIVFPQ(
            faiss.IndexFlat(dimension, metric), dimension, params.nlist, params.m, params.nbits, metric
        )

    def _train(self, structure: faiss.Index, vectors: np.ndarray) -> None:
        # PQ training runs one small k-means per sub-quantizer: OpenMP threads cost more in
        # synchronization than they gain there (measured slower on 2 cores), so it runs on one.
        with _pq_training_lock:
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                structure.train(vectors)
            finally:
                faiss.omp_set_num_threads(threads)


class Sq8Kind(_TrainingKind[Sq8Params]):
    """Every vector as 8-bit codes, from per-dimension ranges."""

    quantized = True

    def is_trained(self, structure: faiss.Index) -> bool:
        return _id_map_over(structure, faiss.IndexScalarQuantizer)

    def _untrained_structure(self) -> faiss.Index:
        return faiss.IndexIDMap2(
            faiss.IndexScalarQuantizer(
                self.spec.dimension, faiss.ScalarQuantizer.QT_8bit, faiss_metric(self.spec.metric)
            )
        )


_STRATEGIES: dict[IndexKind, type[KindStrategy[Any]]] = {
    IndexKind.FLAT: FlatKind,
    IndexKind.HNSW: HnswKind,
    IndexKind.IVF_FLAT: IvfFlatKind,
    IndexKind.IVF_PQ: IvfPqKind,
    IndexKind.SQ8: Sq8Kind,
}


def check_params(kind: IndexKind, params: KindParams | None, dimension: int) -> KindParams | None:
    """The kind's parameters with defaults filled in; InvalidArgument when they do not fit."""
    expected = PARAMS_OF_KIND[kind]
    if expected is None:
        if params is not None:
            raise InvalidArgument(f"kind {kind.value} takes no parameters", field="params")
        return None
    if params is None:
        params = expected()
    if type(params) is not expected:
        raise InvalidArgument(
            f"parameters {type(params).__name__} do not match kind {kind.value}", field="params"
        )
    return _STRATEGIES[kind].check_params(params, dimension)


def kind_strategy(spec: IndexSpec) -> KindStrategy[Any]:
    """The strategy of the index's kind, for that index."""
    return _STRATEGIES[spec.kind](spec)
