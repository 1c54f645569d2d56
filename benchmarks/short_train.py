"""A short training run end to end: ``hbt train`` vs a ``SentenceTransformerTrainer`` script, start-up included.

Issue 28: ``hbt train`` of 10 steps on the local config must take at most 1.5x
the wall time of a sentence-transformers script that does the same 10 steps,
each timed as a whole process (imports, start-up, data, steps, saving), in one
script run; and the time to the first training step is measured.

Contenders, each a fresh subprocess timed from spawn to exit by this script:

- ``hbt``: ``hbt -q train --config configs/local.yaml train.max_steps=10
  output_dir=TMP run_name=... tracking.uri=sqlite:///TMP/mlflow.db``: the local
  config otherwise as it is (multilingual-e5-small, hybrid batches of 32 pairs
  over 7 languages, lengths 32/64, frozen word embeddings, 2 Ray Train workers
  of 0.5 CPU, DeepSpeed ZeRO-0, ``train.precision: auto``). The wall time holds
  the imports, Ray's start, the data read and tokenised, the worker group and
  model load, the steps, the final checkpoint (DeepSpeed state + model), the
  published final model and MLflow records. From the run's ``metrics.jsonl``
  (wall-clock ``time`` per logged window, ``train/samples_per_s`` from the
  window's own clock): when the training loop started (the first window's row
  time less its duration) and when its last step ended.
- ``sentence_transformers``: this file with ``--contender-st SPEC``: the script a
  user writes: import sentence-transformers, ``SentenceTransformer(model dir)``,
  freeze the word embeddings, read XQuAD-R's SQuAD-format JSON of the 7
  languages (training articles only: the config's held-out and dev articles are
  left out), one pair per question (query -> answer sentence), monolingual or
  cross-lingual with probability 0.5 each, the e5 prefixes,
  ``MultipleNegativesRankingLoss(scale=1/temperature)``, batch 32,
  ``max_seq_length`` 64 (the config's passage length), the config's lr, linear
  warmup, weight decay and grad clip, ``bf16=True`` exactly when hbt's
  ``train.precision: auto`` resolves to bf16 on this machine, ``os.cpu_count()``
  torch threads, ``max_steps``, no checkpoints, then ``model.save(dir)``. A
  callback records the loop's start and every step's end.

The contenders alternate (the order rotates per repetition); medians over
``--reps``. ``ratio_hbt_over_st`` = median hbt wall / median sentence-transformers
wall (target <= 1.5).

What differs in work (also in the JSON's ``differences``): hbt saves a DeepSpeed
checkpoint (weights + optimizer state) and copies the model out of it, writes
MLflow records, and runs 2 data-parallel workers of 16 pairs (one torch thread
each, passages gathered: 32 candidates per query, same-passage candidates
masked); sentence-transformers runs one process with 2 threads, saves the model
only, pads queries and passages alike to at most 64 tokens (hbt cuts queries at
32) and mixes monolingual and cross-lingual pairs inside a batch (hbt's hybrid
batch is all monolingual or all cross-lingual).

Command (an estimated 3-4 minutes per repetition on 2 cores, not yet timed at full size;
nothing else should run):

    timeout 1800 python benchmarks/short_train.py --reps 3 --out benchmarks/results/short_train.json

Smoke (tiny model, 2 steps): tests/benchmarks/test_short_train.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PROJECT_ROOT, claim_stdout, emit, log, machine, median, ratio, rotate  # noqa: E402

CONFIG = "configs/local.yaml"
TARGET = 1.5
CONTENDERS = ("hbt", "sentence_transformers")


# ---------------------------------------------------------------- the sentence-transformers script


def st_script(spec: dict[str, Any]) -> dict[str, Any]:
    """The user's sentence-transformers training script (runs in its own process; times in epoch seconds).

    ``spec``: model_dir, data_path, languages, exclude_articles, query_prefix, passage_prefix,
    batch, max_seq_length, steps, lr, warmup_steps, weight_decay, grad_clip, temperature,
    bf16, freeze_embeddings, out_dir, seed.
    """
    marks: dict[str, float] = {}
    import random

    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    marks["imported"] = time.time()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(spec["seed"])
    model = SentenceTransformer(spec["model_dir"], device="cpu")
    model.max_seq_length = spec["max_seq_length"]
    if spec["freeze_embeddings"]:
        model[0].auto_model.get_input_embeddings().weight.requires_grad_(False)
    marks["model_loaded"] = time.time()

    # XQuAD-R: one SQuAD-format file per language, question ids shared across languages;
    # the positive is the sentence holding the answer's start.
    excluded = set(spec["exclude_articles"])
    texts: dict[str, dict[str, tuple[str, str]]] = {}
    for lang in spec["languages"]:
        with open(os.path.join(spec["data_path"], f"{lang}.json"), encoding="utf-8") as f:
            articles = json.load(f)["data"]
        for art in articles:
            if art["title"] in excluded:
                continue
            for par in art["paragraphs"]:
                for qa in par["qas"]:
                    start = qa["answers"][0]["answer_start"]
                    sent = next((i for i, (s, e) in enumerate(par["sentence_breaks"]) if s <= start < e), None)
                    if sent is not None:
                        texts.setdefault(qa["id"], {})[lang] = (qa["question"], par["sentences"][sent])
    langs = spec["languages"]
    rng = random.Random(spec["seed"])
    anchors, positives = [], []
    for by_lang in texts.values():
        if len(by_lang) != len(langs):
            continue
        q_lang = rng.choice(langs)
        p_lang = q_lang if rng.random() < 0.5 else rng.choice([x for x in langs if x != q_lang])
        anchors.append(spec["query_prefix"] + by_lang[q_lang][0])
        positives.append(spec["passage_prefix"] + by_lang[p_lang][1])
    data = Dataset.from_dict({"anchor": anchors, "positive": positives})
    marks["data_built"] = time.time()

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.begin = 0.0
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kw):
            self.begin = time.time()

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.time())

    clock = Clock()
    args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(spec["out_dir"], "trainer"),
        per_device_train_batch_size=spec["batch"],
        max_steps=spec["steps"],
        learning_rate=spec["lr"],
        warmup_steps=spec["warmup_steps"],
        lr_scheduler_type="linear",
        weight_decay=spec["weight_decay"],
        max_grad_norm=spec["grad_clip"],
        dataloader_drop_last=True,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        bf16=spec["bf16"],
        seed=spec["seed"],
    )
    loss = MultipleNegativesRankingLoss(model, scale=1.0 / spec["temperature"])
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[clock])
    marks["trainer_built"] = time.time()
    trainer.train()
    marks["trained"] = time.time()
    model.save(os.path.join(spec["out_dir"], "model"))
    marks["saved"] = time.time()
    return {"marks": marks, "loop_start": clock.begin, "step_ends": clock.ends,
            "global_step": trainer.state.global_step, "pairs_available": len(anchors), "optim": str(args.optim)}


def st_child_main(spec_path: str) -> None:
    claim_stdout()
    out = st_script(json.loads(Path(spec_path).read_text(encoding="utf-8")))
    emit(out)


# ---------------------------------------------------------------- contenders (from the parent)


def _spawn(cmd: list[str], what: str, timeout: float) -> tuple[float, float, str]:
    """Runs ``cmd`` from the project root; returns (epoch at spawn, wall seconds, stdout). stderr passes through."""
    t_spawn = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=sys.stderr, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited with {proc.returncode}; stdout tail: {proc.stdout[-2000:]!r}")
    return t_spawn, wall, proc.stdout


def hbt_command() -> list[str]:
    """The ``hbt`` console script of this interpreter's environment (``python -m hbt.cli`` without one)."""
    exe = Path(sys.executable).parent / "hbt"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "hbt.cli"]


def run_hbt(steps: int, model: str | None, workdir: Path, rep: int, log_every: int | None,
            timeout: float, extra: list[str] | None = None) -> dict[str, Any]:
    """``hbt -q train`` on the local config, timed as a process; phases from the run's metrics.jsonl."""
    out = workdir / f"hbt-{rep}"
    name = f"short-{rep}-{int(time.time() * 1000)}"
    overrides = [f"train.max_steps={steps}", f"output_dir={out}", f"run_name={name}",
                 f"tracking.uri=sqlite:///{out.resolve() / 'mlflow.db'}"]
    if model:
        overrides.append(f"model.name_or_path={model}")
    if log_every:
        overrides.append(f"train.log_every={log_every}")
    overrides += extra or []
    cmd = hbt_command() + ["-q", "train", "--config", CONFIG, *overrides]
    t_spawn, wall, stdout = _spawn(cmd, "hbt train", timeout)
    try:
        result = json.loads(stdout)
    except ValueError:
        result = {}
    run_dir = Path(result.get("run_dir") or out / name)
    batch = None
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        import yaml

        batch = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))["batching"]["global_batch_size"]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    rows = [r for r in rows if "train/samples_per_s" in r]
    shutil.rmtree(out, ignore_errors=True)
    if not rows:
        raise RuntimeError(f"hbt train logged no training window in {run_dir / 'metrics.jsonl'}")
    # The first window's own clock starts with the training loop (hbt.train.loop._Meter):
    # its duration is (steps in it) x batch / its pairs per second.
    first = rows[0]
    loop_start = first["time"] - first["step"] * batch / first["train/samples_per_s"]
    last = rows[-1]
    steps_done = int(last["step"])
    windows = [{"step": int(r["step"]), "at_s": round(r["time"] - t_spawn, 3),
                "pairs_per_s": round(r["train/samples_per_s"], 3),
                "data_wait_frac": round(r["train/data_wait_frac"], 4)} for r in rows]
    later = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(rows, rows[1:])]
    return {
        "wall_s": wall,
        "steps_done": steps_done,
        "final_step_reported": (result.get("metrics") or {}).get("step"),
        "to_loop_start_s": loop_start - t_spawn,
        # A row at step 1 exists only with train.log_every=1 (--hbt-log-every 1) or a 1-step run.
        "to_first_step_end_s": (first["time"] - t_spawn) if first["step"] == 1 else None,
        "steps_s": last["time"] - loop_start,
        "step_s_mean": (last["time"] - loop_start) / steps_done,
        "step_s_after_first_window": median(later) if later else None,
        "after_steps_s": wall - (last["time"] - t_spawn),
        "windows": windows,
        "final_loss": last.get("train/loss"),
    }


def run_st(spec: dict[str, Any], workdir: Path, rep: int, timeout: float) -> dict[str, Any]:
    """The sentence-transformers script in its own process, timed as a process."""
    out = workdir / f"st-{rep}"
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps({**spec, "out_dir": str(out)}), encoding="utf-8")
    t_spawn, wall, stdout = _spawn([sys.executable, str(Path(__file__).resolve()), "--contender-st", str(spec_path)],
                                   "sentence-transformers script", timeout)
    lines = [x for x in stdout.splitlines() if x.strip()]
    r = json.loads(lines[-1])
    shutil.rmtree(out, ignore_errors=True)
    ends = r["step_ends"]
    if not ends:
        raise RuntimeError("the sentence-transformers script ran no step")
    dts = [b - a for a, b in zip([r["loop_start"]] + ends[:-1], ends)]
    marks = {k: round(v - t_spawn, 3) for k, v in r["marks"].items()}
    return {
        "wall_s": wall,
        "steps_done": len(ends),
        "global_step": r["global_step"],
        "to_loop_start_s": r["loop_start"] - t_spawn,
        "to_first_step_end_s": ends[0] - t_spawn,
        "steps_s": ends[-1] - r["loop_start"],
        "step_s_mean": (ends[-1] - r["loop_start"]) / len(ends),
        "step_s": [round(x, 3) for x in dts],
        "after_steps_s": wall - (ends[-1] - t_spawn),
        "phases_at_s": marks,
        "pairs_available": r["pairs_available"],
        "optim": r["optim"],
    }


def st_spec(cfg, model_dir: str, steps: int) -> dict[str, Any]:
    """The sentence-transformers script's settings, taken from the hbt config (as a user would copy them)."""
    from hbt.config import resolve_path
    from hbt.hardware import resolve_train_precision
    from hbt.train.job import prefixes

    precision, why = resolve_train_precision(cfg.train.precision, cfg.ray.use_gpu)
    qp, pp = prefixes(cfg, model_dir)
    return {
        "model_dir": model_dir,
        "data_path": resolve_path(cfg.data.path),
        "languages": list(cfg.data.languages),
        "exclude_articles": list(cfg.data.heldout_articles) + list(cfg.data.dev_articles),
        "query_prefix": qp,
        "passage_prefix": pp,
        "batch": cfg.batching.global_batch_size,
        "max_seq_length": cfg.model.max_passage_length,
        "steps": steps,
        "lr": cfg.train.lr,
        "warmup_steps": cfg.train.warmup_steps,
        "weight_decay": cfg.train.weight_decay,
        "grad_clip": cfg.train.grad_clip or 0.0,
        "temperature": cfg.train.temperature,
        "bf16": precision == "bf16",
        "precision_why": why,
        "freeze_embeddings": cfg.model.freeze_embeddings,
        "seed": cfg.batching.seed,
    }


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="training steps (train.max_steps)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--model", default=None, help="override model.name_or_path (a model dir or offline:...; "
                    "default: the local config's)")
    ap.add_argument("--hbt-log-every", type=int, default=None,
                    help="override train.log_every for hbt (1: its time to the first step's end is recorded; "
                         "default: the local config's)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per contender run")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--contender-st", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.contender_st:
        st_child_main(args.contender_st)
        return {}
    claim_stdout()

    from hbt.config import load_config
    from hbt.hardware import resolve_train_precision
    from hbt.model.offline import resolve_model_path

    info = machine()
    base = load_config(PROJECT_ROOT / CONFIG)
    # Fewer steps than the config's warmup (smoke runs): the warmup is cut to the steps, for both contenders.
    extra = [f"train.warmup_steps={args.steps}"] if args.steps < base.train.warmup_steps else []
    overrides = [f"train.max_steps={args.steps}", *extra] + ([f"model.name_or_path={args.model}"] if args.model else [])
    cfg = load_config(PROJECT_ROOT / CONFIG, overrides)
    model_dir = resolve_model_path(cfg.model.name_or_path, cfg.model.num_layers)
    spec = st_spec(cfg, model_dir, args.steps)
    contenders = [c for c in args.contenders.split(",") if c]
    unknown = [c for c in contenders if c not in CONTENDERS]
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown}; known: {list(CONTENDERS)}")
    workdir = Path(tempfile.mkdtemp(prefix="hbt-bench-short-"))
    raw: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    try:
        for rep in range(args.reps):
            for c in rotate(contenders, rep):
                log(f"rep {rep + 1}/{args.reps}: {c} ({args.steps} steps, whole process)")
                if c == "hbt":
                    r = run_hbt(args.steps, args.model, workdir, rep, args.hbt_log_every, args.timeout, extra)
                else:
                    r = run_st(spec, workdir, rep, args.timeout)
                log(f"  {c}: {r['wall_s']:.1f} s wall, training loop from {r['to_loop_start_s']:.1f} s, "
                    f"{r['steps_done']} steps in {r['steps_s']:.1f} s")
                raw[c].append(r)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def med(key: str) -> dict[str, float | None]:
        out = {}
        for c, rs in raw.items():
            vals = [r[key] for r in rs if r.get(key) is not None]
            out[c] = round(median(vals), 3) if vals else None
        return out

    wall = med("wall_s")
    result: dict[str, Any] = {
        "benchmark": "short_train",
        "setup": {
            "config": CONFIG, "model": cfg.model.name_or_path, "model_dir": model_dir, "steps": args.steps,
            "reps": args.reps, "batch_pairs": cfg.batching.global_batch_size, "languages": list(cfg.data.languages),
            "max_query_length": cfg.model.max_query_length, "max_passage_length": cfg.model.max_passage_length,
            "freeze_embeddings": cfg.model.freeze_embeddings,
            "train_precision": "%s (%s)" % resolve_train_precision(cfg.train.precision, cfg.ray.use_gpu),
            "lr": cfg.train.lr, "warmup_steps": cfg.train.warmup_steps, "temperature": cfg.train.temperature,
            "hbt": {"command": "hbt -q train --config configs/local.yaml train.max_steps=%d output_dir=TMP "
                               "run_name=... tracking.uri=sqlite:///TMP/mlflow.db" % args.steps
                               + (f" model.name_or_path={args.model}" if args.model else "")
                               + (f" train.log_every={args.hbt_log_every}" if args.hbt_log_every else "")
                               + "".join(f" {x}" for x in extra),
                    "ray_workers": cfg.ray.num_workers, "cpus_per_worker": cfg.ray.cpus_per_worker,
                    "zero_stage": cfg.deepspeed.zero_stage,
                    "log_every": args.hbt_log_every or cfg.train.log_every},
            "sentence_transformers": {k: v for k, v in spec.items() if k not in ("model_dir", "data_path")},
        },
        "wall_s_median": wall,
        "to_loop_start_s_median": med("to_loop_start_s"),
        "to_first_step_end_s_median": med("to_first_step_end_s"),
        "steps_s_median": med("steps_s"),
        "step_s_mean_median": med("step_s_mean"),
        "after_steps_s_median": med("after_steps_s"),
        "ratio_hbt_over_st": ratio(wall.get("hbt") or float("nan"), wall.get("sentence_transformers") or float("nan")),
        "differences": [
            "hbt: 2 Ray Train workers x 16 pairs (1 torch thread each), passages gathered (32 candidates per "
            "query, same-passage candidates masked); sentence-transformers: 1 process, 32 pairs, "
            f"{os.cpu_count()} torch threads",
            "hbt cuts queries at max_query_length and passages at max_passage_length; sentence-transformers has "
            "one max_seq_length (the passage length) for both",
            "hbt's hybrid batch is all monolingual or all cross-lingual (balanced schedule); the "
            "sentence-transformers script draws mono or cross per pair, batches mixed, rows in its sampler's order",
            "hbt ends with a DeepSpeed checkpoint (weights + optimizer state), a copied final model, a model "
            "card and MLflow records; sentence-transformers saves the model only (model.save)",
            "hbt: DeepSpeed fused AdamW; sentence-transformers: its trainer's default optimizer (see optim)",
        ],
        "machine": info,
        "raw": raw,
    }
    rt = result["ratio_hbt_over_st"]
    result["targets_met"] = {f"hbt wall <= {TARGET}x sentence_transformers": (rt <= TARGET) if rt == rt else None}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
