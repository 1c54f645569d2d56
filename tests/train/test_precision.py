"""``train.precision``: bf16 autocast in the forward pass keeps fp32 weights and follows the fp32 step closely."""

from __future__ import annotations

import pytest
import torch

from hbt.hardware import bf16_is_fast, resolve_train_precision
from hbt.model.encoder import load_encoder
from hbt.train.step import Retriever


def test_explicit_precision_wins_and_auto_gives_a_reason():
    assert resolve_train_precision("bf16", gpu=False) == ("bf16", "set in the config")
    assert resolve_train_precision("fp32", gpu=True) == ("fp32", "set in the config")
    precision, why = resolve_train_precision("auto", gpu=False)
    # Training follows evaluation's rule: bf16 wherever the CPU has bf16 matrix instructions.
    assert precision == ("bf16" if bf16_is_fast(False) else "fp32") and why.startswith("auto: ")


def test_bf16_forward_keeps_fp32_weights_and_stays_close(tiny_model_dir):
    enc, tok = load_encoder(tiny_model_dir)
    batch = tok(["query: Wo liegt Warschau?", "passage: Warschau liegt an der Weichsel.", "query: x"],
                padding=True, return_tensors="pt")
    grads = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = Retriever(enc, 0.05, bf16=bf16).train()
        out = model(batch["input_ids"], batch["attention_mask"])
        assert out.dtype == torch.float32  # the loss sees fp32 embeddings either way
        loss = (out @ out.T).logsumexp(-1).mean()
        model.zero_grad()
        loss.backward()
        grads[bf16] = (out.detach(), next(p for p in model.parameters() if p.requires_grad).grad.clone())
        assert all(p.dtype == torch.float32 for p in model.parameters())
    emb32, g32 = grads[False]
    emb16, g16 = grads[True]
    assert not torch.equal(emb32, emb16)  # autocast did run in bf16
    torch.testing.assert_close(emb16, emb32, atol=0.05, rtol=0.05)
    assert torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.98


def test_one_autocast_region_per_step_gives_the_per_side_numbers(tiny_model_dir):
    """Both forwards in one region share autocast's bf16 weight copies: the same loss bit for bit; the two
    sides' weight gradients are then summed in bf16 before reaching the fp32 weight, so they agree to bf16."""
    from hbt.train.step import contrastive_step

    enc, tok = load_encoder(tiny_model_dir)
    q = tok(["query: Wo liegt Warschau?", "query: Who built it?"], padding=True, return_tensors="pt")
    p = tok(["passage: Warschau liegt an der Weichsel.", "passage: Builders."], padding=True, return_tensors="pt")
    batch = {"q_input_ids": q["input_ids"], "q_attention_mask": q["attention_mask"],
             "p_input_ids": p["input_ids"], "p_attention_mask": p["attention_mask"]}
    out = {}
    model = Retriever(enc, 0.05, bf16=True).train()
    for shared in (False, True):
        torch.manual_seed(0)
        model.zero_grad()
        kw = {"region": model.autocast} if shared else {}
        res = contrastive_step(model, model.temperature, batch, lambda loss: loss.backward(), **kw)
        out[shared] = (res.loss, [x.grad.clone() for x in model.parameters() if x.requires_grad])
    assert torch.equal(out[True][0], out[False][0])
    for a, b in zip(out[True][1], out[False][1]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3 * float(b.abs().max()))
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9999


def test_train_precision_is_validated():
    from hbt.config import ConfigError, load_config

    assert load_config(None, ["train.precision=bf16"]).train.precision == "bf16"
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, ["train.precision=fp16"])
