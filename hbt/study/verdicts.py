"""Pre-registered verdicts from bootstrap results: non-inferiority with a margin, Holm across the family.

Each domain-shift comparison (HBT against a baseline or the zero-shot model
on one endpoint) gets one of four verdicts, decided by one-sided tests at
level ``alpha / 2`` (the two bounds of a two-sided ``1 - alpha`` interval):

- ``better``: the difference is above 0 (``H0: diff <= 0`` rejected);
- ``non-inferior``: it is above ``-margin`` (``H0: diff <= -margin`` rejected);
- ``inferior``: it is below ``-margin`` (``H0: diff >= -margin`` rejected);
- ``inconclusive``: none of these.

Without correction, these are "the lower bound is above 0 / above -margin,
the upper bound is below -margin". Across the family of domain-shift
comparisons the p-values of each hypothesis are Holm-adjusted, so a family of
18 comparisons does not turn one lucky interval into a verdict. A
non-significant difference is never read as "no harm": only ``non-inferior``
(or ``better``) says HBT does not hurt, and only at the stated margin.
"""

from __future__ import annotations

import math
from typing import Sequence

from hbt.study.bootstrap import BootstrapResult

VERDICTS = ("better", "non-inferior", "inferior", "inconclusive")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as the input)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def noninferiority_verdicts(results: Sequence[BootstrapResult], margin: float, alpha: float = 0.05,
                            correct: bool = True) -> list[dict[str, float | str]]:
    """Verdicts for a family of comparisons (HBT − comparator; higher is better).

    Args:
        results: one bootstrap result per comparison, with replicates.
        margin: the non-inferiority margin (absolute, > 0).
        alpha: the family's error rate; each one-sided test runs at ``alpha / 2``.
        correct: Holm-adjust across ``results`` (False: each on its own).

    Returns:
        Per comparison: ``verdict``, the raw and adjusted one-sided p-values
        (``p_better``, ``p_noninferior``, ``p_inferior`` and ``*_holm``), and
        ``mc_stable``: whether the verdict holds with every p-value moved by 2 Monte
        Carlo standard errors down, and up (False: more replicates or another
        resampling seed may change it).
    """
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    raw = {
        "p_better": [r.p_at_most(0.0) for r in results],
        "p_noninferior": [r.p_at_most(-margin) for r in results],
        "p_inferior": [r.p_at_least(-margin) for r in results],
    }
    adj = {k: (holm(v) if correct else list(v)) for k, v in raw.items()}
    n = [r.n_resamples for r in results]
    # The p-values are counts of replicates. Each is moved by 2 Monte Carlo standard errors,
    # all down and then all up; a verdict that changes at either end was decided by resampling noise.
    ends = []
    for sign in (-1.0, 1.0):
        moved = {k: _mc_bound(v, n, sign) for k, v in raw.items()}
        ends.append(decide({k: (holm(v) if correct else v) for k, v in moved.items()}, alpha / 2))
    out = []
    for i, verdict in enumerate(decide(adj, alpha / 2)):
        entry: dict[str, float | str | bool] = {"verdict": verdict,
                                               "mc_stable": all(e[i] == verdict for e in ends)}
        for k in raw:
            entry[k] = raw[k][i]
            entry[f"{k}_holm"] = adj[k][i]
        out.append(entry)
    return out


def decide(adj: dict[str, list[float]], level: float) -> list[str]:
    """The verdict of each comparison from its adjusted one-sided p-values."""
    out = []
    for i in range(len(adj["p_better"])):
        if adj["p_better"][i] < level:
            out.append("better")
        elif adj["p_noninferior"][i] < level:
            out.append("non-inferior")
        elif adj["p_inferior"][i] < level:
            out.append("inferior")
        else:
            out.append("inconclusive")
    return out


def _mc_bound(p: Sequence[float], n: Sequence[int], sign: float) -> list[float]:
    """Each bootstrap p-value moved by ``sign`` x 2 Monte Carlo standard errors, within [1/n, 1]."""
    out = []
    for pi, ni in zip(p, n):
        q = max(pi, 1.0 / ni)
        out.append(min(1.0, max(1.0 / ni, pi + sign * 2.0 * math.sqrt(q * (1.0 - q) / ni))))
    return out


def superiority_verdict(result: BootstrapResult) -> str:
    """The primary endpoint: ``better`` (interval above 0), ``worse`` (below 0) or ``inconclusive``."""
    if result.low > 0:
        return "better"
    if result.high < 0:
        return "worse"
    return "inconclusive"


def answer(verdicts: Sequence[tuple[str, str, str]], margin: float, hbt: str = "HBT") -> str:
    """The one-sentence answer to "does HBT hurt retrieval under domain shift?", from the verdicts alone.

    Args:
        verdicts: ``(endpoint, comparator, verdict)`` for every domain-shift comparison.
        margin: the non-inferiority margin.
        hbt: the display name of the method.
    """
    n = len(verdicts)
    if n == 0:
        return f"No domain-shift endpoint was evaluated, so this run cannot say whether {hbt} hurts retrieval under domain shift."
    inferior = [(e, c) for e, c, v in verdicts if v == "inferior"]
    ok = [v for _, _, v in verdicts if v in ("better", "non-inferior")]
    better = sum(v == "better" for _, _, v in verdicts)
    m = f"{margin:g}"
    if inferior:
        what = "; ".join(f"{e} vs {c}" for e, c in inferior)
        return (f"Yes: {hbt} hurts retrieval under domain shift by more than the {m} margin on {len(inferior)} of "
                f"{n} comparisons ({what}), Holm-corrected.")
    if len(ok) == n:
        return (f"No: {hbt} is non-inferior (margin {m}, Holm-corrected) on all {n} domain-shift comparisons"
                + (f", and better on {better} of them." if better else "."))
    return (f"Not settled at margin {m}: {hbt} is shown non-inferior on {len(ok)} of {n} domain-shift comparisons "
            f"(better on {better}), inferior on none, and {n - len(ok)} are inconclusive (Holm-corrected).")
