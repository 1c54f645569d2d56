"""Dev evaluation of the live model during training (no Ray: the in-memory path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hbt.config import load_config
from hbt.model.encoder import load_encoder
from hbt.train.dev_eval import DevEvaluator


def _cfg(*extra):
    return load_config(None, ["data.languages=[en,de,es]", "data.dev_articles=[Warsaw]", "eval.languages=[en,de,es]",
                              "eval.max_questions=10", "eval.batch_size=8", "eval.max_length=32", *extra])


def test_dev_metrics_objective_and_mode_restored(tiny_model_dir):
    cfg = _cfg("tune.objective_weights={dev/monolingual/mAP: 0.5, dev/multilingual/mAP: 0.5, train/loss: -0.1}")
    enc, tok = load_encoder(str(tiny_model_dir))
    enc.train()
    ev = DevEvaluator(cfg)
    assert ev.benches["xquad_r"].articles == ["Warsaw"]

    out = ev(enc, tok, torch.device("cpu"), {"train/loss": 2.0})

    assert enc.training  # back in train mode for the next step
    for k in ("dev/monolingual/mAP", "dev/cross_lingual/mAP", "dev/multilingual/mAP", "dev/bias/own_language_top1",
              "dev/cross_lingual/de-en/mAP"):
        assert 0.0 <= out[k] <= 1.0, k
    want = 0.5 * out["dev/monolingual/mAP"] + 0.5 * out["dev/multilingual/mAP"] - 0.1 * 2.0
    assert out["objective"] == pytest.approx(want)
    # Same model, same numbers: the dev path has no randomness of its own.
    again = ev(enc, tok, torch.device("cpu"), {"train/loss": 2.0})
    assert again == out


def test_dev_metrics_follow_the_weights(tiny_model_dir):
    """A model changed by a training step gets a different dev score (the evaluator sees the live weights)."""
    cfg = _cfg()
    enc, tok = load_encoder(str(tiny_model_dir))
    ev = DevEvaluator(cfg)
    before = ev(enc, tok, "cpu")
    assert before["objective"] == before["dev/multilingual/mAP"]
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    after = ev(enc, tok, "cpu")
    assert not np.isclose(after["dev/multilingual/mAP"], before["dev/multilingual/mAP"])


def test_objective_with_unreported_key_is_left_out(tiny_model_dir):
    cfg = _cfg("tune.objective_weights={dev/multilingual/mAP: 1.0, train/loss: -1.0}")
    enc, tok = load_encoder(str(tiny_model_dir))
    out = DevEvaluator(cfg)(enc, tok, "cpu")  # no train metrics given
    assert "objective" not in out and "dev/multilingual/mAP" in out


def test_dev_eval_every_needs_dev_articles():
    from hbt.config import ConfigError

    with pytest.raises(ConfigError, match="train.dev_eval_every needs data.dev_articles"):
        load_config(None, ["train.dev_eval_every=5"])
