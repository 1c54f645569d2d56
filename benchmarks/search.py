"""Exact top-k search: hbt's sharded FAISS index vs one unsharded FAISS index vs numpy.

For each pool size (default 10^4, 10^5, 10^6 random L2-normalised 384-d float32
vectors; 1000 random normalised queries; k = 100), contenders, interleaved:

- ``sharded_S``: ``hbt.eval.index.ShardedIndex(vectors, S, kind="flat").search``
  (S = 1, 2, 4): per-shard ``IndexFlatIP`` searched from a thread pool, top-k
  lists merged with the id tie-break;
- ``faiss_flat``: one ``faiss.IndexFlatIP``, ``index.search`` (no merge, no tie check);
- ``numpy``: blocks of 100 queries: ``Q @ X.T``, ``argpartition`` for the top k,
  then a sort of those k.

2 threads everywhere (FAISS OpenMP, numpy's BLAS). Build time is reported apart
from search time. Each shard's memory is the FAISS index's own storage (an
``IndexFlatIP`` holds its vectors: N/S x 384 x 4 bytes) and is checked against the
growth of this process's RSS while the index is built.

``--ivfpq`` adds the approximate index that docs/scaling.md plans for large
pools: one IVF-PQ (nlist 1024, 48 x 8-bit codes) trained once on a sample,
cloned per shard (4 shards at the largest pool), with its bytes per vector,
search time and recall@k against exact search (random vectors are the worst case
for recall: real embeddings cluster).

Command (about 5-8 minutes on 2 cores; peak memory about 5 GiB at 10^6):

    timeout 1800 python benchmarks/search.py --pools 10000,100000,1000000 --queries 1000 --k 100 --reps 3 \
        --ivfpq --out benchmarks/results/search.json
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import claim_stdout, emit, log, machine, median, ratio, rotate, rss_bytes  # noqa: E402

DIM = 384
THREADS = 2


def random_unit(n: int, d: int, seed: int):
    """(n, d) float32 rows of unit norm, generated in chunks (10^6 x 384 is 1.5 GB)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 200_000):
        x = rng.standard_normal((min(200_000, n - s), d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s : s + x.shape[0]] = x
    return out


def numpy_topk(x, q, k: int, block: int = 100):
    """Exact top-k by blocked matmul + argpartition + sort of the k."""
    import numpy as np

    scores = np.empty((q.shape[0], k), np.float32)
    ids = np.empty((q.shape[0], k), np.int64)
    for s in range(0, q.shape[0], block):
        sc = q[s : s + block] @ x.T
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(sc, part, 1)
        o = np.argsort(-ps, axis=1, kind="stable")
        scores[s : s + block] = np.take_along_axis(ps, o, 1)
        ids[s : s + block] = np.take_along_axis(part, o, 1)
    return scores, ids


def flat_bytes(index) -> int:
    """Bytes an IndexFlat holds (its vectors)."""
    return int(index.ntotal) * int(index.d) * 4


def run_pool(n: int, nq: int, k: int, reps: int, shards: list[int], seed: int) -> dict[str, Any]:
    import faiss
    import numpy as np

    from hbt.eval.index import ShardedIndex

    log(f"pool {n}: generating")
    x = random_unit(n, DIM, seed)
    q = random_unit(nq, DIM, seed + 1)
    built: dict[str, Any] = {}
    build_s: dict[str, float] = {}
    memory: dict[str, Any] = {}
    for s in shards:
        gc.collect()
        r0 = rss_bytes()
        t0 = time.perf_counter()
        idx = ShardedIndex(x, s, kind="flat", use_gpu=False)
        build_s[f"sharded_{s}"] = time.perf_counter() - t0
        per_shard = [flat_bytes(sh.index) for sh in idx._shards]
        memory[f"sharded_{s}"] = {"bytes_per_shard": per_shard, "rss_growth_bytes": rss_bytes() - r0}
        built[f"sharded_{s}"] = idx
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    build_s["faiss_flat"] = time.perf_counter() - t0
    memory["faiss_flat"] = {"bytes": flat_bytes(flat)}

    contenders = [f"sharded_{s}" for s in shards] + ["faiss_flat", "numpy"]
    times: dict[str, list[float]] = {c: [] for c in contenders}
    results: dict[str, Any] = {}
    for rep in range(reps):
        for c in rotate(contenders, rep):
            t0 = time.perf_counter()
            if c == "faiss_flat":
                out = flat.search(q, k)
            elif c == "numpy":
                out = numpy_topk(x, q, k)
            else:
                out = built[c].search(q, k)
            times[c].append(time.perf_counter() - t0)
            results.setdefault(c, out)
        log(f"pool {n} rep {rep + 1}: " + ", ".join(f"{c} {times[c][-1]:.3f}s" for c in contenders))
    # Same scores from every contender (ids may differ on exact ties: compare scores).
    ref = results["faiss_flat"][0]
    max_score_diff = {c: float(np.abs(results[c][0] - ref).max()) for c in contenders}
    for idx in built.values():
        idx.close()
    med = {c: median(v) for c, v in times.items()}
    out = {
        "n": n,
        "search_s_median": {c: round(v, 4) for c, v in med.items()},
        "queries_per_s": {c: round(nq / v, 1) for c, v in med.items()},
        "ratios_time": {
            **{f"sharded_{s}/faiss_flat": ratio(med[f"sharded_{s}"], med["faiss_flat"]) for s in shards},
            **{f"sharded_{s}/numpy": ratio(med[f"sharded_{s}"], med["numpy"]) for s in shards},
        },
        "build_s": {c: round(v, 3) for c, v in build_s.items()},
        "memory": memory,
        "max_abs_score_diff_vs_faiss_flat": max_score_diff,
        "raw_search_s": {c: [round(t, 4) for t in v] for c, v in times.items()},
    }
    del built, flat, x
    gc.collect()
    return out


def run_ivfpq(n: int, nq: int, k: int, reps: int, num_shards: int, seed: int, nlist: int, m: int,
              nprobe: int) -> dict[str, Any]:
    """IVF-PQ per shard (quantizers trained once, cloned per shard) vs exact, at pool size n."""
    import faiss
    import numpy as np

    x = random_unit(n, DIM, seed)
    q = random_unit(nq, DIM, seed + 1)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(x)
    _, gt = exact.search(q, k)
    del exact
    rng = np.random.default_rng(seed + 2)
    sample = x[rng.choice(n, min(n, 64 * nlist), replace=False)]
    t0 = time.perf_counter()
    proto = faiss.IndexIVFPQ(faiss.IndexFlatIP(DIM), DIM, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    proto.train(sample)
    train_s = time.perf_counter() - t0
    bounds = np.linspace(0, n, num_shards + 1).astype(np.int64)
    shards = []
    t0 = time.perf_counter()
    for i in range(num_shards):
        idx = faiss.clone_index(proto)
        idx.add(x[bounds[i] : bounds[i + 1]])
        idx.nprobe = nprobe
        shards.append(idx)
    add_s = time.perf_counter() - t0
    shard_bytes = [int(faiss.serialize_index(s).size) for s in shards]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        parts = [s.search(q, k) for s in shards]
        sc = np.concatenate([p[0] for p in parts], 1)
        ids = np.concatenate([p[1] + bounds[i] for i, p in enumerate(parts)], 1)
        o = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(ids, o, 1)
        times.append(time.perf_counter() - t0)
    recall = float(np.mean([len(set(top[i]) & set(gt[i])) / k for i in range(nq)]))
    return {
        "n": n, "num_shards": num_shards, "nlist": nlist, "pq_m": m, "pq_bits": 8, "nprobe": nprobe,
        "train_s": round(train_s, 2), "add_s": round(add_s, 2),
        "bytes_per_shard": shard_bytes, "bytes_per_vector": round(sum(shard_bytes) / n, 1),
        "flat_bytes_per_vector": DIM * 4,
        "search_s_median": round(median(times), 4), "queries_per_s": round(nq / median(times), 1),
        "recall_at_k_vs_exact": round(recall, 4),
        "raw_search_s": [round(t, 4) for t in times],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pools", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--ivfpq", action="store_true", help="also time IVF-PQ shards at the largest pool")
    ap.add_argument("--ivf-nlist", type=int, default=1024)
    ap.add_argument("--pq-m", type=int, default=48)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    claim_stdout()

    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(THREADS)
    threadpool_limits(THREADS)
    info = machine()
    pools = [int(p) for p in args.pools.split(",") if p]
    shards = [int(s) for s in args.shards.split(",") if s]
    per_pool = [run_pool(n, args.queries, args.k, args.reps, shards, args.seed) for n in pools]

    growth = {}
    if len(per_pool) >= 2:
        # log-log slope of search time against pool size: 1.0 = linear.
        for c in per_pool[0]["search_s_median"]:
            a, b = per_pool[0], per_pool[-1]
            growth[c] = round(math.log(b["search_s_median"][c] / a["search_s_median"][c]) / math.log(b["n"] / a["n"]), 3)
    targets = {}
    for p in per_pool:
        for s in shards:
            if s > 1:
                targets[f"n={p['n']}: sharded_{s} within 1.2x of faiss_flat"] = p["ratios_time"][f"sharded_{s}/faiss_flat"] <= 1.2
        if p["n"] >= 100_000:
            for s in shards:
                targets[f"n={p['n']}: sharded_{s} faster than numpy"] = p["ratios_time"][f"sharded_{s}/numpy"] < 1.0
    result: dict[str, Any] = {
        "benchmark": "search",
        "setup": {"dim": DIM, "queries": args.queries, "k": args.k, "reps": args.reps, "threads": THREADS,
                  "data": "random normal, L2-normalised, float32"},
        "pools": per_pool,
        "time_growth_exponent": growth,
        "targets_met": targets,
        "machine": info,
    }
    if args.ivfpq:
        log("IVF-PQ at the largest pool")
        result["ivfpq"] = run_ivfpq(pools[-1], args.queries, args.k, args.reps, 4, args.seed, args.ivf_nlist,
                                    args.pq_m, args.nprobe)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
