"""Batch strategies: which languages each pair of a global batch uses.

Every data-parallel worker calls :func:`plan_step` with the same
``(seed, epoch, step)`` and gets the same plan for the whole global batch, then
takes its own slice. So all workers' slices of one step share the batch type
(and, for monolingual batches, the language) without any communication.

Strategies (names from the HBT paper, arXiv 2408.10536):
    mono: X-X-mono, the whole global batch in one language.
    mixed_mono: X-X, each pair same-language, languages mixed in the batch.
    cross: X-Y, each pair's query and passage in different languages.
    hybrid: mono with probability alpha, else cross (the paper's method).
    single: one fixed language (e.g. an en-en baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hbt.config import BATCHING_STRATEGIES, BatchingConfig

# The batching.strategy names (defined once, in hbt.config), in the order reports list them.
STRATEGIES = BATCHING_STRATEGIES
MONO, MIXED_MONO, CROSS, HYBRID, SINGLE = STRATEGIES


@dataclass(frozen=True)
class StepPlan:
    """The plan of one global step.

    Attributes:
        kind: ``mono``, ``cross``, ``mixed_mono`` or ``single``.
        q_lang: per pair of the global batch, the index of the query language.
        p_lang: per pair, the index of the passage language.
    """

    kind: str
    q_lang: np.ndarray
    p_lang: np.ndarray

    def slice(self, rank: int, world_size: int) -> "StepPlan":
        """The part of the plan for one worker's contiguous slice of the global batch."""
        n = len(self.q_lang) // world_size
        sl = slice(rank * n, (rank + 1) * n)
        return StepPlan(self.kind, self.q_lang[sl], self.p_lang[sl])


def step_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """An RNG that depends only on (seed, epoch, step), identical on every worker."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, step, 0x4B7]))


def language_probs(languages: list[str], weights: dict[str, float] | None) -> np.ndarray:
    """Sampling probabilities over ``languages`` (uniform when no weights are given)."""
    if not weights:
        return np.full(len(languages), 1.0 / len(languages))
    w = np.array([float(weights.get(lang, 0.0)) for lang in languages])
    return w / w.sum()


def plan_step(
    cfg: BatchingConfig,
    languages: list[str],
    epoch: int,
    step: int,
    weights: dict[str, float] | None = None,
) -> StepPlan:
    """Draws the plan of one global step.

    Args:
        cfg: the batching config (strategy, alpha, global batch size, seed).
        languages: the training languages; plans index into this list.
        epoch: the data epoch.
        step: the step within the run (global, not per epoch).
        weights: optional language sampling weights.

    Returns:
        The step's :class:`StepPlan` for the whole global batch.
    """
    rng = step_rng(cfg.seed, epoch, step)
    n, probs = cfg.global_batch_size, language_probs(languages, weights)
    kind = cfg.strategy
    if kind == "hybrid":
        kind = MONO if rng.random() < cfg.alpha else CROSS
    if kind == SINGLE:
        idx = np.full(n, languages.index(cfg.single_language))
        return StepPlan(SINGLE, idx, idx.copy())
    if kind == MONO:
        idx = np.full(n, rng.choice(len(languages), p=probs))
        return StepPlan(MONO, idx, idx.copy())
    if kind == MIXED_MONO:
        idx = rng.choice(len(languages), size=n, p=probs)
        return StepPlan(MIXED_MONO, idx, idx.copy())
    if kind == CROSS:
        if cfg.cross_pair_mode == "per_batch":
            q, p = _draw_pair(rng, probs)
            return StepPlan(CROSS, np.full(n, q), np.full(n, p))
        q = rng.choice(len(languages), size=n, p=probs)
        p = np.array([_draw_other(rng, probs, qi) for qi in q])
        return StepPlan(CROSS, q, p)
    raise ValueError(f"unknown strategy {cfg.strategy!r}")


def _draw_other(rng: np.random.Generator, probs: np.ndarray, exclude: int) -> int:
    p = probs.copy()
    p[exclude] = 0.0
    if p.sum() <= 0:
        raise ValueError("cross-lingual pairs need two languages with positive weight")
    return int(rng.choice(len(p), p=p / p.sum()))


def _draw_pair(rng: np.random.Generator, probs: np.ndarray) -> tuple[int, int]:
    q = int(rng.choice(len(probs), p=probs))
    return q, _draw_other(rng, probs, q)
