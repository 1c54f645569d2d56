"""A sharded FAISS inner-product index with exact merging and exact full-ranking ranks.

The candidate matrix is cut into contiguous id ranges, one FAISS index per
shard. CPU shards are searched one after another (each FAISS search already uses
every core); GPU shards in parallel threads. Their top-k lists are merged on
the driver.

Ordering contract, shared by :meth:`ShardedIndex.search` and
:meth:`ShardedIndex.rank_of`: candidates are ordered by score, descending,
and equal scores by id, ascending. "Equal" means within
:func:`hbt.eval.metrics.tie_tolerance` (1e-6 of the query's score scale): BLAS
can score identical vectors a few ulps apart depending on their column
position, and such noise must not decide an order. With the default ``flat`` index the merged
top-k is exactly the unsharded top-k under that order: a shard's list is only
cut where its next score is strictly lower than its k-th, otherwise that shard
is searched again with a larger k, so a tie straddling a shard's cut cannot
drop a lower id. ``ivf`` and ``hnsw`` are approximate by design.

``rank_of`` gives the exact rank of given candidates in the *full* ranking (what
mAP needs): it scores each query against every shard with one matrix product
per block of queries, reads the relevant candidates' scores out of that same
product (never recomputed, so a candidate compares equal to itself and to its
exact duplicates) and counts the candidates ordered before each of them.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from hbt.eval.metrics import tie_tolerance

INDEX_KINDS = ("flat", "ivf", "hnsw")


@dataclass
class _Shard:
    start: int
    vectors: np.ndarray
    index: Any
    on_cpu: bool = True


def _build_faiss(vectors: np.ndarray, kind: str, nlist: int, nprobe: int, hnsw_m: int, gpu: int | None, res: Any):
    """One shard's FAISS index (a name -> builder table in spirit: ``kind`` picks the structure)."""
    import faiss

    d = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        # FAISS wants ~39 training points per list; clamp so small shards still train.
        nlist = max(1, min(nlist, vectors.shape[0] // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"unknown index kind {kind!r}; choose from {INDEX_KINDS}")
    if gpu is not None and kind != "hnsw":  # FAISS has no GPU HNSW
        index = faiss.index_cpu_to_gpu(res, gpu, index)
    index.add(vectors)
    return index


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merges per-shard top lists ``(scores, global ids)`` into the top-k under the module's ordering contract.

    Shards searched in this process and shards held by search actors
    (:mod:`hbt.eval.search`) are merged by this one function.
    """
    scores = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf)
    sort_ids = np.where(ids >= 0, ids, np.iinfo(np.int64).max)
    order = np.lexsort((sort_ids, -scores), axis=-1)
    scores = np.take_along_axis(scores, order, axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    # Runs of scores within the tie tolerance of each other are one tie: order them by id.
    tol = tie_tolerance(np.where(np.isfinite(scores[:, :1]), scores[:, :1], 0.0))
    gaps = np.diff(np.nan_to_num(scores, neginf=-1e30), axis=1) < -tol
    tie_group = np.concatenate([np.zeros((scores.shape[0], 1), np.int64), np.cumsum(gaps, axis=1)], axis=1)
    order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), tie_group), axis=-1)[:, :k]
    scores = np.take_along_axis(scores, order, axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return scores, ids


def pad_relevant(relevant: Sequence[Any]) -> tuple[list[np.ndarray], np.ndarray]:
    """Relevant-id lists as int64 arrays and one (B, W) matrix padded with -1 (W: the longest list)."""
    rel = [np.asarray(r, dtype=np.int64) for r in relevant]
    pad = np.full((len(rel), max((r.size for r in rel), default=0)), -1, np.int64)
    for i, r in enumerate(rel):
        pad[i, : r.size] = r
    return rel, pad


def count_before(S: np.ndarray, col_ids: np.ndarray, R: np.ndarray, pad: np.ndarray, tol: np.ndarray,
                 pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """Per query and relevant candidate, how many of the scored columns the full ranking puts before it.

    ``#{c : s_c > r + tol} + #{c : |s_c - r| <= tol and id_c < id_r}``: the
    order :meth:`ShardedIndex.search` uses. Summed over disjoint column sets
    (the shards of :mod:`hbt.eval.search`), plus one, it is the exact rank.

    Args:
        S: (B, C) scores of B queries against C columns.
        col_ids: (C,) the columns' global ids.
        R: (B, W) each query's relevant scores (padding where ``pad`` < 0).
        pad: (B, W) the relevant candidates' global ids, -1 as padding.
        tol: (B,) the tie tolerance per query.
        pool: threads to count row groups with (numpy releases the GIL in ufuncs).

    Returns:
        (B, W) int64 counts.
    """
    if S.shape[1] == 0:
        return np.zeros(pad.shape, np.int64)
    t = np.asarray(tol)[:, None]

    def count(g: np.ndarray) -> np.ndarray:
        # One relevant column at a time: a (rows x C) difference stays in cache, where the
        # (rows x W x C) one (W = 11 answers a multilingual query) streamed through memory.
        Sg, tg = S[g], t[g]
        out = np.empty((g.size, pad.shape[1]), np.int64)
        for w in range(pad.shape[1]):
            diff = Sg - R[g, w, None]
            ties = (np.abs(diff) <= tg) & (col_ids[None, :] < pad[g, w, None])
            out[:, w] = np.count_nonzero(diff > tg, axis=1) + np.count_nonzero(ties, axis=1)
        return out

    groups = np.array_split(np.arange(S.shape[0]), max(1, min(S.shape[0] // 16, os.cpu_count() or 1)))
    parts = list(pool.map(count, groups)) if pool is not None else [count(g) for g in groups]
    return np.concatenate(parts, axis=0).astype(np.int64)


class ShardedIndex:
    """Inner-product search over contiguous shards of a candidate matrix.

    Args:
        vectors: (N, d) candidate embeddings; ids are row numbers.
        num_shards: number of shards (capped at N).
        kind: ``flat`` (exact), ``ivf`` or ``hnsw``.
        ivf_nlist: IVF lists per shard (capped for small shards).
        ivf_nprobe: IVF lists probed per query.
        hnsw_m: HNSW graph degree.
        use_gpu: put shards on GPUs (round robin); ``None`` means "when
            ``faiss.get_num_gpus() > 0``".
        max_workers: threads searching GPU shards at once, and computing ranks (default:
            shards, at most CPUs). CPU shards are searched one after another, each
            search using every core.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        num_shards: int = 1,
        kind: str = "flat",
        ivf_nlist: int = 1024,
        ivf_nprobe: int = 32,
        hnsw_m: int = 32,
        use_gpu: bool | None = None,
        max_workers: int | None = None,
    ) -> None:
        import faiss

        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose from {INDEX_KINDS}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D, got shape {vectors.shape}")
        self.kind = kind
        self.ntotal, self.dim = vectors.shape
        ngpu = faiss.get_num_gpus() if use_gpu is not False else 0
        self._gpu_res = [faiss.StandardGpuResources() for _ in range(ngpu)] if ngpu else []
        n = max(1, min(num_shards, self.ntotal))
        bounds = np.linspace(0, self.ntotal, n + 1).astype(np.int64)
        self._shards: list[_Shard] = []
        for i in range(n):
            s, e = int(bounds[i]), int(bounds[i + 1])
            gpu = i % ngpu if ngpu else None
            res = self._gpu_res[gpu] if ngpu else None
            part = vectors[s:e]
            index = _build_faiss(part, kind, ivf_nlist, ivf_nprobe, hnsw_m, gpu, res) if e > s else None
            self._shards.append(_Shard(s, part, index, on_cpu=gpu is None or kind == "hnsw"))
        self._pool = ThreadPoolExecutor(max_workers or max(1, min(n, os.cpu_count() or 1)))

    @classmethod
    def from_config(cls, vectors: np.ndarray, eval_cfg: Any) -> "ShardedIndex":
        """Builds the index an :class:`hbt.config.EvalConfig` describes."""
        return cls(
            vectors,
            num_shards=eval_cfg.num_shards,
            kind=eval_cfg.index,
            ivf_nlist=eval_cfg.ivf_nlist,
            ivf_nprobe=eval_cfg.ivf_nprobe,
            hnsw_m=eval_cfg.hnsw_m,
        )

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    # -- top-k search ---------------------------------------------------------

    def _search_shard(self, shard: _Shard, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = shard.vectors.shape[0]
        nq = queries.shape[0]
        if shard.index is None or n == 0:
            return np.full((nq, 0), -np.inf, np.float32), np.full((nq, 0), -1, np.int64)
        kk = min(k + 1, n)
        scores, ids = self._faiss_search(shard, queries, kk)
        if self.kind == "flat" and kk < n and k <= n:
            # A tie across the cut (k-th score == last returned score) may hide a
            # lower id with the same score: search those queries again, deeper.
            todo = np.flatnonzero(scores[:, -1] >= scores[:, k - 1] - tie_tolerance(scores[:, 0]))
            # GPU FAISS returns at most 2048 per query; past that a tie stays unresolved.
            limit = n if shard.on_cpu else min(n, 2048)
            while todo.size and kk < limit:
                kk = min(kk * 2, limit)
                s2, i2 = self._faiss_search(shard, queries[todo], kk)
                pad = kk - scores.shape[1]
                scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
                ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
                scores[todo], ids[todo] = s2, i2
                todo = todo[s2[:, -1] >= s2[:, k - 1] - tie_tolerance(s2[:, 0])]
        ids = np.where(ids >= 0, ids + shard.start, -1)
        return scores, ids

    def _faiss_search(self, shard: _Shard, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "hnsw":
            shard.index.hnsw.efSearch = max(64, k)
        scores, ids = shard.index.search(queries, k)
        return scores, ids.astype(np.int64)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k candidates of each query over all shards.

        Args:
            queries: (Q, d) query embeddings.
            k: results per query.

        Returns:
            (scores, ids), each (Q, k), by score descending then id ascending;
            padded with ``-inf`` / ``-1`` when fewer than k candidates exist.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if all(s.on_cpu for s in self._shards):
            # FAISS already spreads one CPU search over every core (OpenMP); shards searched
            # at once would oversubscribe them (2 shards took 1.8x one index at 10^6 vectors).
            parts = [self._search_shard(s, queries, k) for s in self._shards]
        else:
            parts = list(self._pool.map(lambda s: self._search_shard(s, queries, k), self._shards))
        return merge_topk(parts, k)

    # -- exact ranks in the full ranking ----------------------------------------

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """The full (Q, N) score matrix, one matrix product per shard (for small pools)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        parts = list(self._pool.map(lambda s: queries @ s.vectors.T, self._shards))
        return np.concatenate(parts, axis=1)

    def rank_of(self, queries: np.ndarray, relevant: Sequence[np.ndarray], block: int = 512) -> list[np.ndarray]:
        """Exact 1-based ranks of each query's relevant candidates in the full ranking.

        ``rank(r) = 1 + #{c : s_c > s_r + tol} + #{c < r : |s_c - s_r| <= tol}``
        with ``tol`` from :func:`~hbt.eval.metrics.tie_tolerance`: the order
        :meth:`search` uses. Scores come from one matrix product per block of
        queries and shard, and ``s_r`` is read from that product.

        Args:
            queries: (Q, d) query embeddings.
            relevant: per query, the global ids of its relevant candidates.
            block: queries scored at once (memory: block x N floats).

        Returns:
            Per query, an int64 array of ranks in the order of ``relevant``.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if len(relevant) != queries.shape[0]:
            raise ValueError(f"{queries.shape[0]} queries but {len(relevant)} relevant lists")
        out: list[np.ndarray] = []
        idx = np.arange(self.ntotal)
        for s in range(0, queries.shape[0], block):
            S = self.scores(queries[s : s + block])
            rel, pad = pad_relevant(relevant[s : s + block])
            if pad.shape[1] == 0:
                out.extend(np.zeros(0, np.int64) for _ in rel)
                continue
            R = np.take_along_axis(S, np.maximum(pad, 0), axis=1)  # (B, W) relevant scores
            tol = tie_tolerance(S.max(axis=1))
            counts = count_before(S, idx, R, pad, tol, self._pool) + 1
            out.extend(counts[i, : r.size].astype(np.int64) for i, r in enumerate(rel))
        return out

    def close(self) -> None:
        """Stops the search threads."""
        self._pool.shutdown(wait=False)
