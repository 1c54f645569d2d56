"""One contrastive training step, plain or with gradient caching.

The step is written against two callables, ``backward(loss)`` and
``step()``, so the same code drives a DeepSpeed engine in Ray Train workers
and a bare PyTorch optimizer in tests and benchmarks.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from hbt.distributed import gather_ids, gather_with_grad
from hbt.loss import info_nce, same_passage_mask, symmetric_info_nce
from hbt.model.encoder import BiEncoder


class Retriever(nn.Module):
    """The trained module: a bi-encoder plus its softmax temperature.

    Args:
        encoder: the shared query/passage encoder.
        temperature: initial temperature.
        learnable: learn log(1/temperature) with the weights.
        bf16: run the encoder under bf16 autocast (weights, optimizer and loss stay fp32).
    """

    def __init__(self, encoder: BiEncoder, temperature: float, learnable: bool = False, bf16: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.bf16 = bf16
        init = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.log_inv_temperature = nn.Parameter(init)
        else:
            self.register_buffer("log_inv_temperature", init)

    def temperature(self) -> torch.Tensor:
        """The current temperature."""
        return torch.exp(-self.log_inv_temperature)

    def autocast(self) -> torch.autocast:
        """A bf16 autocast region (disabled in fp32) to hold both sides' forwards of one step.

        Autocast caches the bf16 copy of each weight until its outermost region ends: one
        region around the query and the passage forward casts the weights once per step, not
        once per side (bare bf16 loop on 2 CPU cores: 16.75 against 15.86 pairs/s; docs/benchmarks.md).
        The forward values are the same; the two sides' gradients of a shared copy are summed in
        bf16 before they reach the fp32 weight, as in sentence-transformers' one-region step.
        """
        return torch.autocast(self.log_inv_temperature.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeds one side of the batch (under bf16 autocast with ``train.precision: bf16``; the output is fp32)."""
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.encoder(input_ids, attention_mask)


@dataclass
class StepResult:
    """Loss and in-batch accuracy of one step (this worker's slice)."""

    loss: torch.Tensor
    acc: torch.Tensor


def _loss(q: torch.Tensor, p: torch.Tensor, temperature: torch.Tensor, gather_queries: bool,
          groups: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gathers passages (and queries) and the passage groups across workers, masks, InfoNCE."""
    all_p, offset = gather_with_grad(p)
    mask = None
    if groups is not None:
        groups = groups.to(q.device)
        mask = same_passage_mask(groups, gather_ids(groups), offset)
    if gather_queries:
        all_q, _ = gather_with_grad(q)
        return symmetric_info_nce(q, all_p, all_q, temperature, offset, mask)
    return info_nce(q, all_p, temperature, offset, mask)


def contrastive_step(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    temperature: Callable[[], torch.Tensor],
    batch: dict[str, torch.Tensor],
    backward: Callable[[torch.Tensor], None],
    gather_queries: bool = False,
    region: Callable[[], AbstractContextManager] = nullcontext,
) -> StepResult:
    """Forward both sides, gather passages across workers, InfoNCE, backward.

    Args:
        forward: embeds (input_ids, attention_mask).
        temperature: returns the current temperature.
        batch: ``q_input_ids``, ``q_attention_mask``, ``p_input_ids``, ``p_attention_mask``
            and optionally ``group_hash`` (each pair's passage group): candidates of a
            row's own group are masked out of its negatives, across workers.
        backward: runs the backward pass of the loss (e.g. ``engine.backward``).
        gather_queries: also gather queries and add the passage→query loss.
        region: a context both forwards run in (``Retriever.autocast``); the loss and the
            backward stay outside it.
    """
    with region():
        q = forward(batch["q_input_ids"], batch["q_attention_mask"])
        p = forward(batch["p_input_ids"], batch["p_attention_mask"])
    loss, acc = _loss(q, p, temperature(), gather_queries, batch.get("group_hash"))
    backward(loss)
    return StepResult(loss.detach(), acc)


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU RNG state and, on a CUDA device, that device's RNG state (dropout draws from it there)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextmanager
def _replay_rng(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device):
    """Restores the CPU (and CUDA) RNG so a re-forward draws the same dropout masks; the outer RNG is untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def grad_cache_step(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    temperature: Callable[[], torch.Tensor],
    batch: dict[str, torch.Tensor],
    chunk_backward: Callable[[torch.Tensor, bool], None],
    chunk_size: int,
    gather_queries: bool = False,
) -> StepResult:
    """A GradCache step (Gao et al., 2021): the same gradients in chunk-sized memory.

    1. Embed all queries and passages in chunks without building graphs.
    2. Compute the loss on detached embeddings (gathered across workers) and
       backpropagate to the embeddings only.
    3. Re-embed each chunk with gradients, replaying its dropout RNG, and
       backpropagate the cached embedding gradients into the weights.

    Args:
        forward, temperature, batch, gather_queries: as in :func:`contrastive_step`.
        chunk_backward: ``(surrogate, is_last_chunk)``; backpropagates one
            chunk's surrogate, accumulating gradients (the optimizer steps after the last).
        chunk_size: rows per chunk.
    """
    n = batch["q_input_ids"].shape[0]
    device = batch["q_input_ids"].device
    chunks = [slice(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    rng: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    q_parts, p_parts = [], []
    with torch.no_grad():
        for sl in chunks:
            rng.append(_rng_state(device))
            q_parts.append(forward(batch["q_input_ids"][sl], batch["q_attention_mask"][sl]))
            p_parts.append(forward(batch["p_input_ids"][sl], batch["p_attention_mask"][sl]))
    q = torch.cat(q_parts).requires_grad_()
    p = torch.cat(p_parts).requires_grad_()
    loss, acc = _loss(q, p, temperature().detach(), gather_queries, batch.get("group_hash"))
    loss.backward()
    for i, (sl, state) in enumerate(zip(chunks, rng)):
        with _replay_rng(state, device):
            qc = forward(batch["q_input_ids"][sl], batch["q_attention_mask"][sl])
            pc = forward(batch["p_input_ids"][sl], batch["p_attention_mask"][sl])
        surrogate = (qc * q.grad[sl]).sum() + (pc * p.grad[sl]).sum()
        chunk_backward(surrogate, i == len(chunks) - 1)
    return StepResult(loss.detach(), acc)
