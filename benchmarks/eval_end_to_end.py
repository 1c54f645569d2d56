"""Wall time of the full XQuAD-R evaluation (11 languages, all questions, all settings).

Runs ``hbt.eval.runner.evaluate`` on the offline multilingual-e5-small once per
variant, in one process (Ray started with 2 CPUs before each variant and shut
down after it; the start is timed apart), and compares every ``.../mAP`` metric
with the ``fp32`` variant's. Targets: total <= 120 s, every mAP within 0.005
of fp32.

Variants (``--variants``, comma-separated; the first fp32 one is the reference):

- ``fp32``, ``bf16``: hbt as configured (``eval.precision``), 2 encoder actors x
  1 CPU, batch 64, max length 128 (the config defaults but for the layout);
- ``fp32_1x2``, ``bf16_1x2``: one actor with 2 CPUs (2 threads);
- ``bf16_b32``, ``bf16_b128``: other batch sizes;
- ``bf16w``: ``eval.precision=bf16_weights``: the actors cast the weights to
  bfloat16 once instead of autocasting every call. ``bf16w_1x2`` with one 2-CPU actor.

Each variant takes minutes (a full fp32 run about 3-7 minutes on 2 busy cores),
so the script runs each once unless ``--reps`` says otherwise; the repeated,
interleaved throughput comparison of the encoders is encode_throughput.py.

Command:

    timeout 3600 python benchmarks/eval_end_to_end.py --variants fp32,bf16,bf16_1x2,bf16w_1x2 \
        --out benchmarks/results/eval_end_to_end.json

Profile (py-spy follows the Ray actors, which are children of the driver's raylet):

    timeout 1800 py-spy record --subprocesses --idle --rate 20 --format speedscope -o /tmp/eval.speedscope \
        -- python benchmarks/eval_end_to_end.py --variants bf16
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import claim_stdout, emit, log, machine, median, start_ray  # noqa: E402

TARGET_S = 120.0
MAP_TOL = 0.005


VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "num_encoders": 2, "cpus_per_encoder": 1},
    "bf16": {"precision": "bf16", "num_encoders": 2, "cpus_per_encoder": 1},
    "fp32_1x2": {"precision": "fp32", "num_encoders": 1, "cpus_per_encoder": 2},
    "bf16_1x2": {"precision": "bf16", "num_encoders": 1, "cpus_per_encoder": 2},
    "bf16_b32": {"precision": "bf16", "num_encoders": 2, "cpus_per_encoder": 1, "batch_size": 32},
    "bf16_b128": {"precision": "bf16", "num_encoders": 2, "cpus_per_encoder": 1, "batch_size": 128},
    "bf16w": {"precision": "bf16_weights", "num_encoders": 2, "cpus_per_encoder": 1},
    "bf16w_1x2": {"precision": "bf16_weights", "num_encoders": 1, "cpus_per_encoder": 2},
}


def run_variant(name: str, model_dir: str, base_eval: dict[str, Any], workdir: Path) -> dict[str, Any]:
    import ray

    from hbt.config import config_from_dict
    from hbt.eval.runner import evaluate

    spec = dict(VARIANTS[name])
    cfg = config_from_dict({"eval": {**base_eval, **spec}})
    t0 = time.perf_counter()
    start_ray(2)
    ray_start = time.perf_counter() - t0
    out = workdir / name
    try:
        t0 = time.perf_counter()
        res = evaluate(cfg, model_dir, str(out))
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    seconds = res.info["seconds"]
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": round(wall, 2), "ray_start_s": round(ray_start, 2), "seconds": seconds,
            "texts": res.info["texts"], "unique_texts": res.info["unique_texts"],
            "texts_per_s_encode": round(res.info["unique_texts"] / seconds["encode"], 1),
            "config": {k: v for k, v in cfg.eval.model_dump().items()
                       if k in ("precision", "num_encoders", "cpus_per_encoder", "batch_size", "max_length")},
            "metrics": {k: v for k, v in res.metrics.items() if k.endswith("/mAP")}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="offline:multilingual-e5-small")
    ap.add_argument("--variants", default="fp32,bf16")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--languages", default=None, help="comma-separated subset (default: all 11)")
    ap.add_argument("--max-questions", type=int, default=None, help="cap (smoke tests only)")
    ap.add_argument("--reference", default=None,
                    help="an earlier run's JSON whose fp32 variant is the mAP reference (when this run has no fp32)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    claim_stdout()

    from hbt.model.offline import resolve_model_path

    info = machine()
    model_dir = resolve_model_path(args.model)
    base_eval: dict[str, Any] = {"benchmarks": ["xquad_r"], "settings": ["monolingual", "cross_lingual", "multilingual"],
                                 "pool": "full", "max_questions": args.max_questions}
    if args.languages:
        base_eval["languages"] = args.languages.split(",")
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    workdir = Path(tempfile.mkdtemp(prefix="hbt-bench-eval-"))
    raw: dict[str, list[dict[str, Any]]] = {v: [] for v in names}
    try:
        for rep in range(args.reps):
            for v in names:
                log(f"rep {rep + 1}/{args.reps}: {v}")
                r = run_variant(v, model_dir, base_eval, workdir)
                log(f"  {v}: {r['wall_s']} s {r['seconds']}")
                raw[v].append(r)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ref_name = next((v for v in names if VARIANTS[v]["precision"] == "fp32"), None)
    ref = raw[ref_name][0]["metrics"] if ref_name else None
    if ref is None and args.reference:
        prev = json.loads(Path(args.reference).read_text(encoding="utf-8"))
        ref_name = next(v for v in prev["raw"] if VARIANTS[v]["precision"] == "fp32")
        ref = prev["raw"][ref_name][0]["metrics"]
    summary: dict[str, Any] = {}
    targets: dict[str, bool] = {}
    for v, rs in raw.items():
        s = {"wall_s_median": median([r["wall_s"] for r in rs]),
             "encode_s_median": median([r["seconds"]["encode"] for r in rs]),
             "score_s_median": median([r["seconds"]["score"] for r in rs]),
             "load_s_median": median([r["seconds"]["load"] for r in rs])}
        if ref is not None:
            d = {k: abs(rs[0]["metrics"][k] - ref[k]) for k in ref}
            worst = max(d, key=d.get)
            s["max_abs_mAP_diff_vs_fp32"] = round(d[worst], 5)
            s["worst_key"] = worst
            targets[f"{v}: mAP within {MAP_TOL} of fp32"] = d[worst] <= MAP_TOL
        targets[f"{v}: wall <= {TARGET_S:.0f} s"] = s["wall_s_median"] <= TARGET_S
        summary[v] = s
    result = {
        "benchmark": "eval_end_to_end",
        "setup": {"model": args.model, "benchmark": "xquad_r", "languages": args.languages or "all 11",
                  "max_questions": args.max_questions, "settings": base_eval["settings"], "reps": args.reps,
                  "ray_cpus": 2},
        "mAP_reference": ref_name if ref is not None else None,
        "summary": summary,
        "headline_mAP": {v: rs[0]["metrics"].get("xquad_r/multilingual/mAP") for v, rs in raw.items()},
        "targets_met": targets,
        "machine": info,
        "raw": raw,
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
