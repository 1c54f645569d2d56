"""Write docs/study/ablation-xy.md from the published X-Y ablation's report.json (rules over its numbers).

    hbt study --config configs/ablation-xy.yaml run_name=xy
    hbt study --report-from runs/ablation/xy --publish docs/study/ablation-xy
    python tools/ablation_doc.py docs/study/ablation-xy > docs/study/ablation-xy.md

The question the ablation asks is fixed (configs/ablation-xy.yaml); the answer is the
verdict of its primary comparison, X-Y per-batch against X-X-mono on cross-lingual mAP,
and every other sentence is a verdict or an interval the report holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from hbt.study.report import display_name, endpoints_table, fmt_comp, strategy_name, summary_table  # noqa: E402

INTRO = """\
# The X-Y puzzle: does per-batch X-Y reach X-X-mono on cross-lingual mAP?

In the local study, X-Y (one random ordered language pair per *pair*) trains the worst cross-lingual model in \
domain, against the paper. With per-pair X-Y, in-batch negatives that share the query's language are never \
positives. `configs/ablation-xy.yaml` crosses same-language vs cross-language pairs with one-language vs \
mixed-language batches, on XQuAD-R only, with everything else as in `configs/local.yaml`:

| | one language (pair) per batch | languages mixed in the batch |
|---|---|---|
| same-language pairs | X-X-mono (`x_x_mono`) | mixed-mono (`mixed_mono`) |
| cross-language pairs | X-Y per-batch (`x_y_batch`) | X-Y per-pair (`x_y_pair`, the study's X-Y) |
"""

ANSWERS = {
    "worse": "No: {a} stays below {b} on cross-lingual mAP: {c}",
    "better": "Yes, and beyond: {a} is above {b} on cross-lingual mAP: {c}",
    "inconclusive": "Not settled: {a} against {b} on cross-lingual mAP is {c}, an interval that holds 0",
}


def _sentence(name: str, comp: str, c: dict[str, Any]) -> str:
    verdict = {"better": "above", "worse": "below", "inconclusive": "not distinguishable from"}[c["verdict"]]
    return f"{name} is {verdict} {strategy_name(comp)}: {fmt_comp(c)} ({c['verdict']})"


def render(report: dict[str, Any], pct: int) -> str:
    under = report["hbt"]
    name = display_name(under)
    primary = report["endpoints"]["primary"]
    comps = primary["comparisons"]
    main = comps["x_x_mono"]
    answer = ANSWERS[main["verdict"]].format(a=name, b=display_name("x_x_mono"), c=fmt_comp(main))
    others = [_sentence(name, k, c) for k, c in comps.items() if k != "x_x_mono" and c]
    seeds = report["seeds"]
    n = sorted({len(v) for v in seeds.values()})
    seed_text = "; ".join(f"{display_name(s)} {', '.join(map(str, v))}" for s, v in seeds.items())
    rows = {r["key"]: r for r in report["rows"]}
    multi = rows.get("xquad_r/multilingual/mAP", {}).get("scores", {})
    out = [INTRO, f"**{answer}** ({pct}% interval, paired question bootstrap with the seed component).", "",
           "Against the other arms: " + "; ".join(others) + ".", "",
           f"Seeds per arm: {seed_text} ({'/'.join(map(str, n))} per arm; each arm's seed variance has "
           f"{min(n) - 1} degrees of freedom in the Welch–Satterthwaite count).", ""]
    if multi.get("mixed_mono") and multi.get("zero_shot"):
        out += [f"Multilingual mAP (one pool of every language): mixed-mono {multi['mixed_mono']['mean']:.4f}, "
                f"the untrained model {multi['zero_shot']['mean']:.4f}.", ""]
    out += ["## Cross-lingual mAP, X-Y per-batch against each arm (superiority)", "",
            endpoints_table(report), "", "## Every headline metric", "", summary_table(report), "",
            "The full report, with the method and the plots: [ablation-xy/report.md](ablation-xy/report.md)."]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("published", help="the folder `hbt study --publish` wrote (docs/study/ablation-xy)")
    args = ap.parse_args()
    report = json.loads((Path(args.published) / "report.json").read_text(encoding="utf-8"))
    sys.stdout.write(render(report, report.get("confidence_pct", 95)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
