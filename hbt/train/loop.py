"""The per-worker training loop that Ray Train runs: DeepSpeed engine, explicit steps."""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from hbt.config import HBTConfig, config_from_dict, dump_config
from hbt.data.batches import GlobalBatches
from hbt.data.pipeline import assemble_pairs, fetch_train_table
from hbt.data.strategies import plan_step
from hbt.distributed import mean_across_workers
from hbt.model.card import TrainingFacts
from hbt.model.encoder import load_encoder
from hbt.train.state import TrainState
from hbt.train.step import Retriever, contrastive_step, grad_cache_step

DS_TAG = "ds"


def build_optimizer(model: torch.nn.Module, cfg: HBTConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases, norms and the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused AdamW is about twice as fast on CPU (docs/ray.md) and standard on GPU.
    return torch.optim.AdamW(groups, lr=cfg.train.lr, fused=cfg.deepspeed.fused_adam)


def lr_lambda(cfg: HBTConfig):
    """Warmup then linear / cosine decay to zero, or constant."""
    warm, total, kind = cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.schedule

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        frac = (step - warm) / max(1, total - warm)
        frac = min(max(frac, 0.0), 1.0)
        return 1.0 - frac if kind == "linear" else 0.5 * (1 + math.cos(math.pi * frac))

    return f


def deepspeed_config(cfg: HBTConfig, micro_batch: int, grad_accum: int, world: int) -> dict[str, Any]:
    """The DeepSpeed JSON derived from the config (``deepspeed.extra`` merged last)."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if cfg.train.grad_clip:
        ds["gradient_clipping"] = cfg.train.grad_clip
    if cfg.deepspeed.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif cfg.deepspeed.precision == "fp16":
        ds["fp16"] = {"enabled": True, "initial_scale_power": 12}
    ds.update(cfg.deepspeed.extra)
    return ds


def build_engine(model: torch.nn.Module, cfg: HBTConfig, local_batch: int, world: int):
    """Wraps the model in a DeepSpeed engine with our optimizer and schedule."""
    import deepspeed

    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed asserts on it; Ray Train sets RANK/WORLD_SIZE
    if cfg.train.grad_cache:
        micro, accum = cfg.train.grad_cache_chunk, local_batch // cfg.train.grad_cache_chunk
    else:
        micro, accum = local_batch, 1
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=opt, lr_scheduler=sched, config=deepspeed_config(cfg, micro, accum, world),
        dist_init_required=False,
    )
    if world == 1 and cfg.deepspeed.zero_stage == 0:
        # One rank has nothing to all-reduce, yet DeepSpeed would flatten, "reduce" and copy
        # back every gradient: 0.15 s of a 1.3 s e5-small CPU step (docs/benchmarks.md).
        engine.enable_backward_allreduce = False
    return engine


def serving_max_length(cfg: HBTConfig) -> int:
    """The ``max_seq_length`` a trained model is saved with.

    sentence-transformers has one cut-off for queries and documents alike. The larger of
    the two training lengths keeps passages as long as training saw them; queries, being
    shorter, are not cut by it either. The smaller one would truncate passages the model
    learned to read whole.
    """
    return max(cfg.model.max_query_length, cfg.model.max_passage_length)


def training_facts(cfg: HBTConfig, step: int) -> TrainingFacts:
    """What the model card says about this run."""
    d, b = cfg.data, cfg.batching
    data = f"{d.format} `{d.path}`, languages {', '.join(d.languages)}"
    if d.max_questions:
        data += f", first {d.max_questions} questions"
    if d.heldout_articles or d.dev_articles:
        data += f" ({len(d.heldout_articles)} test and {len(d.dev_articles)} dev articles held out)"
    base = cfg.model.name_or_path + (f" (first {cfg.model.num_layers} layers)" if cfg.model.num_layers else "")
    return TrainingFacts(
        base_model=base, training_data=data, strategy=b.strategy,
        alpha=b.alpha if b.strategy == "hybrid" else None, steps=step, seeds=[b.seed],
        other={"Global batch size": str(b.global_batch_size), "Learning rate": f"{cfg.train.lr:g}",
               "Temperature": f"{cfg.train.temperature:g}",
               "Max lengths (query/passage)": f"{cfg.model.max_query_length}/{cfg.model.max_passage_length}"},
    )


def save_trained_model(encoder, tokenizer, out: Path, cfg: HBTConfig, step: int, metrics: dict[str, float]) -> Path:
    """Saves a trained bi-encoder: transformers weights, sentence-transformers files and a model card.

    The card lists the dev metrics in ``metrics`` (those known at save time).
    """
    dev = {k: v for k, v in metrics.items() if k.startswith("dev/") and k != "dev/seconds"}
    return encoder.save(out, tokenizer, max_seq_length=serving_max_length(cfg), training=training_facts(cfg, step),
                        evaluation=dev or None)


def _save_hf_model(model: Retriever, tokenizer, out: Path, rank: int, cfg: HBTConfig, step: int,
                   metrics: dict[str, float]) -> None:
    """Saves the encoder from rank 0 (gathering ZeRO-3 shards first)."""
    if cfg.deepspeed.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if rank == 0:
                save_trained_model(model.encoder, tokenizer, out, cfg, step, metrics)
    elif rank == 0:
        save_trained_model(model.encoder, tokenizer, out, cfg, step, metrics)


def save_checkpoint(engine, model: Retriever, tokenizer, state: TrainState, cfg: HBTConfig, rank: int,
                    metrics: dict[str, float]) -> None:
    """Checkpoints weights, optimizer, RNG/sampler state and config, and reports it to Ray Train."""
    import ray.train
    import torch.distributed as dist

    with tempfile.TemporaryDirectory(prefix="hbt-ckpt-") as d:
        engine.save_checkpoint(os.path.join(d, "deepspeed"), tag=DS_TAG)
        _save_hf_model(model, tokenizer, Path(d) / "model", rank, cfg, state.step, metrics)
        if rank == 0:
            state.save(d)
            dump_config(cfg, Path(d) / "config.yaml")
        if dist.is_initialized():
            dist.barrier()
        ray.train.report({**metrics, "step": state.step}, checkpoint=ray.train.Checkpoint.from_directory(d))


def run_dev_eval(dev_eval, model: Retriever, tokenizer, device, cfg: HBTConfig, rank: int, step: int,
                 last: dict[str, float], tracker) -> dict[str, float]:
    """Rank 0 scores the live model on the dev split; every rank must call this (ZeRO-3 gathers).

    Returns:
        On rank 0 the ``dev/*`` metrics and ``objective``; on other ranks ``{"step": step}``
        (Ray Train keeps rank 0's report).
    """
    import torch.distributed as dist

    from hbt.train.dev_eval import gathered_for_eval

    out: dict[str, float] = {"step": float(step)}
    with gathered_for_eval(model, cfg.deepspeed.zero_stage):
        if rank == 0:
            t0 = time.perf_counter()
            out = dev_eval(model.encoder, tokenizer, device, last)
            out["dev/seconds"] = time.perf_counter() - t0
            shown = {k: round(v, 4) for k, v in out.items() if k.endswith("/mAP") and k.count("/") == 2}
            print(f"[hbt] step {step} dev {shown} ({out['dev/seconds']:.1f}s)", flush=True)
            if tracker is not None:
                tracker.log_metrics(out, step=step)
    if dist.is_initialized():
        dist.barrier()  # the other ranks wait here rather than inside their next collective
    return out


class _Meter:
    """Running sums for a logging window, split by batch type."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.tokens = 0.0
        self.samples = 0
        self.wait = 0.0
        self.t0 = time.perf_counter()

    def add(self, kind: str, loss: float, acc: float) -> None:
        for k in ("all", kind):
            self.sums[f"loss/{k}"] += loss
            self.sums[f"acc/{k}"] += acc
            self.counts[k] += 1

    def metrics(self, lr: float, temperature: float) -> dict[str, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        out = {"train/lr": lr, "train/temperature": temperature,
               "train/samples_per_s": self.samples / dt, "train/tokens_per_s": self.tokens / dt,
               "train/data_wait_frac": self.wait / dt}
        for k, n in self.counts.items():
            name = "" if k == "all" else f"/{k}"
            out[f"train/loss{name}"] = self.sums[f"loss/{k}"] / n
            out[f"train/acc{name}"] = self.sums[f"acc/{k}"] / n
            if k != "all":
                out[f"train/batches/{k}"] = float(n)
        return out


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker entry: builds the engine, resumes, streams batches, trains.

    Args:
        config: ``cfg`` (the config as a dict), ``model_dir``, ``run_dir``,
            ``mlflow_run_id`` and ``ledger`` (skip-count actor or None).

    Returns:
        Rank 0's final metrics (``Result.return_value``).
    """
    import ray.train

    cfg = config_from_dict(config["cfg"], "train_loop_config")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    local_b = cfg.batching.global_batch_size // world
    if not cfg.ray.use_gpu:
        # One intra-op thread per reserved CPU: more threads than cores makes workers fight.
        torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))

    encoder, tokenizer = load_encoder(config["model_dir"], cfg.model.pooling, cfg.model.query_prefix, cfg.model.passage_prefix)
    if cfg.model.gradient_checkpointing:
        encoder.backbone.gradient_checkpointing_enable()
    if cfg.model.freeze_embeddings:
        encoder.backbone.get_input_embeddings().weight.requires_grad_(False)
    model = Retriever(encoder, cfg.train.temperature, cfg.train.learn_temperature)
    engine = build_engine(model, cfg, local_b, world)
    device = engine.device

    state = TrainState()
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            engine.load_checkpoint(os.path.join(d, "deepspeed"), tag=DS_TAG)
            state = TrainState.load(d)
        if rank == 0:
            print(f"[hbt] resumed from checkpoint at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})", flush=True)

    tracker = None
    if rank == 0 and config.get("mlflow_run_id"):
        from hbt.tracking import Tracker

        tracker = Tracker(config["mlflow_uri"], cfg.tracking.experiment, "", config["run_dir"], run_id=config["mlflow_run_id"])

    dev_eval = None
    if cfg.train.dev_eval_every and rank == 0:
        from hbt.train.dev_eval import DevEvaluator

        dev_eval = DevEvaluator(cfg)

    table = fetch_train_table(config["train_table"])
    batches = GlobalBatches(len(table["qid_hash"]), cfg.batching.global_batch_size, cfg.batching.seed, cfg.data.shuffle)
    if rank == 0 and state.step == 0:
        print(f"[hbt] {batches.num_rows} training rows, {batches.steps_per_epoch} global batches per epoch "
              f"(seeded global shuffle: {cfg.data.shuffle})", flush=True)
    langs = list(cfg.data.languages)
    meter = _Meter()
    last: dict[str, float] = {}
    last_ckpt_step = state.step if ckpt is not None else -1
    fault_marker = Path(config["run_dir"]) / f".fault_injected_step{cfg.train.fault_inject_step}"

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return engine(ids, mask)

    def chunk_backward(surrogate: torch.Tensor, last_chunk: bool) -> None:
        engine.backward(surrogate, scale_wrt_gas=False)
        engine.step()

    while state.step < cfg.train.max_steps:
        if state.batch_in_epoch >= batches.steps_per_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0
        t_wait = time.perf_counter()
        # Every worker derives the epoch's permutation from (seed, epoch), so a resumed
        # run continues at (epoch, batch_in_epoch) with exactly the rows it would have had.
        rows = batches.worker_rows(state.epoch, state.batch_in_epoch, rank, world)
        batch = {k: v[rows] for k, v in table.items()}
        # Dropout masks depend only on (seed, step, rank), so a resumed run
        # draws what the uninterrupted run would have drawn.
        torch.manual_seed((cfg.batching.seed * 1_000_003 + state.step) * 64 + rank)
        plan = plan_step(cfg.batching, langs, state.epoch, state.step, cfg.data.language_weights).slice(rank, world)
        pairs = assemble_pairs(batch, plan.q_lang, plan.p_lang)
        pairs = {k: v.to(device) for k, v in pairs.items() if k != "qid_hash"}
        meter.wait += time.perf_counter() - t_wait
        if (cfg.train.fault_inject_step is not None and state.step == cfg.train.fault_inject_step
                and rank == cfg.train.fault_inject_rank and not fault_marker.exists()):
            fault_marker.touch()
            raise RuntimeError(f"[hbt] injected fault at step {state.step} on rank {rank}")

        if cfg.train.grad_cache:
            res = grad_cache_step(forward, model.temperature, pairs, chunk_backward, cfg.train.grad_cache_chunk,
                                  cfg.train.gather_queries)
        else:
            res = contrastive_step(forward, model.temperature, pairs, engine.backward, cfg.train.gather_queries)
            engine.step()
        tokens = float(pairs["q_attention_mask"].sum() + pairs["p_attention_mask"].sum())
        g = mean_across_workers(torch.tensor([float(res.loss), float(res.acc), tokens]))
        meter.add(plan.kind, float(g[0]), float(g[1]))
        meter.tokens += float(g[2]) * world
        meter.samples += cfg.batching.global_batch_size
        state.step += 1
        state.batch_in_epoch += 1
        state.samples += cfg.batching.global_batch_size

        if state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps:
            last = meter.metrics(engine.get_lr()[0], float(model.temperature()))
            if config.get("ledger") is not None and rank == 0:
                last.update(ray.get(config["ledger"].get.remote()).as_metrics())
            if rank == 0:
                print(f"[hbt] step {state.step}/{cfg.train.max_steps} loss {last['train/loss']:.4f} "
                      f"acc {last['train/acc']:.3f} | {last['train/samples_per_s']:.1f} pairs/s "
                      f"{last['train/tokens_per_s']:.0f} tok/s | data wait {100 * last['train/data_wait_frac']:.1f}%",
                      flush=True)
                if tracker is not None:
                    tracker.log_metrics(last, step=state.step)
            meter.reset()
        dev: dict[str, float] = {}
        if cfg.train.dev_eval_every and state.step % cfg.train.dev_eval_every == 0:
            t_dev = time.perf_counter()
            dev = run_dev_eval(dev_eval, model, tokenizer, device, cfg, rank, state.step, last, tracker)
            meter.t0 += time.perf_counter() - t_dev  # throughput counts training time only
        if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0:
            save_checkpoint(engine, model, tokenizer, state, cfg, rank, {**last, **dev})
            last_ckpt_step = state.step
        elif dev:
            # Every rank reports (Ray Train pairs the reports); rank 0's metrics reach Tune.
            ray.train.report({**last, **dev, "step": state.step})

    if last_ckpt_step != state.step:
        save_checkpoint(engine, model, tokenizer, state, cfg, rank, last)
    return {**last, "step": state.step, "samples": state.samples}
