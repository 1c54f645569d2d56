"""The study's own training run against sentence-transformers, in fp32 and in bf16.

Contenders, one after another in this script run, on the same 2 cores:

- ``hbt_fp32`` / ``hbt_bf16``: ``hbt.train.job.run_training`` on
  ``configs/local.yaml`` (the study's worker layout: 2 Ray Train workers of 0.5
  CPU, Ray Data reading and tokenising, DeepSpeed ZeRO-0; its model, data,
  batch of 32 pairs, lengths 32/64, frozen word embeddings, 40 steps, seed 0),
  ``train.precision=fp32`` and ``bf16`` (autocast), each on a fresh local Ray.
  Read from rank 0's ``metrics.jsonl``: pairs/s per 5-step window (hbt's own
  clock), data wait, the loss curve. ``run_wall_s`` is the whole job (Ray start,
  data, worker group, model load, training, final checkpoint).
- ``st_fp32`` / ``st_bf16``: ``SentenceTransformerTrainer`` with
  ``MultipleNegativesRankingLoss`` (scale 20 = temperature 0.05) in this
  process, 2 torch threads, fused AdamW, the same LR schedule, the word
  embeddings frozen, ``bf16=True`` for the second. It gets exactly hbt's 40
  global batches: the same rows in the same order (hbt's seeded shuffle, epoch
  by epoch) with the languages of ``hbt.data.strategies.plan_step``, as prefixed
  texts that its collator tokenises in the loop. Its one ``max_seq_length`` is
  64 (sentence-transformers has no separate query length); the JSON counts the
  queries longer than 32 tokens, which only it keeps whole.

Ratios compare the median pairs/s over the 5-step windows after the first
(steps 6-40) for both. The targets (issue 14): hbt >= 1.0x sentence-transformers
at fp32, and hbt bf16 >= 1.0x sentence-transformers bf16; the bf16 final loss
within 2 % of fp32's.

Command (about 12 minutes on 2 cores; nothing else should run):

    timeout 2400 python benchmarks/train_study.py --out benchmarks/results/train_study.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import PROJECT_ROOT, claim_stdout, emit, log, machine, ratio
from train_throughput import build_steps, run_sentence_transformers

CONFIG = PROJECT_ROOT / "configs" / "local.yaml"


def load_cfg(extra: list[str]):
    """The study's config at seed 0 (``extra``: overrides for smoke tests)."""
    from hbt.config import load_config

    return load_config(CONFIG, ["batching.seed=0", *extra])


def run_hbt(precision: str, out: Path, extra: list[str]) -> dict[str, Any]:
    """One training run of the study's config at ``precision``; its logged windows."""
    import time

    import ray

    from hbt.config import load_config
    from hbt.train.job import run_training

    cfg = load_config(CONFIG, [f"output_dir={out}", f"run_name=hbt-{precision}", f"train.precision={precision}",
                               "batching.seed=0", f"tracking.uri=sqlite:///{out.resolve() / 'mlflow.db'}", *extra])
    t0 = time.perf_counter()
    try:
        result = run_training(cfg)
    finally:
        ray.shutdown()
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/loss" in r]
    pace = result["pace"]  # the medians over the windows after the first, as hbt study reports them
    return {"pairs_per_s": pace["pairs_per_s"],
            "window_pairs_per_s": [round(r["train/samples_per_s"], 2) for r in rows],
            "data_wait_frac": pace["data_wait_frac"],
            "steps": [r["step"] for r in rows], "loss": [round(r["train/loss"], 5) for r in rows],
            "final_loss": rows[-1]["train/loss"], "run_wall_s": wall}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--contenders", default="hbt_fp32,st_fp32,hbt_bf16,st_bf16")
    ap.add_argument("overrides", nargs="*", help="a.b=c overrides for every contender (smoke tests)")
    args = ap.parse_args(argv)
    claim_stdout()

    from transformers import AutoTokenizer

    from hbt.model.offline import resolve_model_path

    cfg = load_cfg(args.overrides)
    model_dir = resolve_model_path(cfg.model.name_or_path, cfg.model.num_layers)
    window = cfg.train.log_every
    steps_data = build_steps(cfg, model_dir, cfg.train.max_steps)
    tok = AutoTokenizer.from_pretrained(model_dir)
    long_queries = sum(len(ids) > cfg.model.max_query_length
                       for s in steps_data for ids in tok(s["queries"])["input_ids"])
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="hbt-bench-study-train-") as tmp:
        for c in [c for c in args.contenders.split(",") if c]:
            log(f"{c}: training")
            kind, precision = c.split("_")
            if kind == "hbt":
                runs[c] = run_hbt(precision, Path(tmp), args.overrides)
            else:
                runs[c] = run_sentence_transformers(model_dir, steps_data, cfg, window, window, Path(tmp) / c,
                                                    bf16=precision == "bf16",
                                                    freeze_embeddings=cfg.model.freeze_embeddings)
            log(f"  {c}: {runs[c]['pairs_per_s']:.2f} pairs/s, whole run {runs[c]['run_wall_s']:.0f}s")
            gc.collect()
    pps = {c: r["pairs_per_s"] for c, r in runs.items()}
    ratios = {}
    for p in ("fp32", "bf16"):
        if f"hbt_{p}" in pps and f"st_{p}" in pps:
            ratios[f"hbt_{p}/st_{p}"] = ratio(pps[f"hbt_{p}"], pps[f"st_{p}"])
    for k in ("hbt", "st"):
        if f"{k}_fp32" in pps and f"{k}_bf16" in pps:
            ratios[f"{k}_bf16/{k}_fp32"] = ratio(pps[f"{k}_bf16"], pps[f"{k}_fp32"])
    targets: dict[str, bool] = {f"{k} >= 1.0": v >= 1.0 for k, v in ratios.items() if k.startswith("hbt_") and "/st_" in k}
    if "hbt_fp32" in runs and "hbt_bf16" in runs:
        rel = abs(runs["hbt_bf16"]["final_loss"] - runs["hbt_fp32"]["final_loss"]) / abs(runs["hbt_fp32"]["final_loss"])
        targets["hbt bf16 final loss within 2% of fp32"] = rel <= 0.02
        ratios["final_loss_rel_diff"] = round(rel, 6)
    for c in ("hbt_fp32", "hbt_bf16"):
        if c in runs:
            targets[f"{c} data wait <= 2%"] = runs[c]["data_wait_frac"] <= 0.02
    result = {
        "benchmark": "train_study",
        "command": "python benchmarks/train_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "setup": {"config": "configs/local.yaml", "seed": 0, "steps": cfg.train.max_steps,
                  "batch_pairs": cfg.batching.global_batch_size,
                  "lengths": [cfg.model.max_query_length, cfg.model.max_passage_length],
                  "hbt_layout": f"{cfg.ray.num_workers} workers x {cfg.ray.cpus_per_worker} CPU",
                  "st_threads": 2, "timed": f"median of {window}-step windows after the first",
                  "queries_longer_than_query_length": long_queries,
                  "step_kinds": [s["kind"] for s in steps_data]},
        "pairs_per_s": {c: round(v, 3) for c, v in pps.items()},
        "run_wall_s": {c: round(r["run_wall_s"], 1) for c, r in runs.items()},
        "ratios": ratios,
        "targets_met": targets,
        "machine": machine(),
        "runs": runs,
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
