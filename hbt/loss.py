"""Contrastive losses as pure functions of embeddings (no process groups in here).

The cross-worker gather and the false-negative mask are built by the caller
(:mod:`hbt.train.step`) and passed in, so every function here is a pure
function of its tensors and can be checked against a hand loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def same_passage_mask(row_groups: torch.Tensor, all_groups: torch.Tensor, positive_offset: int = 0) -> torch.Tensor:
    """The logits to drop: candidates that share the row's positive passage group, except the positive.

    A candidate of the same group is the positive itself in another language
    (a cross-lingual batch) or the same sentence asked about by another
    question; treating it as a negative would push a query away from its own
    answer.

    Args:
        row_groups: (b,) passage-group ids of this worker's rows.
        all_groups: (B,) passage-group ids of the gathered candidates.
        positive_offset: global index of row 0's positive.

    Returns:
        A (b, B) bool tensor, True where the logit must be masked.
    """
    b = row_groups.shape[0]
    mask = row_groups[:, None] == all_groups[None, :]
    rows = torch.arange(b, device=mask.device)
    mask[rows, rows + positive_offset] = False
    return mask


def info_nce(
    queries: torch.Tensor,
    passages: torch.Tensor,
    temperature: torch.Tensor | float,
    positive_offset: int = 0,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE with in-batch negatives.

    Query ``i`` is positive with passage ``positive_offset + i``; every other
    passage in ``passages`` is a negative unless ``mask`` drops it. With
    data-parallel training, ``passages`` is the gathered global batch and
    ``positive_offset`` the first global index of this worker's slice.

    Args:
        queries: (b, d) query embeddings.
        passages: (B, d) passage embeddings, B >= positive_offset + b.
        temperature: softmax temperature (a float or a scalar tensor).
        positive_offset: index of the first local query's positive passage.
        mask: optional (b, B) bool, True for logits left out of the softmax
            (:func:`same_passage_mask`); it must not mask a positive.

    Returns:
        (mean loss over the b queries, fraction of queries whose top-scored
        passage is the positive, detached).
    """
    b = queries.shape[0]
    if passages.shape[0] < positive_offset + b:
        raise ValueError(f"{passages.shape[0]} passages cannot hold positives {positive_offset}..{positive_offset + b - 1}")
    logits = queries @ passages.T / temperature
    labels = torch.arange(b, device=queries.device) + positive_offset
    if mask is not None:
        if mask.shape != logits.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, the logits {tuple(logits.shape)}")
        if mask[torch.arange(b, device=mask.device), labels].any():
            raise ValueError("mask drops a positive")
        logits = logits.masked_fill(mask, float("-inf"))
    loss = F.cross_entropy(logits, labels)
    acc = (logits.detach().argmax(-1) == labels).float().mean()
    return loss, acc


def symmetric_info_nce(
    queries: torch.Tensor,
    passages: torch.Tensor,
    all_queries: torch.Tensor,
    temperature: torch.Tensor | float,
    positive_offset: int = 0,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query→passage plus passage→query InfoNCE (used with ``train.gather_queries``).

    Args:
        queries: (b, d) local queries; passages: (B, d) gathered passages.
        all_queries: (B, d) gathered queries.
        temperature, positive_offset: as in :func:`info_nce`.
        mask: (b, B) as in :func:`info_nce`. Rows and candidates carry one
            group id per pair, so the same mask serves the passage→query side:
            a query of the local passage's own group is not its negative either.
    """
    b = queries.shape[0]
    local_passages = passages[positive_offset : positive_offset + b]
    l1, acc = info_nce(queries, passages, temperature, positive_offset, mask)
    l2, _ = info_nce(local_passages, all_queries, temperature, positive_offset, mask)
    return (l1 + l2) / 2, acc
