"""The search's results: the trial table, the best config, the Pareto front, plots.

Pure file writing: no Ray, no MLflow (the caller logs the files returned).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hbt.config import HBTConfig, _redacted, load_config, with_overrides, write_text_atomic
from hbt.objective import BIAS_KEYS, OBJECTIVE, PARETO_KEYS

# Tune's words: TERMINATED ran to its final report; ERROR raised; STOPPED
# ended without a final report and without an error (a scheduler stopped it).
STATUSES = ("TERMINATED", "STOPPED", "ERROR")
TABLE_METRICS = (OBJECTIVE, *PARETO_KEYS, *BIAS_KEYS, "train/loss", "step")


@dataclass
class TrialRow:
    """One trial in the table.

    Attributes:
        trial_id: Tune's trial id.
        status: one of :data:`STATUSES`.
        params: the searched keys' values.
        metrics: the final report (``objective``, ``dev/...``, ``train/...``).
        error: the error's last line for ``ERROR`` trials.
        run_name: the trial's Ray Train run name.
        trial_dir: the trial's own output directory.
        mlflow_run_id: the trial's (training) MLflow run.
    """

    trial_id: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    run_name: str | None = None
    trial_dir: str | None = None
    mlflow_run_id: str | None = None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """The indices of the non-dominated points, every axis maximised.

    ``a`` dominates ``b`` when it is at least as good on every axis and better
    on one. Equal points do not dominate each other, so both stay on the front.
    Points with a non-finite coordinate are left out.

    Args:
        points: one coordinate tuple per candidate.

    Returns:
        Indices into ``points``, ascending.
    """
    ok = [i for i, p in enumerate(points) if all(_finite(x) for x in p)]
    front = []
    for i in ok:
        a = points[i]
        dominated = any(
            all(b_k >= a_k for a_k, b_k in zip(a, points[j])) and any(b_k > a_k for a_k, b_k in zip(a, points[j]))
            for j in ok if j != i
        )
        if not dominated:
            front.append(i)
    return front


def best_trial(rows: Sequence[TrialRow], mode: str) -> TrialRow | None:
    """The finished trial with the best finite ``objective`` (first one on ties), or None."""
    done = [r for r in rows if r.status == "TERMINATED" and _finite(r.metrics.get(OBJECTIVE))]
    if not done:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(done, key=lambda r: sign * r.metrics[OBJECTIVE])


def best_config(cfg: HBTConfig, fixed: Mapping[str, Any], params: Mapping[str, Any]) -> HBTConfig:
    """The search's starting config with the space's fixed values and a trial's params applied.

    ``run_name`` is cleared, so training it starts a fresh run instead of
    resuming one (docs/ray.md).
    """
    return with_overrides(cfg, {**fixed, **params, "run_name": None})


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _plot(path: Path, rows: Sequence[TrialRow], param: str, front_ids: set[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [*PARETO_KEYS, BIAS_KEYS[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r.params[param], r.metrics.get(key), r.trial_id in front_ids) for r in rows
               if _finite(r.params.get(param)) and _finite(r.metrics.get(key))]
        pts.sort(key=lambda t: t[0])
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color="0.7", zorder=1)
            for on_front, style in ((False, dict(marker="o", color="tab:blue", label="trial")),
                                    (True, dict(marker="*", s=140, color="tab:red", label="Pareto front"))):
                sel = [p for p in pts if p[2] == on_front]
                if sel:
                    ax.scatter([p[0] for p in sel], [p[1] for p in sel], zorder=2, **style)
        ax.set_xlabel(param)
        ax.set_title(key.removeprefix("dev/"), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("dev")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(out_dir: str | Path, rows: Sequence[TrialRow], cfg: HBTConfig, fixed: Mapping[str, Any],
                  param_keys: Sequence[str]) -> dict[str, Any]:
    """Writes the trial table, the best config, the Pareto front and plots.

    Files: ``trials.json``, ``trials.csv``, ``trials.md``, ``pareto.json``,
    ``pareto.md``, ``best_config.yaml`` (when a trial finished) and
    ``plot_<param>.png`` for each searched numeric key that varied.

    Args:
        out_dir: the search directory.
        rows: every trial.
        cfg: the config the search started from (before the space's fixed values).
        fixed: the space's fixed values.
        param_keys: the searched keys, in space order.

    Returns:
        ``best`` (trial id, params, objective or None), ``pareto`` (trial ids),
        ``counts`` (per status) and ``files`` (name -> path).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    rows = sorted(rows, key=lambda r: r.trial_id)

    (out / "trials.json").write_text(json.dumps([asdict(r) for r in rows], indent=2, default=str), encoding="utf-8")
    header = ["trial", "status", *param_keys, *TABLE_METRICS, "error"]
    table = [[r.trial_id, r.status, *(r.params.get(k) for k in param_keys), *(r.metrics.get(k) for k in TABLE_METRICS),
              r.error] for r in rows]
    with open(out / "trials.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[("" if v is None else v) for v in row] for row in table])
    best = best_trial(rows, cfg.tune.mode)
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    md = [f"# Search results ({len(rows)} trials: "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ")\n",
          f"Objective: `{OBJECTIVE}` ({cfg.tune.mode}) = "
          + " + ".join(f"{w:g} x `{k}`" for k, w in (cfg.tune.objective_weights or {cfg.tune.objective: 1.0}).items())
          + ", on the dev split (XQuAD-R, `data.dev_articles`).\n",
          markdown_table(header, table)]
    if best is not None:
        md.append(f"\nBest: trial `{best.trial_id}` with {OBJECTIVE} = {best.metrics[OBJECTIVE]:.4g}: "
                  + ", ".join(f"`{k}={v}`" for k, v in best.params.items()) + "\n")
    (out / "trials.md").write_text("\n".join(md), encoding="utf-8")
    files.update({k: str(out / k) for k in ("trials.json", "trials.csv", "trials.md")})

    finished = [r for r in rows if r.status == "TERMINATED"]
    front_idx = pareto_front([[r.metrics.get(k, float("nan")) for k in PARETO_KEYS] for r in finished])
    front = [finished[i] for i in front_idx]
    pareto = {"axes": list(PARETO_KEYS), "maximise": True,
              "front": [{"trial_id": r.trial_id, "params": r.params,
                         "metrics": {k: r.metrics.get(k) for k in (*PARETO_KEYS, *BIAS_KEYS, OBJECTIVE)}}
                        for r in front],
              "dominated": [r.trial_id for r in finished if r not in front]}
    (out / "pareto.json").write_text(json.dumps(pareto, indent=2, default=str), encoding="utf-8")
    (out / "pareto.md").write_text(
        "# Pareto front over (monolingual, cross-lingual, multilingual) dev mAP\n\n"
        "No trial on the front is beaten on all three settings by another finished trial.\n\n"
        + markdown_table(["trial", *param_keys, *PARETO_KEYS, *BIAS_KEYS],
                         [[r.trial_id, *(r.params.get(k) for k in param_keys),
                           *(r.metrics.get(k) for k in (*PARETO_KEYS, *BIAS_KEYS))] for r in front]),
        encoding="utf-8")
    files.update({k: str(out / k) for k in ("pareto.json", "pareto.md")})

    if best is not None:
        bc = best_config(cfg, fixed, best.params)
        head = (f"# The best trial ({best.trial_id}, {OBJECTIVE} {best.metrics[OBJECTIVE]:.4g}) of the search in "
                f"{out.resolve()}.\n#\n#   hbt train --config {out.resolve() / 'best_config.yaml'}\n\n")
        path = out / "best_config.yaml"
        # Credentials in URIs (tracking.uri) never go into a file: they come from the environment.
        write_text_atomic(path, head + yaml.safe_dump(_redacted(bc.model_dump(mode="json")), sort_keys=False))
        load_config(path)  # what `hbt config validate` checks
        files["best_config.yaml"] = str(path)

    front_ids = {r.trial_id for r in front}
    ordered = sorted(param_keys, key=lambda k: k != "batching.alpha")  # alpha first: the study's axis
    for key in ordered:
        values = {r.params.get(key) for r in finished if _finite(r.params.get(key))}
        if len(values) > 1:
            path = out / f"plot_{key}.png"
            _plot(path, finished, key, front_ids)
            files[path.name] = str(path)

    return {
        "best": None if best is None else {"trial_id": best.trial_id, "params": best.params,
                                            OBJECTIVE: best.metrics[OBJECTIVE]},
        "pareto": [r.trial_id for r in front],
        "counts": counts,
        "files": files,
    }
