"""The benchmark registry: one entry per benchmark, from its name to everything evaluation needs.

An entry says where the benchmark's data and language selection sit in the
config, how to load it for a split, which texts to embed (and with which
prefix), how to score the embeddings, what to record about its size, and
which metrics head the summary table and the study. The evaluation job
(:mod:`hbt.eval.runner`), the summary (:mod:`hbt.eval.summary`) and the study
read this table and nothing else, so adding a benchmark is one loader module
in :mod:`hbt.eval.benchmarks`, one scorer, and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hbt.config import BENCHMARK_PATH_KEYS, MLQA_R_LANGUAGES, XQUAD_R_LANGUAGES, HBTConfig, resolve_path
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
from hbt.eval.results import Collector
from hbt.eval.scoring import score_miracl, score_qa, score_tatoeba

# A text group to embed: the texts and their kind (``query`` or ``passage``: which prefix they get).
TextGroup = tuple[list[str], str]
# A summary-table row: its label and ``column -> metric key``.
TableRow = tuple[str, dict[str, str]]

# The columns of the summary table, in order.
SUMMARY_COLUMNS = ("mAP", "R@1", "R@10", "nDCG@10", "MRR", "acc@1", "R@100", "own-lang top1", "rank dist")


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything the evaluation needs to know about one benchmark.

    Attributes:
        name: the key in ``eval.benchmarks`` and the metric-key prefix.
        title: its display name.
        path_key: the ``eval.*`` key that holds its data path (``hbt.config.BENCHMARK_PATH_KEYS``, which the
            load-time path checks read too).
        languages_key: the ``eval.*`` key that selects its languages (``hbt eval --langs`` sets it).
        load: ``(cfg, split, languages, articles) -> loaded benchmark``.
        texts: the loaded benchmark -> its text groups, in the order ``score`` takes their embeddings.
        score: ``(loaded, embeddings per text group, cfg, collector, out_dir | None)``.
        info: the loaded benchmark -> sizes for ``info.json`` and the study's Reductions.
        table: the eval settings -> summary-table rows.
        headline: the eval settings -> the metric keys the study compares.
    """

    name: str
    title: str
    path_key: str
    languages_key: str
    load: Callable[[HBTConfig, str, list[str] | None, list[str] | None], Any]
    texts: Callable[[Any], list[TextGroup]]
    score: Callable[[Any, list[np.ndarray], HBTConfig, Collector, Path | None], None]
    info: Callable[[Any], dict[str, Any]]
    table: Callable[[list[str]], list[TableRow]]
    headline: Callable[[list[str]], list[str]]
    languages: tuple[str, ...] | None = None


# --- QA (LAReQA): XQuAD-R and MLQA-R -------------------------------------------------------------


def _qa_texts(b: QABenchmark) -> list[TextGroup]:
    return [(b.query_texts, "query"), (b.cand_texts, "passage")]


def _qa_score(b: QABenchmark, embs: list[np.ndarray], cfg: HBTConfig, col: Collector, out: Path | None) -> None:
    score_qa(b, embs[0], embs[1], cfg, col)


def _qa_info(b: QABenchmark) -> dict[str, Any]:
    per_article: dict[str, int] = {}
    for q in b.answers:
        a = b.question_article.get(q, "")
        per_article[a] = per_article.get(a, 0) + 1
    return {"languages": b.languages, "queries": b.num_queries, "candidates": b.num_candidates,
            "candidates_per_language": {x: int(b.pool([x]).size) for x in b.languages},
            "questions": len(b.answers), "questions_available": b.all_questions,
            "articles": len(b.articles), "article_titles": sorted(b.articles), "questions_per_article": per_article}


def _qa_table(name: str) -> Callable[[list[str]], list[TableRow]]:
    def table(settings: list[str]) -> list[TableRow]:
        rows = []
        for s in ("monolingual", "cross_lingual", "multilingual"):
            if s in settings:
                cols = {m: f"{name}/{s}/{m}" for m in ("mAP", "R@1", "R@10", "nDCG@10")}
                if s == "multilingual":
                    cols |= {"own-lang top1": f"{name}/bias/own_language_top1",
                             "rank dist": f"{name}/bias/rank_distance_mean"}
                rows.append((s.replace("_", ""), cols))  # "crosslingual": the JSON's and the table's label
        return rows
    return table


def _qa_headline(name: str) -> Callable[[list[str]], list[str]]:
    def headline(settings: list[str]) -> list[str]:
        keys = [f"{name}/{s}/mAP" for s in settings]
        if "multilingual" in settings:
            keys += [f"{name}/bias/own_language_top1", f"{name}/bias/rank_distance_mean"]
        return keys
    return headline


def _load_xquad_r(cfg: HBTConfig, split: str, languages: list[str] | None, articles: list[str] | None) -> QABenchmark:
    e = cfg.eval
    return load_xquad_r(resolve_path(e.xquad_r_path), languages, articles, e.max_questions_of("xquad_r"),
                        e.pool_of("xquad_r") == "question_paragraphs", e.sample_seed)


def _load_mlqa_r(cfg: HBTConfig, split: str, languages: list[str] | None, articles: list[str] | None) -> QABenchmark:
    e = cfg.eval
    return load_mlqa_r(resolve_path(e.mlqa_r_path), languages, e.max_questions_of("mlqa_r"),
                       restrict_pool=e.pool_of("mlqa_r") == "question_paragraphs", sample_seed=e.sample_seed)


# --- Tatoeba ---------------------------------------------------------------------------------------


def _load_tatoeba(cfg: HBTConfig, split: str, languages: list[str] | None,
                  articles: list[str] | None) -> list[BitextBenchmark]:
    e = cfg.eval
    return sample_tatoeba(load_tatoeba(resolve_path(e.tatoeba_path), e.tatoeba_languages), e.max_questions_of("tatoeba"),
                          e.sample_seed)


def _tatoeba_texts(pairs: list[BitextBenchmark]) -> list[TextGroup]:
    # Bitext mining is symmetric: both sides get the query prefix, as e5's
    # model card prescribes for symmetric tasks.
    return [g for p in pairs for g in ((p.src_texts, "query"), (p.eng_texts, "query"))]


def _tatoeba_score(pairs: list[BitextBenchmark], embs: list[np.ndarray], cfg: HBTConfig, col: Collector,
                   out: Path | None) -> None:
    score_tatoeba(pairs, [(embs[2 * i], embs[2 * i + 1]) for i in range(len(pairs))], cfg, col)


def _tatoeba_info(pairs: list[BitextBenchmark]) -> dict[str, Any]:
    return {"languages": [p.lang for p in pairs], "pairs": [len(p.src_texts) for p in pairs],
            "queries": [len(p.queries) for p in pairs]}


def _tatoeba_table(settings: list[str]) -> list[TableRow]:
    return [(d, {"acc@1": f"tatoeba/{d}/acc@1", "MRR": f"tatoeba/{d}/MRR"}) for d in ("xx-eng", "eng-xx")]


# --- MIRACL ----------------------------------------------------------------------------------------


def _load_miracl(cfg: HBTConfig, split: str, languages: list[str] | None,
                 articles: list[str] | None) -> list[AdhocBenchmark]:
    e = cfg.eval
    if not e.miracl_path or not e.miracl_languages:
        raise BenchmarkError("eval.miracl_path", "benchmark 'miracl' needs eval.miracl_path and eval.miracl_languages")
    return [load_miracl(resolve_path(e.miracl_path), lang, "dev", e.max_questions_of("miracl")) for lang in e.miracl_languages]


def _miracl_texts(benches: list[AdhocBenchmark]) -> list[TextGroup]:
    return [g for m in benches for g in ((m.query_texts, "query"), (m.doc_texts, "passage"))]


def _miracl_score(benches: list[AdhocBenchmark], embs: list[np.ndarray], cfg: HBTConfig, col: Collector,
                  out: Path | None) -> None:
    score_miracl(benches, [(embs[2 * i], embs[2 * i + 1]) for i in range(len(benches))], cfg, col,
                 out / "runs" if out is not None else None)


def _miracl_info(benches: list[AdhocBenchmark]) -> dict[str, Any]:
    return {"languages": [m.lang for m in benches], "queries": [len(m.query_ids) for m in benches],
            "documents": [len(m.doc_ids) for m in benches]}


REGISTRY: dict[str, BenchmarkSpec] = {
    "xquad_r": BenchmarkSpec(
        "xquad_r", "XQuAD-R", BENCHMARK_PATH_KEYS["xquad_r"], "languages", _load_xquad_r, _qa_texts, _qa_score, _qa_info,
        _qa_table("xquad_r"), _qa_headline("xquad_r"), tuple(XQUAD_R_LANGUAGES)),
    "mlqa_r": BenchmarkSpec(
        "mlqa_r", "MLQA-R", BENCHMARK_PATH_KEYS["mlqa_r"], "languages", _load_mlqa_r, _qa_texts, _qa_score, _qa_info,
        _qa_table("mlqa_r"), _qa_headline("mlqa_r"), tuple(MLQA_R_LANGUAGES)),
    "tatoeba": BenchmarkSpec(
        "tatoeba", "Tatoeba", BENCHMARK_PATH_KEYS["tatoeba"], "tatoeba_languages", _load_tatoeba, _tatoeba_texts, _tatoeba_score,
        _tatoeba_info, _tatoeba_table, lambda settings: ["tatoeba/xx-eng/acc@1", "tatoeba/eng-xx/acc@1"]),
    "miracl": BenchmarkSpec(
        "miracl", "MIRACL", BENCHMARK_PATH_KEYS["miracl"], "miracl_languages", _load_miracl, _miracl_texts, _miracl_score,
        _miracl_info, lambda settings: [("dev", {"nDCG@10": "miracl/nDCG@10", "R@100": "miracl/R@100"})],
        lambda settings: ["miracl/nDCG@10", "miracl/R@100"]),
}

def spec(name: str) -> BenchmarkSpec:
    """The registry entry of ``name``; :class:`BenchmarkError` naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise BenchmarkError("eval.benchmarks", f"unknown benchmark {name!r}; known: {list(REGISTRY)}") from None
