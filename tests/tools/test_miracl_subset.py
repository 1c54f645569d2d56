"""tools/miracl_subset.py: the cut keeps every judged passage, caps the rest, and hbt loads the result."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from hbt.eval.benchmarks import load_miracl

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "tests" / "assets" / "eval" / "miracl"


def _tool():
    spec = importlib.util.spec_from_file_location("miracl_subset", ROOT / "tools" / "miracl_subset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_subset_keeps_judged_passages_and_loads(tmp_path):
    full = {lang: load_miracl(ASSET, lang) for lang in ("de", "sw")}
    judged = {lang: {d for q in b.qrels.values() for d in q} for lang, b in full.items()}
    cap = max(len(j) for j in judged.values()) + 1
    record = _tool().main(["--src", str(ASSET), "--dest", str(tmp_path), "--languages", "de,sw",
                           "--max-passages", str(cap), "--seed", "0"])
    for lang, b in full.items():
        cut = load_miracl(tmp_path, lang)
        assert cut.query_ids == b.query_ids and cut.qrels == b.qrels
        assert judged[lang] & set(b.doc_ids) <= set(cut.doc_ids)
        assert len(cut.doc_ids) == min(cap, len(b.doc_ids)) == record["languages"][lang]["kept"]
    assert json.loads((tmp_path / "SUBSET.json").read_text())["max_passages"] == cap
    # Seeded: the same call keeps the same passages.
    again = tmp_path / "again"
    _tool().main(["--src", str(ASSET), "--dest", str(again), "--languages", "de", "--max-passages", str(cap)])
    assert load_miracl(again, "de").doc_ids == load_miracl(tmp_path, "de").doc_ids
