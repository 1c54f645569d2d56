"""What ``hbt eval`` shows: a summary table on the terminal and a structured JSON beside the flat keys.

Both are read from the registry's table rows (:attr:`BenchmarkSpec.table`),
so the terminal and the JSON always show the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

from hbt.eval.registry import SUMMARY_COLUMNS, spec
from hbt.eval.results import EvalResult


def _value(metrics: dict[str, float], key: str) -> float | None:
    v = metrics.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def benchmark_section(name: str, result: EvalResult, settings: list[str]) -> dict[str, Any]:
    """One benchmark's structured results.

    ``settings`` maps each table row (``monolingual``, ``crosslingual``,
    ``multilingual`` for the QA benchmarks; ``xx-eng``/``eng-xx`` for Tatoeba)
    to its metrics. QA benchmarks add ``matrix`` (cross-lingual mAP, query
    language X in rows, pool language Y in columns) and ``language_bias``.
    """
    m = result.metrics
    out: dict[str, Any] = {"settings": {label: {col: _value(m, key) for col, key in cols.items()}
                                        for label, cols in spec(name).table(settings)}}
    matrix = result.matrices.get(f"{name}/cross_lingual/mAP")
    if matrix is not None:
        out["matrix"] = {"metric": "mAP", "rows": "query language X", "columns": "pool language Y",
                         "languages": matrix["languages"], "values": matrix["values"]}
    bias = {k.rsplit("/", 1)[1]: _value(m, k) for k in sorted(m) if k.startswith(f"{name}/bias/")}
    if bias:
        out["language_bias"] = bias
    titles = (result.info.get(name) or {}).get("article_titles")
    if titles is not None:
        out["articles"] = titles
    return out


def eval_json(result: EvalResult, model: str, benchmarks: list[str], settings: list[str]) -> dict[str, Any]:
    """The ``hbt eval --json`` document (also ``summary.json`` in the results folder).

    ``benchmark`` is the name (a list when several were evaluated); with one
    benchmark its ``settings`` / ``matrix`` / ``language_bias`` sit at the top
    level, with several under ``benchmarks.<name>``. ``metrics`` holds every
    flat metric key (see :mod:`hbt.eval.results`).
    """
    sections = {b: benchmark_section(b, result, settings) for b in benchmarks}
    doc: dict[str, Any] = {"benchmark": benchmarks[0] if len(benchmarks) == 1 else list(benchmarks), "model": model,
                           "split": result.info.get("split", "test")}
    for key in ("trained_by", "training_articles_scored"):
        if key in result.info:
            doc[key] = result.info[key]
    if len(benchmarks) == 1:
        doc.update(sections[benchmarks[0]])
    else:
        doc["benchmarks"] = sections
    doc["metrics"] = {k: _value(result.metrics, k) for k in sorted(result.metrics)}
    return doc


def summary_table(result: EvalResult, benchmarks: list[str], settings: list[str]) -> str:
    """A plain-text table: one row per benchmark and setting, the headline metrics as columns (3 decimals)."""
    rows = [(spec(b).title, label, {col: _value(result.metrics, key) for col, key in cols.items()})
            for b in benchmarks for label, cols in spec(b).table(settings)]
    columns = [c for c in SUMMARY_COLUMNS if any(vals.get(c) is not None for _, _, vals in rows)]
    header = ["benchmark", "setting", *columns]
    body = [[title, label, *("" if vals.get(c) is None else f"{vals[c]:.3f}" for c in columns)]
            for title, label, vals in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]
    scored = result.info.get("training_articles_scored")
    if scored:
        lines.append(f"XQuAD-R includes {len(scored)} article(s) that {result.info.get('trained_by')} trained on "
                     "(--on-training-data): not a held-out score")
    return "\n".join(lines)
