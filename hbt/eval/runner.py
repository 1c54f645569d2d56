"""The evaluation stage: load benchmarks, encode with Ray Data, search, score, save, track.

``evaluate`` is the library entry (the study and tune code call it);
``run_eval_job`` is what ``hbt eval`` runs: it resolves the model, starts Ray,
evaluates, and logs everything to one MLflow run.

Metric keys read ``<benchmark>/<setting>/<metric>`` with an optional language
or pair level: ``xquad_r/multilingual/mAP``, ``xquad_r/monolingual/de/mAP``,
``xquad_r/cross_lingual/de-en/mAP``, ``xquad_r/bias/own_language_top1``,
``tatoeba/deu-eng/acc@1``, ``miracl/de/nDCG@10``. Definitions: docs/metrics.md.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hbt.config import MLQA_R_LANGUAGES, XQUAD_R_LANGUAGES, HBTConfig, dump_config, resolve_path
from hbt.eval.benchmarks import (
    AdhocBenchmark,
    BenchmarkError,
    BitextBenchmark,
    QABenchmark,
    load_miracl,
    load_mlqa_r,
    load_tatoeba,
    load_xquad_r,
    sample_tatoeba,
)
from hbt.eval.index import ShardedIndex
from hbt.eval.metrics import LAREQA_METRICS, ndcg_graded, per_query_key, per_query_metrics, rank_distance, spread

SPLITS = ("test", "dev")
# per_query.npz stores a key's row labels as "<key>::question" etc. (metric keys hold '@' and '/', never '::').
_UNIT_SEP = "::"


@dataclass
class EvalResult:
    """Everything one evaluation produced.

    Attributes:
        metrics: flat ``key -> value`` (see the module docstring for the key scheme).
        per_query: the same keys -> per-query values in a fixed query order
            (language, then sorted question id); a ``.../mAP`` metric's array
            is stored under ``.../AP`` (see :func:`per_query_key`), so two
            models evaluated with the same config can be compared with a paired
            bootstrap. Keys that average over languages or pairs hold the
            concatenation of their parts.
        matrices: ``key -> {"languages": [...], "values": [[...]]}``; row = query
            language, column = pool language.
        info: counts, timings and settings of the run.
        units: per ``per_query`` key, the row labels the study's bootstrap needs:
            ``question`` (the cluster: a question's language versions and pairs
            share it), ``article`` and ``stratum`` (the language or pair a
            macro-averaged key averages over; absent for plain means).
    """

    metrics: dict[str, float]
    per_query: dict[str, np.ndarray]
    matrices: dict[str, dict]
    info: dict[str, Any] = field(default_factory=dict)
    units: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def save(self, out_dir: str | os.PathLike) -> None:
        """Writes ``metrics.json``, ``matrices.json``, ``per_query.npz`` and ``info.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(self.metrics, indent=2, sort_keys=True), encoding="utf-8")
        (out / "matrices.json").write_text(json.dumps(self.matrices, indent=2), encoding="utf-8")
        (out / "info.json").write_text(json.dumps(self.info, indent=2, default=str), encoding="utf-8")
        arrays = {k: np.asarray(v) for k, v in self.per_query.items()}
        for k, units in self.units.items():
            arrays.update({f"{k}{_UNIT_SEP}{u}": np.asarray(v, dtype=str) for u, v in units.items()})
        np.savez_compressed(out / "per_query.npz", **arrays)

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "EvalResult":
        """Reads what :meth:`save` wrote."""
        out = Path(out_dir)
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        matrices = json.loads((out / "matrices.json").read_text(encoding="utf-8"))
        info_f = out / "info.json"
        info = json.loads(info_f.read_text(encoding="utf-8")) if info_f.exists() else {}
        per_query: dict[str, np.ndarray] = {}
        units: dict[str, dict[str, np.ndarray]] = {}
        with np.load(out / "per_query.npz", allow_pickle=False) as z:
            for k in z.files:
                key, _, unit = k.partition(_UNIT_SEP)
                if unit:
                    units.setdefault(key, {})[unit] = z[k]
                else:
                    per_query[key] = z[k]
        return cls(metrics, per_query, matrices, info, units)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _qa_languages(cfg: HBTConfig, benchmarks: list[str]) -> dict[str, list[str]]:
    """Per QA benchmark, the languages to load (``eval.languages`` restricted to what it has)."""
    supported = {"xquad_r": XQUAD_R_LANGUAGES, "mlqa_r": MLQA_R_LANGUAGES}
    qa = [b for b in benchmarks if b in supported]
    wanted = cfg.eval.languages
    if wanted is None:
        return {b: list(supported[b]) for b in qa}
    if len(set(wanted)) != len(wanted):
        raise BenchmarkError("eval.languages", f"languages repeat: {wanted}")
    unknown = [lang for lang in wanted if not any(lang in supported[b] for b in qa)]
    if qa and unknown:
        raise BenchmarkError(
            "eval.languages", f"unknown language code(s) {unknown} for {qa} (known: "
            + "; ".join(f"{b}: {supported[b]}" for b in qa) + ")"
        )
    out = {}
    for b in qa:
        langs = [lang for lang in wanted if lang in supported[b]]
        if not langs:
            raise BenchmarkError("eval.languages", f"none of {wanted} is a {b} language ({supported[b]})")
        out[b] = langs
    return out


def load_benchmarks(cfg: HBTConfig, split: str = "test") -> dict[str, Any]:
    """Loads the benchmarks ``cfg.eval`` selects for a split.

    Args:
        cfg: the config.
        split: ``test`` (the configured benchmarks; XQuAD-R restricted to
            ``data.heldout_articles`` when ``eval.heldout_only`` and the list is
            non-empty) or ``dev`` (only XQuAD-R, restricted to ``data.dev_articles``).

    Returns:
        ``{"xquad_r": QABenchmark, "mlqa_r": QABenchmark, "tatoeba": [BitextBenchmark],
        "miracl": [AdhocBenchmark]}`` for the selected ones.

    Raises:
        ValueError: an unknown split, or ``dev`` without ``data.dev_articles``.
        BenchmarkError: bad benchmark files or language codes.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    e = cfg.eval
    if split == "dev":
        if not cfg.data.dev_articles:
            raise ValueError("split 'dev' needs data.dev_articles (the XQuAD-R articles kept for tuning)")
        names, articles = ["xquad_r"], list(cfg.data.dev_articles)
    else:
        names = list(dict.fromkeys(e.benchmarks))
        articles = list(cfg.data.heldout_articles) if e.heldout_only and cfg.data.heldout_articles else None
    langs = _qa_languages(cfg, names)
    out: dict[str, Any] = {}
    for name in names:
        if name == "xquad_r":
            out[name] = load_xquad_r(resolve_path(e.xquad_r_path), langs[name], articles, e.max_questions,
                                     e.pool_of("xquad_r") == "question_paragraphs", e.sample_seed)
        elif name == "mlqa_r":
            out[name] = load_mlqa_r(resolve_path(e.mlqa_r_path), langs[name], e.max_questions,
                                    restrict_pool=e.pool_of("mlqa_r") == "question_paragraphs", sample_seed=e.sample_seed)
        elif name == "tatoeba":
            pairs = load_tatoeba(resolve_path(e.tatoeba_path), e.tatoeba_languages)
            out[name] = sample_tatoeba(pairs, e.max_questions, e.sample_seed)
        elif name == "miracl":
            if not e.miracl_path or not e.miracl_languages:
                raise BenchmarkError(
                    "eval.miracl_path", "benchmark 'miracl' needs eval.miracl_path and eval.miracl_languages"
                )
            out[name] = [load_miracl(resolve_path(e.miracl_path), lang, "dev", e.max_questions)
                         for lang in e.miracl_languages]
    return out


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


class _Collector:
    """Accumulates metrics, per-query arrays and matrices under one key scheme."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.per_query: dict[str, np.ndarray] = {}
        self.matrices: dict[str, dict] = {}
        self.units: dict[str, dict[str, np.ndarray]] = {}

    def add(self, key: str, values: np.ndarray, questions: Any, articles: Any) -> None:
        """A metric that is the plain mean of per-query values; ``questions``/``articles`` label the rows."""
        values = np.asarray(values, dtype=np.float64)
        pk = per_query_key(key)
        self.per_query[pk] = values
        self.units[pk] = {"question": np.asarray(questions, dtype=str), "article": np.asarray(articles, dtype=str)}
        if not (len(self.units[pk]["question"]) == len(self.units[pk]["article"]) == values.size):
            raise ValueError(f"{key}: {values.size} values but {len(questions)} question and {len(articles)} article labels")
        self.metrics[key] = float(values.mean()) if values.size else float("nan")

    def add_mean(self, key: str, parts: list[str]) -> None:
        """A macro mean over languages/pairs; its per-query array is the concatenation, each part a stratum."""
        if not parts:
            return
        self.metrics[key] = float(np.mean([self.metrics[p] for p in parts]))
        pks = [per_query_key(p) for p in parts]
        pk = per_query_key(key)
        self.per_query[pk] = np.concatenate([self.per_query[p] for p in pks])
        self.units[pk] = {u: np.concatenate([self.units[p][u] for p in pks]) for u in ("question", "article")}
        self.units[pk]["stratum"] = np.concatenate([np.full(self.per_query[p].size, p) for p in pks]).astype(str)

    def alias(self, key: str, source: str) -> None:
        """``key`` reports the same number as ``source`` (e.g. Tatoeba's headline direction)."""
        self.metrics[key] = self.metrics[source]
        self.per_query[per_query_key(key)] = self.per_query[per_query_key(source)]
        self.units[per_query_key(key)] = self.units[per_query_key(source)]


def score_qa(bench: QABenchmark, q_emb: np.ndarray, c_emb: np.ndarray, cfg: HBTConfig, out: _Collector) -> None:
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
            index = ShardedIndex.from_config(c_emb[pool], cfg.eval)
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
    bench: QABenchmark, q_emb: np.ndarray, c_emb: np.ndarray, cfg: HBTConfig, out: _Collector
) -> None:
    name, L = bench.name, bench.languages
    index = ShardedIndex.from_config(c_emb, cfg.eval)
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
    own = np.array(
        [cand_lang[rl[np.argmin(r)]] == ql for r, rl, ql in zip(ranks, rel, bench.query_langs)], dtype=np.float64
    )
    out.add(f"{name}/bias/rank_distance_mean", dist, qids, arts)
    out.metrics[f"{name}/bias/rank_distance_median"] = float(np.median(dist))
    out.add(f"{name}/bias/own_language_top1", own, qids, arts)
    out.metrics[f"{name}/bias/own_language_chance"] = float(np.mean([1.0 / r.size for r in rel]))
    per_lang = [out.metrics[f"{name}/multilingual/{x}/mAP"] for x in L]
    out.metrics[f"{name}/bias/mAP_spread"], out.metrics[f"{name}/bias/mAP_std"] = spread(per_lang)
    out.matrices[f"{name}/multilingual/mAP_by_language"] = {"languages": list(L), "values": [per_lang]}


def score_tatoeba(pairs: list[BitextBenchmark], embs: list[tuple[np.ndarray, np.ndarray]], cfg: HBTConfig,
                  out: _Collector) -> None:
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
            index = ShardedIndex.from_config(targets, cfg.eval)
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
                 out: _Collector, run_dir: Path | None = None) -> None:
    """MIRACL: nDCG@10 (graded, linear gains) and Recall@100 from the top-k of the sharded index."""
    keys: dict[str, list[str]] = {"nDCG@10": [], "R@100": []}
    k = max(100, cfg.eval.top_k)
    for b, (q, d) in zip(benches, embs):
        index = ShardedIndex.from_config(d, cfg.eval)
        scores, ids = index.search(q, min(k, d.shape[0]))
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
    with open(path, "w", encoding="utf-8") as f:
        for i, qid in enumerate(b.query_ids):
            for r, (s, j) in enumerate(zip(scores[i], ids[i])):
                if j >= 0:
                    f.write(f"{qid} Q0 {b.doc_ids[j]} {r + 1} {s:.6f} hbt\n")


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def _texts(benches: dict[str, Any]) -> tuple[list[str], list[str], dict[str, list[slice]]]:
    """Every text to embed, its kind, and where each benchmark's parts sit in the list."""
    texts: list[str] = []
    kinds: list[str] = []
    where: dict[str, list[slice]] = {}

    def put(items: list[str], kind: str) -> slice:
        s = slice(len(texts), len(texts) + len(items))
        texts.extend(items)
        kinds.extend([kind] * len(items))
        return s

    for name, b in benches.items():
        if isinstance(b, QABenchmark):
            where[name] = [put(b.query_texts, "query"), put(b.cand_texts, "passage")]
        elif name == "tatoeba":
            # Bitext mining is symmetric: both sides get the query prefix, as e5's
            # model card prescribes for symmetric tasks.
            where[name] = [s for p in b for s in (put(p.src_texts, "query"), put(p.eng_texts, "query"))]
        elif name == "miracl":
            where[name] = [s for m in b for s in (put(m.query_texts, "query"), put(m.doc_texts, "passage"))]
    return texts, kinds, where


def score_benchmarks(benches: dict[str, Any], emb: np.ndarray, where: dict[str, list[slice]], cfg: HBTConfig,
                     col: _Collector, out: Path | None) -> dict[str, Any]:
    """Scores every benchmark from the embeddings of :func:`_texts`' list into ``col``.

    Args:
        benches: from :func:`load_benchmarks`.
        emb: one embedding per text of ``_texts(benches)``.
        where: ``_texts``' slices.
        cfg: the config.
        col: collects metrics, per-query values and matrices.
        out: MIRACL's TREC runs go to ``out/runs`` (None: not written).

    Returns:
        Per-benchmark info (languages and sizes).
    """
    info: dict[str, Any] = {}
    for name, b in benches.items():
        sl = where[name]
        if isinstance(b, QABenchmark):
            score_qa(b, emb[sl[0]], emb[sl[1]], cfg, col)
            per_article: dict[str, int] = {}
            for q in b.answers:
                per_article[b.question_article.get(q, "")] = per_article.get(b.question_article.get(q, ""), 0) + 1
            info[name] = {"languages": b.languages, "queries": b.num_queries, "candidates": b.num_candidates,
                          "candidates_per_language": {x: int(b.pool([x]).size) for x in b.languages},
                          "questions": len(b.answers), "questions_available": b.all_questions,
                          "articles": len(b.articles), "questions_per_article": per_article}
        elif name == "tatoeba":
            score_tatoeba(b, [(emb[sl[2 * i]], emb[sl[2 * i + 1]]) for i in range(len(b))], cfg, col)
            info[name] = {"languages": [p.lang for p in b], "pairs": [len(p.src_texts) for p in b],
                          "queries": [len(p.queries) for p in b]}
        elif name == "miracl":
            score_miracl(b, [(emb[sl[2 * i]], emb[sl[2 * i + 1]]) for i in range(len(b))], cfg, col,
                         out / "runs" if out is not None else None)
            info[name] = {"languages": [m.lang for m in b], "queries": [len(m.query_ids) for m in b],
                          "documents": [len(m.doc_ids) for m in b]}
    return info


def evaluate_in_memory(cfg: HBTConfig, benches: dict[str, Any], encoder: Any, tokenizer: Any,
                       device: Any) -> dict[str, float]:
    """Scores an encoder that is already in memory (no Ray, no files): the in-training dev evaluation.

    Same texts, batching, precision and scoring as :func:`evaluate`, so a
    training-time dev number matches what ``evaluate`` gives the saved model.

    Args:
        cfg: the config (``eval.*``).
        benches: from :func:`load_benchmarks`.
        encoder: a :class:`~hbt.model.encoder.BiEncoder`; the caller puts it in eval mode.
        tokenizer: its tokenizer.
        device: where the encoder lives.

    Returns:
        The flat metrics.
    """
    from hbt.eval.encode import encode_with_model

    texts, kinds, where = _texts(benches)
    emb = encode_with_model(encoder, tokenizer, texts, kinds, cfg, device)
    col = _Collector()
    score_benchmarks(benches, emb, where, cfg, col, None)
    return col.metrics


def evaluate(cfg: HBTConfig, model_dir: str, out_dir: str, split: str = "test") -> EvalResult:
    """Evaluates a bi-encoder on the benchmarks the config selects.

    Ray is initialised (``cfg.ray.address``) unless it already is; the texts
    are embedded by a Ray Data actor pool (``eval.num_encoders`` actors with
    ``eval.cpus_per_encoder`` CPUs / ``eval.gpus_per_encoder`` GPUs each).

    Args:
        cfg: the config.
        model_dir: a transformers checkpoint dir (a saved BiEncoder).
        out_dir: results (``metrics.json``, ``matrices.json``, ``per_query.npz``,
            ``info.json``) and embedding shards go here.
        split: ``test`` or ``dev`` (see :func:`load_benchmarks`).

    Returns:
        The result (also saved to ``out_dir``).

    Raises:
        BenchmarkError: bad benchmark files or language codes.
        ValueError: an unknown split, or ``dev`` without ``data.dev_articles``.
    """
    from hbt.eval.encode import encode_with_ray, resolve_eval_auto, truncation_shares
    from hbt.raysetup import init_ray

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    benches = load_benchmarks(cfg, split)
    t_load = time.time()
    texts, kinds, where = _texts(benches)
    init_ray(cfg.ray.address)
    cfg = resolve_eval_auto(cfg)
    emb = encode_with_ray(texts, kinds, str(model_dir), cfg, out)
    t_enc = time.time()
    col = _Collector()
    info: dict[str, Any] = {"model_dir": str(model_dir), "split": split, "benchmarks": list(benches),
                            "precision": cfg.eval.precision, "num_encoders": cfg.eval.num_encoders,
                            "texts": len(texts), "unique_texts": len(set(zip(kinds, texts)))}
    info.update(score_benchmarks(benches, emb, where, cfg, col, out))
    for name, sl in where.items():
        parts = [i for s in sl for i in range(s.start, s.stop)]
        info[name]["truncated_at_max_length"] = truncation_shares(
            str(model_dir), [texts[i] for i in parts], [kinds[i] for i in parts], cfg)
    t_end = time.time()
    info["seconds"] = {"load": round(t_load - t0, 2), "encode": round(t_enc - t_load, 2),
                       "score": round(t_end - t_enc, 2), "total": round(t_end - t0, 2)}
    result = EvalResult(col.metrics, col.per_query, col.matrices, info, col.units)
    result.save(out)
    return result


def evaluate_tracked(cfg: HBTConfig, model_dir: str, out_dir: str | os.PathLike, run_name: str,
                     split: str = "test", parent_run_id: str | None = None,
                     tags: dict[str, str] | None = None) -> EvalResult:
    """Evaluates and records one MLflow run (params, metrics, timings, result files).

    Args:
        cfg: the validated config.
        model_dir: the model to evaluate.
        out_dir: where results go.
        run_name: the MLflow run name.
        split: ``test`` or ``dev``.
        parent_run_id: nest the run under this one (studies, tuning).
        tags: extra run tags.
    """
    from hbt.eval.encode import resolve_eval_auto
    from hbt.raysetup import init_ray
    from hbt.tracking import tracker_for

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    init_ray(cfg.ray.address)
    cfg = resolve_eval_auto(cfg)  # the run's config.yaml and params record the concrete choice
    dump_config(cfg, out / "config.yaml")
    tracker = tracker_for(cfg, run_name, out, parent_run_id,
                          tags={"hbt.stage": "eval", "hbt.model_dir": str(model_dir), **(tags or {})})
    (out / "mlflow_run.json").write_text(
        json.dumps({"run_id": tracker.run_id, "tracking_uri": tracker.uri}, indent=2), encoding="utf-8"
    )
    tracker.log_params({**cfg.model_dump(mode="json"), "eval_model_dir": str(model_dir), "eval_split": split})
    try:
        init_ray(cfg.ray.address)
        result = evaluate(cfg, model_dir, str(out), split=split)
        tracker.log_metrics(result.metrics)
        tracker.log_metrics({f"time/{k}_s": v for k, v in result.info.get("seconds", {}).items()})
        for name in ("metrics.json", "matrices.json", "info.json", "per_query.npz", "config.yaml"):
            tracker.log_artifact(out / name)
        if (out / "runs").is_dir():
            tracker.log_artifact(out / "runs", "runs")
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return result


def run_eval_job(cfg: HBTConfig, model: str | None, out_dir: str | None) -> dict:
    """``hbt eval``: resolve the model, start Ray, evaluate, save, and track one MLflow run.

    Args:
        cfg: the validated config.
        model: a model dir, or ``None`` for ``cfg.model.name_or_path`` (resolved
            with :func:`hbt.model.offline.resolve_model_path`, so
            ``offline:multilingual-e5-small`` works).
        out_dir: where results go (default ``<output_dir>/eval-<timestamp>``).

    Returns:
        The metrics dict.
    """
    from hbt.model.offline import resolve_model_path

    if model is None:
        model_dir = resolve_model_path(cfg.model.name_or_path, cfg.model.num_layers)
    else:
        model_dir = resolve_model_path(model)
    if out_dir is None:
        out_dir = str(Path(cfg.output_dir) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}")
    run_name = cfg.run_name or f"eval-{Path(model_dir).name}"
    return evaluate_tracked(cfg, model_dir, out_dir, run_name).metrics
