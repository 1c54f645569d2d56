"""The contrastive losses against hand loops, with and without the false-negative mask."""

from __future__ import annotations

import math

import pytest
import torch

from hbt.loss import info_nce, same_passage_mask, symmetric_info_nce


def _data(seed: int, b: int = 4, world: int = 3, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(b * world, d, generator=g, dtype=torch.float64), dim=-1)
    return q.requires_grad_(), p.requires_grad_()


def _hand_info_nce(q, p, t, offset, mask):
    """Per row: -log softmax of the positive over the candidates the mask keeps (a plain loop)."""
    total = 0.0
    for i in range(q.shape[0]):
        logits = [q[i] @ p[j] / t for j in range(p.shape[0]) if mask is None or not mask[i, j]]
        pos = q[i] @ p[offset + i] / t
        total = total - (pos - torch.logsumexp(torch.stack(logits), 0))
    return total / q.shape[0]


def test_mask_marks_same_group_candidates_but_never_the_positive():
    rows = torch.tensor([7, 8, 7])
    all_groups = torch.tensor([1, 7, 9, 7, 8, 7])  # this worker's rows sit at 3..5
    m = same_passage_mask(rows, all_groups, positive_offset=3)
    assert m.tolist() == [
        [False, True, False, False, False, True],
        [False, False, False, False, False, False],
        [False, True, False, True, False, False],
    ]


@pytest.mark.parametrize("offset", [0, 4, 8])
def test_masked_info_nce_and_its_gradient_equal_a_hand_loop(offset):
    q, p = _data(offset)
    groups = torch.tensor([0, 1, 0, 2, 1, 3, 0, 4, 5, 2, 6, 1])  # collisions inside and across "workers"
    mask = same_passage_mask(groups[offset : offset + 4], groups, offset)
    assert mask.sum() > 0
    loss, _ = info_nce(q, p, 0.2, offset, mask)
    ref = _hand_info_nce(q, p, 0.2, offset, mask)
    assert abs(float(loss) - float(ref)) < 1e-9
    g = torch.autograd.grad(loss, (q, p))
    g_ref = torch.autograd.grad(ref, (q, p))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # Not vacuous: masking changes the loss.
    assert abs(float(info_nce(q, p, 0.2, offset)[0]) - float(loss)) > 1e-3


def test_unmasked_info_nce_equals_the_hand_loop():
    q, p = _data(1)
    loss, acc = info_nce(q, p, 0.1, 4)
    assert abs(float(loss) - float(_hand_info_nce(q, p, 0.1, 4, None))) < 1e-9
    expected = sum(int(torch.argmax(q[i] @ p.T) == 4 + i) for i in range(4)) / 4
    assert math.isclose(float(acc), expected)


def test_symmetric_info_nce_is_the_mean_of_both_directions():
    q, p = _data(2)
    all_q = torch.nn.functional.normalize(torch.randn(12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(9)), dim=-1)
    all_q[4:8] = q.detach()
    groups = torch.tensor([0, 1, 0, 2, 1, 3, 0, 4, 5, 2, 6, 1])
    mask = same_passage_mask(groups[4:8], groups, 4)
    loss, _ = symmetric_info_nce(q, p, all_q, 0.05, 4, mask)
    q2p = _hand_info_nce(q, p, 0.05, 4, mask)
    p2q = _hand_info_nce(p[4:8], all_q, 0.05, 4, mask)
    assert abs(float(loss) - float((q2p + p2q) / 2)) < 1e-9


def test_a_mask_that_drops_a_positive_is_refused():
    q, p = _data(3)
    mask = torch.zeros(4, 12, dtype=torch.bool)
    mask[1, 5] = True
    with pytest.raises(ValueError, match="drops a positive"):
        info_nce(q, p, 0.05, 4, mask)
