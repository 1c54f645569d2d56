"""The per-worker training loop that Ray Train runs: DeepSpeed engine, explicit steps."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
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
from hbt.model.storage import local_model_dir
from hbt.progress import clock
from hbt.raysetup import configure_logging
from hbt.train.checkpoints import (checkpoint_name, checkpoint_source, download, latest_complete, mark_complete,
                                   step_of)
from hbt.train.state import TrainState
from hbt.hardware import resolve_train_precision
from hbt.train.step import Retriever, contrastive_step, grad_cache_step

DS_TAG = "ds"
log = logging.getLogger("hbt.train")


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


def skip_shm_comm_build() -> None:
    """Keeps DeepSpeed from JIT-compiling its CPU shared-memory all-reduce op.

    DeepSpeed's torch backend builds that op whenever it starts on a CPU, for
    ``inference_all_reduce`` (tensor-parallel inference), which training never
    calls: gradients go through ``torch.distributed``. On a fresh install, or
    whenever the extension cache was built from another environment, the build
    took 27-34 s of the first training run on 2 cores (docs/benchmarks.md). An op
    marked incompatible is not built (``deepspeed.comm.torch.build_shm_op``).
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def build_engine(model: torch.nn.Module, cfg: HBTConfig, local_batch: int, world: int):
    """Wraps the model in a DeepSpeed engine with our optimizer and schedule."""
    import deepspeed

    skip_shm_comm_build()
    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed asserts on it; Ray Train sets RANK/WORLD_SIZE
    if cfg.train.grad_cache:
        micro, accum = cfg.train.grad_cache_chunk, local_batch // cfg.train.grad_cache_chunk
    else:
        micro, accum = local_batch, 1
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    ds_config = deepspeed_config(cfg, micro, accum, world)
    log.debug("DeepSpeed config: %s", ds_config)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=opt, lr_scheduler=sched, config=ds_config, dist_init_required=False,
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
    """What the model card says about this run.

    The model is named ``hbt/<base>[-l<layers>]-<strategy>[-a<alpha>]-s<seed>`` (``<base>``: the
    base model's Hub name where known); the card's ``language`` is the training languages and
    its ``datasets`` the training data (Hub ids where hbt knows them).
    """
    from hbt.model.card import base_model_hub_id, slug, training_datasets

    d, b = cfg.data, cfg.batching
    data = f"{d.format} `{d.path}`, languages {', '.join(d.languages)}"
    if d.max_questions:
        data += f", first {d.max_questions} questions"
    if d.heldout_articles or d.dev_articles:
        data += f" ({len(d.heldout_articles)} test and {len(d.dev_articles)} dev articles held out)"
    start = cfg.model.name_or_path
    hub_id = base_model_hub_id(start)
    base = (hub_id or Path(start.rstrip("/")).name).rsplit("/", 1)[-1]
    tag = f"{b.strategy}-a{b.alpha:g}" if b.strategy == "hybrid" else b.strategy
    layers = f"-l{cfg.model.num_layers}" if cfg.model.num_layers else ""
    return TrainingFacts(
        base_model=start, training_data=data, strategy=b.strategy,
        alpha=b.alpha if b.strategy == "hybrid" else None, steps=step, seeds=[b.seed],
        other={"Global batch size": str(b.global_batch_size), "Learning rate": f"{cfg.train.lr:g}",
               "Temperature": f"{cfg.train.temperature:g}",
               "Max lengths (query/passage)": f"{cfg.model.max_query_length}/{cfg.model.max_passage_length}"},
        num_layers=cfg.model.num_layers, languages=list(d.languages), datasets=training_datasets(d.format, d.path),
        model_name=f"hbt/{slug(f'{base}{layers}-{tag}-s{b.seed}')}",
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
                    metrics: dict[str, float], run_storage: str | None = None) -> None:
    """Checkpoints weights, optimizer, RNG/sampler state and config, and reports it to Ray Train.

    With ``run_storage`` (the run's storage folder) the checkpoint is named by its
    step and marked whole once every rank has uploaded it (:mod:`hbt.train.checkpoints`).
    """
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
        ray.train.report({**metrics, "step": state.step}, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=checkpoint_name(state.step))
        if run_storage is not None:
            if dist.is_initialized():
                dist.barrier()  # every rank's files are uploaded: the checkpoint is whole
            if rank == 0:
                mark_complete(run_storage, state.step)


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
            log.info("step %d dev %s (%.1fs)", step, shown, out["dev/seconds"])
            if tracker is not None:
                tracker.log_metrics(out, step=step)
    if dist.is_initialized():
        dist.barrier()  # the other ranks wait here rather than inside their next collective
    return out


class _Meter:
    """Running sums for a logging window, split by batch type, and the run's clock for the ETA.

    Args:
        first_step: the step this worker starts at (after a resume, the checkpoint's).
        max_steps: the step training ends at.
    """

    def __init__(self, first_step: int = 0, max_steps: int = 0) -> None:
        self.first_step, self.max_steps = first_step, max_steps
        self.start = time.perf_counter()
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

    def elapsed_and_eta(self, step: int) -> tuple[float, float]:
        """Wall seconds since this worker started training, and the rest at the pace so far
        (dev evaluations and checkpoints included, as they recur)."""
        elapsed = time.perf_counter() - self.start
        done = max(step - self.first_step, 1)
        return elapsed, elapsed / done * max(self.max_steps - step, 0)


def _hms(seconds: float) -> str:
    return clock(seconds, hours=True)


class _RunLogClient:
    """Rank 0's handle on the driver's :class:`hbt.tracking.RunLog` (the tracker interface the loop uses).

    Each call waits for its answer: a line sent just before the worker dies with
    its node is then written, or known lost, and the driver reads the file only
    after training returns.
    """

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    def _call(self, method: str, *args: Any) -> None:
        import ray

        if self._actor is None:
            return
        try:
            ray.get(getattr(self._actor, method).remote(*args))
        except ray.exceptions.RayActorError as e:
            # The driver's node is gone, and with it the job: training must not fail on its log.
            log.warning("the run's log on the driver's node is unreachable (%s); step metrics go to the "
                        "Ray Train reports only", type(e).__name__)
            self._actor = None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._call("log_metrics", metrics, step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", tags)


@dataclass
class _Worker:
    """What one worker trains with, built once by :func:`_setup`."""

    cfg: HBTConfig
    config: dict[str, Any]
    rank: int
    world: int
    engine: Any
    model: Retriever
    tokenizer: Any
    device: torch.device
    tracker: Any
    dev_eval: Any
    table: dict[str, Any]
    batches: GlobalBatches


def _setup(config: dict[str, Any]) -> _Worker:
    """Config, model, DeepSpeed engine, tracker, dev evaluator and the training table."""
    import ray.train

    configure_logging(config.get("log_level"))
    cfg = config_from_dict(config["cfg"], "train_loop_config")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    local_b = cfg.batching.global_batch_size // world
    if not cfg.ray.use_gpu:
        # One intra-op thread per reserved CPU: more threads than cores makes workers fight.
        torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))

    # A storage URI (the base model published for a cluster) is fetched into this node's cache.
    encoder, tokenizer = load_encoder(local_model_dir(config["model_dir"]), cfg.model.pooling, cfg.model.query_prefix,
                                      cfg.model.passage_prefix)
    if cfg.model.gradient_checkpointing:
        encoder.backbone.gradient_checkpointing_enable()
    if cfg.model.freeze_embeddings:
        encoder.backbone.get_input_embeddings().weight.requires_grad_(False)
    precision, why = resolve_train_precision(cfg.train.precision, cfg.ray.use_gpu)
    if rank == 0:
        log.info("train precision: %s (%s)", precision, why)
    model = Retriever(encoder, cfg.train.temperature, cfg.train.learn_temperature, bf16=precision == "bf16")
    engine = build_engine(model, cfg, local_b, world)

    tracker = None
    if rank == 0 and config.get("run_log") is not None:
        tracker = _RunLogClient(config["run_log"])
        tracker.set_tags({"hbt.train_precision": f"{precision} ({why})"})

    dev_eval = None
    if cfg.train.dev_eval_every and rank == 0:
        from hbt.train.dev_eval import DevEvaluator

        dev_eval = DevEvaluator(cfg)

    table = fetch_train_table(config["train_table"])
    batches = GlobalBatches(len(table["qid_hash"]), cfg.batching.global_batch_size, cfg.batching.seed, cfg.data.shuffle)
    return _Worker(cfg, config, rank, world, engine, model, tokenizer, engine.device, tracker, dev_eval, table, batches)


def _step_of(ckpt) -> int | None:
    """The step of Ray's checkpoint: None without one, -1 when it is not named by its step."""
    if ckpt is None:
        return None
    step = step_of(ckpt.path.rstrip("/").rsplit("/", 1)[-1])
    return -1 if step is None else step


def _resume(w: _Worker) -> tuple[TrainState, bool]:
    """Loads the newest whole checkpoint into the engine when there is one (a restart or ``--resume``).

    Returns:
        (the state to continue from, whether Ray Train knows that checkpoint: when it
        does not, the run reports it again at its end, so that Ray's result holds it)
    """
    import ray.train

    ckpt = ray.train.get_checkpoint()
    run_storage = w.config.get("run_storage")
    marked = latest_complete(run_storage) if run_storage else None
    ray_step = _step_of(ckpt)
    if marked is not None and (ray_step is None or marked > ray_step):
        # Written whole but not (yet) registered by Ray when the worker group died.
        # Each rank fetches its own copy: no download shared between processes.
        with tempfile.TemporaryDirectory(prefix="hbt-resume-") as d:
            download(run_storage, marked, d)
            # The state first: a damaged one is named before DeepSpeed spends time loading.
            state = TrainState.load(d, source=checkpoint_source(run_storage, marked))
            w.engine.load_checkpoint(os.path.join(d, "deepspeed"), tag=DS_TAG)
        registered = False
    elif ckpt is not None:
        with ckpt.as_directory() as d:
            state = TrainState.load(d, source=ckpt.path)
            w.engine.load_checkpoint(os.path.join(d, "deepspeed"), tag=DS_TAG)
        registered = True
    else:
        return TrainState(), False
    if w.rank == 0:
        log.info("resumed from checkpoint at step %d (epoch %d, batch %d)", state.step, state.epoch, state.batch_in_epoch)
    return state, registered


def _next_batch(w: _Worker, state: TrainState):
    """This worker's pairs for the step at ``state`` (rolling over to the next epoch when due).

    Returns:
        (the step's plan, its tokenised pairs on the device)
    """
    cfg = w.cfg
    if state.batch_in_epoch >= w.batches.steps_per_epoch:
        state.epoch += 1
        state.batch_in_epoch = 0
    # Every worker derives the epoch's permutation from (seed, epoch), so a resumed
    # run continues at (epoch, batch_in_epoch) with exactly the rows it would have had.
    rows = w.batches.worker_rows(state.epoch, state.batch_in_epoch, w.rank, w.world)
    batch = {k: v[rows] for k, v in w.table.items()}
    # Dropout masks depend only on (seed, step, rank), so a resumed run
    # draws what the uninterrupted run would have drawn.
    torch.manual_seed((cfg.batching.seed * 1_000_003 + state.step) * 64 + w.rank)
    plan = plan_step(cfg.batching, list(cfg.data.languages), state.epoch, state.step,
                     cfg.data.language_weights).slice(w.rank, w.world)
    pairs = assemble_pairs(batch, plan.q_lang, plan.p_lang)
    return plan, {k: v.to(w.device) for k, v in pairs.items() if k != "qid_hash"}


def _inject_fault(w: _Worker, step: int) -> None:
    """Testing: raises once at ``train.fault_inject_step`` on ``train.fault_inject_rank``."""
    cfg = w.cfg
    marker = Path(w.config["run_dir"]) / f".fault_injected_step{cfg.train.fault_inject_step}"
    if (cfg.train.fault_inject_step is not None and step == cfg.train.fault_inject_step
            and w.rank == cfg.train.fault_inject_rank and not marker.exists()):
        marker.touch()
        raise RuntimeError(f"[hbt] injected fault at step {step} on rank {w.rank}")


def _train_step(w: _Worker, plan, pairs: dict[str, torch.Tensor], meter: _Meter) -> None:
    """One optimizer step (plain or GradCache); the loss, accuracy and tokens, averaged across workers, go to ``meter``."""
    cfg, engine = w.cfg, w.engine

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return engine(ids, mask)

    def chunk_backward(surrogate: torch.Tensor, last_chunk: bool) -> None:
        engine.backward(surrogate, scale_wrt_gas=False)
        engine.step()

    if cfg.train.grad_cache:
        res = grad_cache_step(forward, w.model.temperature, pairs, chunk_backward, cfg.train.grad_cache_chunk,
                              cfg.train.gather_queries)
    else:
        res = contrastive_step(forward, w.model.temperature, pairs, engine.backward, cfg.train.gather_queries,
                               region=w.model.autocast)
        engine.step()
    tokens = float(pairs["q_attention_mask"].sum() + pairs["p_attention_mask"].sum())
    g = mean_across_workers(torch.tensor([float(res.loss), float(res.acc), tokens]))
    meter.add(plan.kind, float(g[0]), float(g[1]))
    meter.tokens += float(g[2]) * w.world
    meter.samples += cfg.batching.global_batch_size


def _log_window(w: _Worker, step: int, meter: _Meter) -> dict[str, float]:
    """The logging window's metrics: one line on rank 0 (with elapsed time and ETA), and to MLflow.

    Returns:
        The window's metrics (every rank computes them; they end up in the reports).
    """
    import ray

    last = meter.metrics(w.engine.get_lr()[0], float(w.model.temperature()))
    if w.config.get("ledger") is not None and w.rank == 0:
        last.update(ray.get(w.config["ledger"].get.remote()).as_metrics())
    if w.rank == 0:
        elapsed, eta = meter.elapsed_and_eta(step)
        log.info("step %d/%d loss %.4f acc %.3f | %.1f pairs/s %.0f tok/s | data wait %.1f%% | elapsed %s ETA %s",
                 step, w.cfg.train.max_steps, last["train/loss"], last["train/acc"], last["train/samples_per_s"],
                 last["train/tokens_per_s"], 100 * last["train/data_wait_frac"], _hms(elapsed), _hms(eta))
        if w.tracker is not None:
            w.tracker.log_metrics(last, step=step)
    meter.reset()
    return last


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker entry: builds the engine, resumes, streams batches, trains.

    Args:
        config: ``cfg`` (the config as a dict), ``model_dir`` (a path or storage URI), ``run_dir``,
            ``run_storage`` (the run's storage folder), ``run_log`` (the driver's RunLog actor),
            ``ledger`` (skip-count actor or None), ``train_table`` and ``log_level`` (the driver's).

    Returns:
        Rank 0's final metrics (``Result.return_value``).
    """
    import ray.train

    w = _setup(config)
    cfg = w.cfg
    state, registered = _resume(w)
    if w.rank == 0 and state.step == 0:
        log.info("%d training rows, %d global batches per epoch (seeded global shuffle: %s)",
                 w.batches.num_rows, w.batches.steps_per_epoch, cfg.data.shuffle)
    meter = _Meter(state.step, cfg.train.max_steps)
    last: dict[str, float] = {}
    # A checkpoint Ray knows is not saved again at the end; one it never registered is.
    last_ckpt_step = state.step if registered else -1

    while state.step < cfg.train.max_steps:
        t_wait = time.perf_counter()
        plan, pairs = _next_batch(w, state)
        meter.wait += time.perf_counter() - t_wait
        _inject_fault(w, state.step)
        _train_step(w, plan, pairs, meter)
        state.step += 1
        state.batch_in_epoch += 1
        state.samples += cfg.batching.global_batch_size

        if state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps:
            last = _log_window(w, state.step, meter)
        dev: dict[str, float] = {}
        if cfg.train.dev_eval_every and state.step % cfg.train.dev_eval_every == 0:
            t_dev = time.perf_counter()
            dev = run_dev_eval(w.dev_eval, w.model, w.tokenizer, w.device, cfg, w.rank, state.step, last, w.tracker)
            meter.t0 += time.perf_counter() - t_dev  # throughput counts training time only
        if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0:
            save_checkpoint(w.engine, w.model, w.tokenizer, state, cfg, w.rank, {**last, **dev},
                            w.config.get("run_storage"))
            last_ckpt_step = state.step
        elif dev:
            # Every rank reports (Ray Train pairs the reports); rank 0's metrics reach Tune.
            ray.train.report({**last, **dev, "step": state.step})

    if last_ckpt_step != state.step:
        save_checkpoint(w.engine, w.model, w.tokenizer, state, cfg, w.rank, last, w.config.get("run_storage"))
    return {**last, "step": state.step, "samples": state.samples}
