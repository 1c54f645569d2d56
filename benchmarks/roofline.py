"""The compute floor of the default evaluation and of the study on this machine.

Issue 14 asks for the default ``hbt eval --benchmark xquad_r`` in <= 120 s and
``hbt study --config configs/local.yaml`` in <= 30 min. This script says how much
arithmetic those jobs are and how fast this CPU does that arithmetic, so a miss
can be read as overhead (fixable) or as compute (not, on this CPU).

Measured, in this script run, on this machine:

- ``gemm``: the peak of ``torch.nn.functional.linear`` at the encoder's own
  Linear shapes (2048 tokens x 384 -> 1152 / 384 / 1536 and 1536 -> 384 for
  multilingual-e5-small), fp32 and bf16, 1 and 2 torch threads; best of 3
  timings of 20 calls. This is the contender: the fastest this CPU multiplies
  these matrices.
- ``encoder``: hbt's own encoder path (``EncoderActor`` in this process,
  ``embed_texts``: deduplicated, length-sorted batches of 64, e5 prefixes, max
  length 128), 1 torch thread as each of the default evaluation's 2 actors has,
  on a seeded sample of XQuAD-R texts, fp32 and ``bf16_weights``; its achieved
  GFLOP/s and the ratio to the 1-thread GEMM peak of the same dtype.

Counted exactly (tokenised as hbt tokenises them, special tokens and prefixes
included, no padding counted, so every floor below is a lower bound):

- the default evaluation: every distinct XQuAD-R text at ``eval.max_length`` 128;
- the study: each of its 10 evaluations (``configs/local.yaml``'s benchmarks and
  sample, max length 64) and its 9 trainings (each strategy and seed's 40 steps,
  from the rows hbt's loop takes, counted from the attention masks).

FLOPs per token: ``2 * layers * (4 h^2 + 2 h i)`` for the Linear layers, plus
``4 * layers * h * n`` for attention over a text of ``n`` tokens; a training token
costs 3x its forward (forward, input gradients, weight gradients). Floors divide
by the GEMM peak of the dtype the job uses (2 cores: 2 x the 1-thread peak, as the
jobs run 2 single-threaded workers or actors).

Command (about 4 minutes on 2 cores; nothing else should run):

    timeout 1800 python benchmarks/roofline.py --out benchmarks/results/roofline_epyc.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PROJECT_ROOT, claim_stdout, emit, log, machine, ratio

MODEL = "offline:multilingual-e5-small"
LOCAL = PROJECT_ROOT / "configs" / "local.yaml"


def gemm_peak(dims: dict[str, int], tokens: int = 2048) -> dict[str, Any]:
    """GFLOP/s of ``F.linear`` at the encoder's Linear shapes, per dtype and thread count."""
    import torch

    h, i = dims["hidden"], dims["intermediate"]
    shapes = [(h, 3 * h), (h, h), (h, i), (i, h)]
    out: dict[str, Any] = {}
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.bfloat16):
            per = {}
            for k, n in shapes:
                a, w, b = (torch.randn(tokens, k, dtype=dtype), torch.randn(n, k, dtype=dtype),
                           torch.randn(n, dtype=dtype))
                for _ in range(3):
                    torch.nn.functional.linear(a, w, b)
                best = float("inf")
                for _ in range(3):
                    t = time.perf_counter()
                    for _ in range(20):
                        torch.nn.functional.linear(a, w, b)
                    best = min(best, (time.perf_counter() - t) / 20)
                per[f"{k}x{n}"] = round(float(2 * tokens * k * n / best / 1e9), 1)
            name = "fp32" if dtype == torch.float32 else "bf16"
            out[f"{name}_{threads}t"] = {"per_shape": per, "peak": max(per.values())}
            log(f"gemm {name} {threads} thread(s): {per}")
    torch.set_num_threads(before)
    return out


def model_dims(model_dir: str) -> dict[str, int]:
    """Hidden size, FFN size and layer count from the model's config."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    return {"hidden": c.hidden_size, "intermediate": c.intermediate_size, "layers": c.num_hidden_layers}


def linear_flops_per_token(dims: dict[str, int]) -> float:
    """Forward FLOPs of one token through every Linear layer."""
    h, i = dims["hidden"], dims["intermediate"]
    return float(dims["layers"] * 2 * (4 * h * h + 2 * h * i))


def forward_flops(lengths: Any, dims: dict[str, int]) -> float:
    """Forward FLOPs of texts of these token lengths (Linear layers and attention, no padding)."""
    import numpy as np

    n = np.asarray(lengths, dtype=np.float64)
    return float(linear_flops_per_token(dims) * n.sum() + dims["layers"] * 4 * dims["hidden"] * (n * n).sum())


def text_lengths(model_dir: str, items: list[tuple[str, str]], max_length: int) -> Any:
    """Token lengths of ``(kind, text)`` items as hbt's encoder sees them (prefix, special tokens, cut)."""
    import numpy as np

    from hbt.eval.encode import driver_tokenizer
    from hbt.model.metadata import read_metadata
    from hbt.model.storage import local_model_dir

    meta = read_metadata(local_model_dir(model_dir, weights=False))
    prefix = {"query": meta.query_prefix, "passage": meta.passage_prefix}
    tok = driver_tokenizer(model_dir)
    enc = tok([prefix[k] + t for k, t in items], truncation=True, max_length=max_length)["input_ids"]
    return np.asarray([len(x) for x in enc], dtype=np.int64)


def eval_items(cfg: Any) -> list[tuple[str, str]]:
    """The distinct ``(kind, text)`` items one evaluation with ``cfg`` encodes."""
    from hbt.eval.runner import load_benchmarks, texts_of
    from hbt.model.embed import unique_items

    texts, kinds, _ = texts_of(load_benchmarks(cfg, "test"))
    return unique_items(texts, kinds)[0]


def study_training_tokens(model_dir: str) -> dict[str, int]:
    """Tokens (attention masks summed) of each study training run's steps, strategy by seed."""
    from train_throughput import build_steps

    from hbt.config import load_config, with_overrides
    from hbt.study.runner import strategy_overrides

    base = load_config(LOCAL)
    out = {}
    for strategy in base.study.strategies:
        for seed in base.study.seeds:
            cfg = with_overrides(base, {**strategy_overrides(base, strategy), "batching.seed": seed})
            out[f"{strategy}-s{seed}"] = sum(s["tokens"] for s in build_steps(cfg, model_dir, cfg.train.max_steps))
    return out


def encoder_speed(model_dir: str, items: list[tuple[str, str]], dims: dict[str, int], precision: str) -> dict:
    """hbt's encoder at 1 thread on ``items``: seconds and achieved GFLOP/s."""
    import torch

    from hbt.eval.encode import EncoderActor
    from hbt.model.embed import embed_texts

    actor = EncoderActor(model_dir, precision=precision, max_length=128, num_threads=1)
    texts, kinds = [t for _, t in items], [k for k, _ in items]
    embed_texts(actor.encoder, actor.tokenizer, texts[:128], kinds[:128], 64, 128, precision, actor.device)
    t = time.perf_counter()
    embed_texts(actor.encoder, actor.tokenizer, texts, kinds, 64, 128, precision, actor.device)
    s = time.perf_counter() - t
    flops = forward_flops(text_lengths(model_dir, items, 128), dims)
    del actor
    torch.set_num_threads(2)
    return {"seconds": round(s, 2), "texts": len(items), "gflops": round(flops / 1e9, 1),
            "achieved_gflop_s": round(float(flops / s / 1e9), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--sample", type=int, default=1024, help="XQuAD-R texts for the encoder's achieved speed")
    ap.add_argument("--skip-study", action="store_true", help="count only the default evaluation (smoke tests)")
    ap.add_argument("--model", default=MODEL, help="another model (smoke tests); the floors are for the default")
    ap.add_argument("--gemm-tokens", type=int, default=2048, help="rows of the GEMM timings")
    args = ap.parse_args()
    claim_stdout()
    import numpy as np
    import torch

    from hbt.config import load_config
    from hbt.eval.job import eval_shortcuts
    from hbt.model.offline import resolve_model_path

    torch.set_num_threads(2)
    model_dir = resolve_model_path(args.model) if args.model.startswith("offline:") else args.model
    dims = model_dims(model_dir)
    info = machine()
    gemm = gemm_peak(dims, args.gemm_tokens)

    default_cfg = load_config(None, eval_shortcuts("xquad_r", None, None))
    items = eval_items(default_cfg)
    lengths = text_lengths(model_dir, items, default_cfg.eval.max_length)
    eval_flops = forward_flops(lengths, dims)
    rng = np.random.default_rng(0)
    sample = [items[i] for i in sorted(rng.choice(len(items), min(args.sample, len(items)), replace=False))]
    enc = {p: encoder_speed(model_dir, sample, dims, p) for p in ("fp32", "bf16_weights")}
    for p, key in (("fp32", "fp32_1t"), ("bf16_weights", "bf16_1t")):
        enc[p]["vs_gemm_peak"] = ratio(enc[p]["achieved_gflop_s"], gemm[key]["peak"])
        log(f"encoder {p}: {enc[p]}")
    peak2 = {d: 2 * gemm[f"{d}_1t"]["peak"] * 1e9 for d in ("fp32", "bf16")}
    ach2 = {d: 2 * enc[p]["achieved_gflop_s"] * 1e9 for d, p in (("fp32", "fp32"), ("bf16", "bf16_weights"))}
    result: dict[str, Any] = {
        "benchmark": "roofline",
        "command": "python " + " ".join(sys.argv),
        "model": args.model, "dims": dims, "machine": info, "gemm_gflop_s": gemm, "encoder_1_thread": enc,
        "default_eval": {
            "distinct_texts": len(items), "tokens": int(lengths.sum()), "tflop": round(eval_flops / 1e12, 2),
            "encode_floor_s_at_gemm_peak": {d: round(eval_flops / peak2[d], 1) for d in peak2},
            "encode_s_at_hbt_encoder_speed": {d: round(eval_flops / ach2[d], 1) for d in ach2},
        },
    }
    if not args.skip_study:
        cfg = load_config(LOCAL)
        s_items = eval_items(cfg)
        s_len = text_lengths(model_dir, s_items, cfg.eval.max_length)
        evals = 1 + len(cfg.study.strategies) * len(cfg.study.seeds)  # the zero-shot model, then each trained one
        s_eval_flops = evals * forward_flops(s_len, dims)
        train_tokens = study_training_tokens(model_dir)
        # A training token: forward, input gradients, weight gradients. Attention is left out: a lower bound.
        train_flops = 3 * linear_flops_per_token(dims) * sum(train_tokens.values())
        result["study"] = {
            "evaluations": evals, "distinct_texts_per_eval": len(s_items), "tokens_per_eval": int(s_len.sum()),
            "eval_tflop": round(s_eval_flops / 1e12, 2),
            "training_tokens": train_tokens, "training_tflop": round(train_flops / 1e12, 2),
            "eval_encode_floor_s_bf16": round(s_eval_flops / peak2["bf16"], 1),
            "training_floor_s": {d: round(train_flops / peak2[d], 1) for d in peak2},
        }
    emit(result, args.out)


if __name__ == "__main__":
    main()
