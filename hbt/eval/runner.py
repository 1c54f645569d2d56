"""The evaluation stage: load the configured benchmarks, embed their texts, score, save, track.

:func:`evaluate` is the library entry (the study and tune code call it);
:func:`evaluate_tracked` adds one MLflow run; :func:`evaluate_in_memory` scores
a live encoder (the in-training dev evaluation) with the same texts and
scorers. Which benchmarks exist and how each loads and scores is
:mod:`hbt.eval.registry`; the metric keys are described in :mod:`hbt.eval.results`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from hbt.config import HBTConfig, dump_config, redact_uri, write_text_atomic
from hbt.eval.benchmarks import BenchmarkError
from hbt.eval.registry import spec
from hbt.eval.results import Collector, EvalResult
from hbt.model.storage import shareable_model

log = logging.getLogger("hbt.eval")

SPLITS = ("test", "dev")


def _languages(cfg: HBTConfig, names: list[str]) -> dict[str, list[str] | None]:
    """Per benchmark with a fixed language list, the languages to load (``eval.languages`` restricted to what it has).

    Benchmarks with their own language key (Tatoeba, MIRACL) map to ``None``: their loaders read that key.
    """
    fixed = {n: list(spec(n).languages) for n in names if spec(n).languages_key == "languages"}
    out: dict[str, list[str] | None] = {n: None for n in names}
    wanted = cfg.eval.languages
    if wanted is None:
        return out | fixed
    if len(set(wanted)) != len(wanted):
        raise BenchmarkError("eval.languages", f"languages repeat: {wanted}")
    unknown = [lang for lang in wanted if not any(lang in langs for langs in fixed.values())]
    if fixed and unknown:
        raise BenchmarkError(
            "eval.languages", f"unknown language code(s) {unknown} for {list(fixed)} (known: "
            + "; ".join(f"{b}: {langs}" for b, langs in fixed.items()) + ")"
        )
    for name, langs in fixed.items():
        keep = [lang for lang in wanted if lang in langs]
        if not keep:
            raise BenchmarkError("eval.languages", f"none of {wanted} is a {name} language ({langs})")
        out[name] = keep
    return out


def load_benchmarks(cfg: HBTConfig, split: str = "test") -> dict[str, Any]:
    """Loads the benchmarks ``cfg.eval`` selects for a split.

    Args:
        cfg: the config.
        split: ``test`` (the configured benchmarks; XQuAD-R restricted to
            ``data.heldout_articles`` when ``eval.heldout_only`` and the list is
            non-empty) or ``dev`` (only XQuAD-R, restricted to ``data.dev_articles``).

    Returns:
        ``name -> loaded benchmark`` (a :class:`~hbt.eval.benchmarks.QABenchmark`, a list of
        :class:`~hbt.eval.benchmarks.BitextBenchmark` or of :class:`~hbt.eval.benchmarks.AdhocBenchmark`).

    Raises:
        ValueError: an unknown split, or ``dev`` without ``data.dev_articles``.
        BenchmarkError: bad benchmark files or language codes.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "dev":
        if not cfg.data.dev_articles:
            raise ValueError("split 'dev' needs data.dev_articles (the XQuAD-R articles kept for tuning)")
        names, articles = ["xquad_r"], list(cfg.data.dev_articles)
    else:
        names = list(dict.fromkeys(cfg.eval.benchmarks))
        held = cfg.data.heldout_articles
        articles = list(held) if cfg.eval.heldout_only and held else None
    langs = _languages(cfg, names)
    # Held-out articles are XQuAD-R's (the training data's) articles; the other benchmarks are whole.
    return {n: spec(n).load(cfg, split, langs[n], articles if n == "xquad_r" else None) for n in names}


def texts_of(benches: dict[str, Any]) -> tuple[list[str], list[str], dict[str, list[slice]]]:
    """Every text to embed, its kind, and where each benchmark's text groups sit in the list."""
    texts: list[str] = []
    kinds: list[str] = []
    where: dict[str, list[slice]] = {}
    for name, b in benches.items():
        where[name] = []
        for items, kind in spec(name).texts(b):
            where[name].append(slice(len(texts), len(texts) + len(items)))
            texts.extend(items)
            kinds.extend([kind] * len(items))
    return texts, kinds, where


def score_benchmarks(benches: dict[str, Any], emb: np.ndarray, where: dict[str, list[slice]], cfg: HBTConfig,
                     col: Collector, out: Path | None) -> dict[str, Any]:
    """Scores every benchmark from the embeddings of :func:`texts_of`' list into ``col``.

    Args:
        benches: from :func:`load_benchmarks`.
        emb: one embedding per text of ``texts_of(benches)``.
        where: ``texts_of``' slices.
        cfg: the config.
        col: collects metrics, per-query values and matrices.
        out: files a scorer writes (MIRACL's TREC runs) go under it (None: not written).

    Returns:
        Per-benchmark info (languages and sizes).
    """
    from hbt.progress import Progress

    info: dict[str, Any] = {}
    # One unit a benchmark: each is searched and scored whole, and a large pool takes minutes.
    progress = Progress("search and score", len(benches), "benchmarks", every_s=0.0)
    for name, b in benches.items():
        s = spec(name)
        t = time.time()
        s.score(b, [emb[sl] for sl in where[name]], cfg, col, out)
        info[name] = s.info(b)
        log.debug("%s searched and scored in %.1fs", name, time.time() - t)
        progress.update(1)
    progress.close()
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

    texts, kinds, where = texts_of(benches)
    emb = encode_with_model(encoder, tokenizer, texts, kinds, cfg, device)
    col = Collector()
    score_benchmarks(benches, emb, where, cfg, col, None)
    return col.metrics


def prepare_eval(cfg: HBTConfig, out: Path) -> HBTConfig:
    """Starts Ray unless it runs, makes ``eval.*: auto`` concrete for its resources, writes ``out/config.yaml``.

    Idempotent: a prepared config has nothing left to resolve, so the choice
    is printed once and :func:`evaluate_tracked`'s call and :func:`evaluate`'s agree.
    """
    from hbt.eval.encode import resolve_eval_auto
    from hbt.raysetup import init_ray

    init_ray(cfg.ray.address)
    cfg = resolve_eval_auto(cfg)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    return cfg


def evaluate(cfg: HBTConfig, model_dir: str, out_dir: str, split: str = "test",
             benches: dict[str, Any] | None = None, label: dict[str, Any] | None = None) -> EvalResult:
    """Evaluates a bi-encoder on the benchmarks the config selects.

    Ray is initialised (``cfg.ray.address``) unless it already is; the texts
    are embedded by a Ray Data actor pool (``eval.num_encoders`` actors with
    ``eval.cpus_per_encoder`` CPUs / ``eval.gpus_per_encoder`` GPUs each). Up to
    ``eval.driver_search_max_mb`` the embeddings are fetched and searched here;
    above it they stay in the object store, ``eval.num_shards`` search actors hold
    the candidates, and this process only fetches queries and merges results.

    Args:
        cfg: the config.
        model_dir: a transformers checkpoint dir (a saved BiEncoder).
        out_dir: results (``metrics.json``, ``matrices.json``, ``per_query.npz``,
            ``info.json``) go here.
        split: ``test`` or ``dev`` (see :func:`load_benchmarks`).
        benches: ``load_benchmarks(cfg, split)`` when the caller loaded them already.
        label: recorded in ``info.json`` over ``split`` (:func:`hbt.eval.job.held_out_split`'s label:
            the split's name, the training articles scored, the run that trained the model).

    Returns:
        The result (also saved to ``out_dir``).

    Raises:
        BenchmarkError: bad benchmark files or language codes.
        ValueError: an unknown split, or ``dev`` without ``data.dev_articles``.
    """
    from hbt.eval.encode import encode_to_store, truncated_shares

    t0 = time.time()
    out = Path(out_dir)
    if benches is None:
        benches = load_benchmarks(cfg, split)  # bad benchmark files fail before Ray starts
    t_load = time.time()
    texts, kinds, where = texts_of(benches)
    cfg = prepare_eval(cfg, out)
    # The embeddings stay in the object store; search actors hold the candidates
    # and the driver fetches only the queries (hbt.eval.search).
    # On a cluster the encoder actors' nodes fetch a driver-local model from the storage.
    lazy = encode_to_store(texts, kinds, shareable_model(str(model_dir), cfg), cfg)
    t_enc = time.time()
    col = Collector()
    in_driver = lazy.store.nbytes <= cfg.eval.driver_search_max_mb * 2**20
    info: dict[str, Any] = {"model_dir": str(model_dir), "split": split, "benchmarks": list(benches),
                            "precision": cfg.eval.precision, "num_encoders": cfg.eval.num_encoders,
                            "search": "driver" if in_driver else f"{cfg.eval.num_shards} actor(s)",
                            "search_shards": cfg.eval.num_shards, "embeddings_mb": round(lazy.store.nbytes / 2**20, 1),
                            "texts": len(texts), "unique_texts": lazy.store.count, **(label or {})}
    try:
        # A small set is fetched once and searched here (eval.driver_search_max_mb); a large one never reaches the driver.
        emb = np.asarray(lazy) if in_driver else lazy
        info.update(score_benchmarks(benches, emb, where, cfg, col, out))
    finally:
        lazy.store.close()
    for name, sl in where.items():
        parts = np.asarray([i for s in sl for i in range(s.start, s.stop)], dtype=np.int64)
        info[name]["truncated_at_max_length"] = truncated_shares(
            lazy.token_lengths[parts], [kinds[i] for i in parts], cfg.eval.max_length)
    t_end = time.time()
    info["seconds"] = {"load": round(t_load - t0, 2), "encode": round(t_enc - t_load, 2),
                       "score": round(t_end - t_enc, 2), "total": round(t_end - t0, 2)}
    result = EvalResult(col.metrics, col.per_query, col.matrices, info, col.units)
    result.save(out)
    return result


def evaluate_tracked(cfg: HBTConfig, model_dir: str, out_dir: str | os.PathLike, run_name: str,
                     split: str = "test", parent_run_id: str | None = None,
                     tags: dict[str, str] | None = None, label: dict[str, Any] | None = None) -> EvalResult:
    """Evaluates and records one MLflow run (params, metrics, timings, result files).

    Args:
        cfg: the validated config.
        model_dir: the model to evaluate.
        out_dir: where results go.
        run_name: the MLflow run name.
        split: ``test`` or ``dev``.
        parent_run_id: nest the run under this one (studies, tuning).
        tags: extra run tags.
        label: see :func:`evaluate`.
    """
    from hbt.tracking import end_status, tracker_for

    out = Path(out_dir).resolve()
    benches = load_benchmarks(cfg, split)  # bad benchmark files fail before Ray starts or a run is opened
    cfg = prepare_eval(cfg, out)  # the params record the concrete `auto` choices
    tracker = tracker_for(cfg, run_name, out, parent_run_id,
                          tags={"hbt.stage": "eval", "hbt.model_dir": str(model_dir), **(tags or {})})
    # The URI without its password: run folders are shared and copied around.
    write_text_atomic(out / "mlflow_run.json", json.dumps(
        {"run_id": tracker.run_id, "tracking_uri": redact_uri(tracker.uri) if tracker.uri else None}, indent=2))
    tracker.log_params({**cfg.model_dump(mode="json"), "eval_model_dir": str(model_dir),
                        "eval_split": (label or {}).get("split", split),
                        "eval_training_articles_scored": len((label or {}).get("training_articles_scored", []))})
    try:
        result = evaluate(cfg, model_dir, str(out), split=split, benches=benches, label=label)
        tracker.log_metrics(result.metrics)
        tracker.log_metrics({f"time/{k}_s": v for k, v in result.info.get("seconds", {}).items()})
        for name in ("metrics.json", "matrices.json", "info.json", "per_query.npz", "config.yaml"):
            tracker.log_artifact(out / name)
        if (out / "runs").is_dir():
            tracker.log_artifact(out / "runs", "runs")
    except BaseException as e:
        tracker.end(end_status(e))
        raise
    tracker.end("FINISHED")
    return result
