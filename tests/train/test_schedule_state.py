"""The learning-rate schedule against hand-computed values, and TrainState's round trip."""

from __future__ import annotations

import math

import pytest

from hbt.config import load_config
from hbt.train.loop import lr_lambda
from hbt.train.state import TrainState


@pytest.mark.parametrize(
    "kind, expected",
    [
        # warmup 4 of 20 steps: (s+1)/4, then decay over the remaining 16
        ("linear", [0.25, 0.5, 0.75, 1.0, 1.0, 1 - 1 / 16, 1 - 2 / 16, 0.5, 0.0]),
        ("cosine", [0.25, 0.5, 0.75, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 16)),
                    0.5 * (1 + math.cos(2 * math.pi / 16)), 0.5, 0.0]),
        ("constant", [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_schedule_by_hand(kind, expected):
    cfg = load_config(None, ["train.max_steps=20", "train.warmup_steps=4", f"train.schedule={kind}"])
    f = lr_lambda(cfg)
    steps = [0, 1, 2, 3, 4, 5, 6, 12, 20]
    assert [f(s) for s in steps] == pytest.approx(expected)
    assert f(25) == pytest.approx(expected[-1])  # past the end it stays at the final value


def test_no_warmup_starts_at_full_rate():
    f = lr_lambda(load_config(None, ["train.max_steps=10", "train.warmup_steps=0"]))
    assert f(0) == 1.0 and f(5) == pytest.approx(0.5)


def test_train_state_round_trip(tmp_path):
    assert TrainState.load(tmp_path) == TrainState()  # absent: a fresh start
    s = TrainState(step=17, epoch=2, batch_in_epoch=3, samples=544)
    s.save(tmp_path)
    assert TrainState.load(tmp_path) == s
