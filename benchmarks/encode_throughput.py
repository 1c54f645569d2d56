"""Encoding throughput: hbt's Ray Data actor-pool encoder vs a bare ``model(**batch)`` loop.

Contenders, per precision (same texts, batch size, max length, 2 cores):

- ``hbt_1x2``: ``hbt.eval.encode.encode_with_ray`` with one encoder actor holding
  2 CPUs (2 torch threads);
- ``hbt_2x1``: two actors with 1 CPU (1 thread) each;
- ``bare``: this process, 2 torch threads: length-sort the texts (hbt sorts
  too, so sorting is not what is compared), then per batch tokenise with the
  e5 prefix, ``model(**batch)`` under ``inference_mode`` (and
  ``torch.autocast("cpu", bfloat16)`` for bf16, as hbt's actor does), mean-pool,
  L2-normalise.

Two throughputs per contender: end to end (texts to embeddings, model loads
and, for hbt, actor start-up included) and steady (from the 4th batch's output to
the last: hbt's output blocks are timed as ``encode_with_ray`` hands each
one to its ``on_block`` callback). The target (>= 0.9x per core)
is judged on the steady ratio: start-up is a constant a few seconds that a
small benchmark would otherwise let dominate. Ray is started
before and shut down after each hbt contender (not timed), so ``bare`` does not
run beside an idle Ray. Both sides use 2 cores: per-core ratio = ratio.

``--variants`` adds ``bare_bf16_weights`` (``model.to(torch.bfloat16)`` instead
of autocast), a candidate change for hbt's actor, reported apart.

Texts: a fixed random sample (seed 0) of XQuAD-R questions and answer-pool
sentences over the 11 languages, deduplicated.

Command (about 6-10 minutes on 2 cores):

    timeout 1800 python benchmarks/encode_throughput.py --texts 2048 --reps 3 --precisions fp32,bf16 \
        --out benchmarks/results/encode_throughput.json
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import claim_stdout, emit, log, machine, median, ratio, rotate, start_ray  # noqa: E402

THREADS = 2


def sample_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` distinct (text, kind) pairs, half questions and half pool sentences, all 11 languages."""
    import numpy as np

    from hbt.config import resolve_path
    from hbt.eval.benchmarks import load_xquad_r

    b = load_xquad_r(resolve_path("../shared/data/xquad-r"))
    rng = np.random.default_rng(seed)
    q = sorted(set(b.query_texts))
    c = sorted(set(b.cand_texts))
    nq = min(n // 2, len(q))
    qi = rng.choice(len(q), nq, replace=False)
    ci = rng.choice(len(c), min(n - nq, len(c)), replace=False)
    texts = [q[i] for i in qi] + [c[i] for i in ci]
    kinds = ["query"] * len(qi) + ["passage"] * len(ci)
    return texts, kinds


def run_bare(model_dir: str, texts: list[str], kinds: list[str], batch_size: int, max_length: int, precision: str,
             bf16_weights: bool = False) -> dict[str, Any]:
    """The bare loop; returns timing and the embeddings in input order."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from hbt.model.metadata import read_metadata

    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    meta = read_metadata(model_dir)
    model = AutoModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    if bf16_weights:
        model = model.to(torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(model_dir)
    t_load = time.perf_counter() - t0
    prefixed = [(meta.query_prefix if k == "query" else meta.passage_prefix) + t for t, k in zip(texts, kinds)]
    lengths = [len(x) for x in tok(prefixed, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(texts), model.config.hidden_size), np.float32)
    marks: list[tuple[float, int]] = []  # (time, texts done) after each batch
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch = tok([prefixed[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
            h = model(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
            emb = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(emb.float(), dim=-1).numpy()
            marks.append((time.perf_counter(), s + len(idx)))
    wall = time.perf_counter() - t0
    del model
    return {"wall_s": wall, "load_s": t_load, "texts_per_s": len(texts) / wall,
            "texts_per_s_steady": _steady(marks, batch_size * 4), "emb": out}


def _steady(marks: list[tuple[float, int]], first: int) -> float:
    """Texts/s from the end of the first ``first`` texts to the last output: startup and model load left out.

    Both sides are measured alike: hbt in blocks of 4 batches (the blocks its
    actors return, timed by the block files' mtimes), the bare loop per batch
    from the end of its 4th batch.
    """
    start = next(((t, n) for t, n in marks if n >= first), None)
    if start is None or marks[-1][0] <= start[0]:
        return float("nan")
    return (marks[-1][1] - start[1]) / (marks[-1][0] - start[0])


def run_hbt(model_dir: str, texts: list[str], kinds: list[str], batch_size: int, max_length: int, precision: str,
            actors: int, cpus: int) -> dict[str, Any]:
    """``encode_with_ray`` with ``actors`` encoders of ``cpus`` CPUs each."""
    import ray

    from hbt.config import config_from_dict
    from hbt.eval.encode import encode_with_ray

    cfg = config_from_dict({"eval": {"batch_size": batch_size, "max_length": max_length, "precision": precision,
                                     "num_encoders": actors, "cpus_per_encoder": cpus}})
    start_ray(THREADS)
    marks: list[tuple[float, int]] = []

    def on_block(n: int) -> None:  # each output block's arrival times the steady state
        marks.append((time.perf_counter(), (marks[-1][1] if marks else 0) + n))

    try:
        t0 = time.perf_counter()
        emb = encode_with_ray(texts, kinds, model_dir, cfg, on_block=on_block)
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {"wall_s": wall, "texts_per_s": len(texts) / wall, "texts_per_s_steady": _steady(marks, batch_size * 4),
            "emb": emb}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="offline:multilingual-e5-small")
    ap.add_argument("--texts", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layouts", default="1x2,2x1", help="hbt actor layouts, ACTORSxCPUS")
    ap.add_argument("--variants", action="store_true", help="also time bf16 weights (bare_bf16_weights)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    claim_stdout()

    import numpy as np

    from hbt.model.offline import resolve_model_path

    info = machine()
    model_dir = resolve_model_path(args.model)
    texts, kinds = sample_texts(args.texts)
    precisions = [p for p in args.precisions.split(",") if p]
    layouts = [tuple(int(x) for x in lay.split("x")) for lay in args.layouts.split(",") if lay]
    contenders = []
    for p in precisions:
        contenders.append(("bare", p))
        contenders += [(f"hbt_{a}x{c}", p) for a, c in layouts]
    if args.variants and "bf16" in precisions:
        contenders.append(("bare_bf16_weights", "bf16"))
    raw: dict[str, list[dict[str, Any]]] = {f"{n}/{p}": [] for n, p in contenders}
    first: dict[str, np.ndarray] = {}  # one embedding matrix per contender, for the accuracy check
    for rep in range(args.reps):
        for name, prec in rotate(contenders, rep):
            key = f"{name}/{prec}"
            log(f"rep {rep + 1}/{args.reps}: {key}")
            if name.startswith("bare"):
                r = run_bare(model_dir, texts, kinds, args.batch_size, args.max_length, prec,
                             bf16_weights=name == "bare_bf16_weights")
            else:
                a, c = (int(x) for x in name[4:].split("x"))
                r = run_hbt(model_dir, texts, kinds, args.batch_size, args.max_length, prec, a, c)
            emb = r.pop("emb")
            first.setdefault(key, emb)
            raw[key].append({k: round(v, 3) for k, v in r.items()})
            log(f"  {key}: {r['texts_per_s']:.1f} texts/s ({r['wall_s']:.1f} s)")
            gc.collect()

    diffs = {}
    for key, emb in first.items():
        ref = first.get(f"bare/{key.split('/')[1]}")
        if ref is not None and not key.startswith("bare/"):
            diffs[f"{key} vs bare/{key.split('/')[1]}"] = float(np.abs(emb - ref).max())
        if "bare/fp32" in first and not key.endswith("fp32"):
            diffs[f"{key} vs bare/fp32"] = float(np.abs(emb - first["bare/fp32"]).max())
    med = {k: median([r["texts_per_s"] for r in rs]) for k, rs in raw.items()}
    steady = {k: median([r["texts_per_s_steady"] for r in rs]) for k, rs in raw.items()}
    ratios, targets = {}, {}
    for p in precisions:
        for a, c in layouts:
            k = f"hbt_{a}x{c}/{p}"
            ratios[f"{k} / bare/{p} end to end"] = ratio(med[k], med[f"bare/{p}"])
            ratios[f"{k} / bare/{p} steady"] = ratio(steady[k], steady[f"bare/{p}"])
            targets[f"{k} >= 0.9x bare per core (steady)"] = ratios[f"{k} / bare/{p} steady"] >= 0.9
    if "bf16" in precisions and "fp32" in precisions:
        ratios["bare/bf16 / bare/fp32"] = ratio(med["bare/bf16"], med["bare/fp32"])
    if "bare_bf16_weights/bf16" in med:
        ratios["bare_bf16_weights / bare/bf16 (autocast)"] = ratio(med["bare_bf16_weights/bf16"], med["bare/bf16"])
    result = {
        "benchmark": "encode_throughput",
        "setup": {"model": args.model, "texts": len(texts), "batch_size": args.batch_size,
                  "max_length": args.max_length, "cores": THREADS, "reps": args.reps},
        "texts_per_s_median": {k: round(v, 2) for k, v in med.items()},
        "texts_per_s_steady_median": {k: round(v, 2) for k, v in steady.items()},
        "ratios": ratios,
        "targets_met": targets,
        "max_abs_diff": {k: round(v, 6) for k, v in diffs.items()},
        "machine": info,
        "raw": raw,
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
