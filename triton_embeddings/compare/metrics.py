"""Retrieval agreement between two embedding spaces, and retrieval quality against relevance labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

AGREEMENT_KS = (1, 10, 100)


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def top_k(queries: np.ndarray, docs: np.ndarray, k: int, exclude: np.ndarray | None = None,
          chunk: int = 65_536) -> np.ndarray:
    """Indices of the k most cosine-similar docs per query, best first; `exclude[i]` (a doc index, or -1)
    is never returned for query i (a query sampled from the corpus is not its own neighbour)."""
    q, k = normalize(queries), min(k, len(docs) - (exclude is not None))
    best_idx = np.empty((len(q), 0), dtype=np.int64)
    best_sim = np.empty((len(q), 0), dtype=np.float32)
    for start in range(0, len(docs), chunk):
        sims = q @ normalize(docs[start:start + chunk]).T
        if exclude is not None:
            rows = np.nonzero((exclude >= start) & (exclude < start + chunk))[0]
            sims[rows, exclude[rows] - start] = -np.inf
        idx = np.broadcast_to(np.arange(start, start + sims.shape[1]), sims.shape)
        best_sim = np.concatenate([best_sim, sims], axis=1)
        best_idx = np.concatenate([best_idx, idx], axis=1)
        keep = np.argpartition(-best_sim, min(k, best_sim.shape[1] - 1), axis=1)[:, :k]
        best_sim = np.take_along_axis(best_sim, keep, 1)
        best_idx = np.take_along_axis(best_idx, keep, 1)
    order = np.argsort(-best_sim, axis=1, kind="stable")
    return np.take_along_axis(best_idx, order, 1)


@dataclass(frozen=True)
class Agreement:
    """How far endpoint B retrieves what the reference A retrieves, over the same queries and corpus."""

    overlap: dict[int, float]  # k -> mean |top-k(A) ∩ top-k(B)| / k
    top1: float  # share of queries whose nearest neighbour is the same
    spearman: float  # rank correlation of query-doc similarities over sampled pairs
    pairs: int


def overlap_at_k(top_a: np.ndarray, top_b: np.ndarray, k: int) -> float:
    k = min(k, top_a.shape[1])
    shared = [len(set(a[:k]) & set(b[:k])) for a, b in zip(top_a, top_b)]
    return float(np.mean(shared) / k)


def sampled_pairs(n_queries: int, n_docs: int, max_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random (query, doc) index pairs, about `max_pairs` of them, the same for both spaces."""
    per_query = max(1, min(n_docs, max_pairs // max(n_queries, 1)))
    rng = np.random.default_rng(seed)
    docs = np.stack([rng.choice(n_docs, per_query, replace=False) for _ in range(n_queries)])
    return np.repeat(np.arange(n_queries), per_query), docs.ravel()


def pair_similarities(queries: np.ndarray, docs: np.ndarray, qi: np.ndarray, di: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", normalize(queries)[qi], normalize(docs)[di])


def agreement(a_queries, a_docs, b_queries, b_docs, exclude=None, max_pairs: int = 200_000,
              ks=AGREEMENT_KS) -> Agreement:
    """Overlap@k, top-1 agreement and Spearman of similarities of B against A."""
    kmax = max(ks)
    top_a = top_k(a_queries, a_docs, kmax, exclude)
    top_b = top_k(b_queries, b_docs, kmax, exclude)
    qi, di = sampled_pairs(len(a_queries), len(a_docs), max_pairs)
    rho = spearmanr(pair_similarities(a_queries, a_docs, qi, di), pair_similarities(b_queries, b_docs, qi, di))
    return Agreement(
        overlap={k: overlap_at_k(top_a, top_b, k) for k in ks},
        top1=float(np.mean(top_a[:, 0] == top_b[:, 0])),
        spearman=float(rho.statistic),
        pairs=len(qi),
    )


def ndcg_at_k(ranked: list[str], grades: dict[str, int], k: int = 10) -> float:
    """nDCG@k with linear gain (trec_eval's ndcg_cut, as BEIR reports it)."""
    gains = [grades.get(d, 0) for d in ranked[:k]]
    dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal))
    return float(dcg / idcg) if idcg > 0 else 0.0


def recall_at_k(ranked: list[str], grades: dict[str, int], k: int = 100) -> float:
    relevant = {d for d, g in grades.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


@dataclass(frozen=True)
class Quality:
    ndcg10: float
    recall100: float
    queries: int  # labelled queries evaluated


def quality(queries: np.ndarray, docs: np.ndarray, query_ids: list[str], doc_ids: list[str],
            qrels: dict[str, dict[str, int]]) -> Quality:
    """Mean nDCG@10 and recall@100 over the queries that have labels."""
    labelled = [i for i, q in enumerate(query_ids) if any(g > 0 for g in qrels.get(q, {}).values())]
    if not labelled:
        raise ValueError("no query has a positive relevance label (do the qrels ids match the query ids?)")
    top = top_k(queries[labelled], docs, 100)
    ndcg, recall = [], []
    for row, qi in zip(top, labelled):
        ranked = [doc_ids[j] for j in row]
        ndcg.append(ndcg_at_k(ranked, qrels[query_ids[qi]]))
        recall.append(recall_at_k(ranked, qrels[query_ids[qi]]))
    return Quality(float(np.mean(ndcg)), float(np.mean(recall)), len(labelled))
