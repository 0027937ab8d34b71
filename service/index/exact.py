"""Exact search over stored vectors: exact scores, the best k, and the re-ranking of quantized candidates."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.index.model import Metric

# Quantized kinds (ivf_pq, sq8) fetch max(k * RERANK_FACTOR, RERANK_MINIMUM) candidates and re-score
# them exactly with the stored vectors, so their scores are exact and their recall close to flat's.
RERANK_FACTOR = 4
RERANK_MINIMUM = 32

# (faiss_id, score) pairs per query, best first.
Ranking = list[list[tuple[int, float]]]


def candidates_to_rerank(k: int) -> int:
    """How many candidates a quantized structure is asked for, to re-rank into k hits."""
    return max(k * RERANK_FACTOR, RERANK_MINIMUM)


def exact_scores(metric: Metric, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Scores of every query against every vector: squared distances for L2, inner products otherwise."""
    if metric is Metric.L2:
        return np.maximum(
            (queries**2).sum(axis=1)[:, None] - 2 * queries @ vectors.T + (vectors**2).sum(axis=1)[None, :],
            0.0,
        )
    return queries @ vectors.T


def best(metric: Metric, scores: np.ndarray, candidates: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k best (id, score) pairs of one query's scores, best first."""
    ordering = scores if metric is Metric.L2 else -scores
    k = min(k, len(candidates))
    top = np.argpartition(ordering, k - 1)[:k] if k < len(candidates) else np.arange(len(candidates))
    top = top[np.argsort(ordering[top], kind="stable")]
    return [(int(candidates[i]), float(scores[i])) for i in top]


def exact_search(
    metric: Metric, queries: np.ndarray, vectors: np.ndarray, candidates: np.ndarray, k: int
) -> Ranking:
    """Exact search of the queries over the candidates, whose vectors are `vectors`, in order."""
    scores = exact_scores(metric, queries, vectors)
    return [best(metric, row, candidates, k) for row in scores]


def rerank(
    metric: Metric,
    queries: np.ndarray,
    candidates: Ranking,
    k: int,
    vectors_of: Callable[[np.ndarray], np.ndarray],
) -> Ranking:
    """Each query's candidates re-scored exactly with their stored vectors (`vectors_of` their ids,
    asked once for all queries); the k best kept."""
    unique = np.array(sorted({faiss_id for hits in candidates for faiss_id, _ in hits}), dtype=np.int64)
    if not len(unique):
        return [[] for _ in candidates]
    vectors = vectors_of(unique)
    row_of = {int(faiss_id): row for row, faiss_id in enumerate(unique)}
    results = []
    for query, hits in zip(queries, candidates, strict=True):
        ids = np.array([faiss_id for faiss_id, _ in hits], dtype=np.int64)
        if not len(ids):
            results.append([])
            continue
        rows = [row_of[int(faiss_id)] for faiss_id in ids]
        results.append(best(metric, exact_scores(metric, query[None, :], vectors[rows])[0], ids, k))
    return results
