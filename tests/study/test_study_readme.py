"""The README's study section is generated from docs/study/report.json, by rules over its numbers."""

from __future__ import annotations

import json

from hbt.config import PROJECT_ROOT
from hbt.hardware import machine_text
from hbt.study.readme import BEGIN, END, readme_section, replace_section
from tests.study.test_study_report import DOMAIN_SHIFT, METRICS, _result, _scores

from hbt.study.report import compute_report

DOCS = PROJECT_ROOT / "docs" / "study"


def test_the_readme_study_section_is_the_published_reports():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    report = json.loads((DOCS / "report.json").read_text())
    timings = json.loads((DOCS / "timings.json").read_text())
    machine = machine_text(json.loads((DOCS / "machine.json").read_text()))
    section = readme[readme.index(BEGIN):readme.index(END) + len(END)]
    assert section == readme_section(report, timings, machine), (
        "README's study section differs from docs/study/report.json: "
        "run `hbt study --report-from STUDY_DIR --publish docs/study --readme README.md`")


def test_rules_name_open_comparisons_estimates_past_the_margin_and_bias():
    # Tatoeba 0.015 worse for HBT, margin 0.01: an estimate past the margin; bias 0.3 vs 0.8 and 0.5: less biased.
    report = compute_report(_scores(0.0, tatoeba_shift=-0.015), _result(0.0, 99), METRICS, n_samples=2000,
                            domain_shift=DOMAIN_SHIFT, margin=0.01, primary="xquad_r/multilingual/mAP")
    text = readme_section(report)
    assert report["answer"] in text
    lines = text.splitlines()
    family = next(ln for ln in lines if ln.startswith("- Against the trained baselines"))
    verdicts = [e["verdict"] for e in report["endpoints"]["domain_shift"]]
    assert f"inconclusive on {verdicts.count('inconclusive')}" in family
    past = [e for e in report["endpoints"]["domain_shift"] if e["diff"] < -0.01 and e["verdict"] != "inferior"]
    if past:
        assert any(ln.strip().startswith("- Estimates past the margin") for ln in lines)
    assert "HBT is less language-biased than X-X-mono on xquad_r/bias/own_language_top1" in text
    assert "more language-biased" not in text
    assert "In domain, `xquad_r/multilingual/mAP`" in text


def test_replace_section_keeps_the_rest_of_the_readme():
    readme = f"# title\n\nintro\n\n{BEGIN}\nold\n{END}\n\n## after\n"
    assert replace_section(readme, f"{BEGIN}\nnew\n{END}") == f"# title\n\nintro\n\n{BEGIN}\nnew\n{END}\n\n## after\n"
