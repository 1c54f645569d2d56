"""The study's power: what other question and seed counts would settle, and what they would cost.

From a finished study's report (each comparison's estimate and its two variance
components, :mod:`hbt.study.bootstrap`), a design with ``Q'`` questions per
benchmark and ``S'`` seeds per strategy is projected as

    var' = V_q * Q / Q' + s_a^2 / S' + s_b^2 / S'_b

(``V_q``: the question component; ``s^2``: the seeds' variance of each strategy, 0 for the
zero-shot model, which has no training randomness), with Welch-Satterthwaite degrees of
freedom as the bootstrap uses. The one-sided p-values the verdicts need are then read
from Student's t at the **current estimate**, Holm-adjusted within each family, and
decided as :mod:`hbt.study.verdicts` decides. That is a projection: the estimates will
move with more data, and a comparison whose estimate sits on the margin settles at no
affordable size. Time is the study's measured time per training run and per evaluation,
with evaluation time scaled by the question count (an upper bound: the candidate pools,
most of the encoding, do not grow with the queries).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hbt.config import HbtError, read_json_file
from hbt.study.report import display_name
from hbt.study.verdicts import decide, holm

FAMILIES = ("domain_shift", "fine_tuning")
DEFAULT_SEEDS = (3, 5, 10, 20)
MAX_SEEDS = 50


def _t_sf(x: float, df: float | None) -> float:
    """P(T > x) for Student's t with ``df`` degrees of freedom (None: the normal)."""
    from scipy import stats

    return float(stats.norm.sf(x) if df is None or not math.isfinite(df) else stats.t.sf(x, df))


def project(entry: Mapping[str, Any], questions: int, seeds: int) -> dict[str, float | None]:
    """One comparison's projected standard error and degrees of freedom at ``questions`` and ``seeds``.

    Args:
        entry: an endpoint entry of ``report.json`` (``var_questions``, ``seed_var_a/b``,
            ``n_seeds_b``, ``n_clusters``).
        questions: the clusters (questions, or Tatoeba lines) the design would score.
        seeds: seeds per trained strategy.
    """
    vq = float(entry["var_questions"]) * entry["n_clusters"] / questions
    terms = [float(entry["seed_var_a"])]
    if entry["n_seeds_b"] > 1:  # a trained comparator; the zero-shot model has no seed variance
        terms.append(float(entry["seed_var_b"]))
    vs = sum(v / seeds for v in terms)
    df = None
    if vs > 0 and seeds > 1:
        df = (vq + vs) ** 2 / sum((v / seeds) ** 2 / (seeds - 1) for v in terms if v > 0)
    return {"se": math.sqrt(vq + vs), "df": df}


def _verdicts(entries: Sequence[Mapping[str, Any]], sizes: Sequence[int], seeds: int, margin: float,
              alpha: float) -> list[str]:
    """The verdicts a family's comparisons would get at a design, their estimates unchanged."""
    raw: dict[str, list[float]] = {"p_better": [], "p_noninferior": [], "p_inferior": []}
    for e, q in zip(entries, sizes):
        p = project(e, q, seeds)
        d = e["diff"] if e.get("higher_is_better", True) else -e["diff"]
        se = max(p["se"], 1e-12)
        raw["p_better"].append(_t_sf(d / se, p["df"]))
        raw["p_noninferior"].append(_t_sf((d + margin) / se, p["df"]))
        raw["p_inferior"].append(1.0 - _t_sf((d + margin) / se, p["df"]))
    return decide({k: holm(v) for k, v in raw.items()}, alpha / 2)


def _benchmark(key: str) -> str:
    return key.split("/")[0]


def design_plan(report: Mapping[str, Any], timings: Mapping[str, float] | None = None,
                available: Mapping[str, int] | None = None, seeds: Sequence[int] | None = None,
                questions: Sequence[str | int] | None = None) -> dict[str, Any]:
    """Projected verdicts and cost of other designs, and the cheapest one that settles every comparison.

    Args:
        report: a study report (``report.json``) whose endpoints carry the variance components.
        timings: the study's ``timings.json`` (``train/<strategy>-s<seed>``, ``eval/...``).
        available: questions (clusters) each benchmark has in all, e.g. ``{"mlqa_r": 1148}``.
        seeds: the seed counts to project; default 3, 5, 10, 20 and the study's own.
        questions: ``"current"``, ``"all"`` or a number of questions per benchmark (capped at what
            each has); default ``current`` and, where known, ``all``.

    Returns:
        ``designs`` (one row per seeds x questions: verdict counts per family, hours) and
        ``settles_all`` (the cheapest design whose projection leaves no comparison inconclusive,
        or None when no design up to 50 seeds does).

    Raises:
        ValueError: the report predates the variance components, or a bad seeds/questions value.
    """
    ep = report["endpoints"]
    entries = {f: list(ep.get(f) or []) for f in FAMILIES}
    every = [e for f in FAMILIES for e in entries[f]]
    if not every:
        raise ValueError("the report has no domain-shift comparisons to plan for")
    if any("var_questions" not in e for e in every):
        raise ValueError("the report has no variance components (written by an older hbt): rebuild it with "
                         "`hbt study --report-from STUDY_DIR` first")
    available = dict(available or {})
    n_seeds = max(len(v) for v in report["seeds"].values())
    seed_list = sorted({*(seeds or DEFAULT_SEEDS), *([] if seeds else [n_seeds])})
    if any(int(s) != s or s < 1 for s in seed_list):
        raise ValueError(f"seeds must be positive integers, got {seed_list}")
    q_list = list(questions or (["current", "all"] if available else ["current"]))
    margin, alpha = float(ep["margin"]), 1.0 - float(report.get("bootstrap", {}).get("confidence", 0.95))
    strategies = len(report["strategies"])
    train_s, eval_s = _unit_seconds(timings or {})

    def sizes(e: Mapping[str, Any], q: str | int) -> int:
        have = available.get(_benchmark(e["key"]), e["n_clusters"])
        if q == "current":
            return int(e["n_clusters"])
        if q == "all":
            return int(max(have, e["n_clusters"]))
        return int(min(int(q), max(have, e["n_clusters"])))

    def evaluate(q: str | int, s: int) -> dict[str, Any]:
        row: dict[str, Any] = {"questions": q, "seeds": s}
        for f in FAMILIES:
            fam = entries[f]
            v = _verdicts(fam, [sizes(e, q) for e in fam], s, margin, alpha) if fam else []
            row[f] = {k: v.count(k) for k in ("better", "non-inferior", "inferior", "inconclusive")}
            row[f"{f}_verdicts"] = v
        scale = np.mean([sizes(e, q) / e["n_clusters"] for e in every])
        if train_s is not None and eval_s is not None:
            row["hours"] = (strategies * s * (train_s + eval_s * scale) + eval_s * scale) / 3600.0
        else:
            row["hours"] = None
        return row

    for q in q_list:
        if q not in ("current", "all") and (not str(q).isdigit() or int(q) < 2):
            raise ValueError(f"questions must be current, all or a count of at least 2, got {q!r}")
    designs = [evaluate(q, s) for q in q_list for s in seed_list]
    settles = None
    for q in q_list:
        for s in range(2, MAX_SEEDS + 1):
            row = evaluate(q, s)
            if all(row[f]["inconclusive"] == 0 for f in FAMILIES):
                if settles is None or (row["hours"] or 0) < (settles["hours"] or 0):
                    settles = row
                break
    open_at_most = []
    if settles is None:
        # What stays open at the largest design tried, and why: more seeds do nothing for a
        # comparison whose seed share is 0; more questions stop at what the benchmark holds.
        largest = evaluate(q_list[-1], MAX_SEEDS)
        for f in FAMILIES:
            for e, v in zip(entries[f], largest[f"{f}_verdicts"]):
                if v == "inconclusive":
                    who = "zero-shot" if e["comparator"] == "zero_shot" else display_name(e["comparator"])
                    open_at_most.append(f"{e['key']} vs {who} ({e['diff']:+.4f})")
    return {"margin": margin, "seeds_now": n_seeds, "designs": designs, "settles_all": settles,
            "open_at_most": open_at_most, "largest": {"questions": q_list[-1], "seeds": MAX_SEEDS},
            "open_now": sum(e["verdict"] == "inconclusive" for e in every),
            "comparisons": [f"{e['key']} vs {e['comparator']}" for f in FAMILIES for e in entries[f]]}


def _unit_seconds(timings: Mapping[str, float]) -> tuple[float | None, float | None]:
    """Mean seconds of one training run and of one evaluation in the study's timings."""
    train = [v for k, v in timings.items() if k.startswith("train/")]
    evals = [v for k, v in timings.items() if k.startswith("eval/")]
    return (float(np.mean(train)) if train else None, float(np.mean(evals)) if evals else None)


def plan_markdown(plan: Mapping[str, Any]) -> str:
    """The plan as a markdown section body: one row per design, then the design that settles all."""
    lines = [f"Projected from this study's estimates and variance components (margin {plan['margin']:g}; "
             "Holm within each family; the estimates are held fixed, so this is a projection, not a promise). "
             f"{plan['open_now']} of {len(plan['comparisons'])} comparisons are inconclusive now.", "",
             "| questions | seeds per strategy | trained baselines: settled (inconclusive) | untrained model: settled "
             "(inconclusive) | hours at this study's pace |", "|---|---|---|---|---|"]

    def cell(c: Mapping[str, int]) -> str:
        return f"{sum(c.values()) - c['inconclusive']} ({c['inconclusive']})"

    for row in plan["designs"]:
        hours = "—" if row["hours"] is None else f"{row['hours']:.1f}"
        lines.append(f"| {row['questions']} | {row['seeds']} | {cell(row['domain_shift'])} | "
                     f"{cell(row['fine_tuning'])} | {hours} |")
    best = plan["settles_all"]
    lines.append("")
    if best is None:
        largest = plan.get("largest", {"questions": "current", "seeds": MAX_SEEDS})
        still = "; ".join(plan.get("open_at_most") or []) or "—"
        lines.append(f"No design up to {largest['seeds']} seeds with {largest['questions']} questions settles every "
                     f"comparison. Still open there: {still}. Their estimates lie too close to the margin (or to 0) "
                     "for the questions the benchmarks hold, and seeds add little where their share of the variance "
                     "is small.")
    else:
        hours = "" if best["hours"] is None else f", about {best['hours']:.1f} hours at this study's pace"
        lines.append(f"Settling every comparison takes about {best['seeds']} seeds per strategy with "
                     f"{best['questions']} questions{hours}.")
    return "\n".join(lines)


def available_questions(info: Mapping[str, Any]) -> dict[str, int]:
    """Per benchmark, the bootstrap clusters it holds in all: QA questions before any sample, Tatoeba lines."""
    out = {}
    for name, bi in (info or {}).items():
        if isinstance(bi, dict) and bi.get("questions_available"):
            out[name] = int(bi["questions_available"])
        elif isinstance(bi, dict) and bi.get("pairs"):
            out[name] = int(sum(bi["pairs"]))
    return out


def plan_study_dir(study_dir: str | Path, seeds: Sequence[int] | None = None,
                   questions: Sequence[str | int] | None = None) -> dict[str, Any]:
    """:func:`design_plan` of a finished study directory (its report, timings and zero-shot sizes).

    Raises:
        HbtError: not a finished study, a damaged file, or a report without variance components.
    """
    study_dir = Path(study_dir)
    if not (study_dir / "report.json").is_file():
        raise HbtError(f"--plan {study_dir}: not a finished study directory (no report.json)")
    report = read_json_file(study_dir / "report.json", "the study's report")
    timings_f, info_f = study_dir / "timings.json", study_dir / "zero_shot" / "info.json"
    timings = read_json_file(timings_f, "the study's timings") if timings_f.exists() else None
    info = read_json_file(info_f, "the zero-shot evaluation's info") if info_f.exists() else {}
    try:
        return design_plan(report, timings, available_questions(info), seeds, questions)
    except (KeyError, TypeError, ValueError) as e:
        raise HbtError(f"{study_dir / 'report.json'}: {e}") from None
