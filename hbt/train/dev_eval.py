"""Dev evaluation during training: the live model scored on the dev split every N steps.

Rank 0 encodes XQuAD-R's dev articles (``data.dev_articles``, never trained on
and disjoint from the held-out test articles) with the model in memory, scores
them exactly as :func:`hbt.eval.runner.evaluate` scores a saved model, and the
loop reports the ``dev/*`` metrics and the search ``objective`` to Ray Train,
so Ray Tune's ASHA can stop weak trials on the metric the search optimises.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from hbt.config import HBTConfig
from hbt.objective import OBJECTIVE, dev_metrics, objective_value, objective_weights


class DevEvaluator:
    """Holds the dev benchmark (loaded once) and scores an encoder on it.

    Args:
        cfg: the config; ``data.dev_articles`` must be non-empty.
    """

    def __init__(self, cfg: HBTConfig) -> None:
        from hbt.eval.runner import load_benchmarks

        self.cfg = cfg
        self.benches = load_benchmarks(cfg, "dev")
        self.weights = objective_weights(cfg)

    def __call__(self, encoder: Any, tokenizer: Any, device: Any,
                 train_metrics: dict[str, float] | None = None) -> dict[str, float]:
        """Scores ``encoder`` and restores its train/eval mode.

        Args:
            encoder: the live :class:`~hbt.model.encoder.BiEncoder`.
            tokenizer: its tokenizer.
            device: where it lives.
            train_metrics: the latest ``train/*`` metrics, for objectives that weigh them.

        Returns:
            ``dev/<setting>/<metric>`` metrics plus ``objective`` (the weighted
            sum of ``tune.objective_weights`` or ``tune.objective``) when every
            weighted key was reported.
        """
        from hbt.eval.runner import evaluate_in_memory

        was_training = encoder.training
        encoder.eval()
        try:
            metrics = dev_metrics(evaluate_in_memory(self.cfg, self.benches, encoder, tokenizer, device))
        finally:
            encoder.train(was_training)
        pool = {**(train_metrics or {}), **metrics}
        if all(k in pool for k in self.weights):
            metrics[OBJECTIVE] = objective_value(pool, self.weights)
        return metrics


def gathered_for_eval(model: torch.nn.Module, zero_stage: int):
    """A context in which rank 0 sees full weights: ZeRO-3 shards are gathered on every rank.

    Every rank must enter it (the gather is a collective); other stages hold
    full weights already.
    """
    if zero_stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
