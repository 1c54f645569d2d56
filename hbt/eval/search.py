"""Embeddings that stay in the cluster, and search by actors that hold them: the driver only merges.

The encoder actors' output blocks (``{row, embedding}``) stay in Ray's object
store. An :class:`EmbeddingStore` is the driver's map of them: which block
holds which unique text, no vectors. :class:`LazyEmbeddings` is a view of the
store in a benchmark's text order; scorers slice it like an array, and
``np.asarray`` fetches just the rows asked for (queries: a few thousand).

Candidates are never fetched. :func:`make_index` over a lazy view gives an
:class:`ActorIndex`: each of ``eval.num_shards`` :class:`SearchShard` actors
(on a GPU when ``eval.gpus_per_encoder > 0``: FAISS GPU where installed) owns
a disjoint set of blocks, builds a FAISS index of its part of a pool, and
returns top-k lists and the per-query counts an exact rank needs; the driver
merges them with the same functions :class:`~hbt.eval.index.ShardedIndex`
uses (:func:`~hbt.eval.index.merge_topk`, :func:`~hbt.eval.index.count_before`),
so both give the same results. On one machine the same actors run locally.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from hbt.eval.index import ShardedIndex, count_before, merge_topk, pad_relevant
from hbt.eval.metrics import tie_tolerance


class EmbeddingStore:
    """Where each unique text's embedding sits in the object store (block, offset), and the search actors.

    Args:
        refs: object refs of numpy blocks ``{"row": (n,), "embedding": (n, d)}``.
        rows: per block, its ``row`` column (the unique-text ids it holds).
        count: the number of unique texts (every id in ``0..count-1`` must appear once).
        eval_cfg: ``num_shards``, ``index`` options and the actors' resources.

    Raises:
        RuntimeError: an id missing or held twice.
    """

    def __init__(self, refs: list[Any], rows: Sequence[np.ndarray], count: int, eval_cfg: Any) -> None:
        self.refs = list(refs)
        self.block_of = np.full(count, -1, np.int64)
        self.offset_of = np.full(count, -1, np.int64)
        for b, r in enumerate(rows):
            r = np.asarray(r, np.int64)
            if (self.block_of[r] >= 0).any():
                raise RuntimeError("a text came back twice from the encoder actors")
            self.block_of[r] = b
            self.offset_of[r] = np.arange(r.size)
        if (self.block_of < 0).any():
            raise RuntimeError(f"{int((self.block_of < 0).sum())} of {count} texts came back without an embedding")
        self.eval_cfg = eval_cfg
        self._cache: dict[int, np.ndarray] = {}
        self._actors: list[Any] | None = None
        self._pools = 0

    @property
    def count(self) -> int:
        return self.block_of.size

    @property
    def nbytes(self) -> int:
        """The embeddings' size as float32 (what fetching them all would cost the driver)."""
        return self.count * self._dim() * 4 if self.count else 0

    def take(self, items: np.ndarray) -> np.ndarray:
        """The embeddings of unique texts ``items`` (fetched once, then cached on the driver: queries only)."""
        import ray

        items = np.asarray(items, np.int64)
        missing = np.unique(items[[int(i) not in self._cache for i in items]]) if items.size else items
        if missing.size:
            blocks = self.block_of[missing]
            tasks = {int(b): _rows_of_block.remote(self.refs[b], self.offset_of[missing[blocks == b]])
                     for b in np.unique(blocks)}
            for b, got in zip(tasks, ray.get(list(tasks.values()))):
                for i, v in zip(missing[blocks == b], got):
                    self._cache[int(i)] = v
        if not items.size:
            return np.zeros((0, self._dim()), np.float32)
        return np.stack([self._cache[int(i)] for i in items]).astype(np.float32, copy=False)

    def _dim(self) -> int:
        return next(iter(self._cache.values())).shape[0] if self._cache else int(self.take(np.array([0])).shape[1])

    def actors(self) -> list[Any]:
        """The search actors (started on first use), each owning a contiguous run of blocks."""
        import ray

        if self._actors is None:
            e = self.eval_cfg
            res = ray.cluster_resources()
            n = max(1, min(e.num_shards, len(self.refs)))
            gpus = e.gpus_per_encoder if e.gpus_per_encoder > 0 and res.get("GPU", 0) > 0 else 0
            if gpus:  # a GPU index per shard: no more shards than GPU slots, or one would wait forever
                n = max(1, min(n, int(res["GPU"] // gpus)))
            # Shards share the CPUs when there are more of them than whole CPUs (one machine).
            cpus = min(e.cpus_per_encoder, res.get("CPU", 1) / n)
            bounds = np.linspace(0, len(self.refs), n + 1).astype(int)
            # Outside any placement group the caller runs in (a Tune trial's holds only
            # its trainable): the search actors take free resources like the encoders do.
            actor = ray.remote(SearchShard).options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy=_OUTSIDE_PG())
            self._actors = [actor.remote([self.refs[i] for i in range(bounds[j], bounds[j + 1])], e.index,
                                         e.ivf_nlist, e.ivf_nprobe, e.hnsw_m, max(1, int(e.cpus_per_encoder)))
                            for j in range(n)]
        return self._actors

    def new_pool_id(self) -> int:
        self._pools += 1
        return self._pools

    def close(self) -> None:
        """Stops the search actors; the blocks go when the last reference to them does."""
        import ray

        for a in self._actors or []:
            ray.kill(a)
        self._actors = None
        self._cache.clear()


def _rows_of_block_impl(block: dict[str, np.ndarray], offsets: np.ndarray) -> np.ndarray:
    return np.asarray(block["embedding"][offsets], np.float32)


def _row_ids_impl(block: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(block["row"], np.int64)


def _OUTSIDE_PG():
    """A scheduling strategy that does not inherit the caller's placement group."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=None)


class _Task:
    """A Ray task made on first call (Ray is imported lazily, like everywhere in hbt)."""

    def __init__(self, fn) -> None:
        self.fn, self._task = fn, None

    def remote(self, *args: Any) -> Any:
        if self._task is None:
            import ray

            self._task = ray.remote(num_cpus=0, scheduling_strategy=_OUTSIDE_PG())(self.fn)
        return self._task.remote(*args)


_rows_of_block = _Task(_rows_of_block_impl)
_row_ids = _Task(_row_ids_impl)


def store_from_refs(refs: list[Any], count: int, eval_cfg: Any) -> EmbeddingStore:
    """An :class:`EmbeddingStore` over numpy block refs; only each block's ``row`` column reaches the driver."""
    import ray

    return EmbeddingStore(refs, ray.get([_row_ids.remote(r) for r in refs]), count, eval_cfg)


class LazyEmbeddings:
    """Rows of an :class:`EmbeddingStore` in a text order; sliced like an array, fetched by ``np.asarray``."""

    def __init__(self, store: EmbeddingStore, items: np.ndarray) -> None:
        self.store, self.items = store, np.asarray(items, np.int64)

    def __len__(self) -> int:
        return self.items.size

    @property
    def shape(self) -> tuple[int, int]:
        return (self.items.size, self.store._dim())

    def __getitem__(self, idx: Any) -> "LazyEmbeddings":
        return LazyEmbeddings(self.store, self.items[idx])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.store.take(self.items)
        return out if dtype is None else out.astype(dtype)


class SearchShard:
    """A Ray actor holding a disjoint share of the embedding blocks; searches its part of a pool.

    A pool is a list of positions (the scorer's candidate order), each naming a
    unique text; the shard indexes the positions whose text it holds, so
    results come back as pool positions, ready to merge.
    """

    def __init__(self, refs: list[Any], kind: str, nlist: int, nprobe: int, hnsw_m: int, threads: int) -> None:
        import ray
        import torch

        torch.set_num_threads(threads)
        blocks = ray.get(refs) if refs else []
        self.items = np.concatenate([np.asarray(b["row"], np.int64) for b in blocks]) if blocks else np.zeros(0, np.int64)
        self.emb = (np.concatenate([np.asarray(b["embedding"], np.float32) for b in blocks]) if blocks
                    else np.zeros((0, 0), np.float32))
        order = np.argsort(self.items)
        self._sorted, self._row = self.items[order], order
        self.opts = {"kind": kind, "ivf_nlist": nlist, "ivf_nprobe": nprobe, "hnsw_m": hnsw_m}
        self.pools: dict[int, tuple[np.ndarray, np.ndarray, ShardedIndex | None]] = {}

    def open_pool(self, pool_id: int, pool_items: np.ndarray) -> int:
        """Indexes this shard's part of a pool; returns how many positions it holds."""
        pos = np.searchsorted(self._sorted, pool_items)
        mine = (pos < self._sorted.size) & (self._sorted[np.minimum(pos, max(self._sorted.size - 1, 0))] == pool_items) \
            if self._sorted.size else np.zeros(pool_items.size, bool)
        positions = np.flatnonzero(mine).astype(np.int64)
        vectors = self.emb[self._row[pos[mine]]] if positions.size else np.zeros((0, 1), np.float32)
        index = ShardedIndex(vectors, 1, use_gpu=None, **self.opts) if positions.size else None
        self.pools[pool_id] = (positions, vectors, index)
        return int(positions.size)

    def search(self, pool_id: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        positions, _, index = self.pools[pool_id]
        if index is None:
            return np.full((queries.shape[0], 0), -np.inf, np.float32), np.full((queries.shape[0], 0), -1, np.int64)
        scores, ids = index.search(queries, min(k, positions.size))
        return scores, np.where(ids >= 0, positions[np.maximum(ids, 0)], -1)

    def _scores(self, pool_id: int, queries: np.ndarray) -> np.ndarray:
        positions, vectors, _ = self.pools[pool_id]
        return queries @ vectors.T if positions.size else np.zeros((queries.shape[0], 0), np.float32)

    def stats(self, pool_id: int, queries: np.ndarray, pad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query, the max score here (-inf when empty), and the relevant scores this shard holds (NaN elsewhere)."""
        positions = self.pools[pool_id][0]
        S = self._scores(pool_id, queries)
        top = S.max(axis=1) if S.shape[1] else np.full(queries.shape[0], -np.inf, np.float32)
        R = np.full(pad.shape, np.nan, np.float32)  # float32, as ShardedIndex.rank_of reads it from its product
        where = np.searchsorted(positions, pad)
        held = (pad >= 0) & (where < positions.size) & (positions[np.minimum(where, max(positions.size - 1, 0))] == pad) \
            if positions.size else np.zeros(pad.shape, bool)
        rows = np.nonzero(held)
        R[rows] = S[rows[0], where[rows]]
        return top, R

    def count(self, pool_id: int, queries: np.ndarray, R: np.ndarray, pad: np.ndarray, tol: np.ndarray) -> np.ndarray:
        """:func:`~hbt.eval.index.count_before` over this shard's part of the pool."""
        return count_before(self._scores(pool_id, queries), self.pools[pool_id][0], R, pad, tol)

    def close_pool(self, pool_id: int) -> None:
        positions, vectors, index = self.pools.pop(pool_id)
        if index is not None:
            index.close()


class ActorIndex:
    """The :class:`~hbt.eval.index.ShardedIndex` interface over :class:`SearchShard` actors.

    Args:
        store: the embeddings.
        pool_items: the pool, as unique-text ids in the scorer's candidate order.
    """

    def __init__(self, store: EmbeddingStore, pool_items: np.ndarray) -> None:
        import ray

        self.store, self.actors = store, store.actors()
        self.pool_id = store.new_pool_id()
        self.ntotal = int(np.asarray(pool_items).size)
        ref = ray.put(np.asarray(pool_items, np.int64))
        held = ray.get([a.open_pool.remote(self.pool_id, ref) for a in self.actors])
        if sum(held) != self.ntotal:
            raise RuntimeError(f"the search actors hold {sum(held)} of the pool's {self.ntotal} candidates")

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k pool positions per query, merged exactly as :meth:`ShardedIndex.search` merges shards."""
        import ray

        q = np.ascontiguousarray(np.asarray(queries), dtype=np.float32)
        parts = ray.get([a.search.remote(self.pool_id, q, k) for a in self.actors])
        return merge_topk(parts, k)

    def rank_of(self, queries: Any, relevant: Sequence[np.ndarray], block: int = 512) -> list[np.ndarray]:
        """Exact ranks in the full ranking of the pool (:meth:`ShardedIndex.rank_of`'s contract), in two rounds."""
        import ray

        q_all = np.ascontiguousarray(np.asarray(queries), dtype=np.float32)
        if len(relevant) != q_all.shape[0]:
            raise ValueError(f"{q_all.shape[0]} queries but {len(relevant)} relevant lists")
        out: list[np.ndarray] = []
        for s in range(0, q_all.shape[0], block):
            q = q_all[s : s + block]
            rel, pad = pad_relevant(relevant[s : s + block])
            if pad.shape[1] == 0:
                out.extend(np.zeros(0, np.int64) for _ in rel)
                continue
            q_ref = ray.put(q)
            # Round 1: each relevant score from the shard holding it, and each query's best score.
            stats = ray.get([a.stats.remote(self.pool_id, q_ref, pad) for a in self.actors])
            top = np.max([t for t, _ in stats], axis=0)
            R = np.nanmax(np.stack([r for _, r in stats]), axis=0)
            R = np.where(pad >= 0, R, np.float32(0.0))
            tol = tie_tolerance(top)
            # Round 2: every shard counts its candidates ranked before each relevant one.
            counts = sum(ray.get([a.count.remote(self.pool_id, q_ref, R, pad, tol) for a in self.actors])) + 1
            out.extend(counts[i, : r.size].astype(np.int64) for i, r in enumerate(rel))
        return out

    def close(self) -> None:
        """Frees this pool's indexes in the actors (the actors stay for the next pool)."""
        for a in self.actors:
            a.close_pool.remote(self.pool_id)


def make_index(vectors: Any, eval_cfg: Any) -> Any:
    """An index over ``vectors``: actors for a :class:`LazyEmbeddings` view, in this process for an array."""
    if isinstance(vectors, LazyEmbeddings):
        return ActorIndex(vectors.store, vectors.items)
    return ShardedIndex.from_config(vectors, eval_cfg)
