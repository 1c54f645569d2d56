"""eval.max_questions: a seeded sample stratified by article (XQuAD-R) or context (MLQA-R); Tatoeba query lines."""

from __future__ import annotations

from collections import Counter

from hbt.config import PROJECT_ROOT, load_config
from hbt.eval.benchmarks import load_mlqa_r, load_tatoeba, load_xquad_r, sample_tatoeba
from hbt.eval.sampling import stratified_sample

from ..conftest import SHARED_DATA, XQUAD_R

HELDOUT = ["Super_Bowl_50", "Normans", "Steam_engine", "Oxygen", "Amazon_rainforest", "Genghis_Khan",
           "Prime_number", "Rhine", "Force", "Kenya"]


def test_every_heldout_article_is_present_in_proportion():
    full = load_xquad_r(XQUAD_R, ["en", "de"], HELDOUT)
    per_article = Counter(full.question_article.values())
    n = 150
    total = sum(per_article.values())
    sample = load_xquad_r(XQUAD_R, ["en", "de"], HELDOUT, max_questions=n, sample_seed=0)
    got = Counter(sample.question_article.values())
    assert sum(got.values()) == n and set(got) == set(HELDOUT)
    for art, k in per_article.items():
        assert abs(got[art] - n * k / total) <= 1, (art, got[art], n * k / total)
    again = load_xquad_r(XQUAD_R, ["en", "de"], HELDOUT, max_questions=n, sample_seed=0)
    assert again.query_qids == sample.query_qids  # the same seed, the same sample
    other = load_xquad_r(XQUAD_R, ["en", "de"], HELDOUT, max_questions=n, sample_seed=1)
    assert set(other.query_qids) != set(sample.query_qids)
    # The pool stays every sentence of the held-out articles.
    assert sample.num_candidates == full.num_candidates


def test_first_ids_would_have_skipped_articles():
    """Why the sampler exists: sorted ids cluster by article."""
    full = load_xquad_r(XQUAD_R, ["en"], HELDOUT)
    first = sorted(full.answers)[:150]
    assert len({full.question_article[q] for q in first}) < len(HELDOUT)


def test_mlqa_sample_is_stratified_by_context_and_reproducible():
    a = load_mlqa_r(SHARED_DATA / "mlqa-r", ["en", "de"], max_questions=100, sample_seed=3)
    b = load_mlqa_r(SHARED_DATA / "mlqa-r", ["en", "de"], max_questions=100, sample_seed=3)
    assert len(a.answers) == 100 and a.query_qids == b.query_qids
    assert len(set(a.question_context.values())) > 80  # spread over contexts, not the first few


def test_stratified_sample_quotas():
    items = [f"q{i}" for i in range(100)]
    strata = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    got = Counter(strata[items.index(x)] for x in stratified_sample(items, strata, 10, seed=0))
    assert got == {"a": 5, "b": 3, "c": 2}


def test_tatoeba_queries_are_sampled_and_targets_stay_whole():
    pairs = load_tatoeba(SHARED_DATA / "tatoeba", ["deu", "fra"])
    s = sample_tatoeba(pairs, 150, seed=0)
    assert all(len(p.queries) == 150 and len(p.src_texts) == 1000 for p in s)
    assert s[0].queries != list(range(150))  # random lines, not the first (shorter) ones
    assert s[0].queries == sample_tatoeba(pairs, 150, seed=0)[0].queries


def test_local_config_evaluates_full_pools():
    """Every held-out XQuAD-R question and every Tatoeba line is a query (both are encoded anyway);
    MLQA-R alone is sampled, its pool cut to the sample's paragraphs (the report labels it)."""
    cfg = load_config(PROJECT_ROOT / "configs" / "local.yaml")
    e = cfg.eval
    assert e.pool_of("xquad_r") == "full" and e.max_questions_of("xquad_r") is None
    assert e.max_questions_of("tatoeba") is None
    assert e.max_questions_of("mlqa_r") == 150 and e.pool_of("mlqa_r") == "question_paragraphs"
    assert len(cfg.study.seeds) == 3 and cfg.batching.language_schedule == "balanced"
