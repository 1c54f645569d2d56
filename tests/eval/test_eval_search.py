"""Search actors: the same results as the in-process index, and a driver that never holds the candidates."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hbt.config import PROJECT_ROOT, config_from_dict
from hbt.eval.index import ShardedIndex


def _blocks(ray, X: np.ndarray, rng, size: int = 700):
    perm = rng.permutation(X.shape[0])  # blocks hold rows in any order, as the encoder actors return them
    return [ray.put({"row": perm[i : i + size], "embedding": X[perm[i : i + size]]}) for i in range(0, len(perm), size)]


@pytest.mark.parametrize("shards", [1, 3])
def test_actor_index_equals_the_in_process_index(ray_local, shards):
    from hbt.eval.search import LazyEmbeddings, make_index, store_from_refs

    rng = np.random.default_rng(shards)
    N, d = 4000, 16
    X = rng.standard_normal((N, d)).astype(np.float32)
    X[[100, 3900]] = X[7]  # exact duplicates in different blocks: ties broken by pool position
    store = store_from_refs(_blocks(ray_local, X, rng), N, config_from_dict({"eval": {"num_shards": shards}}).eval)
    try:
        others = np.setdiff1d(np.arange(N), [7, 100, 3900])
        items = np.concatenate([[3900, 7, 100], rng.choice(others, 2497, replace=False)])
        items = np.concatenate([items, items[:5]])  # a text twice in one pool (XQuAD-R repeats sentences)
        pool = LazyEmbeddings(store, items)
        queries = X[rng.choice(N, 40)]
        queries[0] = X[7]
        ref, act = ShardedIndex(X[items], 2), make_index(pool, None)
        for k in (1, 10, 3000):
            s_ref, i_ref = ref.search(queries, k)
            s_act, i_act = act.search(queries, k)
            np.testing.assert_array_equal(i_act, i_ref)
            np.testing.assert_allclose(s_act, s_ref, atol=1e-6)
        assert i_act[0, :6].tolist() == [0, 1, 2, 2500, 2501, 2502], i_act[0, :8]  # the duplicates, by position
        relevant = [rng.choice(items.size, 3, replace=False) for _ in queries]
        relevant[0] = np.array([2, 0, 2501])
        got, want = act.rank_of(queries, relevant, block=16), ref.rank_of(queries, relevant)
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
        assert got[0].tolist() == [3, 1, 5]
        np.testing.assert_array_equal(np.asarray(pool[[4, 2]]), X[items[[4, 2]]])  # queries are fetched
        act.close()
    finally:
        store.close()


PROBE = """
import json, resource, sys, threading, time
import numpy as np
from hbt.config import config_from_dict
from hbt.raysetup import init_ray
from hbt.eval.encode import driver_tokenizer, encode_to_store
from hbt.eval.search import make_index

model, n = sys.argv[1], int(sys.argv[2])
init_ray(None)
texts = [f"passage {i} about {i % 977} and {i % 31}" for i in range(n)]
kinds = ["passage"] * n
cfg = config_from_dict({"eval": {"batch_size": 256, "max_length": 16, "precision": "fp32", "num_encoders": 2,
                                  "cpus_per_encoder": 1, "num_shards": 2}})
driver_tokenizer(model)  # loaded before the baseline: a constant, not the pool
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 1024
base = rss()
peak = [base]
def watch():
    while True:
        peak[0] = max(peak[0], rss()); time.sleep(0.01)
threading.Thread(target=watch, daemon=True).start()
emb = encode_to_store(texts, kinds, model, cfg)
q = np.asarray(emb[:64])
index = make_index(emb, cfg.eval)
scores, ids = index.search(q, 10)
ranks = index.rank_of(q, [np.array([i]) for i in range(64)])
index.close()
time.sleep(0.1)
actors = peak[0] - base
full = np.asarray(emb)  # the contender: the pool assembled on the driver, as before
time.sleep(0.1)
print(json.dumps({"actors_growth_kb": actors, "assembled_growth_kb": peak[0] - base,
                  "pool_kb": full.nbytes // 1024, "top1_self": float(np.mean(ids[:, 0] == np.arange(64))),
                  "self_rank1": float(np.mean([r[0] == 1 for r in ranks]))}))
"""


@pytest.mark.slow
def test_driver_never_holds_the_pool(tmp_path):
    """2x10^5 candidates encoded and searched through actors: the driver's peak RSS grows by < half the pool's bytes.

    Then the same process assembles the pool on the driver (what evaluation did
    before): that the probe sees it grow by more than the pool shows the
    measurement can fail.
    """
    from hbt.model.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "m", hidden=256, layers=1)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(model), "200000"], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(out)
    assert out["pool_kb"] == 200_000  # 2e5 x 256 x 4 bytes
    assert out["actors_growth_kb"] < 0.5 * out["pool_kb"], out
    # The contender, in the same process: assembling the pool here shows the probe can see one.
    assert out["assembled_growth_kb"] - out["actors_growth_kb"] > out["pool_kb"], out
    # Each passage is its own nearest neighbour: the actors searched the pool that was encoded.
    assert out["top1_self"] > 0.95 and out["self_rank1"] > 0.95, out
