"""Cross-worker collectives used by the training step (kept out of the loss)."""

from __future__ import annotations

import torch
import torch.distributed as dist


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for the local slice.

    The backward is an all-reduce of the full gradient, then a slice, rather
    than a reduce-scatter, because gloo (CPU workers) has no reduce-scatter.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Gathers equal-sized (n, d) tensors from every rank, keeping gradients.

    Every rank's loss then backpropagates into every rank's embeddings, so
    the summed gradients equal those of one process holding the global batch.

    Returns:
        (the (world * n, d) global tensor in rank order, this rank's offset in it).
        Without an initialised process group (one process) the input is returned.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return x, 0
    return _GatherWithGrad.apply(x), dist.get_rank() * x.shape[0]


def gather_ids(x: torch.Tensor) -> torch.Tensor:
    """Gathers equal-sized 1-D id tensors (passage groups, qid hashes) from every rank, in rank order (no gradient)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def mean_across_workers(values: torch.Tensor) -> torch.Tensor:
    """Averages a tensor of metrics over workers (for logging only)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()
