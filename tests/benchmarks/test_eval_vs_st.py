"""benchmarks/eval_vs_st.py: ``hbt eval`` against sentence-transformers + FAISS on the same questions and pools.

The numbers are meaningless at these sizes; the tests keep the script running and check
that the user-side LAReQA scoring is hbt's: the same ranks from the same scores, and the
same three mAPs when both contenders embed with the same model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.benchmarks.test_benchmark_scripts import run_script

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _script():
    sys.path.insert(0, str(BENCH))
    import eval_vs_st

    return eval_vs_st


def test_user_side_ranks_and_ap_are_hbts():
    faiss = pytest.importorskip("faiss")
    from hbt.eval.metrics import average_precision, ranks_from_scores

    m = _script()
    rng = np.random.default_rng(0)
    c = rng.standard_normal((300, 16)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q = rng.standard_normal((40, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    rel = [np.sort(rng.choice(300, size=int(rng.integers(1, 5)), replace=False)) for _ in range(40)]
    index = faiss.IndexFlatIP(16)
    index.add(c)
    timer = {"search": 0.0, "score": 0.0}
    by_faiss = m._ranks_faiss(index, q, rel, timer)
    by_numpy = m._ranks_numpy(c, q, rel, timer)
    scores = q @ c.T
    for i in range(40):
        want = ranks_from_scores(scores[i], rel[i])
        assert list(by_faiss[i]) == list(want)
        assert list(by_numpy[i]) == list(want)
        assert m._ap(by_faiss[i]) == pytest.approx(average_precision(want))


@pytest.mark.slow
def test_eval_vs_st_tiny(tiny_model_dir, tmp_path):
    """Both contenders on 2 languages x 20 questions of the tiny model: the JSON line, and mAPs that agree.

    fp32 and the question paragraphs' pools keep the check exact and short: the
    benchmark's own comparison (the default bf16 weights, full pools) reports its
    ``map_abs_diff``; bf16 rounds hbt's and sentence-transformers' pooling apart.
    """
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    from hbt.model.encoder import load_encoder

    encoder, tokenizer = load_encoder(str(tiny_model_dir))
    st_dir = encoder.save(tmp_path / "tiny-st", tokenizer=tokenizer)  # a sentence-transformers directory too
    out = run_script("eval_vs_st.py", "--model", str(st_dir), "--langs", "en,de", "--max-questions", "20",
                     "--override", "eval.precision=fp32", "--override", "eval.pool=question_paragraphs",
                     "--out", str(tmp_path / "r.json"))
    assert out["benchmark"] == "eval_vs_st"
    assert json.loads((tmp_path / "r.json").read_text())["benchmark"] == "eval_vs_st"
    assert set(out["summary"]) == {"hbt", "st_faiss"}
    hbt, st = out["summary"]["hbt"], out["summary"]["st_faiss"]
    for s in (hbt, st):
        assert s["wall_s_median"] > 0
        assert set(s["phases_median"]) == {"start", "load", "encode", "search_score", "finish"}
    assert hbt["sizes"] == st["sizes"] and st["sizes"]["languages"] == ["en", "de"]
    assert hbt["config"]["precision"] == st["config"]["precision"] == "fp32"
    assert out["comparisons"]["st_faiss"]["same_queries_and_pools"]
    for setting in ("multilingual", "monolingual", "cross_lingual"):
        assert 0 < hbt["mAP"][setting] <= 1
        assert out["map_abs_diff"][setting] <= 0.005, out["map_abs_diff"]
        assert out["map_within_0.005"][setting]
    assert out["speed_ratio_end_to_end"] > 0
    assert "hbt >= 1.0x st_faiss end to end" in out["targets_met"]
    assert out["commands"]["hbt"][1:4] == ["eval", "--model", str(st_dir)]
