"""GPU (optional): bf16 XLM-R base training and encoding throughput and model FLOPs utilisation.

Skipped (prints ``{"skipped": true, ...}`` and exits 0) when CUDA is absent, which
is the case on the 2-core development machine; no GPU run has been recorded yet.

What it measures on one GPU, with an XLM-R base-shaped encoder (12 layers, 768
hidden, 250k vocab; random init: throughput does not depend on the weights and the
machine has no hub access):

- training: hbt's ``contrastive_step`` (InfoNCE, in-batch negatives) under
  ``torch.autocast("cuda", bfloat16)``, fused AdamW, ``--batch`` pairs of
  ``--length`` tokens (full-length rows, so the FLOP count is exact);
- encoding: forward only, bf16 weights, ``--encode-batch`` texts of ``--length`` tokens.

MFU = achieved model FLOP/s / peak bf16 FLOP/s. Model FLOPs per token (Kaplan /
PaLM appendix B): training 6 N + 12 L d T, forward 2 N + 4 L d T, with N the
non-embedding parameters, L layers, d hidden, T sequence length. Peak: H100 SXM
989 TFLOP/s dense bf16, H100 PCIe 756, H200 989, A100 312 (``--peak-tflops``
overrides).

Command:

    timeout 900 python benchmarks/gpu_throughput.py --steps 30 --batch 128 --length 128 \
        --out benchmarks/results/gpu_throughput.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import claim_stdout, emit, log, machine, median  # noqa: E402

PEAK_BF16_TFLOPS = {"H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4,
                    "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def peak_tflops(name: str) -> float | None:
    """Dense bf16 peak for a device name (longest matching key)."""
    hits = [k for k in PEAK_BF16_TFLOPS if k.lower() in name.lower()]
    return PEAK_BF16_TFLOPS[max(hits, key=len)] if hits else None


def flops_per_token(n_nonemb: int, layers: int, hidden: int, length: int, train: bool) -> float:
    """Model FLOPs per token (matmuls only; attention scores and values included)."""
    return (6 if train else 2) * n_nonemb + (12 if train else 4) * layers * hidden * length


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128, help="pairs per training step")
    ap.add_argument("--encode-batch", type=int, default=512)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--device", default="cuda", help="cpu only checks the code path (smoke tests)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, 64-d model (smoke tests)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    claim_stdout()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        result = {"benchmark": "gpu_throughput", "skipped": True, "reason": "no CUDA device (torch.cuda.is_available() is False)"}
        emit(result, args.out)
        return result

    from transformers import XLMRobertaConfig, XLMRobertaModel

    from hbt.model.encoder import BiEncoder
    from hbt.model.metadata import EncoderMetadata
    from hbt.train.step import Retriever, contrastive_step

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = args.peak_tflops or peak_tflops(name)
    cfg = XLMRobertaConfig()  # base: 12 x 768, vocab 250002
    if args.tiny:
        cfg = XLMRobertaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()
    torch.manual_seed(0)
    backbone = XLMRobertaModel(cfg, add_pooling_layer=False)
    encoder = BiEncoder(backbone, EncoderMetadata(pooling="mean", query_prefix="", passage_prefix="", normalize=True))
    model = Retriever(encoder, 0.05).to(dev).train()
    n_all = sum(p.numel() for p in model.parameters())
    n_emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    n_nonemb = n_all - n_emb
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    B, T = args.batch, args.length
    ids = torch.randint(5, cfg.vocab_size, (B, T), device=dev)
    batch = {"q_input_ids": ids, "q_attention_mask": torch.ones_like(ids),
             "p_input_ids": ids.roll(1, 0), "p_attention_mask": torch.ones_like(ids)}

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            contrastive_step(model, model.temperature, batch, lambda loss: loss.backward())
        opt.step()
        opt.zero_grad(set_to_none=True)

    log(f"training on {name}")
    times = []
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    t_step = median(times)
    train_tokens = 2 * B * T  # queries and passages
    train_flops = flops_per_token(n_nonemb, cfg.num_hidden_layers, cfg.hidden_size, T, True) * train_tokens / t_step

    log("encoding")
    model.eval()
    enc = model.encoder.to(torch.bfloat16)
    E = args.encode_batch
    eids = torch.randint(5, cfg.vocab_size, (E, T), device=dev)
    emask = torch.ones_like(eids)
    etimes = []
    with torch.inference_mode():
        for i in range(args.warmup + args.steps):
            sync()
            t0 = time.perf_counter()
            enc(eids, emask)
            sync()
            if i >= args.warmup:
                etimes.append(time.perf_counter() - t0)
    t_enc = median(etimes)
    enc_flops = flops_per_token(n_nonemb, cfg.num_hidden_layers, cfg.hidden_size, T, False) * E * T / t_enc
    result = {
        "benchmark": "gpu_throughput",
        "skipped": False,
        "device": name,
        "peak_bf16_tflops": peak,
        "model": {"arch": "xlm-roberta-base (random init)" if not args.tiny else "tiny xlm-roberta", "params": n_all, "non_embedding_params": n_nonemb},
        "train": {"pairs": B, "length": T, "step_s_median": round(t_step, 4), "pairs_per_s": round(B / t_step, 1),
                  "tokens_per_s": round(train_tokens / t_step), "model_tflops": round(train_flops / 1e12, 1),
                  "mfu": round(train_flops / (peak * 1e12), 3) if peak else None,
                  "raw_step_s": [round(t, 4) for t in times]},
        "encode": {"batch": E, "length": T, "texts_per_s": round(E / t_enc, 1),
                   "model_tflops": round(enc_flops / 1e12, 1),
                   "mfu": round(enc_flops / (peak * 1e12), 3) if peak else None,
                   "raw_batch_s": [round(t, 4) for t in etimes]},
        "machine": machine(),
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
