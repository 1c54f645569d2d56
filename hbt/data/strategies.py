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

Schedules (``batching.language_schedule``):
    balanced: the draws are dealt from seeded rounds. Over each round, every
        language (for X-Y, every ordered pair) comes up in proportion to its
        weight, and a hybrid run's monolingual steps are exactly ``alpha`` of each
        block of :data:`KIND_BLOCK` steps. Only the order within a round is random.
        Without it, 40 steps of a 7-language run can draw one language 9 times and
        another twice, and that imbalance differs by seed: it is seed variance the
        study then has to pay for.
    random: every draw independent (the paper's description).

Either way a plan depends only on ``(seed, epoch, step)``: the k-th draw of a round is
found without replaying earlier steps, so resumed and elastic runs get the same plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hbt.config import BATCHING_STRATEGIES, BatchingConfig

# The batching.strategy names (defined once, in hbt.config), in the order reports list them.
STRATEGIES = BATCHING_STRATEGIES
MONO, MIXED_MONO, CROSS, HYBRID, SINGLE = STRATEGIES
# A balanced hybrid run has exactly round(alpha * KIND_BLOCK) monolingual steps in each block
# (carried over between blocks: floor of the running total), placed at seeded positions.
KIND_BLOCK = 20
# With unequal language weights a round holds this many draws per language, so that
# the counts (largest remainders of weight x round) follow the weights to within 1/round.
WEIGHTED_ROUND_PER_ITEM = 10


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
    n, probs = cfg.global_batch_size, language_probs(languages, weights)
    if cfg.language_schedule == "balanced":
        return _plan_balanced(cfg, languages, probs, epoch, step)
    rng = step_rng(cfg.seed, epoch, step)
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


def _mono_steps_before(cfg: BatchingConfig, epoch: int, step: int) -> tuple[bool, int]:
    """Balanced hybrid: whether ``step`` is monolingual, and how many monolingual steps precede it."""
    block, pos = divmod(step, KIND_BLOCK)
    # floor(alpha x steps so far) monolingual steps by the end of each block: the blocks' counts
    # differ by at most one and never drift from alpha.
    before = int(np.floor(block * KIND_BLOCK * cfg.alpha + 1e-9))
    in_block = int(np.floor((block + 1) * KIND_BLOCK * cfg.alpha + 1e-9)) - before
    order = np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch, block, 0xB10C])).permutation(KIND_BLOCK)
    mono_slots = np.zeros(KIND_BLOCK, dtype=bool)
    mono_slots[order[:in_block]] = True
    return bool(mono_slots[pos]), before + int(mono_slots[:pos].sum())


def _round_counts(weights: np.ndarray) -> np.ndarray:
    """How often each item comes up in one round: once each when the weights are equal,
    else the largest-remainder apportionment of a round of WEIGHTED_ROUND_PER_ITEM x items."""
    w = np.asarray(weights, dtype=np.float64)
    live = w > 0
    if np.allclose(w[live], w[live][0]):
        return live.astype(np.int64)
    size = WEIGHTED_ROUND_PER_ITEM * int(live.sum())
    exact = w / w.sum() * size
    counts = np.floor(exact).astype(np.int64)
    rest = size - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:rest]] += 1
    return counts


def dealt(weights: np.ndarray, key: Sequence[int], start: int, n: int) -> np.ndarray:
    """Draws ``start .. start+n-1`` of an endless deal of items in proportion to ``weights``.

    The deal is a sequence of rounds; each round holds every item :func:`_round_counts`
    times in an order seeded by ``key`` and the round's number. Any stretch of the deal is
    therefore balanced to within one round, and a draw is found from its index alone.
    """
    counts = _round_counts(weights)
    items = np.repeat(np.arange(len(counts)), counts)
    size = items.size
    out = np.empty(n, dtype=np.int64)
    first, last = start // size, (start + n - 1) // size
    for r in range(first, last + 1):
        perm = items[np.random.default_rng(np.random.SeedSequence([*key, r])).permutation(size)]
        lo, hi = max(start, r * size), min(start + n, (r + 1) * size)
        out[lo - start:hi - start] = perm[lo - r * size:hi - r * size]
    return out


def _pair_weights(probs: np.ndarray) -> np.ndarray:
    """Weights of the ordered pairs (q, p), q != p, in the random schedule's proportions:
    q by its weight, then p by its weight among the others. Index q * k + p."""
    k = len(probs)
    w = np.zeros(k * k)
    for q in range(k):
        others = probs.copy()
        others[q] = 0.0
        if others.sum() > 0:
            w[q * k:(q + 1) * k] = probs[q] * others / others.sum()
    if w.sum() <= 0:
        raise ValueError("cross-lingual pairs need two languages with positive weight")
    return w


def _plan_balanced(cfg: BatchingConfig, languages: list[str], probs: np.ndarray, epoch: int,
                   step: int) -> StepPlan:
    """The balanced schedule's plan of ``step`` (see the module docstring)."""
    n, k = cfg.global_batch_size, len(languages)
    kind, index = cfg.strategy, step  # index: how many steps of this kind came before
    if kind == SINGLE:
        idx = np.full(n, languages.index(cfg.single_language))
        return StepPlan(SINGLE, idx, idx.copy())
    if kind == HYBRID:
        is_mono, monos = _mono_steps_before(cfg, epoch, step)
        kind, index = (MONO, monos) if is_mono else (CROSS, step - monos)
    key = (cfg.seed, epoch)
    if kind == MONO:
        idx = np.full(n, dealt(probs, (*key, 1), index, 1)[0])
        return StepPlan(MONO, idx, idx.copy())
    if kind == MIXED_MONO:
        idx = dealt(probs, (*key, 2), index * n, n)
        return StepPlan(MIXED_MONO, idx, idx.copy())
    if kind == CROSS:
        pairs = _pair_weights(probs)
        if cfg.cross_pair_mode == "per_batch":
            qp = np.full(n, dealt(pairs, (*key, 3), index, 1)[0])
        else:
            qp = dealt(pairs, (*key, 4), index * n, n)
        return StepPlan(CROSS, qp // k, qp % k)
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
