"""The README's study section, generated from a study's ``report.json`` alone.

Every sentence here is a rule over the report's numbers: the answer verbatim, the
verdict counts, which open comparisons could still hide a loss beyond the margin,
estimates past the margin, language-bias differences whose intervals exclude 0, the
seeds' share of the variance, and a link to the full report. Nothing is typed by hand, so the section
cannot claim what the report does not hold (``tests/study/test_study_readme.py``
checks that the README's section is this function's output on docs/study/report.json).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hbt.study.report import display_name, fmt_comp, seed_share, strategy_name

BEGIN = "<!-- study: generated from docs/study/report.json by `hbt study --report-from DIR --publish`; do not edit -->"
END = "<!-- study: end -->"


def _comp(e: Mapping[str, Any]) -> str:
    return f"{e['key']} vs {strategy_name(e['comparator'])}, {fmt_comp(e)}"


def _family_lines(report: Mapping[str, Any], family: str, label: str) -> list[str]:
    ep = report["endpoints"]
    entries = ep.get(family) or []
    if not entries:
        return []
    m = ep["margin"]
    counts = {v: sum(e["verdict"] == v for e in entries) for v in ("better", "non-inferior", "inferior", "inconclusive")}
    out = [f"- {label}: non-inferior on {counts['non-inferior'] + counts['better']} of {len(entries)} "
           f"(better on {counts['better']}), inferior on {counts['inferior']}, inconclusive on "
           f"{counts['inconclusive']} (margin {m:g}, Holm over {len(entries)})."]
    open_ = [e for e in entries if e["verdict"] == "inconclusive"]
    wide = [e for e in open_ if e["low"] < -m]
    narrow = [e for e in open_ if e["low"] >= -m]
    if wide:
        out.append("  - Open, and a loss beyond the margin is not excluded (the interval reaches below "
                   f"−{m:g}): " + "; ".join(_comp(e) for e in wide) + ".")
    if narrow:
        out.append(f"  - Open although the interval lies above −{m:g}: not shown after Holm's correction: "
                   + "; ".join(_comp(e) for e in narrow) + ".")
    past = [e for e in entries if e["verdict"] != "inferior" and
            (e["diff"] if e.get("higher_is_better", True) else -e["diff"]) < -m]
    if past:
        out.append(f"  - Estimates past the margin, not shown inferior: " + "; ".join(_comp(e) for e in past) + ".")
    return out


def _primary_lines(report: Mapping[str, Any]) -> list[str]:
    p = report["endpoints"].get("primary")
    if not p:
        return []
    hbt = display_name(report["hbt"])
    parts = [f"{c['verdict']} than {strategy_name(k)} ({fmt_comp(c)})" if c["verdict"] in ("better", "worse")
             else f"not distinguishable from {strategy_name(k)} ({fmt_comp(c)})"
             for k, c in p["comparisons"].items() if c]
    return [f"- In domain, `{p['key']}` (superiority): {hbt} is " + "; ".join(parts) + "."]


def _bias_lines(report: Mapping[str, Any]) -> list[str]:
    hbt = display_name(report["hbt"])
    out = []
    for row in report["rows"]:
        if row["higher_is_better"]:
            continue
        for comp, c in row["comparisons"].items():
            if not c or c.get("low") is None:
                continue
            if c["low"] > 0:
                out.append(f"{hbt} is more language-biased than {strategy_name(comp)} on {row['key']} ({fmt_comp(c)})")
            elif c["high"] < 0:
                out.append(f"{hbt} is less language-biased than {strategy_name(comp)} on {row['key']} ({fmt_comp(c)})")
    return ["- Language bias (lower is less biased; 95% intervals that exclude 0): " + "; ".join(out) + "."] if out else []


def _seed_lines(report: Mapping[str, Any]) -> list[str]:
    shares = [s for e in report["endpoints"].get("domain_shift") or [] if (s := seed_share(e)).endswith("%")]
    if not shares:
        return []
    vals = sorted(int(s[:-1]) for s in shares)
    n = max(len(v) for v in report["seeds"].values())
    return [f"- Training seeds are {vals[0]}–{vals[-1]}% of the variance of the domain-shift differences (after "
            "the question × seed interaction). Where they add variance, the interval has Student t tails: each "
            f"strategy's {n} seeds bring {n - 1} degrees of freedom to the Welch–Satterthwaite count."]


def readme_section(report: Mapping[str, Any], timings: Mapping[str, float] | None = None,
                   machine: str | None = None) -> str:
    """The README's study section (between :data:`BEGIN` and :data:`END`), from the report alone.

    Args:
        report: ``report.json`` of a study.
        timings: its ``timings.json`` (for the wall time), if kept.
        machine: the machine it ran on, in words (``machine.json`` via :func:`hbt.hardware.machine_text`).
    """
    seeds = report["seeds"]
    n_seeds = sorted({len(v) for v in seeds.values()})
    run = f"{len(report['strategies'])} strategies × {'/'.join(map(str, n_seeds))} seeds"
    if timings and timings.get("total"):
        run += f" in {timings['total'] / 60:.0f} min"
    if machine:
        run += f" on {machine}"
    out = [BEGIN, "", f"**{report['question']}** Answer at this scale: **{report['answer']}**", "",
           f"The answer is derived from the report's verdicts and nothing else. The run: {run}. What it holds:", ""]
    out += _family_lines(report, "domain_shift", "Against the trained baselines (the question)")
    out += _family_lines(report, "fine_tuning", "Against the untrained model (does fine-tuning hurt?)")
    out += _primary_lines(report) + _bias_lines(report) + _seed_lines(report)
    out += ["", "The verdict and score tables, the method, every reduction of this run, the plots and the designs "
            "that would settle the open comparisons: [docs/study/report.md](docs/study/report.md)."]
    out += ["", END]
    return "\n".join(out)


def replace_section(readme: str, section: str) -> str:
    """``readme`` with the text between :data:`BEGIN` and :data:`END` (inclusive) replaced by ``section``.

    Raises:
        ValueError: the README has no such markers.
    """
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError("the README has no generated study section (its begin and end markers)")
    return readme[:start] + section + readme[end + len(END):]


PUBLISHED = ("report.md", "report.json", "config.yaml", "timings.json", "training_pace.json", "machine.json")


def publish(study_dir: str | Path, docs_dir: str | Path, readme: str | Path | None = None) -> list[Path]:
    """Copies a study's report, plots and run facts into ``docs_dir``; with ``readme``, rewrites its
    generated study section from the copied ``report.json``. Returns the files written.

    Raises:
        HbtError: no report in ``study_dir``, a damaged file, or a README without the section's markers.
    """
    import shutil

    from hbt.config import HbtError, read_json_file, write_text_atomic
    from hbt.hardware import machine_text

    study_dir, docs_dir = Path(study_dir), Path(docs_dir)
    report = read_json_file(study_dir / "report.json", "the study's report")
    docs_dir.mkdir(parents=True, exist_ok=True)
    for old in docs_dir.glob("*.png"):  # plots of an earlier publication that this report does not draw
        old.unlink()
    written = []
    for name in [*PUBLISHED, *report.get("files", {}).get("plots", [])]:
        if (study_dir / name).is_file():
            shutil.copyfile(study_dir / name, docs_dir / name)
            written.append(docs_dir / name)
    if readme is not None:
        readme = Path(readme)
        timings_f, machine_f = study_dir / "timings.json", study_dir / "machine.json"
        timings = read_json_file(timings_f, "the study's timings") if timings_f.is_file() else None
        machine = machine_text(read_json_file(machine_f, "the study's machine")) if machine_f.is_file() else None
        try:
            text = replace_section(readme.read_text(encoding="utf-8"), readme_section(report, timings, machine))
        except ValueError as e:
            raise HbtError(f"{readme}: {e}") from None
        write_text_atomic(readme, text)
        written.append(readme)
    return written
