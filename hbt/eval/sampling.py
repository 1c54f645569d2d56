"""Seeded, stratified samples of evaluation questions (``eval.max_questions``).

Taking the first N question ids in sorted order would keep whole articles and
drop others (SQuAD ids cluster by article): 4 of the 10 held-out XQuAD-R
articles contributed no question that way. Here every stratum (article for
XQuAD-R, context for MLQA-R) gets a share proportional to its size, rounded
by largest remainder, so each is within one question of its exact share.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Sequence

import numpy as np


def proportional_quotas(sizes: dict[Hashable, int], n: int, rng: np.random.Generator) -> dict[Hashable, int]:
    """Largest-remainder allocation of ``n`` over strata in proportion to ``sizes`` (ties drawn with ``rng``)."""
    total = sum(sizes.values())
    keys = sorted(sizes, key=str)
    exact = {k: n * sizes[k] / total for k in keys}
    quota = {k: int(np.floor(exact[k])) for k in keys}
    left = n - sum(quota.values())
    tiebreak = rng.random(len(keys))
    order = sorted(range(len(keys)), key=lambda i: (-(exact[keys[i]] - quota[keys[i]]), tiebreak[i]))
    for i in order[:left]:
        quota[keys[i]] += 1
    return quota


def stratified_sample(items: Sequence[str], strata: Sequence[Hashable], n: int, seed: int) -> list[str]:
    """``n`` items drawn without replacement, each stratum in proportion to its size.

    Args:
        items: the ids to sample (e.g. question ids).
        strata: each item's stratum (article, context).
        n: sample size; ``n >= len(items)`` returns every item.
        seed: the same seed gives the same sample.

    Returns:
        The sampled ids, sorted.
    """
    if len(items) != len(strata):
        raise ValueError(f"{len(items)} items but {len(strata)} strata")
    if n >= len(items):
        return sorted(items)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A3F]))
    members: dict[Hashable, list[str]] = defaultdict(list)
    for item, s in zip(items, strata):
        members[s].append(item)
    quota = proportional_quotas({s: len(v) for s, v in members.items()}, n, rng)
    out: list[str] = []
    for s in sorted(members, key=str):
        pool = sorted(members[s])
        out.extend(pool[i] for i in rng.choice(len(pool), size=quota[s], replace=False))
    return sorted(out)
