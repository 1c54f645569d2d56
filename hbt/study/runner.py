"""The study: does hybrid batch training hurt retrieval under domain shift?

For each strategy and seed: train, then evaluate on the held-out XQuAD-R
articles (in domain), MLQA-R (another QA dataset, never trained on) and
Tatoeba (+ MIRACL when configured; domain-shifted); the untouched starting
model is the zero-shot reference. The report compares HBT with each
baseline and the zero-shot model by a paired cluster bootstrap over questions
and seeds, and answers with pre-registered non-inferiority verdicts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hbt.config import STUDY_STRATEGIES, HbtError, HBTConfig, dump_config, with_overrides
from hbt.model.offline import resolve_model_path
from hbt.raysetup import init_ray
from hbt.study.report import build_report, endpoints_table, summary_table
from hbt.tracking import tracker_for

def strategy_overrides(cfg: HBTConfig, strategy: str) -> dict[str, Any]:
    """Config updates that make ``cfg`` train ``strategy`` (``hbt`` keeps the configured alpha)."""
    batching = STUDY_STRATEGIES[strategy][1]
    return dict(batching) if batching is not None else {"batching.strategy": "hybrid", "batching.alpha": cfg.batching.alpha}


def headline_metrics(cfg: HBTConfig) -> list[str]:
    """The metric keys the report compares, per configured benchmark (the registry's headline keys)."""
    from hbt.eval.registry import REGISTRY

    return [k for b in cfg.eval.benchmarks if b in REGISTRY for k in REGISTRY[b].headline(list(cfg.eval.settings))]


def reductions(cfg: HBTConfig, eval_info: dict[str, Any] | None = None) -> list[str]:
    """Everything this run does differently from the full protocol, for the report.

    Args:
        cfg: the study's config.
        eval_info: the zero-shot evaluation's ``info`` (sizes, samples and truncation as measured).
    """
    out = []
    if cfg.model.freeze_embeddings:
        out.append("word embeddings frozen (their optimizer update dominates a CPU step)")
    if cfg.model.num_layers:
        out.append(f"encoder cut to its first {cfg.model.num_layers} layers")
    if len(cfg.data.languages) < 11:
        out.append(f"{len(cfg.data.languages)} training languages ({', '.join(cfg.data.languages)}) instead of 11")
    if cfg.data.max_questions:
        out.append(f"at most {cfg.data.max_questions} training questions")
    out.append(f"{cfg.train.max_steps} steps of {cfg.batching.global_batch_size} pairs, sequences of "
               f"{cfg.model.max_query_length}/{cfg.model.max_passage_length} tokens")
    out.append(f"{len(cfg.study.seeds)} training seed(s) per strategy ({', '.join(map(str, cfg.study.seeds))})")
    if cfg.eval.languages:
        out.append(f"evaluation languages {', '.join(cfg.eval.languages)}")
    if cfg.eval.max_questions:
        out.append(f"evaluation on a seeded sample of {cfg.eval.max_questions} questions per QA benchmark (stratified "
                   f"by article for XQuAD-R, by context for MLQA-R; seed {cfg.eval.sample_seed}) and "
                   f"{cfg.eval.max_questions} Tatoeba query lines per language against the full target side")
    cut = [b for b in ("xquad_r", "mlqa_r") if b in cfg.eval.benchmarks and cfg.eval.pool_of(b) == "question_paragraphs"]
    if cut:
        out.append(f"candidate pools of {', '.join(cut)} cut to the paragraphs of the sampled questions "
                   "(eval.pool / eval.pool_by_benchmark: question_paragraphs) instead of every sentence")
    for name, bi in (eval_info or {}).items():
        if not isinstance(bi, dict):
            continue
        parts = []
        if "questions" in bi:
            parts.append(f"{bi['questions']} of {bi.get('questions_available', '?')} questions in "
                         f"{len(bi['languages'])} languages ({bi['queries']} queries)")
            if bi.get("questions_per_article") and name == "xquad_r":
                per = bi["questions_per_article"]
                parts.append(f"questions per article {min(per.values())}–{max(per.values())} over {len(per)} articles")
            if "candidates_per_language" in bi:
                c = bi["candidates_per_language"]
                parts.append(f"candidate pool {bi['candidates']} sentences ({min(c.values())}–{max(c.values())} per language)")
        elif "pairs" in bi:
            parts.append(f"{len(bi['languages'])} language pairs, {min(bi['queries'])} query lines each against "
                         f"{min(bi['pairs'])} targets")
        trunc = bi.get("truncated_at_max_length")
        if trunc:
            parts.append("truncated at eval.max_length " f"{cfg.eval.max_length}: "
                         + ", ".join(f"{100 * v:.1f}% of {k} texts" for k, v in trunc.items()))
        if parts:
            out.append(f"{name}: " + "; ".join(parts))
    return out


def pace_text(pace: dict[str, float]) -> str:
    """`` (N pairs/s, data wait X%)`` for a run's log line; empty without figures."""
    if "pairs_per_s" not in pace:
        return ""
    return f" ({pace['pairs_per_s']:.1f} pairs/s, data wait {100 * pace['data_wait_frac']:.2f}%)"


def _report(cfg: HBTConfig, scores: dict[str, dict[int, Any]], zero_shot: Any, study_dir: Path) -> dict[str, Any]:
    """The report of these evaluations under ``cfg.study``'s statistics, written to ``study_dir``."""
    return build_report(scores, zero_shot, headline_metrics(cfg), study_dir,
                        baselines=[s for s in cfg.study.strategies if s != "hbt"],
                        reductions=reductions(cfg, zero_shot.info), n_samples=cfg.study.bootstrap_samples,
                        confidence=cfg.study.confidence, unit=cfg.study.bootstrap_unit,
                        margin=cfg.study.noninferiority_margin, primary=cfg.primary_endpoint(),
                        domain_shift=cfg.domain_shift_endpoints())


def _print_report(report: dict[str, Any]) -> None:
    """The question, the answer and both tables, as a study prints them at its end."""
    print(f"\n{report['question']}\n{report['answer']}\n\n{endpoints_table(report)}\n\n{summary_table(report)}")


def rebuild_report(cfg: HBTConfig, study_dir: str | Path) -> dict[str, Any]:
    """Recomputes a finished study's report from its saved evaluations: no training, no encoding, no Ray.

    ``cfg.study``'s statistics (replicates, confidence, unit, margin, endpoints) apply;
    the strategies and seeds must be ones the study evaluated. ``report.{md,json}``
    and the plots in ``study_dir`` are rewritten.

    Raises:
        HbtError: ``study_dir`` is not a study directory, or lacks an evaluation ``cfg`` asks for.
    """
    from hbt.eval.results import EvalResult

    study_dir = Path(study_dir)
    if not (study_dir / "zero_shot" / "metrics.json").exists():
        raise HbtError(f"{study_dir}: not a finished study directory (no zero_shot/metrics.json)")
    scores: dict[str, dict[int, Any]] = {}
    for strategy in cfg.study.strategies:
        for seed in cfg.study.seeds:
            run = study_dir / "eval" / f"{strategy}-s{seed}"
            if not (run / "metrics.json").exists():
                raise HbtError(f"{run}: no evaluation of {strategy} seed {seed} in this study "
                               "(study.strategies and study.seeds must be ones it ran)")
            scores.setdefault(strategy, {})[seed] = EvalResult.load(run)
    report = _report(cfg, scores, EvalResult.load(study_dir / "zero_shot"), study_dir)
    _print_report(report)
    print(f"\n[hbt] report recomputed from the saved evaluations: {(study_dir / 'report.md').resolve()}")
    return report


def run_study(cfg: HBTConfig) -> dict[str, Any]:
    """Runs the whole study and writes ``report.{md,json}`` and plots.

    Returns:
        The report dict (also logged to one MLflow parent run).
    """
    from hbt.eval.runner import evaluate_tracked
    from hbt.train.job import run_training

    t0 = time.time()
    name = cfg.run_name or f"study-{time.strftime('%Y%m%d-%H%M%S')}"
    study_dir = Path(cfg.output_dir) / name
    study_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, study_dir / "config.yaml")
    init_ray(cfg.ray.address)
    parent = tracker_for(cfg, name, study_dir, tags={"hbt.kind": "study"})
    parent.log_params(cfg.model_dump(mode="json"))
    timings: dict[str, float] = {}
    pace: dict[str, dict[str, float]] = {}
    try:
        base_model = resolve_model_path(cfg.model.name_or_path, cfg.model.num_layers)
        t = time.time()
        zero_shot = evaluate_tracked(cfg, base_model, study_dir / "zero_shot", f"{name}/zero_shot",
                                     parent_run_id=parent.run_id, tags={"hbt.strategy": "zero_shot"})
        timings["eval/zero_shot"] = time.time() - t
        print(f"[hbt] zero-shot evaluated in {timings['eval/zero_shot']:.0f}s", flush=True)
        scores: dict[str, dict[int, Any]] = {}
        for strategy in cfg.study.strategies:
            for seed in cfg.study.seeds:
                tag = f"{strategy}-s{seed}"
                # The study's store, pinned: with the runs' own output_dir the default
                # store would be a second database that the parent run never sees.
                run_cfg = with_overrides(cfg, {**strategy_overrides(cfg, strategy), "batching.seed": seed,
                                               "run_name": f"{name}-{tag}", "output_dir": str(study_dir / "runs"),
                                               "tracking.uri": parent.uri})
                t = time.time()
                trained = run_training(run_cfg, parent_run_id=parent.run_id)
                timings[f"train/{tag}"] = time.time() - t
                pace[tag] = trained.get("pace") or {}
                t = time.time()
                scores.setdefault(strategy, {})[seed] = evaluate_tracked(
                    run_cfg, trained["model_dir"], study_dir / "eval" / tag, f"{name}/{tag}/eval",
                    parent_run_id=parent.run_id, tags={"hbt.strategy": strategy, "hbt.seed": str(seed)})
                timings[f"eval/{tag}"] = time.time() - t
                print(f"[hbt] {tag}: trained in {timings[f'train/{tag}']:.0f}s{pace_text(pace[tag])}, "
                      f"evaluated in {timings[f'eval/{tag}']:.0f}s", flush=True)
        report = _report(cfg, scores, zero_shot, study_dir)
        timings["total"] = time.time() - t0
        (study_dir / "timings.json").write_text(json.dumps(timings, indent=2), encoding="utf-8")
        (study_dir / "training_pace.json").write_text(json.dumps(pace, indent=2), encoding="utf-8")
        parent.log_metrics({f"time/{k}_s": v for k, v in timings.items()})
        parent.log_metrics({f"pace/{tag}/{k}": v for tag, p in pace.items() for k, v in p.items()})
        files = report["files"]
        for f in [files["json"], files["markdown"], *files["plots"]]:
            parent.log_artifact(study_dir / f)
        parent.log_artifact(study_dir / "timings.json")
        parent.log_artifact(study_dir / "training_pace.json")
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end("FINISHED")
    _print_report(report)
    waits = [p["data_wait_frac"] for p in pace.values() if "data_wait_frac" in p]
    if waits:
        print(f"[hbt] data wait over {len(waits)} training runs (each the median of its windows after the first): "
              f"median {100 * float(np.median(waits)):.2f}%, max {100 * max(waits):.2f}% of step time")
    print(f"\n[hbt] study finished in {timings['total']:.0f}s; report: {(study_dir / 'report.md').resolve()}")
    return report
