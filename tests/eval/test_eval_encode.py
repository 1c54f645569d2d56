"""Encoding: dedup, and the Ray Data actor pool against the model's own encode_texts."""

from __future__ import annotations

import numpy as np
import pytest

from hbt.config import config_from_dict
from hbt.eval.encode import unique_items


def test_unique_items_dedups_per_kind():
    items, inv = unique_items(["a", "b", "a", "a"], ["query", "query", "query", "passage"])
    assert items == [("query", "a"), ("query", "b"), ("passage", "a")]
    assert inv.tolist() == [0, 1, 0, 2]
    with pytest.raises(ValueError, match="kind"):
        unique_items(["a"], ["doc"])


@pytest.mark.slow
def test_ray_actor_pool_matches_encode_texts(tiny_model_dir, ray_local):
    from hbt.eval.encode import encode_in_process, encode_with_ray
    from hbt.model.encoder import encode_texts, load_encoder

    texts = ["Wo liegt Warschau?", "Warschau liegt an der Weichsel.", "华沙在哪里？", "Where is Warsaw?",
             "Wo liegt Warschau?", "a much longer sentence " * 5, "short"] * 3
    kinds = ["query", "passage", "query", "query", "passage", "passage", "query"] * 3
    texts += [f"Satz Nummer {i} " + "lang " * (i % 7) for i in range(30)]
    kinds += ["passage"] * 30
    # fp32 pinned: this compares code paths (the `auto` default is bf16 where bf16 is fast).
    cfg = config_from_dict({"eval": {"batch_size": 4, "num_encoders": 2, "cpus_per_encoder": 0.5, "precision": "fp32"}})
    got = encode_with_ray(texts, kinds, str(tiny_model_dir), cfg)
    assert got.shape == (len(texts), 32) and got.dtype == np.float32

    enc, tok = load_encoder(tiny_model_dir)
    for kind in ("query", "passage"):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        ref = encode_texts(enc, tok, [texts[i] for i in idx], kind, max_length=cfg.eval.max_length).numpy()
        np.testing.assert_allclose(got[idx], ref, atol=1e-5)
    # the prefix differs, so the same text as query and as passage embeds differently
    assert not np.allclose(got[0], got[4])
    np.testing.assert_allclose(encode_in_process(texts, kinds, str(tiny_model_dir), cfg), got, atol=1e-5)


def test_bf16_precisions_stay_close_to_fp32_and_never_cast_a_live_model(offline_e5_2layer_dir):
    import torch

    from hbt.eval.encode import encode_in_process, encode_with_model
    from hbt.model.encoder import load_encoder

    texts = ["Wo liegt Warschau?", "Warschau liegt an der Weichsel.", "华沙在哪里？", "Where is Warsaw?"] * 2
    kinds = ["query", "passage", "query", "passage"] * 2
    emb = {}
    for precision in ("fp32", "bf16", "bf16_weights"):
        cfg = config_from_dict({"eval": {"batch_size": 4, "precision": precision}})
        emb[precision] = encode_in_process(texts, kinds, str(offline_e5_2layer_dir), cfg)
    for precision in ("bf16", "bf16_weights"):
        cos = (emb[precision] * emb["fp32"]).sum(1)
        assert cos.min() > 0.99, precision
        assert not np.array_equal(emb[precision], emb["fp32"]), precision  # bf16 really ran
    assert not np.array_equal(emb["bf16"], emb["bf16_weights"])  # weights cast, not autocast

    # A model in memory (e.g. training's dev evaluation) keeps its fp32 weights: bf16_weights runs as autocast.
    enc, tok = load_encoder(offline_e5_2layer_dir)
    enc.eval()
    cfg = config_from_dict({"eval": {"batch_size": 4, "precision": "bf16_weights"}})
    live = encode_with_model(enc, tok, texts, kinds, cfg, torch.device("cpu"))
    assert next(enc.parameters()).dtype == torch.float32
    np.testing.assert_allclose(live, emb["bf16"], atol=1e-6)


def test_auto_eval_settings_become_concrete_and_explicit_ones_win(ray_local):
    from hbt.config import load_config
    from hbt.eval.encode import resolve_eval_auto
    from hbt.hardware import bf16_is_fast

    cpus = int(ray_local.cluster_resources()["CPU"])
    auto = resolve_eval_auto(load_config(None))
    assert auto.eval.num_encoders == cpus  # one actor per CPU at eval.cpus_per_encoder=1
    assert auto.eval.precision == ("bf16_weights" if bf16_is_fast(False) else "fp32")
    explicit = resolve_eval_auto(load_config(None, ["eval.precision=fp32", "eval.num_encoders=1"]))
    assert (explicit.eval.precision, explicit.eval.num_encoders) == ("fp32", 1)
    half = resolve_eval_auto(load_config(None, ["eval.cpus_per_encoder=2"]))
    assert half.eval.num_encoders == max(1, cpus // 2)


def test_token_lengths_count_what_the_encoder_reads_and_give_the_truncated_shares(tiny_model_dir):
    """One tokenizer pass gives the batches' order and the truncation shares: prompt and special tokens count."""
    from transformers import AutoTokenizer

    from hbt.eval.encode import token_lengths, truncated_shares

    cfg = config_from_dict({"model": {"query_prefix": "query: ", "passage_prefix": "passage: "}})
    items = [("query", "Where is Warsaw?"), ("passage", "Warsaw is the capital of Poland. " * 20),
             ("passage", "Short.")]
    lengths = token_lengths(str(tiny_model_dir), items, cfg)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    direct = [len(tok(("query: " if k == "query" else "passage: ") + t)["input_ids"]) for k, t in items]
    assert lengths.tolist() == direct
    shares = truncated_shares(lengths, [k for k, _ in items], max_length=32)
    assert shares == {"query": 0.0, "passage": 0.5}
