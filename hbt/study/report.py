"""The study report: does HBT hurt retrieval under domain shift? Verdicts from plain evaluation results.

Input is ``scores[strategy][seed]``, each an :class:`EvalResultLike` (metrics,
per-query arrays and their row labels), plus the zero-shot result. Output is
``report.json``, ``report.md`` and PNG plots in one directory. The module is
pure: no Ray, no MLflow (the caller logs the files it returns).

Every comparison is HBT − comparator (each baseline and the zero-shot model)
by the paired cluster bootstrap of :mod:`hbt.study.bootstrap` over questions
and seeds; the pre-registered endpoints get verdicts from
:mod:`hbt.study.verdicts`, and the report's one-sentence answer comes from
those verdicts alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hbt.config import STUDY_STRATEGIES, write_text_atomic
from hbt.eval.metrics import per_query_key
from hbt.study.bootstrap import BootstrapResult, paired_bootstrap
from hbt.study.verdicts import answer, noninferiority_verdicts, superiority_verdict

DISPLAY_NAMES = {name: display for name, (display, _) in STUDY_STRATEGIES.items()}
ZERO_SHOT = "zero_shot"


class EvalResultLike(Protocol):
    """What the report reads from one evaluation.

    Attributes:
        metrics: metric key (``xquad_r/multilingual/mAP``) → value.
        per_query: per-query key (``xquad_r/multilingual/AP``) → scores, one per
            query, in the same query order for every result.
        matrices: name → ``{"languages": [...], "values": [[...]]}``, e.g. the
            X→Y mAP matrix (rows: query language X, columns: candidate language Y).
    """

    metrics: Mapping[str, float]
    per_query: Mapping[str, np.ndarray]
    matrices: Mapping[str, Mapping[str, Any]]


def is_bias_metric(metric_key: str) -> bool:
    """True for language-bias metrics (``<benchmark>/bias/...``)."""
    return "/bias/" in f"/{metric_key}/"


def default_lower_is_better(metric_key: str) -> bool:
    """Bias metrics (e.g. the share of top-1 hits in the query's own language)
    are better when lower: a less biased retriever ranks answers in any
    language by relevance. Everything else is higher-is-better."""
    return is_bias_metric(metric_key)


def display_name(strategy: str) -> str:
    """``x_x_mono`` → ``X-X-mono``; unknown names are returned unchanged."""
    return DISPLAY_NAMES.get(strategy, strategy)


def _split_key(key: str) -> tuple[str, str, str]:
    parts = key.split("/")
    if len(parts) == 1:
        return "", "", key
    return parts[0], "/".join(parts[1:-1]), parts[-1]


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    # Sample std (n-1): the seeds are a sample of training randomness.
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def _mean_matrix(results: Iterable[EvalResultLike], name: str) -> dict[str, Any] | None:
    mats = [r.matrices[name] for r in results if name in r.matrices]
    if not mats:
        return None
    langs = list(mats[0]["languages"])
    for m in mats[1:]:
        if list(m["languages"]) != langs:
            raise ValueError(f"matrix {name!r}: languages differ across seeds")
    stack = np.asarray([np.asarray(m["values"], dtype=np.float64) for m in mats])
    values = stack.mean(axis=0)

    def strict(a: np.ndarray) -> list[list[float | None]]:  # None for missing pairs: report.json stays strict JSON
        return [[x if np.isfinite(x) else None for x in row] for row in a.tolist()]

    out: dict[str, Any] = {"languages": langs, "values": strict(values)}
    if name.endswith("_by_language") and len(mats) > 1:  # drawn as bars with error bars
        out["std"] = strict(stack.std(axis=0, ddof=1))
    return out


def _metric_value(result: EvalResultLike, key: str) -> float | None:
    """The metric as a float, None when absent or not finite (JSON has no NaN)."""
    if key not in result.metrics:
        return None
    v = float(result.metrics[key])
    return v if np.isfinite(v) else None


def _units(runs: Mapping[Any, EvalResultLike], key: str) -> dict[str, np.ndarray] | None:
    """The row labels of a per-query key (identical across seeds, or an error)."""
    found = [getattr(r, "units", {}).get(key) for r in runs.values()]
    if any(u is None for u in found):
        return None
    first = found[0]
    for u in found[1:]:
        if not np.array_equal(u["question"], first["question"]):
            raise ValueError(f"{key}: the seeds' evaluations list different queries")
    return first


def _stacked(runs: Mapping[Any, EvalResultLike], key: str, name: str) -> np.ndarray | None:
    """(n_seeds, n_queries) per-query scores of one strategy, or None when any seed lacks them."""
    arrays = [np.asarray(r.per_query[key], dtype=np.float64) for r in runs.values() if key in r.per_query]
    if not arrays:
        return None
    if len(arrays) != len(runs):
        raise ValueError(f"{name}: per-query {key!r} exists for only {len(arrays)} of {len(runs)} seeds")
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"{name}: per-query {key!r} has different lengths across seeds")
    return np.stack(arrays)


def _compare(key: str, runs: Mapping[str, Mapping[Any, EvalResultLike]], hbt: str, other: str,
             boot: dict[str, Any], unit: str) -> BootstrapResult | None:
    """HBT − ``other`` on ``key`` by the paired cluster bootstrap (None without per-query scores)."""
    pq = per_query_key(key)
    a, b = _stacked(runs[hbt], pq, hbt), _stacked(runs[other], pq, other)
    units = _units(runs[hbt], pq)
    if a is None or b is None or units is None:
        return None
    other_units = _units(runs[other], pq)
    if other_units is None or not np.array_equal(other_units["question"], units["question"]):
        raise ValueError(f"{pq}: {hbt} and {other} were evaluated on different queries")
    # Articles are the unit only in domain (XQuAD-R): elsewhere a question is its own unit.
    clusters = units["article"] if unit == "article" and key.startswith("xquad_r/") else units["question"]
    try:
        return paired_bootstrap(a, b, clusters=clusters, strata=units.get("stratum"), **boot)
    except ValueError as e:
        raise ValueError(f"{pq} ({hbt} vs {other}): {e}") from None


def _metric_row(key: str, runs: Mapping[str, Mapping[Any, EvalResultLike]], hbt: str, comparators: Sequence[str],
                higher_is_better: bool, boot: dict[str, Any], unit: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One table row (every strategy's score, HBT − each comparator with its interval) and the raw results."""
    benchmark, setting, metric = _split_key(key)
    row: dict[str, Any] = {"key": key, "benchmark": benchmark, "setting": setting, "metric": metric,
                           "higher_is_better": higher_is_better, "zero_shot": None, "scores": {}, "comparisons": {}}
    for name, seeds in runs.items():
        per_seed = {str(s): v for s, r in seeds.items() if (v := _metric_value(r, key)) is not None}
        if name == ZERO_SHOT:
            row["zero_shot"] = next(iter(per_seed.values()), None)
            continue
        if per_seed:
            mean, std = _mean_std(list(per_seed.values()))
            row["scores"][name] = {"mean": mean, "std": std, "n_seeds": len(per_seed), "per_seed": per_seed}
        else:
            row["scores"][name] = None
    raw: dict[str, Any] = {}
    for other in comparators:
        res = _compare(key, runs, hbt, other, boot, unit)
        raw[other] = res
        if res is None:
            h = row["scores"].get(hbt)
            o = row["zero_shot"] if other == ZERO_SHOT else (row["scores"].get(other) or {}).get("mean")
            diff = h["mean"] - o if h is not None and o is not None else None
            row["comparisons"][other] = None if diff is None else {"diff": diff, "low": None, "high": None,
                                                                   "p_value": None}
        else:
            row["comparisons"][other] = res.to_dict()
    return row, raw


def _bias_entry(
    key: str, scores: Mapping[str, Mapping[Any, EvalResultLike]], zero_shot: EvalResultLike | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for name, runs in scores.items():
        vals = [v for r in runs.values() if (v := _metric_value(r, key)) is not None]
        if vals:
            mean, std = _mean_std(vals)
            entry[name] = {"mean": mean, "std": std}
    if zero_shot is not None and (v := _metric_value(zero_shot, key)) is not None:
        entry[ZERO_SHOT] = {"mean": v, "std": None}
    return entry


def _matrix_entry(
    name: str, scores: Mapping[str, Mapping[Any, EvalResultLike]], zero_shot: EvalResultLike | None
) -> dict[str, Any]:
    per: dict[str, Any] = {}
    for strategy, runs in scores.items():
        m = _mean_matrix(runs.values(), name)
        if m is not None:
            per[strategy] = m
    if zero_shot is not None and name in zero_shot.matrices:
        per[ZERO_SHOT] = _mean_matrix([zero_shot], name)
    return per


def compute_report(
    scores: Mapping[str, Mapping[Any, EvalResultLike]],
    zero_shot: EvalResultLike | None,
    metrics: Sequence[str],
    hbt_name: str = "hbt",
    baselines: Sequence[str] = ("x_x_mono", "x_y"),
    reductions: Sequence[str] = (),
    n_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    lower_is_better: Callable[[str], bool] = default_lower_is_better,
    unit: str = "question",
    margin: float = 0.01,
    primary: str | None = None,
    domain_shift: Sequence[str] = (),
    reduced_pools: Sequence[str] = (),
) -> dict[str, Any]:
    """Computes the report as a JSON-ready dict (no files).

    Args:
        scores: ``scores[strategy][seed]`` → evaluation result (with ``units``, the row labels).
        zero_shot: the untrained encoder's result, or None.
        metrics: headline metric keys shown in the table, e.g. ``xquad_r/multilingual/mAP``.
        hbt_name: the strategy under test.
        baselines: strategies HBT is compared against (the zero-shot model is compared too).
        reductions: what differs from the full protocol.
        n_samples, confidence, seed: the paired cluster bootstrap's settings.
        lower_is_better: metric key → True when lower values are better.
        unit: ``question`` or ``article`` (in-domain keys only): the bootstrap's cluster.
        margin: the non-inferiority margin of the domain-shift endpoints.
        primary: the in-domain endpoint, tested for superiority.
        domain_shift: the domain-shift endpoints, tested for non-inferiority with Holm across the family.
        reduced_pools: benchmarks whose candidate pool is cut to the sampled questions' paragraphs:
            their mAP is not the benchmark's published one, and every table says so beside the name.

    Returns:
        The report: ``answer`` (one sentence from the verdicts), ``endpoints``, ``rows``,
        ``bias``, ``matrices`` and the run facts.

    Raises:
        ValueError: a named strategy or endpoint is missing, or per-query arrays cannot be paired.
    """
    for name in [hbt_name, *baselines]:
        if name not in scores:
            raise ValueError(f"strategy {name!r} is not in scores (have {sorted(scores)})")
    for name, runs in scores.items():
        if not runs:
            raise ValueError(f"strategy {name!r} has no seeds")
    runs: dict[str, Mapping[Any, EvalResultLike]] = dict(scores)
    comparators = list(baselines)
    if zero_shot is not None:
        runs[ZERO_SHOT] = {0: zero_shot}
        comparators.append(ZERO_SHOT)
    boot = {"n_resamples": n_samples, "confidence": confidence, "seed": seed}
    keys = list(dict.fromkeys([*metrics, *([primary] if primary else []), *domain_shift]))
    rows, raw = {}, {}
    from hbt.progress import Progress

    progress = Progress("bootstrap", len(keys), "metrics", every_s=10.0)
    for key in keys:
        rows[key], raw[key] = _metric_row(key, runs, hbt_name, comparators, not lower_is_better(key), boot, unit)
        progress.update(1)
    progress.close()

    endpoints: dict[str, Any] = {"margin": margin, "primary": None, "domain_shift": [], "fine_tuning": [],
                                 "holm_family": 0}
    if primary:
        comps = {}
        for other in comparators:
            res = raw[primary][other]
            comps[other] = None if res is None else {
                **res.to_dict(), "verdict": superiority_verdict(res.oriented(not lower_is_better(primary)))}
        endpoints["primary"] = {"key": primary, "test": "superiority", "comparisons": comps}
    # Two families, each Holm-corrected on its own. The question ("does HBT's batching hurt
    # under domain shift?") is HBT against the trained baselines; HBT against the untrained
    # model asks another one ("does fine-tuning hurt?") and must not dilute or decide it.
    families = {"domain_shift": list(baselines), "fine_tuning": [ZERO_SHOT] if zero_shot is not None else []}
    for name, against in families.items():
        family = [(key, other, raw[key][other]) for key in domain_shift for other in against]
        missing = [f"{k} vs {o}" for k, o, r in family if r is None]
        if missing:
            raise ValueError(f"domain-shift endpoints without per-query scores: {missing}")
        # Verdicts read "better" as up: a lower-is-better endpoint (language bias) is tested on its negation.
        verdicts = noninferiority_verdicts([r.oriented(not lower_is_better(k)) for k, _, r in family], margin,
                                           1.0 - confidence)
        endpoints[name] = [{"key": key, "comparator": other, "higher_is_better": not lower_is_better(key),
                            **res.to_dict(), **v} for (key, other, res), v in zip(family, verdicts)]
        endpoints[f"holm_{name}"] = len(family)
    endpoints["holm_family"] = endpoints["holm_domain_shift"]
    answer_text = answer([(e["key"], display_name(e["comparator"]), e["verdict"]) for e in endpoints["domain_shift"]],
                         margin, display_name(hbt_name))

    all_results = [r for seeds in runs.values() for r in seeds.values()]
    bias_keys = sorted({k for r in all_results for k in r.metrics if is_bias_metric(k)})
    bias = {key: _bias_entry(key, scores, zero_shot) for key in bias_keys}
    matrix_names = sorted({n for r in all_results for n in r.matrices})
    matrices = {name: _matrix_entry(name, scores, zero_shot) for name in matrix_names}
    return {
        "question": f"Does {display_name(hbt_name)} hurt retrieval under domain shift?",
        "answer": answer_text,
        "hbt": hbt_name,
        "baselines": list(baselines),
        "comparators": comparators,
        "strategies": list(scores),
        "seeds": {name: [str(s) for s in seeds] for name, seeds in scores.items()},
        "reductions": list(reductions),
        "reduced_pools": list(reduced_pools),
        "bootstrap": {"n_samples": n_samples, "confidence": confidence, "seed": seed, "unit": unit,
                      "statistic": "mean over strata (languages or ordered pairs) of stratum means; plain mean "
                                   "where a metric pools all queries",
                      "seeds": "a seed component added to each replicate: sqrt(s_a^2/n_a + s_b^2/n_b) x Student t "
                               "with Welch-Satterthwaite degrees of freedom (s^2: the seeds' variance less the "
                               "question x seed interaction)"},
        "confidence_pct": round(confidence * 100),
        "endpoints": endpoints,
        "rows": [rows[k] for k in metrics],
        "bias": bias,
        "matrices": matrices,
    }


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def _fmt_score(s: dict[str, Any] | None) -> str:
    if s is None:
        return "—"
    if s.get("std") is None:
        return _fmt(s["mean"])
    return f"{s['mean']:.4f} ± {s['std']:.4f}"


def fmt_comp(c: dict[str, Any] | None) -> str:
    if c is None:
        return "—"
    if c.get("low") is None:
        return f"{_fmt(c['diff'], True)} (no CI)"
    return f"{_fmt(c['diff'], True)} [{_fmt(c['low'], True)}, {_fmt(c['high'], True)}]"


REDUCED_POOL_MARK = " (reduced pool‡)"
REDUCED_POOL_NOTE = ("‡ candidate pool cut to the paragraphs of the sampled questions: not the benchmark's published "
                     "mAP, which ranks every sentence of the benchmark.")


def _benchmark_label(report: dict[str, Any], key_or_benchmark: str) -> str:
    """A benchmark's (or metric key's) name, marked where its candidate pool is reduced."""
    benchmark = key_or_benchmark.split("/")[0]
    return key_or_benchmark + (REDUCED_POOL_MARK if benchmark in report.get("reduced_pools", ()) else "")


def strategy_name(comp: str) -> str:
    return "zero-shot" if comp == ZERO_SHOT else display_name(comp)


def summary_table(report: dict[str, Any]) -> str:
    """The markdown table of every headline metric: scores (mean ± std over seeds) and HBT − each comparator.

    Args:
        report: from :func:`compute_report` (or ``report.json`` loaded back).
    """
    hbt = display_name(report["hbt"])
    pct = report.get("confidence_pct", 95)
    header = ["Benchmark", "Setting", "Metric", "Zero-shot"] + [display_name(s) for s in report["strategies"]]
    header += [f"{hbt} − {strategy_name(b)} [{pct}% CI]" for b in report["comparators"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in report["rows"]:
        metric = r["metric"] + ("" if r["higher_is_better"] else " ↓")
        cells = [_benchmark_label(report, r["benchmark"]) if r["benchmark"] else "—", r["setting"] or "—", metric,
                 _fmt(r["zero_shot"])]
        cells += [_fmt_score(r["scores"].get(s)) for s in report["strategies"]]
        cells += [fmt_comp(r["comparisons"].get(b)) for b in report["comparators"]]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r["benchmark"] in report.get("reduced_pools", ()) for r in report["rows"]):
        lines += ["", REDUCED_POOL_NOTE]
    return "\n".join(lines)


def endpoints_table(report: dict[str, Any]) -> str:
    """The pre-registered endpoints with their verdicts, as markdown."""
    ep = report["endpoints"]
    pct = report.get("confidence_pct", 95)
    hbt = display_name(report["hbt"])
    out = []
    if ep.get("primary"):
        out += [f"Primary, in domain (superiority): `{ep['primary']['key']}`", "",
                f"| {hbt} − | difference [{pct}% CI] | verdict |", "|---|---|---|"]
        for comp, c in ep["primary"]["comparisons"].items():
            out.append(f"| {strategy_name(comp)} | {fmt_comp(c)} | {c['verdict'] if c else '—'} |")
        out.append("")
    titles = {"domain_shift": "Domain shift, against the trained baselines: does {hbt}'s batching hurt?",
              "fine_tuning": "Domain shift, against the untrained model: does fine-tuning hurt? (a family of its own)"}
    marked = False
    for name, title in titles.items():
        entries = ep.get(name) or []
        if not entries:
            continue
        out += [title.format(hbt=hbt) + f" Non-inferiority at margin {ep['margin']:g}, Holm over "
                f"{ep.get(f'holm_{name}', len(entries))} comparisons.", "",
                f"| endpoint | {hbt} − | difference [{pct}% CI] | seeds' share of the variance | "
                "p non-inferior (Holm) | verdict |", "|---|---|---|---|---|---|"]
        for e in entries:
            key = _benchmark_label(report, e["key"]) + ("" if e.get("higher_is_better", True) else " ↓")
            out.append(f"| {key} | {strategy_name(e['comparator'])} | {fmt_comp(e)} | {seed_share(e)} | "
                       f"{e['p_noninferior']:.4f} ({e['p_noninferior_holm']:.4f}) | {e['verdict']}"
                       f"{'' if e.get('mc_stable', True) else ' †'} |")
            marked |= not e.get("mc_stable", True)
        out.append("")
    if any(e["key"].split("/")[0] in report.get("reduced_pools", ()) for name in titles for e in ep.get(name) or []):
        out += [REDUCED_POOL_NOTE, ""]
    if marked:
        out += ["† within Monte Carlo error of its threshold: the verdict changes when the p-values move by "
                "2 Monte Carlo standard errors (study.bootstrap_samples replicates); more replicates or another "
                "resampling seed may change it."]
    return "\n".join(out).rstrip("\n")


def seed_share(e: dict[str, Any]) -> str:
    """The seed component's share of a difference's variance, as a percentage (— when unknown)."""
    vq = e.get("var_questions")
    if vq is None:
        return "—"
    vs = e["seed_var_a"] / e["n_seeds_a"] + e["seed_var_b"] / e["n_seeds_b"]
    if e["n_seeds_a"] < 2:
        return "unknown (1 seed)"
    return f"{100 * vs / (vs + vq):.0f}%" if vs + vq > 0 else "—"


def render_markdown(report: dict[str, Any]) -> str:
    """The whole ``report.md``: the answer, the endpoints, the table, the method, the reductions and the plots."""
    hbt = display_name(report["hbt"])
    bs = report["bootstrap"]
    ep = report["endpoints"]
    seeds = report["seeds"]
    seed_lists = {k: ", ".join(v) for k, v in seeds.items()}
    if len(set(seed_lists.values())) == 1:
        seed_text = f"seeds {next(iter(seed_lists.values()))} for every strategy"
    else:
        seed_text = "seeds " + "; ".join(f"{display_name(k)}: {v}" for k, v in seed_lists.items())
    out = [f"# {report['question']}", "", f"**{report['answer']}**", "",
           "## Pre-registered endpoints", "", endpoints_table(report), "",
           "## All headline metrics", "", summary_table(report), "",
           "## Method", "",
           f"Scores are means over training seeds ± their sample standard deviation ({seed_text}). "
           f"Differences are {hbt} − comparator with {report.get('confidence_pct', 95)}% intervals from a paired "
           f"cluster bootstrap ({bs['n_samples']} replicates, seed {bs['seed']}): each replicate draws "
           f"{'articles (in domain; questions elsewhere)' if bs['unit'] == 'article' else 'questions'} with "
           "replacement, the same draw for both systems, so a question's language versions and X→Y pairs move "
           "together. Training randomness is a seed component added to each replicate: the seeds' sample "
           "variance of each strategy's score (less the question × seed interaction the question draw already "
           "holds), divided by its seed count, times a Student t draw with the Welch–Satterthwaite degrees of "
           "freedom. With 3 seeds that is t on about 4 degrees of freedom: wide tails, because 3 seeds say "
           "little about seed variance. With one seed per strategy the seed variance is unknown and the "
           "intervals cover question sampling only. The statistic is the one in the score columns: the mean "
           "over languages (or ordered pairs) of their means, or the plain mean where a metric pools all "
           "queries.",
           "",
           f"Verdicts: the primary endpoint is tested for superiority (better: the interval lies above 0). Each "
           f"domain-shift endpoint is compared for {hbt} against each baseline and the zero-shot model with the "
           f"non-inferiority margin {ep['margin']:g} (absolute): *non-inferior* when the difference is shown above "
           f"−{ep['margin']:g}, *better* when above 0, *inferior* when below −{ep['margin']:g}, else *inconclusive*; "
           "one-sided tests at 2.5%, Holm-adjusted within each family (against the trained baselines; against "
           "the untrained model), so a verdict can be stricter than its unadjusted interval. On a ↓ "
           "(lower-is-better) endpoint the same tests run on the negated difference. The answer above is derived "
           "from the first family's verdicts alone; a non-significant difference is not read as \"no harm\".",
           "", "## Reductions", ""]
    out += [f"- {x}" for x in report["reductions"]] or ["None: this is a full-scale run."]
    if report.get("plan"):
        from hbt.study.plan import plan_markdown

        out += ["", "## Plan: what would settle the open comparisons", "", plan_markdown(report["plan"])]
    plots = report.get("files", {}).get("plots", [])
    if plots:
        out += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(out) + "\n"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "matrix"


_BENCHMARK_WORDS = {"xquad_r": "XQuAD-R", "mlqa_r": "MLQA-R", "tatoeba": "Tatoeba", "miracl": "MIRACL"}
# metric -> (title in words, how to read the axis)
_BIAS_WORDS = {
    "own_language_top1": ("best answer in the query's language", "share of queries; near chance: less bias"),
    "rank_distance_mean": ("rank gap between a question's\nanswers in its languages (mean)", "ranks; lower: less bias"),
    "rank_distance_median": ("rank gap between a question's\nanswers in its languages (median)",
                             "ranks; lower: less bias"),
    "mAP_spread": ("mAP, best minus worst\nquery language", "lower: languages served evenly"),
    "mAP_std": ("mAP, std over\nquery languages", "lower: languages served evenly"),
}


def _benchmark_words(key: str) -> str:
    b = key.split("/")[0]
    return _BENCHMARK_WORDS.get(b, b)


def matrix_title(name: str) -> str:
    """A plot title in words for a matrix key (``xquad_r/cross_lingual/mAP``)."""
    parts = name.split("/")
    if len(parts) == 3 and parts[1] == "cross_lingual":
        return (f"{_benchmark_words(name)}, cross-lingual {parts[2]}: queries in language X (rows) against "
                "candidates in language Y (columns); mean over seeds")
    if len(parts) == 3 and parts[1] == "multilingual" and parts[2].endswith("_by_language"):
        metric = parts[2].removesuffix("_by_language")
        return f"{_benchmark_words(name)}, multilingual {metric} by query language (one pool of every language)"
    return name


def plot_matrices(name: str, per: dict[str, Any], order: list[str], path: Path):
    """One heatmap per model, query language X in rows and candidate language Y in columns."""
    # Figure without pyplot: no global backend state, renders with Agg.
    from matplotlib.figure import Figure

    panels = [s for s in [ZERO_SHOT, *order] if s in per]
    vals = [np.asarray(per[s]["values"], dtype=np.float64) for s in panels]
    vmin = min(float(np.nanmin(v)) for v in vals)
    vmax = max(float(np.nanmax(v)) for v in vals)
    n_lang = max(len(per[s]["languages"]) for s in panels)
    # Cells big enough for a two-decimal label at 7 pt.
    size = max(3.2, 0.5 * n_lang + 1.2)
    fig = Figure(figsize=(size * len(panels) + 1.2, size + 1.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    im = None
    for ax, s, v in zip(axes, panels, vals):
        langs = per[s]["languages"]
        im = ax.imshow(v, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(len(langs)), langs, fontsize=8)
        ax.set_yticks(range(len(langs)), langs, fontsize=8)
        ax.set_title("zero-shot" if s == ZERO_SHOT else display_name(s), fontsize=10)
        ax.set_xlabel("candidate language Y", fontsize=9)
        if ax is axes[0]:
            ax.set_ylabel("query language X", fontsize=9)
        if len(langs) <= 12:
            for i, j in zip(*np.nonzero(np.isfinite(v))):
                ax.text(j, i, f"{v[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v[i, j] < (vmin + vmax) / 2 else "black")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label=name.split("/")[-1])
    fig.suptitle(matrix_title(name), fontsize=10)
    fig.savefig(path, dpi=120)
    return fig


def plot_by_language(name: str, per: dict[str, Any], order: list[str], path: Path):
    """A per-language vector (one row per model) as grouped bars: one group per query language."""
    from matplotlib.figure import Figure

    panels = [s for s in [ZERO_SHOT, *order] if s in per]
    langs = per[panels[0]]["languages"]
    width = 0.8 / len(panels)
    fig = Figure(figsize=(max(6.0, 0.9 * len(langs) + 2.0), 3.8), layout="constrained")
    ax = fig.subplots()
    for k, s in enumerate(panels):
        row = np.asarray(per[s]["values"], dtype=np.float64).reshape(-1)
        std = per[s].get("std")
        err = np.asarray(std, dtype=np.float64).reshape(-1) if std is not None else None
        ax.bar(np.arange(len(langs)) + (k - (len(panels) - 1) / 2) * width, row, width, yerr=err, capsize=2,
               label="zero-shot" if s == ZERO_SHOT else display_name(s), color=f"C{k}")
    ax.set_xticks(range(len(langs)), langs, fontsize=9)
    ax.set_xlabel("query language", fontsize=9)
    ax.set_ylabel(name.split("/")[-1].removesuffix("_by_language"), fontsize=9)
    # Above the bars, not over them: every language's group reaches the top half.
    ax.legend(fontsize=8, ncols=len(panels), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    spread = any(per[s].get("std") is not None for s in panels)
    fig.suptitle(matrix_title(name) + ("; mean ± std over seeds" if spread else "; mean over seeds"), fontsize=9)
    fig.savefig(path, dpi=120)
    return fig


def plot_bias(bias: dict[str, Any], order: list[str], path: Path):
    """A row of panels per benchmark, one panel per bias metric: ranks and rates need their own axes."""
    from matplotlib.figure import Figure

    # own_language_chance is the same for every model (the pool's language share): it is drawn as
    # the chance line of own_language_top1, not as bars of its own.
    keys = [k for k in bias if not k.endswith("/own_language_chance")]
    benchmarks = list(dict.fromkeys(k.split("/")[0] for k in keys))
    metrics = [m for m in _BIAS_WORDS if any(k.endswith(f"/{m}") for k in keys)]
    metrics += sorted({k.rsplit("/", 1)[-1] for k in keys} - set(metrics))
    fig = Figure(figsize=(3.4 * len(metrics) + 0.6, 3.3 * len(benchmarks) + 0.8), layout="constrained")
    axes = fig.subplots(len(benchmarks), len(metrics), squeeze=False)
    for r, b in enumerate(benchmarks):
        for c, metric in enumerate(metrics):
            ax, k = axes[r][c], f"{b}/bias/{metric}"
            if k not in bias:
                ax.set_visible(False)
                continue
            groups = [s for s in [ZERO_SHOT, *order] if s in bias[k]]
            means = [bias[k][s]["mean"] for s in groups]
            # No error bar where there is no spread to show (zero-shot: one evaluation).
            errs = [np.nan if bias[k][s]["std"] is None else bias[k][s]["std"] for s in groups]
            ax.bar(range(len(groups)), means, yerr=errs, capsize=3, color=[f"C{i}" for i in range(len(groups))])
            ax.set_xticks(range(len(groups)), [strategy_name(s) for s in groups], fontsize=8, rotation=30, ha="right")
            words, reading = _BIAS_WORDS.get(metric, (metric, ""))
            ax.set_title(f"{_BENCHMARK_WORDS.get(b, b)}\n{words}", fontsize=8)
            ax.set_ylabel(reading, fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
            chance = bias.get(f"{b}/bias/own_language_chance") if metric == "own_language_top1" else None
            if chance:
                level = next(iter(chance.values()))["mean"]
                ax.axhline(level, color="gray", linestyle="--", linewidth=1,
                           label=f"chance (language-blind): {level:.3f}")
                ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("Language bias of the multilingual ranking (mean ± std over seeds)", fontsize=10)
    fig.savefig(path, dpi=120)
    return fig


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Writes the plots, ``report.md`` and ``report.json``.

    Args:
        report: from :func:`compute_report`; gains a ``files`` entry.
        out_dir: created if missing.

    Returns:
        The report, with ``files`` listing what was written (names relative
        to ``out_dir``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = list(report["strategies"])
    plots: list[str] = []
    for name, per in report["matrices"].items():
        if not per:
            continue
        if name.endswith("_by_language"):  # one value per query language: bars, not a 1-row heatmap
            fname = f"bars_{_slug(name)}.png"
            plot_by_language(name, per, order, out / fname)
        else:
            fname = f"heatmap_{_slug(name)}.png"
            plot_matrices(name, per, order, out / fname)
        plots.append(fname)
    if report["bias"]:
        plot_bias(report["bias"], order, out / "bias.png")
        plots.append("bias.png")
    report["files"] = {"json": "report.json", "markdown": "report.md", "plots": plots}
    write_text_atomic(out / "report.md", render_markdown(report))
    write_text_atomic(out / "report.json", json.dumps(report, indent=2, allow_nan=False))
    return report


def build_report(
    scores: Mapping[str, Mapping[Any, EvalResultLike]],
    zero_shot: EvalResultLike | None,
    metrics: Sequence[str],
    out_dir: str | Path,
    **kwargs: Any,
) -> dict[str, Any]:
    """Computes and writes the report (see :func:`compute_report` for ``kwargs``).

    Returns:
        The report dict, including ``files`` (paths relative to ``out_dir``).
    """
    return write_report(compute_report(scores, zero_shot, metrics, **kwargs), out_dir)
