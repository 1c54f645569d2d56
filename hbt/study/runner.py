"""The study: does hybrid batch training hurt retrieval under domain shift?

For each strategy and seed: train, then evaluate on the held-out XQuAD-R
articles (in domain), MLQA-R (another QA dataset, never trained on) and
Tatoeba (+ MIRACL when configured; domain-shifted); the untouched starting
model is the zero-shot reference. The report compares HBT with each
baseline and the zero-shot model by a paired cluster bootstrap over questions
and seeds, and answers with pre-registered non-inferiority verdicts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from hbt.config import (STUDY_STRATEGIES, HbtError, HBTConfig, Interrupted, dump_config, read_json_file,
                        with_overrides, write_text_atomic)
from hbt.hardware import machine_facts
from hbt.model.offline import resolve_model_path
from hbt.raysetup import init_ray
from hbt.study.report import compute_report, endpoints_table, summary_table, write_report
from hbt.tracking import tracker_for, tracking_uri

log = logging.getLogger("hbt.study")

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
    if cfg.batching.language_schedule == "balanced":
        out.append("balanced language schedules (batching.language_schedule), where the paper draws every batch "
                   "independently: each language (each ordered pair for X-Y) comes up in proportion over every round "
                   "of steps and a hybrid run is monolingual on exactly alpha of each 20 steps, so which languages "
                   "a seed happened to draw does not add to the seed variance")
    if cfg.eval.languages:
        out.append(f"evaluation languages {', '.join(cfg.eval.languages)}")
    sampled = {b: n for b in cfg.eval.benchmarks if (n := cfg.eval.max_questions_of(b))}
    how = {"xquad_r": "questions (stratified by article)", "mlqa_r": "questions (stratified by context)",
           "tatoeba": "query lines per language against the full target side", "miracl": "topics per language"}
    if sampled:
        out.append("evaluation on seeded samples (seed " f"{cfg.eval.sample_seed}): "
                   + "; ".join(f"{b} {n} {how[b]}" for b, n in sampled.items()))
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


def _report(cfg: HBTConfig, scores: dict[str, dict[int, Any]], zero_shot: Any, study_dir: Path,
            timings: dict[str, float] | None = None) -> dict[str, Any]:
    """The report of these evaluations under ``cfg.study``'s statistics, with its power plan, written to ``study_dir``."""
    from hbt.study.plan import available_questions, design_plan

    report = compute_report(scores, zero_shot, headline_metrics(cfg),
                            hbt_name=cfg.study.under_test,
                            baselines=[s for s in cfg.study.strategies if s != cfg.study.under_test],
                            reductions=reductions(cfg, zero_shot.info), n_samples=cfg.study.bootstrap_samples,
                            confidence=cfg.study.confidence, unit=cfg.study.bootstrap_unit,
                            margin=cfg.study.noninferiority_margin, primary=cfg.primary_endpoint(),
                            domain_shift=cfg.domain_shift_endpoints(),
                            reduced_pools=[b for b in ("xquad_r", "mlqa_r") if b in cfg.eval.benchmarks
                                           and cfg.eval.pool_of(b) == "question_paragraphs"])
    if report["endpoints"]["domain_shift"]:
        report["plan"] = design_plan(report, timings, available_questions(zero_shot.info))
    return write_report(report, study_dir)


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
    timings_file = study_dir / "timings.json"
    timings = read_json_file(timings_file, "the study's timings") if timings_file.exists() else None
    report = _report(cfg, scores, EvalResult.load(study_dir / "zero_shot"), study_dir, timings)
    _print_report(report)
    log.info("report recomputed from the saved evaluations: %s", (study_dir / "report.md").resolve())
    return report


# A finished unit of a study (the zero-shot evaluation, a training run, an evaluation) writes this
# file last, with the hash of the config it ran under: `hbt study --resume` reuses exactly those.
DONE_FILE = "done.json"
STATE_FILE = "study_state.json"


# What a unit's result depends on: a training run on how it trains (the worker count slices the
# batches and seeds the dropout masks), an evaluation on the model and how it is scored. Tracking,
# storage and the study's statistics change neither: --resume with another replicate count or an
# added seed reuses every finished unit.
TRAIN_SECTIONS = ("model", "data", "batching", "train", "deepspeed", "ray.num_workers")
EVAL_SECTIONS = ("model", "data", "eval")


def config_hash(cfg: HBTConfig, sections: tuple[str, ...] = TRAIN_SECTIONS, *extra: str) -> str:
    """A hash of the config's ``sections`` (dotted keys allowed) and ``extra`` strings."""
    from hbt.config import _redacted

    tree = _redacted(cfg.model_dump(mode="json"))
    picked = {}
    for key in sections:
        node = tree
        for part in key.split("."):
            node = node[part]
        picked[key] = node
    text = json.dumps([picked, *extra], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finished(unit_dir: Path, digest: str) -> dict[str, Any] | None:
    """The record of a unit finished under the same config, else None (missing, other config, or damaged)."""
    f = unit_dir / DONE_FILE
    try:
        record = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not finished (a damaged marker is never trusted: the unit runs again)
    return record if isinstance(record, dict) and record.get("config_hash") == digest else None


def _mark_finished(unit_dir: Path, digest: str, record: dict[str, Any]) -> None:
    """Writes the unit's marker, atomically: a marker is whole or absent."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(unit_dir / DONE_FILE, json.dumps({"config_hash": digest, **record}, indent=2, default=str))


STARTED_FILE = "started.json"


def _start_fresh_if_changed(run_cfg: HBTConfig, run_dir: Path, digest: str) -> None:
    """Clears a training run begun under another config, so that Ray Train does not continue it.

    A run cut short continues from its last checkpoint on resume (same name, same
    storage); that is right only for the config it began with, which its
    ``started.json`` records.
    """
    from hbt.train.job import run_storage

    began = run_dir / STARTED_FILE
    if began.is_file():
        try:
            same = json.loads(began.read_text(encoding="utf-8")).get("config_hash") == digest
        except ValueError:
            same = False
        if not same:
            from pyarrow import fs

            from hbt.model.storage import filesystem_and_path

            filesystem, path = filesystem_and_path(run_storage(run_cfg, run_cfg.run_name))
            if filesystem.get_file_info(path).type == fs.FileType.Directory:
                filesystem.delete_dir(path)
            shutil.rmtree(run_dir, ignore_errors=True)
            log.warning("%s: begun under another config; trained again from the start", run_cfg.run_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(began, json.dumps({"config_hash": digest}))


class _Progress:
    """What a study has finished, for the line an interruption prints."""

    def __init__(self, total_runs: int) -> None:
        self.total_runs, self.trained, self.evaluated = total_runs, 0, 0
        self.t0, self.trained_here = time.time(), 0

    def eta_text(self) -> str:
        """``3/15 runs done, ETA 24:10`` at the pace of the runs this process trained (reused ones cost nothing)."""
        from hbt.progress import clock

        left = self.total_runs - self.trained
        if not left:
            return f"{self.trained}/{self.total_runs} runs done"
        if not self.trained_here:
            return f"{self.trained}/{self.total_runs} runs done, ETA ?"
        per_run = (time.time() - self.t0) / self.trained_here
        return f"{self.trained}/{self.total_runs} runs done, ETA {clock(per_run * left)}"


class _Tree:
    """The study's MLflow runs: study → strategy → seed → {train, eval}, and the zero-shot eval under the study.

    The strategy and seed runs group their children in the MLflow UI and carry the same
    ``hbt.stage`` / ``hbt.strategy`` / ``hbt.seed`` tags. Their ids are kept in
    ``study_state.json``, so ``--resume`` continues the same tree.
    """

    def __init__(self, cfg: HBTConfig, name: str, study_dir: Path, resume: bool) -> None:
        from hbt.tracking import Tracker

        self.cfg, self.study_dir = cfg, study_dir
        self.path = study_dir / STATE_FILE
        state: dict[str, Any] = {}
        if resume and self.path.is_file():
            state = read_json_file(self.path, "the study's MLflow run ids",
                                   "delete it to record the resumed study under a new MLflow run")
        self.ids: dict[str, str] = dict(state.get("children") or {})
        self._open: dict[str, Any] = {}
        run_id = state.get("mlflow_run_id")
        if run_id:
            self.parent = Tracker(tracking_uri(cfg), cfg.tracking.experiment, name, study_dir, run_id=run_id)
            # Runs a killed process left RUNNING; those this study continues are opened again below.
            self.parent.kill_unfinished_children()
            self.parent.reopen()
        else:
            self.parent = tracker_for(cfg, name, study_dir, tags={"hbt.stage": "study"})
            self.ids = {}
        self._save()

    def _save(self) -> None:
        write_text_atomic(self.path, json.dumps({"mlflow_run_id": self.parent.run_id, "children": self.ids}, indent=2))

    def group(self, key: str, parent_id: str | None, tags: dict[str, str]):
        """The grouping run ``key`` (``x_y`` or ``x_y/s0``), created once, RUNNING while its children run."""
        from hbt.tracking import Tracker

        if key in self._open:
            return self._open[key]
        if key in self.ids:
            run = Tracker(self.parent.uri, self.cfg.tracking.experiment, key, self.study_dir, run_id=self.ids[key])
            run.reopen()
        else:
            run = Tracker(self.parent.uri, self.cfg.tracking.experiment, key, self.study_dir,
                          parent_run_id=parent_id, tags=tags)
            if run.run_id:
                self.ids[key] = run.run_id
                self._save()
        self._open[key] = run
        return run

    def close(self, key: str) -> None:
        run = self._open.pop(key, None)
        if run is not None:
            run.end("FINISHED")

    def end(self, status: str) -> None:
        """Ends the study's run; an interrupted study's open groups and children are marked KILLED."""
        if status != "FINISHED":
            self.parent.kill_unfinished_children()
        self.parent.end(status)


def run_study(cfg: HBTConfig, resume: bool = False) -> dict[str, Any]:
    """Runs the whole study and writes ``report.{md,json}`` and plots.

    Each finished unit (the zero-shot evaluation, every training run and every
    evaluation) writes ``done.json`` with the hash of its config. With
    ``resume`` (``hbt study --resume DIR``) those whose config matches are
    reused and only the rest run; a training run cut short continues from its
    last checkpoint (same run name and storage).

    Returns:
        The report dict (also logged to one MLflow parent run).

    Raises:
        Interrupted: Ctrl-C or SIGTERM; what finished is kept, and the message says how to resume.
    """
    t0 = time.time()
    name = cfg.run_name or f"study-{time.strftime('%Y%m%d-%H%M%S')}"
    # Pinned and absolute, as --resume sets them: the units' config hashes must not depend on the cwd.
    cfg = with_overrides(cfg, {"run_name": name, "output_dir": str(Path(cfg.output_dir).resolve())})
    study_dir = Path(cfg.output_dir) / name
    study_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, study_dir / "config.yaml")
    # The machine the study's time was measured on (the README section states it).
    write_text_atomic(study_dir / "machine.json", json.dumps(machine_facts(), indent=2))
    init_ray(cfg.ray.address)
    tree = _Tree(cfg, name, study_dir, resume)
    parent = tree.parent
    parent.log_params(cfg.model_dump(mode="json"))
    progress = _Progress(len(cfg.study.strategies) * len(cfg.study.seeds))
    try:
        report, timings, pace = _run_units(cfg, name, study_dir, tree, progress)
    except (KeyboardInterrupt, Interrupted):
        tree.end("KILLED")
        raise Interrupted(
            f"interrupted: {progress.trained} of {progress.total_runs} training runs and {progress.evaluated} "
            f"evaluations finished and kept in {study_dir.resolve()}; resume with: "
            f"hbt study --resume {study_dir.resolve()}") from None
    except BaseException:
        tree.end("FAILED")
        raise
    tree.end("FINISHED")
    _print_report(report)
    waits = [p["data_wait_frac"] for p in pace.values() if "data_wait_frac" in p]
    if waits:
        log.info("data wait over %d training runs (each the median of its windows after the first): "
                 "median %.2f%%, max %.2f%% of step time", len(waits), 100 * float(np.median(waits)), 100 * max(waits))
    log.info("study finished in %.0fs; report: %s", time.time() - t0, (study_dir / "report.md").resolve())
    return report


def _evaluated(cfg: HBTConfig, model_dir: str, out: Path, run_name: str, parent_id: str | None,
               tags: dict[str, str], progress: _Progress) -> tuple[Any, float, bool]:
    """One evaluation of the study, reused when it finished under the same config and model.

    Returns:
        (the EvalResult, its seconds, whether it was reused)
    """
    from hbt.eval.results import EvalResult
    from hbt.eval.runner import evaluate_tracked

    digest = config_hash(cfg, EVAL_SECTIONS, str(model_dir))
    done = _finished(out, digest)
    if done is not None:
        progress.evaluated += 1
        return EvalResult.load(out), float(done.get("seconds", 0.0)), True
    t = time.time()
    result = evaluate_tracked(cfg, model_dir, out, run_name, parent_run_id=parent_id, tags=tags)
    seconds = time.time() - t
    _mark_finished(out, digest, {"seconds": seconds, "model_dir": str(model_dir)})
    progress.evaluated += 1
    return result, seconds, False


def _run_units(cfg: HBTConfig, name: str, study_dir: Path, tree: _Tree, progress: _Progress):
    """Zero-shot, then every strategy and seed: train, evaluate; then the report. Returns (report, timings, pace)."""
    from hbt.train.job import run_training

    t0 = time.time()
    timings: dict[str, float] = {}
    pace: dict[str, dict[str, float]] = {}
    base_model = resolve_model_path(cfg.model.name_or_path, cfg.model.num_layers)
    parent = tree.parent
    zero_shot, timings["eval/zero_shot"], reused = _evaluated(
        cfg, base_model, study_dir / "zero_shot", "zero_shot/eval", parent.run_id, {"hbt.strategy": "zero_shot"},
        progress)
    log.info("zero-shot %s (%.0fs)", "reused" if reused else "evaluated", timings["eval/zero_shot"])
    progress.t0 = time.time()  # the ETA is paced by training runs and their evaluations alone
    scores: dict[str, dict[int, Any]] = {}
    for strategy in cfg.study.strategies:
        group = tree.group(strategy, parent.run_id, {"hbt.stage": "strategy", "hbt.strategy": strategy})
        for seed in cfg.study.seeds:
            tag = f"{strategy}-s{seed}"
            labels = {"hbt.strategy": strategy, "hbt.seed": str(seed)}
            seed_run = tree.group(f"{strategy}/s{seed}", group.run_id, {"hbt.stage": "seed", **labels})
            # The study's store, pinned: with the runs' own output_dir the default
            # store would be a second database that the parent run never sees.
            run_cfg = with_overrides(cfg, {**strategy_overrides(cfg, strategy), "batching.seed": seed,
                                           "run_name": f"{name}-{tag}", "output_dir": str(study_dir / "runs"),
                                           "tracking.uri": parent.uri})
            run_dir = study_dir / "runs" / f"{name}-{tag}"
            digest = config_hash(run_cfg)
            trained = _finished(run_dir, digest)
            if trained is None:
                _start_fresh_if_changed(run_cfg, run_dir, digest)
                t = time.time()
                trained = run_training(run_cfg, parent_run_id=seed_run.run_id,
                                       tags={**labels, "mlflow.runName": f"{strategy}/s{seed}/train"})
                trained["seconds"] = time.time() - t
                _mark_finished(run_dir, digest, trained)
                verb = "trained"
                progress.trained_here += 1
            else:
                verb = "reused"
            progress.trained += 1
            timings[f"train/{tag}"] = float(trained["seconds"])
            pace[tag] = trained.get("pace") or {}
            scores.setdefault(strategy, {})[seed], timings[f"eval/{tag}"], reused = _evaluated(
                run_cfg, trained["model_dir"], study_dir / "eval" / tag, f"{strategy}/s{seed}/eval", seed_run.run_id,
                labels, progress)
            tree.close(f"{strategy}/s{seed}")
            log.info("%s: %s (%.0fs)%s, %s (%.0fs); %s", tag, verb, timings[f"train/{tag}"], pace_text(pace[tag]),
                     "reused" if reused else "evaluated", timings[f"eval/{tag}"], progress.eta_text())
        tree.close(strategy)
    report = _report(cfg, scores, zero_shot, study_dir, timings)
    timings["total"] = time.time() - t0
    write_text_atomic(study_dir / "timings.json", json.dumps(timings, indent=2))
    write_text_atomic(study_dir / "training_pace.json", json.dumps(pace, indent=2))
    parent.log_metrics({f"time/{k}_s": v for k, v in timings.items()})
    parent.log_metrics({f"pace/{tag}/{k}": v for tag, p in pace.items() for k, v in p.items()})
    files = report["files"]
    for f in [files["json"], files["markdown"], *files["plots"]]:
        parent.log_artifact(study_dir / f)
    parent.log_artifact(study_dir / "timings.json")
    parent.log_artifact(study_dir / "training_pace.json")
    return report, timings, pace
