"""Scorers: embeddings in benchmark order -> metrics, per-query values and matrices in a :class:`Collector`.

Embeddings are arrays (the in-training dev evaluation) or
:class:`~hbt.eval.search.LazyEmbeddings` (a saved model's evaluation: the
candidates stay with the search actors, the queries are fetched).

One scorer per benchmark shape; the registry (:mod:`hbt.eval.registry`) says
which one a benchmark uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hbt.config import HBTConfig, atomic_path
from hbt.eval.benchmarks import AdhocBenchmark, BitextBenchmark, QABenchmark
from hbt.eval.search import make_index
from hbt.eval.metrics import (
    LAREQA_METRICS,
    ndcg_graded,
    own_language_first,
    per_query_metrics,
    rank_distance,
    spread,
)
from hbt.eval.results import Collector


def score_qa(bench: QABenchmark, q_emb: np.ndarray, c_emb: np.ndarray, cfg: HBTConfig, out: Collector) -> None:
    """Monolingual, cross-lingual and multilingual LAReQA scores plus language-bias metrics.

    Args:
        bench: the benchmark.
        q_emb: (num_queries, d) query embeddings in ``bench`` order.
        c_emb: (num_candidates, d) candidate embeddings in ``bench`` order.
        cfg: the config (``eval.settings``, index options).
        out: where the results go.
    """
    name, L, settings = bench.name, bench.languages, cfg.eval.settings
    mono, cross = "monolingual" in settings, "cross_lingual" in settings
    pair: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    qid_of: dict[tuple[str, str], list[str]] = {}

    def labels(qids: list[str]) -> tuple[list[str], list[str]]:
        return qids, [bench.question_article.get(q, q) for q in qids]

    if mono or cross:
        for y in L:
            pool = bench.pool([y])
            local = np.full(bench.num_candidates, -1, np.int64)
            local[pool] = np.arange(pool.size)
            index = make_index(c_emb[pool], cfg.eval)
            xs = L if cross else [y]
            q_sets = {x: bench.queries_in(x, also_in=y) for x in xs}
            qs = np.concatenate([q_sets[x] for x in xs])
            rel = [local[bench.relevant(int(q), [y])] for q in qs]
            pq = per_query_metrics(index.rank_of(q_emb[qs], rel))
            index.close()
            start = 0
            for x in xs:
                n = q_sets[x].size
                pair[(x, y)] = {m: v[start : start + n] for m, v in pq.items()}
                qid_of[(x, y)] = [bench.query_qids[i] for i in q_sets[x]]
                start += n
    if mono:
        for m in LAREQA_METRICS:
            for x in L:
                out.add(f"{name}/monolingual/{x}/{m}", pair[(x, x)][m], *labels(qid_of[(x, x)]))
            out.add_mean(f"{name}/monolingual/{m}", [f"{name}/monolingual/{x}/{m}" for x in L])
    if cross:
        for m in LAREQA_METRICS:
            keys = []
            for x in L:
                for y in L:
                    if x != y and pair[(x, y)][m].size:
                        out.add(f"{name}/cross_lingual/{x}-{y}/{m}", pair[(x, y)][m], *labels(qid_of[(x, y)]))
                        keys.append(f"{name}/cross_lingual/{x}-{y}/{m}")
            out.add_mean(f"{name}/cross_lingual/{m}", keys)
            out.matrices[f"{name}/cross_lingual/{m}"] = {
                "languages": list(L),
                "values": [[float(pair[(x, y)][m].mean()) if pair[(x, y)][m].size else None for y in L] for x in L],
            }
    if "multilingual" in settings:
        _score_multilingual(bench, q_emb, c_emb, cfg, out)


def _score_multilingual(
    bench: QABenchmark, q_emb: np.ndarray, c_emb: np.ndarray, cfg: HBTConfig, out: Collector
) -> None:
    name, L = bench.name, bench.languages
    index = make_index(c_emb, cfg.eval)
    rel = [bench.relevant(q, L) for q in range(bench.num_queries)]
    ranks = index.rank_of(q_emb, rel)
    index.close()
    pq = per_query_metrics(ranks)
    q_lang = np.asarray(bench.query_langs)
    qids = np.asarray(bench.query_qids)
    arts = np.asarray([bench.question_article.get(q, q) for q in bench.query_qids])
    for m in LAREQA_METRICS:
        out.add(f"{name}/multilingual/{m}", pq[m], qids, arts)
        for x in L:
            out.add(f"{name}/multilingual/{x}/{m}", pq[m][q_lang == x], qids[q_lang == x], arts[q_lang == x])
    # Language bias: does the ranking keep a question's parallel answers together,
    # and does it prefer the query's own language?
    cand_lang = np.asarray(bench.cand_langs)
    dist = np.array([rank_distance(r) for r in ranks], dtype=np.float64)
    own = np.array([own_language_first(r, cand_lang[rl], ql) for r, rl, ql in zip(ranks, rel, bench.query_langs)],
                   dtype=np.float64)
    out.add(f"{name}/bias/rank_distance_mean", dist, qids, arts)
    out.metrics[f"{name}/bias/rank_distance_median"] = float(np.median(dist))
    out.add(f"{name}/bias/own_language_top1", own, qids, arts)
    out.metrics[f"{name}/bias/own_language_chance"] = float(np.mean([1.0 / r.size for r in rel]))
    per_lang = [out.metrics[f"{name}/multilingual/{x}/mAP"] for x in L]
    out.metrics[f"{name}/bias/mAP_spread"], out.metrics[f"{name}/bias/mAP_std"] = spread(per_lang)
    out.matrices[f"{name}/multilingual/mAP_by_language"] = {"languages": list(L), "values": [per_lang]}


def score_tatoeba(pairs: list[BitextBenchmark], embs: list[tuple[np.ndarray, np.ndarray]], cfg: HBTConfig,
                  out: Collector) -> None:
    """Tatoeba bitext retrieval both ways: accuracy@1 (XTREME: nearest neighbour by cosine) and MRR.

    The query lines may be a sample (``eval.max_questions``); the targets are
    always the whole other side (1000 lines), as in XTREME.
    """
    xx_keys, en_keys = {"acc@1": [], "MRR": []}, {"acc@1": [], "MRR": []}
    for p, (src, eng) in zip(pairs, embs):
        lines = np.asarray(p.queries, dtype=np.int64)
        gold = [np.array([i]) for i in lines]
        labels = [f"{p.lang}:{i}" for i in lines]  # each line its own cluster: lines are not parallel across pairs
        for direction, queries, targets, keys in (
            (f"{p.lang}-eng", src[lines], eng, xx_keys),
            (f"eng-{p.lang}", eng[lines], src, en_keys),
        ):
            index = make_index(targets, cfg.eval)
            ranks = np.array([r[0] for r in index.rank_of(queries, gold)])
            index.close()
            out.add(f"tatoeba/{direction}/acc@1", (ranks == 1).astype(np.float64), labels, labels)
            out.add(f"tatoeba/{direction}/MRR", 1.0 / ranks, labels, labels)
            keys["acc@1"].append(f"tatoeba/{direction}/acc@1")
            keys["MRR"].append(f"tatoeba/{direction}/MRR")
    for m in ("acc@1", "MRR"):
        out.add_mean(f"tatoeba/xx-eng/{m}", xx_keys[m])
        out.add_mean(f"tatoeba/eng-xx/{m}", en_keys[m])
        # The XTREME headline number is the xx -> en direction.
        out.alias(f"tatoeba/{m}", f"tatoeba/xx-eng/{m}")


def score_miracl(benches: list[AdhocBenchmark], embs: list[tuple[np.ndarray, np.ndarray]], cfg: HBTConfig,
                 out: Collector, run_dir: Path | None = None) -> None:
    """MIRACL: nDCG@10 (graded, linear gains) and Recall@100 from the top-k of the sharded index."""
    keys: dict[str, list[str]] = {"nDCG@10": [], "R@100": []}
    k = max(100, cfg.eval.top_k)
    for b, (q, d) in zip(benches, embs):
        index = make_index(d, cfg.eval)
        scores, ids = index.search(q, min(k, len(d)))
        index.close()
        ndcg, recall = [], []
        for i, qid in enumerate(b.query_ids):
            judged = b.qrels[qid]
            ranked = [judged.get(b.doc_ids[j], 0) if j >= 0 else 0 for j in ids[i]]
            ndcg.append(ndcg_graded(ranked, list(judged.values()), 10))
            positives = sum(g > 0 for g in judged.values())
            recall.append(sum(g > 0 for g in ranked[:100]) / positives)
        labels = [f"{b.lang}:{q}" for q in b.query_ids]
        out.add(f"miracl/{b.lang}/nDCG@10", np.array(ndcg), labels, labels)
        out.add(f"miracl/{b.lang}/R@100", np.array(recall), labels, labels)
        keys["nDCG@10"].append(f"miracl/{b.lang}/nDCG@10")
        keys["R@100"].append(f"miracl/{b.lang}/R@100")
        if run_dir is not None:
            _write_trec_run(run_dir / f"miracl-{b.lang}.trec", b, scores, ids)
    for m, parts in keys.items():
        out.add_mean(f"miracl/{m}", parts)


def _write_trec_run(path: Path, b: AdhocBenchmark, scores: np.ndarray, ids: np.ndarray) -> None:
    """The top-k as a TREC run file, so trec_eval / pyserini can re-check the numbers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, qid in enumerate(b.query_ids):
            for r, (s, j) in enumerate(zip(scores[i], ids[i])):
                if j >= 0:
                    f.write(f"{qid} Q0 {b.doc_ids[j]} {r + 1} {s:.6f} hbt\n")
