"""2 workers x b equal 1 worker x 2b (ZeRO 0, 2 and 3), and GradCache equals the plain step, with the false-negative mask.

The fixed batch's passage groups collide inside a worker's slice and across
the two workers' slices, so the gathered-group mask is exercised both ways.
"""

from __future__ import annotations


import numpy as np
import pytest

from hbt.config import load_config

from ..conftest import XQUAD_R

GLOBAL_B = 8
# Rows 1/2 share a group inside worker 0's slice; rows 0/4 and 3/7 across the two slices.
GROUPS = [10, 11, 11, 12, 10, 13, 14, 12]


def _fixed_global_batch(model_dir) -> dict[str, list]:
    """A real, fixed global batch: 8 XQuAD-R questions (de) and answer sentences (en)."""
    from transformers import AutoTokenizer

    from hbt.data.readers import iter_squad_file
    from hbt.data.records import RecordGrouper

    tok = AutoTokenizer.from_pretrained(model_dir)
    de = list(iter_squad_file(str(XQUAD_R / "de.json"), "de", RecordGrouper(["de"])))[:GLOBAL_B]
    en = {q.qid: q for q in iter_squad_file(str(XQUAD_R / "en.json"), "en", RecordGrouper(["en"]))}
    q = tok(["query: " + x.query for x in de], padding=True, truncation=True, max_length=32)
    p = tok(["passage: " + en[x.qid].passage for x in de], padding=True, truncation=True, max_length=48)
    return {"q_input_ids": q["input_ids"], "q_attention_mask": q["attention_mask"],
            "p_input_ids": p["input_ids"], "p_attention_mask": p["attention_mask"], "group_hash": GROUPS}


def _one_step_grads(config: dict) -> dict | None:
    """Ray Train worker: one DeepSpeed step's loss and full (unpartitioned) gradients."""
    import ray.train
    import torch
    from deepspeed.utils import safe_get_full_grad

    from hbt.config import config_from_dict
    from hbt.distributed import mean_across_workers
    from hbt.model.encoder import load_encoder
    from hbt.train.loop import build_engine
    from hbt.train.step import Retriever, contrastive_step, grad_cache_step

    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    local_b = cfg.batching.global_batch_size // world
    enc, _ = load_encoder(config["model_dir"])
    model = Retriever(enc, cfg.train.temperature)
    engine = build_engine(model, cfg, local_b, world)
    sl = slice(rank * local_b, (rank + 1) * local_b)
    batch = {k: torch.tensor(v)[sl] for k, v in config["batch"].items()}
    if cfg.train.grad_cache:
        def chunk_backward(surrogate, last):
            engine.backward(surrogate, scale_wrt_gas=False)
            if not last:  # the last micro step's gradients are read before the optimizer runs
                engine.step()
        res = grad_cache_step(engine, model.temperature, batch, chunk_backward, cfg.train.grad_cache_chunk)
    else:
        res = contrastive_step(engine, model.temperature, batch, engine.backward)
    grads = {n: safe_get_full_grad(p) for n, p in model.named_parameters() if p.requires_grad}
    loss = float(mean_across_workers(torch.tensor([float(res.loss)]))[0])
    if rank != 0:
        return None
    return {"loss": loss, "grads": {n: g.detach().numpy().copy() for n, g in grads.items()}}


_RUNS: dict[tuple, dict] = {}


def _run(model_dir, batch, workers: int, zero: int, grad_cache: bool = False) -> dict:
    """One step in a fresh TorchTrainer (cached per module: each start costs ~30 s)."""
    key = (str(model_dir), workers, zero, grad_cache)
    if key not in _RUNS:
        _RUNS[key] = _run_uncached(model_dir, batch, workers, zero, grad_cache)
    return _RUNS[key]


def _run_uncached(model_dir, batch, workers: int, zero: int, grad_cache: bool) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = load_config(None, [f"ray.num_workers={workers}", f"batching.global_batch_size={GLOBAL_B}",
                             f"deepspeed.zero_stage={zero}", "train.grad_clip=null", f"train.grad_cache={grad_cache}",
                             "train.grad_cache_chunk=2"])
    trainer = TorchTrainer(
        _one_step_grads,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "model_dir": str(model_dir), "batch": batch},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
    )
    return trainer.fit().return_value


@pytest.fixture(scope="module")
def nodropout_model(tmp_path_factory):
    from hbt.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("nodrop") / "m", dropout=0.0)


def _assert_same(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert abs(a["loss"] - b["loss"]) < atol, (a["loss"], b["loss"])
    assert a["grads"].keys() == b["grads"].keys()
    worst = max(float(np.abs(a["grads"][n] - b["grads"][n]).max()) for n in a["grads"])
    assert worst < atol, worst
    # Not vacuous: the step produced real gradients.
    assert max(float(np.abs(g).max()) for g in a["grads"].values()) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("zero", [0, 2, 3])
def test_two_workers_equal_one_worker_with_the_global_batch(nodropout_model, ray_local, zero):
    batch = _fixed_global_batch(nodropout_model)
    one = _run(nodropout_model, batch, workers=1, zero=zero)
    two = _run(nodropout_model, batch, workers=2, zero=zero)
    _assert_same(one, two)


@pytest.mark.slow
def test_grad_cache_equals_the_plain_step(nodropout_model, ray_local):
    batch = _fixed_global_batch(nodropout_model)
    plain = _run(nodropout_model, batch, workers=2, zero=0)
    cached = _run(nodropout_model, batch, workers=2, zero=0, grad_cache=True)
    _assert_same(plain, cached)


def test_grad_cache_replays_dropout(tiny_model_dir):
    """With dropout on, GradCache in one chunk equals the plain step (same RNG use, same masks)."""
    import torch

    from hbt.model.encoder import load_encoder
    from hbt.train.step import Retriever, contrastive_step, grad_cache_step

    batch = {k: torch.tensor(v) for k, v in _fixed_global_batch(tiny_model_dir).items()}

    def grads(cached: bool) -> tuple[float, dict]:
        enc, _ = load_encoder(tiny_model_dir)
        model = Retriever(enc, 0.05).train()
        torch.manual_seed(0)
        if cached:
            # chunk = whole batch: queries then passages are drawn in the same order as the plain step
            res = grad_cache_step(model, model.temperature, batch, lambda s, last: s.backward(), GLOBAL_B)
        else:
            res = contrastive_step(model, model.temperature, batch, lambda loss: loss.backward())
        return float(res.loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (l1, g1), (l2, g2) = grads(False), grads(True)
    assert abs(l1 - l2) < 1e-5
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], atol=1e-5, rtol=1e-4)
