"""Contrastive losses as pure functions of embeddings (no process groups in here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    queries: torch.Tensor,
    passages: torch.Tensor,
    temperature: torch.Tensor | float,
    positive_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE with in-batch negatives.

    Query ``i`` is positive with passage ``positive_offset + i``; every other
    passage in ``passages`` is a negative. With data-parallel training,
    ``passages`` is the gathered global batch and ``positive_offset`` the
    first global index of this worker's slice.

    Args:
        queries: (b, d) query embeddings.
        passages: (B, d) passage embeddings, B >= positive_offset + b.
        temperature: softmax temperature (a float or a scalar tensor).
        positive_offset: index of the first local query's positive passage.

    Returns:
        (mean loss over the b queries, fraction of queries whose top-scored
        passage is the positive, detached).
    """
    b = queries.shape[0]
    if passages.shape[0] < positive_offset + b:
        raise ValueError(f"{passages.shape[0]} passages cannot hold positives {positive_offset}..{positive_offset + b - 1}")
    logits = queries @ passages.T / temperature
    labels = torch.arange(b, device=queries.device) + positive_offset
    loss = F.cross_entropy(logits, labels)
    acc = (logits.detach().argmax(-1) == labels).float().mean()
    return loss, acc


def symmetric_info_nce(
    queries: torch.Tensor,
    passages: torch.Tensor,
    all_queries: torch.Tensor,
    temperature: torch.Tensor | float,
    positive_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query→passage plus passage→query InfoNCE (used with ``train.gather_queries``).

    Args:
        queries: (b, d) local queries; passages: (B, d) gathered passages.
        all_queries: (B, d) gathered queries.
        temperature, positive_offset: as in :func:`info_nce`.
    """
    b = queries.shape[0]
    local_passages = passages[positive_offset : positive_offset + b]
    l1, acc = info_nce(queries, passages, temperature, positive_offset)
    l2, _ = info_nce(local_passages, all_queries, temperature, positive_offset)
    return (l1 + l2) / 2, acc
