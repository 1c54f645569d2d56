"""The study report: HBT against its baselines, from plain evaluation results.

Input is ``scores[strategy][seed]``, each an :class:`EvalResultLike`, plus the
zero-shot result. Output is ``report.json``, ``report.md`` and PNG plots in
one directory. The module is pure: no Ray, no MLflow (the caller logs the
files it returns).

Comparisons are paired over queries: with several seeds, each strategy's
per-query scores are first averaged over its seeds, then HBT and a baseline
are compared with :func:`hbt.study.bootstrap.paired_bootstrap`. Metrics
without per-query arrays get the difference of means and no interval.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hbt.study.bootstrap import paired_bootstrap

DISPLAY_NAMES = {"x_x_mono": "X-X-mono", "x_y": "X-Y", "hbt": "HBT", "mixed_mono": "mixed-mono"}
ZERO_SHOT = "zero_shot"
# Phrases of the one-line answers, by aggregated verdict.
_PHRASES = {
    "improves": "improves {b}",
    "degrades": "degrades {b}",
    "no significant difference": "shows no significant difference on {b}",
}


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


def per_query_key(metric_key: str) -> str:
    """The per-query array that a metric is the mean of.

    ``.../mAP`` is the mean of ``.../AP``; every other metric (``acc@1``,
    ``recall@k``, MRR, bias rates) is a mean of per-query values stored under
    its own key.

    Args:
        metric_key: e.g. ``xquad_r/multilingual/mAP``.

    Returns:
        e.g. ``xquad_r/multilingual/AP``.
    """
    head, _, last = metric_key.rpartition("/")
    if last == "mAP":
        return f"{head}/AP" if head else "AP"
    return metric_key


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


def _seed_averaged(runs: Mapping[Any, EvalResultLike], key: str, strategy: str) -> np.ndarray | None:
    arrays = [np.asarray(r.per_query[key], dtype=np.float64) for r in runs.values() if key in r.per_query]
    if not arrays:
        return None
    if len(arrays) != len(runs):
        raise ValueError(f"{strategy}: per-query {key!r} exists for only {len(arrays)} of {len(runs)} seeds")
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"{strategy}: per-query {key!r} has different lengths across seeds: {sorted(sizes)}")
    return np.mean(arrays, axis=0)


def _mean_matrix(results: Iterable[EvalResultLike], name: str) -> dict[str, Any] | None:
    mats = [r.matrices[name] for r in results if name in r.matrices]
    if not mats:
        return None
    langs = list(mats[0]["languages"])
    for m in mats[1:]:
        if list(m["languages"]) != langs:
            raise ValueError(f"matrix {name!r}: languages differ across seeds")
    values = np.mean([np.asarray(m["values"], dtype=np.float64) for m in mats], axis=0)
    # None for missing pairs: report.json stays strict JSON (no NaN).
    return {"languages": langs, "values": [[x if np.isfinite(x) else None for x in row] for row in values.tolist()]}


def _metric_value(result: EvalResultLike, key: str) -> float | None:
    """The metric as a float, None when absent or not finite (JSON has no NaN)."""
    if key not in result.metrics:
        return None
    v = float(result.metrics[key])
    return v if np.isfinite(v) else None


def _metric_row(
    key: str,
    scores: Mapping[str, Mapping[Any, EvalResultLike]],
    zero_shot: EvalResultLike | None,
    hbt_name: str,
    baselines: Sequence[str],
    higher_is_better: bool,
    boot: dict[str, Any],
) -> dict[str, Any]:
    """One table row: every strategy's score and HBT − each baseline."""
    benchmark, setting, metric = _split_key(key)
    row: dict[str, Any] = {
        "key": key,
        "benchmark": benchmark,
        "setting": setting,
        "metric": metric,
        "higher_is_better": higher_is_better,
        "zero_shot": _metric_value(zero_shot, key) if zero_shot is not None else None,
        "scores": {},
        "comparisons": {},
    }
    for name, runs in scores.items():
        per_seed = {str(s): v for s, r in runs.items() if (v := _metric_value(r, key)) is not None}
        if per_seed:
            mean, std = _mean_std(list(per_seed.values()))
            row["scores"][name] = {"mean": mean, "std": std, "n_seeds": len(per_seed), "per_seed": per_seed}
        else:
            row["scores"][name] = None
    pq_key = per_query_key(key)
    hbt_pq = _seed_averaged(scores[hbt_name], pq_key, hbt_name)
    for base in baselines:
        s_h, s_b = row["scores"][hbt_name], row["scores"][base]
        if s_h is None or s_b is None:
            row["comparisons"][base] = None
            continue
        metric_diff = s_h["mean"] - s_b["mean"]
        comp: dict[str, Any] = {"diff": metric_diff, "metric_diff": metric_diff, "per_query_key": None,
                                "ci_low": None, "ci_high": None, "p_value": None, "verdict": None}
        base_pq = _seed_averaged(scores[base], pq_key, base)
        if hbt_pq is not None and base_pq is not None:
            if hbt_pq.shape != base_pq.shape:
                raise ValueError(f"{pq_key}: {hbt_name} has {hbt_pq.size} per-query scores, {base} has {base_pq.size}")
            try:
                res = paired_bootstrap(hbt_pq, base_pq, **boot)
            except ValueError as e:
                raise ValueError(f"{pq_key} ({hbt_name} vs {base}): {e}") from None
            # "diff" is the bootstrap's own difference, so it always sits inside
            # its CI; it equals metric_diff whenever the metric is the plain
            # mean of its per-query array.
            comp.update(res.to_dict())
            comp["per_query_key"] = pq_key
            comp["verdict"] = res.verdict(higher_is_better=higher_is_better)
        row["comparisons"][base] = comp
    return row


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
    n_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    lower_is_better: Callable[[str], bool] = default_lower_is_better,
) -> dict[str, Any]:
    """Computes the report as a JSON-ready dict (no files).

    Args:
        scores: ``scores[strategy][seed]`` → evaluation result.
        zero_shot: the untrained encoder's result, or None.
        metrics: headline metric keys, e.g. ``xquad_r/multilingual/mAP``.
        hbt_name: the strategy under test.
        baselines: strategies HBT is compared against.
        reductions: what a reduced (local) run cut, e.g. ``"2 of 12 layers"``.
        n_samples: bootstrap resamples.
        confidence: confidence level of the intervals.
        seed: bootstrap seed.
        lower_is_better: metric key → True when lower values are better.

    Returns:
        The report: ``rows`` (one per metric), ``answers`` (one line per
        benchmark), ``bias``, ``matrices`` (seed-averaged) and run facts.

    Raises:
        ValueError: a named strategy is missing or has no seeds, or per-query
            arrays cannot be paired.
    """
    for name in [hbt_name, *baselines]:
        if name not in scores:
            raise ValueError(f"strategy {name!r} is not in scores (have {sorted(scores)})")
    for name, runs in scores.items():
        if not runs:
            raise ValueError(f"strategy {name!r} has no seeds")
    boot = {"n_samples": n_samples, "confidence": confidence, "seed": seed}
    rows = [
        _metric_row(key, scores, zero_shot, hbt_name, baselines, not lower_is_better(key), boot) for key in metrics
    ]
    all_results = [r for runs in scores.values() for r in runs.values()]
    if zero_shot is not None:
        all_results.append(zero_shot)
    bias_keys = sorted({k for r in all_results for k in r.metrics if is_bias_metric(k)})
    bias = {key: _bias_entry(key, scores, zero_shot) for key in bias_keys}
    matrix_names = sorted({n for r in all_results for n in r.matrices})
    matrices = {name: _matrix_entry(name, scores, zero_shot) for name in matrix_names}

    seeds = {name: [str(s) for s in runs] for name, runs in scores.items()}
    multi_seed = any(len(s) > 1 for s in seeds.values())
    report: dict[str, Any] = {
        "hbt": hbt_name,
        "baselines": list(baselines),
        "strategies": list(scores),
        "seeds": seeds,
        "reductions": list(reductions),
        "bootstrap": {
            "n_samples": n_samples,
            "confidence": confidence,
            "seed": seed,
            "unit": "query",
            "seed_averaging": (
                "per-query scores are averaged over each strategy's seeds before the paired bootstrap"
                if multi_seed
                else "one seed per strategy: no seed averaging"
            ),
        },
        "confidence_pct": round(confidence * 100),
        "rows": rows,
        "bias": bias,
        "matrices": matrices,
    }
    report["answers"] = _answers(report)
    return report


def _aggregate(verdicts: list[tuple[str, str]]) -> tuple[str, str]:
    """Folds per-metric verdicts into one per benchmark and baseline.

    Returns:
        (verdict, detail): verdict is one of the three verdicts, ``mixed`` or
        ``untested`` (no metric had per-query scores).
    """
    if not verdicts:
        return "untested", ""
    ups = [k for k, v in verdicts if v == "improves"]
    downs = [k for k, v in verdicts if v == "degrades"]
    if ups and downs:
        return "mixed", f"improves {', '.join(ups)} but degrades {', '.join(downs)}"
    if ups:
        return "improves", ", ".join(ups)
    if downs:
        return "degrades", ", ".join(downs)
    return "no significant difference", ""


def _answers(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One answer per benchmark, from its non-bias headline metrics that have CIs."""
    hbt = display_name(report["hbt"])
    out = []
    benchmarks = list(dict.fromkeys(r["benchmark"] for r in report["rows"]))
    for bench in benchmarks:
        per_base: dict[str, tuple[str, str]] = {}
        for base in report["baselines"]:
            vs = [
                (r["setting"] + "/" + r["metric"] if r["setting"] else r["metric"], r["comparisons"][base]["verdict"])
                for r in report["rows"]
                if r["benchmark"] == bench
                and not is_bias_metric(r["key"])
                and r["comparisons"].get(base)
                and r["comparisons"][base].get("verdict")
            ]
            per_base[base] = _aggregate(vs)
        # Group baselines with the same verdict so the common case reads
        # "HBT improves xquad_r vs X-X-mono and X-Y."
        groups: dict[str, list[str]] = {}
        for base, (verdict, _) in per_base.items():
            groups.setdefault(verdict, []).append(base)
        clauses = []
        for verdict, bases in groups.items():
            names = " and ".join(display_name(b) for b in bases)
            if verdict in _PHRASES:
                clauses.append(f"{_PHRASES[verdict].format(b=bench)} vs {names}")
            elif verdict == "mixed":
                details = "; ".join(f"vs {display_name(b)} it {per_base[b][1]}" for b in bases)
                clauses.append(f"gives mixed results on {bench} vs {names} ({details})")
            else:
                clauses.append(f"cannot be tested on {bench} vs {names} (no per-query scores)")
        line = f"{hbt} " + ", and ".join(clauses) + "."
        out.append({
            "benchmark": bench,
            "line": line,
            "verdicts": {b: v for b, (v, _) in per_base.items()},
        })
    return out


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


def _fmt_comp(c: dict[str, Any] | None) -> str:
    if c is None:
        return "—"
    if c.get("ci_low") is None:
        return f"{_fmt(c['diff'], True)} (no CI)"
    short = {"improves": "improves", "degrades": "degrades", "no significant difference": "n.s."}[c["verdict"]]
    return f"{_fmt(c['diff'], True)} [{_fmt(c['ci_low'], True)}, {_fmt(c['ci_high'], True)}] {short}"


def summary_table(report: dict[str, Any]) -> str:
    """The markdown summary table (what the CLI prints).

    Args:
        report: from :func:`compute_report` (or ``report.json`` loaded back).

    Returns:
        A markdown table: per benchmark and setting, each strategy's score
        (mean ± std over seeds), zero-shot, and HBT − each baseline with CI.
    """
    hbt = display_name(report["hbt"])
    pct = report.get("confidence_pct", 95)
    header = ["Benchmark", "Setting", "Metric", "Zero-shot"]
    header += [display_name(s) for s in report["strategies"]]
    header += [f"{hbt} − {display_name(b)} [{pct}% CI]" for b in report["baselines"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in report["rows"]:
        metric = r["metric"] + ("" if r["higher_is_better"] else " ↓")
        cells = [r["benchmark"] or "—", r["setting"] or "—", metric, _fmt(r["zero_shot"])]
        cells += [_fmt_score(r["scores"].get(s)) for s in report["strategies"]]
        cells += [_fmt_comp(r["comparisons"].get(b)) for b in report["baselines"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """The whole ``report.md``: answers, table, method notes, reductions, plots."""
    hbt = display_name(report["hbt"])
    bs = report["bootstrap"]
    seeds = report["seeds"]
    out = [f"# Study report: {hbt} vs {', '.join(display_name(b) for b in report['baselines'])}", ""]
    out += ["## Answers", ""]
    out += [f"- **{a['benchmark']}**: {a['line']}" for a in report["answers"]]
    out += ["", "## Summary", "", summary_table(report), ""]
    seed_lists = {k: ", ".join(v) for k, v in seeds.items()}
    if len(set(seed_lists.values())) == 1:
        seed_text = f"seeds {next(iter(seed_lists.values()))} for every strategy"
    else:
        seed_text = "seeds " + "; ".join(f"{display_name(k)}: {v}" for k, v in seed_lists.items())
    out += [
        "Scores are means over seeds ± sample standard deviation (shown when a strategy has more than one "
        f"seed; {seed_text}).",
        f"Differences are {hbt} − baseline with {report.get('confidence_pct', 95)}% paired-bootstrap intervals "
        f"over queries ({bs['n_samples']} resamples, seed {bs['seed']}); {bs['seed_averaging']}. "
        "\"improves\"/\"degrades\": the interval excludes 0; \"n.s.\": it does not. "
        "The intervals reflect query sampling; the spread over training seeds is the ± std. "
        "\"(no CI)\": no per-query scores for that metric, so only the difference of means is shown. "
        "↓ marks lower-is-better metrics (language bias). "
        "The answers use each benchmark's non-bias metrics that have intervals.",
        "",
        "## Reductions",
        "",
    ]
    if report["reductions"]:
        out += [f"- {x}" for x in report["reductions"]]
    else:
        out += ["None: this is a full-scale run."]
    plots = report.get("files", {}).get("plots", [])
    if plots:
        out += ["", "## Plots", ""]
        out += [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(out) + "\n"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "matrix"


def _plot_matrices(name: str, per: dict[str, Any], order: list[str], path: Path) -> None:
    # Figure without pyplot: no global backend state, renders with Agg.
    from matplotlib.figure import Figure

    panels = [s for s in [ZERO_SHOT, *order] if s in per]
    vals = [np.asarray(per[s]["values"], dtype=np.float64) for s in panels]
    vmin = min(float(np.nanmin(v)) for v in vals)
    vmax = max(float(np.nanmax(v)) for v in vals)
    n_lang = max(len(per[s]["languages"]) for s in panels)
    size = max(3.0, 0.38 * n_lang + 1.0)
    fig = Figure(figsize=(size * len(panels) + 1.0, size + 0.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    im = None
    for ax, s, v in zip(axes, panels, vals):
        langs = per[s]["languages"]
        im = ax.imshow(v, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(len(langs)), langs, fontsize=7, rotation=90)
        ax.set_yticks(range(len(langs)), langs, fontsize=7)
        ax.set_title("zero-shot" if s == ZERO_SHOT else display_name(s), fontsize=10)
        ax.set_xlabel("candidate language Y", fontsize=8)
        if ax is axes[0]:
            ax.set_ylabel("query language X", fontsize=8)
        if len(langs) <= 12:
            for i, j in zip(*np.nonzero(np.isfinite(v))):
                ax.text(j, i, f"{v[i, j]:.2f}", ha="center", va="center", fontsize=5,
                        color="white" if v[i, j] < (vmin + vmax) / 2 else "black")
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle(name)
    fig.savefig(path, dpi=120)


def _plot_bias(bias: dict[str, Any], order: list[str], path: Path) -> None:
    from matplotlib.figure import Figure

    keys = list(bias)
    groups = [s for s in [ZERO_SHOT, *order] if any(s in bias[k] for k in keys)]
    width = 0.8 / max(1, len(groups))
    fig = Figure(figsize=(max(5.0, 1.6 * len(keys) + 2.0), 4.0), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(keys))
    for i, s in enumerate(groups):
        means = [bias[k][s]["mean"] if s in bias[k] else np.nan for k in keys]
        errs = [(bias[k][s]["std"] or 0.0) if s in bias[k] else 0.0 for k in keys]
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, means, width, yerr=errs, capsize=2,
               label="zero-shot" if s == ZERO_SHOT else display_name(s))
    ax.set_xticks(x, keys, fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("value (lower: less language bias)")
    ax.set_title("Language bias per strategy (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


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
        if per:
            fname = f"heatmap_{_slug(name)}.png"
            _plot_matrices(name, per, order, out / fname)
            plots.append(fname)
    if report["bias"]:
        _plot_bias(report["bias"], order, out / "bias.png")
        plots.append("bias.png")
    report["files"] = {"json": "report.json", "markdown": "report.md", "plots": plots}
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False), encoding="utf-8")
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
