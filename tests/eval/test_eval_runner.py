"""Scoring on synthetic embeddings (fast), split/language selection, and the end-to-end job (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hbt.config import config_from_dict
from hbt.eval.benchmarks import BenchmarkError, BitextBenchmark, load_miracl, load_mlqa_r
from hbt.eval.metrics import LAREQA_METRICS
from hbt.eval.metrics import per_query_key
from hbt.eval.results import Collector, EvalResult
from hbt.eval.runner import load_benchmarks
from hbt.eval.scoring import score_miracl, score_qa, score_tatoeba

EVAL_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "eval"
ARTICLES = ["Warsaw", "Normans"]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def mlqa_fixture():
    return load_mlqa_r(EVAL_ASSETS / "mlqa_original", ["en", "de", "zh"])


def _oracle_embeddings(bench, lang_weight: float, seed: int = 0):
    """Each question id gets a direction; its answer sentences sit on it, other sentences elsewhere.

    ``lang_weight`` adds a per-language direction to queries and candidates, which
    pulls a query towards candidates in its own language.
    """
    rng = np.random.default_rng(seed)
    d = 64
    qdir = {q: rng.standard_normal(d) for q in bench.answers}
    ldir = {lang: rng.standard_normal(d) for lang in bench.languages}
    c = rng.standard_normal((bench.num_candidates, d))
    for qid, ans in bench.answers.items():
        for lang, ci in ans.items():
            c[ci] = 3 * qdir[qid]
    c = np.array([_unit(v) * 1.0 for v in c]) + lang_weight * np.array([_unit(ldir[lang]) for lang in bench.cand_langs])
    q = np.array([_unit(qdir[qid]) for qid in bench.query_qids])
    q = q + lang_weight * np.array([_unit(ldir[lang]) for lang in bench.query_langs])
    return _unit(q), _unit(c)


def _cfg(**eval_kw):
    return config_from_dict({"eval": eval_kw})


def test_oracle_scores_are_perfect(mlqa_fixture):
    b = mlqa_fixture
    q, c = _oracle_embeddings(b, lang_weight=0.0)
    out = Collector()
    score_qa(b, q, c, _cfg(num_shards=2), out)
    m = out.metrics
    for setting in ("monolingual", "cross_lingual", "multilingual"):
        assert m[f"mlqa_r/{setting}/mAP"] == pytest.approx(1.0)
    assert m["mlqa_r/monolingual/de/R@1"] == 1.0
    assert m["mlqa_r/cross_lingual/de-en/mAP"] == pytest.approx(1.0)
    # de->zh shares only q1; en->zh shares q1 and q3
    assert out.per_query["mlqa_r/cross_lingual/de-zh/AP"].size == 1
    assert out.per_query["mlqa_r/cross_lingual/en-zh/AP"].size == 2
    # multilingual: a query has |rel| answers, all at the top; R@1 = 1/|rel|
    rel_sizes = np.array([len(b.answers[qid]) for qid in b.query_qids])
    np.testing.assert_allclose(out.per_query["mlqa_r/multilingual/R@1"], 1.0 / rel_sizes)
    np.testing.assert_allclose(out.per_query["mlqa_r/bias/rank_distance_mean"], rel_sizes - 1)
    assert m["mlqa_r/bias/own_language_chance"] == pytest.approx(np.mean(1.0 / rel_sizes))
    assert m["mlqa_r/bias/mAP_spread"] == pytest.approx(0.0) and m["mlqa_r/bias/mAP_std"] == pytest.approx(0.0)
    matrix = out.matrices["mlqa_r/cross_lingual/mAP"]
    assert matrix["languages"] == ["en", "de", "zh"]
    assert np.allclose(np.array(matrix["values"], dtype=float), 1.0)
    for metric in LAREQA_METRICS:
        assert f"mlqa_r/multilingual/{metric}" in m and f"mlqa_r/cross_lingual/{metric}" in out.matrices


def test_language_pull_shows_in_bias_metrics(mlqa_fixture):
    b = mlqa_fixture
    q, c = _oracle_embeddings(b, lang_weight=0.6)
    out = Collector()
    score_qa(b, q, c, _cfg(settings=["multilingual"]), out)
    assert out.metrics["mlqa_r/bias/own_language_top1"] == 1.0
    assert "mlqa_r/monolingual/mAP" not in out.metrics  # only the configured settings
    assert "mlqa_r/cross_lingual/mAP" not in out.matrices


def test_monolingual_mean_is_macro_over_languages(mlqa_fixture):
    b = mlqa_fixture
    rng = np.random.default_rng(3)
    q, c = _unit(rng.standard_normal((b.num_queries, 8))), _unit(rng.standard_normal((b.num_candidates, 8)))
    out = Collector()
    score_qa(b, q, c, _cfg(settings=["monolingual"]), out)
    per_lang = [out.metrics[f"mlqa_r/monolingual/{x}/mAP"] for x in b.languages]
    assert out.metrics["mlqa_r/monolingual/mAP"] == pytest.approx(np.mean(per_lang))
    assert out.per_query["mlqa_r/monolingual/AP"].size == b.num_queries
    assert "mlqa_r/monolingual/mAP" not in out.per_query  # AP per query, mAP is their mean


def test_tatoeba_scoring():
    p = BitextBenchmark("abc", ["a", "b", "c"], ["x", "y", "z"])
    e = np.eye(3, dtype=np.float32)
    swapped = e[[1, 0, 2]]  # src 0 <-> eng 1: two of three wrong
    out = Collector()
    score_tatoeba([p, BitextBenchmark("def", ["a", "b", "c"], ["x", "y", "z"])], [(e, e), (e, swapped)], _cfg(), out)
    assert out.metrics["tatoeba/abc-eng/acc@1"] == 1.0
    assert out.metrics["tatoeba/def-eng/acc@1"] == pytest.approx(1 / 3)
    assert out.metrics["tatoeba/eng-def/acc@1"] == pytest.approx(1 / 3)
    assert out.metrics["tatoeba/acc@1"] == pytest.approx((1 + 1 / 3) / 2)
    # a miss ranks the gold line 2nd or 3rd: with orthogonal vectors all others tie at 0, broken by id
    assert out.per_query["tatoeba/def-eng/MRR"].tolist() == pytest.approx([1 / 2, 1 / 2, 1.0])


def test_miracl_scoring_against_hand_computation():
    sw = load_miracl(EVAL_ASSETS / "miracl", "sw")
    d = np.eye(len(sw.doc_ids), dtype=np.float32)
    # query 10 lands on doc 4#0 (judged 0) first, then 1#0 (rel 1); query 11 on 2#0 directly
    q = np.zeros((2, len(sw.doc_ids)), np.float32)
    q[0, sw.doc_ids.index("4#0")] = 1.0
    q[0, sw.doc_ids.index("1#0")] = 0.5
    q[1, sw.doc_ids.index("2#0")] = 1.0
    out = Collector()
    score_miracl([sw], [(q, d)], _cfg(num_shards=3), out)
    # q10 ranking: 4#0 (0), 1#0 (1), then ties at 0 by id: 1#1 (1), 2#0, 3#0, 5#0
    dcg = 1 / np.log2(3) + 1 / np.log2(4)
    idcg = 1 + 1 / np.log2(3)
    assert out.per_query["miracl/sw/nDCG@10"].tolist() == pytest.approx([dcg / idcg, 1.0])
    assert out.per_query["miracl/sw/R@100"].tolist() == [1.0, 1.0]
    assert out.metrics["miracl/nDCG@10"] == pytest.approx((dcg / idcg + 1) / 2)


def test_eval_result_roundtrip(tmp_path):
    r = EvalResult(
        {"xquad_r/multilingual/mAP": 0.5, "tatoeba/deu-eng/acc@1": 0.9},
        {"xquad_r/multilingual/AP": np.array([0.25, 0.75])},
        {"xquad_r/cross_lingual/mAP": {"languages": ["de", "en"], "values": [[1.0, 0.5], [0.4, 1.0]]}},
        {"split": "test"},
    )
    r.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"metrics.json", "matrices.json", "per_query.npz", "info.json"}
    back = EvalResult.load(tmp_path)
    assert back.metrics == r.metrics and back.matrices == r.matrices and back.info == r.info
    np.testing.assert_array_equal(back.per_query["xquad_r/multilingual/AP"], [0.25, 0.75])


# -- split and language selection ------------------------------------------------


def test_test_split_restricts_to_heldout_articles():
    cfg = config_from_dict({"data": {"heldout_articles": ARTICLES, "dev_articles": ["Oxygen"]},
                            "eval": {"languages": ["de", "en"], "benchmarks": ["xquad_r", "tatoeba"],
                                     "tatoeba_languages": ["deu"], "max_questions": 5}})
    b = load_benchmarks(cfg, "test")
    assert b["xquad_r"].articles == ARTICLES and b["xquad_r"].languages == ["de", "en"]
    assert len(b["tatoeba"][0].queries) == 5 and len(b["tatoeba"][0].src_texts) == 1000  # targets stay whole
    dev = load_benchmarks(cfg, "dev")
    assert list(dev) == ["xquad_r"] and dev["xquad_r"].articles == ["Oxygen"]
    everything = load_benchmarks(config_from_dict({"data": {"heldout_articles": ARTICLES},
                                                   "eval": {"heldout_only": False, "languages": ["en"]}}))
    assert len(everything["xquad_r"].articles) == 48


def test_dev_split_needs_dev_articles():
    with pytest.raises(ValueError, match="dev_articles"):
        load_benchmarks(config_from_dict({}), "dev")
    with pytest.raises(ValueError, match="split"):
        load_benchmarks(config_from_dict({}), "train")


def test_languages_are_restricted_per_benchmark():
    cfg = config_from_dict({"eval": {"benchmarks": ["xquad_r", "mlqa_r"], "languages": ["el", "de"], "max_questions": 3}})
    b = load_benchmarks(cfg)
    assert b["xquad_r"].languages == ["el", "de"] and b["mlqa_r"].languages == ["de"]
    with pytest.raises(BenchmarkError, match=r"unknown language code\(s\) \['xx'\]"):
        load_benchmarks(config_from_dict({"eval": {"languages": ["de", "xx"]}}))
    with pytest.raises(BenchmarkError, match=r"unknown language code\(s\) \['el'\] for \['mlqa_r'\]"):
        load_benchmarks(config_from_dict({"eval": {"benchmarks": ["mlqa_r"], "languages": ["el"]}}))
    with pytest.raises(BenchmarkError, match="none of"):
        load_benchmarks(config_from_dict({"eval": {"benchmarks": ["xquad_r", "mlqa_r"], "languages": ["el"]}}))


def test_miracl_needs_a_path():
    with pytest.raises(BenchmarkError, match="miracl_path"):
        load_benchmarks(config_from_dict({"eval": {"benchmarks": ["miracl"]}}))


# -- end to end --------------------------------------------------------------------


@pytest.mark.slow
def test_run_eval_job_end_to_end(tiny_model_dir, ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    from hbt.eval.job import run_eval_job

    cfg = config_from_dict({
        "output_dir": str(tmp_path / "runs"),
        "run_name": "eval-e2e",
        "data": {"heldout_articles": ARTICLES},
        "eval": {
            "benchmarks": ["xquad_r", "mlqa_r", "tatoeba", "miracl"],
            "languages": ["de", "zh"],
            "max_questions": 12,
            "tatoeba_languages": ["deu", "cmn"],
            "miracl_path": str(EVAL_ASSETS / "miracl"),
            "miracl_languages": ["sw", "de"],
            "num_shards": 2,
            "batch_size": 32,
            "precision": "bf16",
        },
    })
    out = tmp_path / "eval"
    doc = run_eval_job(cfg, str(tiny_model_dir), str(out))
    metrics = doc["metrics"]
    assert json.loads((out / "summary.json").read_text()) == {k: v for k, v in doc.items() if k not in ("out_dir", "table")}
    assert doc["benchmark"] == ["xquad_r", "mlqa_r", "tatoeba", "miracl"]
    assert doc["benchmarks"]["xquad_r"]["settings"]["crosslingual"]["mAP"] == metrics["xquad_r/cross_lingual/mAP"]
    assert doc["benchmarks"]["miracl"]["settings"]["dev"]["nDCG@10"] == metrics["miracl/nDCG@10"]

    for key in ("xquad_r/multilingual/mAP", "xquad_r/monolingual/mAP", "xquad_r/monolingual/de/mAP",
                "xquad_r/cross_lingual/mAP", "xquad_r/cross_lingual/de-zh/mAP", "xquad_r/bias/rank_distance_mean",
                "xquad_r/bias/own_language_top1", "mlqa_r/multilingual/mAP", "mlqa_r/cross_lingual/zh-de/R@10",
                "tatoeba/deu-eng/acc@1", "tatoeba/acc@1", "miracl/de/nDCG@10", "miracl/sw/R@100"):
        assert key in metrics and np.isfinite(metrics[key]), key
        # rank distances are ranks (>= 1); every other metric here is a rate or a mean of ranks' reciprocals
        assert (metrics[key] >= 1.0) if "rank_distance" in key else (0.0 <= metrics[key] <= 1.0), key
    assert all(np.isfinite(v) for v in metrics.values())

    result = EvalResult.load(out)
    assert result.metrics == metrics
    assert result.per_query["xquad_r/multilingual/AP"].shape == (24,)  # 12 questions x 2 languages
    assert result.per_query["tatoeba/deu-eng/acc@1"].shape == (12,)  # 12 sampled query lines
    # the bootstrap's row labels survive the round trip: questions shared by a question's languages
    units = result.units["xquad_r/cross_lingual/AP"]
    assert len(units["question"]) == result.per_query["xquad_r/cross_lingual/AP"].size
    assert sorted(set(units["stratum"])) == ["xquad_r/cross_lingual/de-zh/AP", "xquad_r/cross_lingual/zh-de/AP"]
    assert set(units["article"]) <= set(ARTICLES)
    # every metric with a per-query array is its mean (XQuAD-R and Tatoeba parts have equal sizes)
    checked = 0
    for key, value in metrics.items():
        pq = result.per_query.get(per_query_key(key))
        if pq is not None and key.split("/")[0] in ("xquad_r", "tatoeba"):
            assert pq.mean() == pytest.approx(value), key
            checked += 1
    assert checked > 50
    assert result.matrices["xquad_r/cross_lingual/mAP"]["languages"] == ["de", "zh"]
    assert result.info["xquad_r"]["articles"] == 2
    assert (out / "config.yaml").exists() and (out / "runs" / "miracl-sw.trec").exists()

    run = json.loads((out / "mlflow_run.json").read_text())
    client = MlflowClient(run["tracking_uri"])
    mlrun = client.get_run(run["run_id"])
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "eval-e2e"
    assert mlrun.data.metrics["xquad_r/multilingual/mAP"] == pytest.approx(metrics["xquad_r/multilingual/mAP"])
    assert mlrun.data.metrics["tatoeba/deu-eng/acc_at_1"] == pytest.approx(metrics["tatoeba/deu-eng/acc@1"])
    assert mlrun.data.params["eval.precision"] == "bf16"
    artifacts = {a.path for a in client.list_artifacts(run["run_id"])}
    assert {"metrics.json", "per_query.npz", "config.yaml"} <= artifacts


@pytest.mark.slow
def test_evaluate_dev_split(tiny_model_dir, ray_local, tmp_path):
    from hbt.eval.runner import evaluate

    cfg = config_from_dict({"data": {"dev_articles": ["Oxygen"]},
                            "eval": {"benchmarks": ["xquad_r", "tatoeba"], "languages": ["en", "de"], "max_questions": 6}})
    r = evaluate(cfg, str(tiny_model_dir), str(tmp_path), split="dev")
    assert r.info["split"] == "dev" and r.info["benchmarks"] == ["xquad_r"]
    assert not any(k.startswith("tatoeba") for k in r.metrics)
    assert r.per_query["xquad_r/multilingual/AP"].shape == (12,)


@pytest.mark.slow
def test_small_sets_are_searched_in_the_driver_with_the_actors_results(tiny_model_dir, ray_local, tmp_path):
    """Below eval.driver_search_max_mb the embeddings are fetched and searched in-process; the metrics
    equal the search actors' (driver_search_max_mb=0) exactly, ranks being exact either way."""
    from hbt.eval.runner import evaluate

    def run(mb: float, name: str) -> EvalResult:
        cfg = config_from_dict({
            "data": {"heldout_articles": ARTICLES},
            "eval": {"benchmarks": ["xquad_r", "tatoeba", "miracl"], "languages": ["de", "zh"], "max_questions": 12,
                     "tatoeba_languages": ["deu"], "miracl_path": str(EVAL_ASSETS / "miracl"),
                     "miracl_languages": ["sw"], "num_shards": 2, "precision": "fp32", "driver_search_max_mb": mb},
        })
        return evaluate(cfg, str(tiny_model_dir), str(tmp_path / name))

    driver, actors = run(64, "driver"), run(0, "actors")
    assert driver.info["search"] == "driver" and actors.info["search"] == "2 actor(s)"
    assert 0 < driver.info["embeddings_mb"] < 64
    assert driver.metrics.keys() == actors.metrics.keys()
    for key, value in driver.metrics.items():
        assert value == pytest.approx(actors.metrics[key], abs=1e-9, nan_ok=True), key
