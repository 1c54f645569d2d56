"""XQuAD-R and MLQA-R (the LAReQA protocol): parallel questions over a multilingual sentence pool.

Every sentence of every paragraph is a candidate, and a question's relevant
candidates are the answer sentences of its parallel versions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from hbt.config import MLQA_R_LANGUAGES, XQUAD_R_LANGUAGES
from hbt.data.squad import SquadArticle, parse_squad
from hbt.eval.benchmarks._files import BenchmarkError
from hbt.eval.sampling import stratified_sample


@dataclass
class QABenchmark:
    """Parallel questions over a multilingual sentence pool (the LAReQA setup).

    Queries are ordered by language (in ``languages`` order), then by question
    id; candidates by language, then in file order. Index arrays refer to these
    orders.

    Attributes:
        name: ``xquad_r`` or ``mlqa_r``.
        languages: the languages loaded, in order.
        query_qids: question id of each query (shared by its parallel versions).
        query_langs: language of each query.
        query_texts: question text of each query.
        cand_langs: language of each candidate sentence.
        cand_texts: text of each candidate sentence.
        cand_keys: ``lang/article/paragraph/sentence`` position of each candidate.
        answers: ``qid -> lang -> candidate index`` of the answer sentence.
        articles: the article keys loaded (English titles for XQuAD-R).
        question_article: ``qid -> article`` (the resampling unit of ``study.bootstrap_unit: article``).
        question_context: ``qid -> article/paragraph`` (MLQA-R's sampling strata).
        all_questions: questions available before ``max_questions`` sampled them.
    """

    name: str
    languages: list[str]
    query_qids: list[str]
    query_langs: list[str]
    query_texts: list[str]
    cand_langs: list[str]
    cand_texts: list[str]
    cand_keys: list[str]
    answers: dict[str, dict[str, int]]
    articles: list[str] = field(default_factory=list)
    question_article: dict[str, str] = field(default_factory=dict)
    question_context: dict[str, str] = field(default_factory=dict)
    all_questions: int = 0

    def __post_init__(self) -> None:
        self._q_lang = np.asarray(self.query_langs)
        self._c_lang = np.asarray(self.cand_langs)

    @property
    def num_queries(self) -> int:
        return len(self.query_qids)

    @property
    def num_candidates(self) -> int:
        return len(self.cand_texts)

    def queries_in(self, lang: str, also_in: str | None = None) -> np.ndarray:
        """Indices of the queries in ``lang`` (optionally only those whose qid also exists in ``also_in``)."""
        idx = np.flatnonzero(self._q_lang == lang)
        if also_in is not None:
            idx = np.array([i for i in idx if also_in in self.answers[self.query_qids[i]]], dtype=np.int64)
        return idx.astype(np.int64)

    def pool(self, langs: Iterable[str]) -> np.ndarray:
        """Indices of the candidates whose language is in ``langs`` (in candidate order)."""
        return np.flatnonzero(np.isin(self._c_lang, list(langs))).astype(np.int64)

    def relevant(self, query: int, langs: Iterable[str]) -> np.ndarray:
        """Global candidate indices of the answer sentences of ``query``'s parallel versions in ``langs``."""
        ans = self.answers[self.query_qids[query]]
        return np.array(sorted(ans[lang] for lang in langs if lang in ans), dtype=np.int64)


def parse_squad_file(path: str | os.PathLike, split_when_missing: bool = False) -> list[SquadArticle]:
    """Parses a SQuAD-format benchmark file with :func:`hbt.data.squad.parse_squad` (the training reader's parser).

    Args:
        path: the JSON file (XQuAD-R / MLQA-R layout).
        split_when_missing: paragraphs without ``sentences`` are split with
            :func:`~hbt.data.sentences.split_sentences` (MLQA's original files) instead of failing.

    Raises:
        BenchmarkError: anything :func:`~hbt.data.squad.parse_squad` rejects, or an unreadable file.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise BenchmarkError(path, f"cannot read: {e.strerror}") from None
    return parse_squad(raw, str(path), "split" if split_when_missing else "require")


def _lang_files(path: Path, name: str, languages: list[str], known: list[str]) -> dict[str, Path]:
    if not path.is_dir():
        raise BenchmarkError(path, f"{name}: not a directory")
    files = {}
    present = sorted(p.stem for p in path.glob("*.json"))
    for lang in languages:
        f = path / f"{lang}.json"
        if not f.exists():
            raise BenchmarkError(
                path, f"{name}: unknown language code {lang!r} (no {f.name}; available: {present or known})"
            )
        files[lang] = f
    return files


def _article_keys(lang: str, arts: list[SquadArticle], ref: list[SquadArticle] | None, path: Path) -> list[str]:
    """Keys articles by the English title.

    XQuAD-R's files share titles across languages (checked on the data), but
    a translated title would break a title list, so when titles differ the
    articles are aligned by position and checked by their question ids.
    """
    titles = [a.title for a in arts]
    if ref is None:
        return titles
    ref_titles = [a.title for a in ref]
    if titles == ref_titles:
        return titles
    if len(arts) == len(ref) and all(a.qids() == r.qids() for a, r in zip(arts, ref)):
        return ref_titles
    raise BenchmarkError(
        path, f"cannot align the articles of {lang} with en.json by title or by position and question ids"
    )


def _pool_of_question_paragraphs(
    cand_langs: list[str], cand_texts: list[str], cand_keys: list[str], answers: dict[str, dict[str, int]]
) -> tuple[list[str], list[str], list[str], dict[str, dict[str, int]]]:
    """Keeps only the candidates of paragraphs (per language) that hold a kept question.

    A capped question set over the full pool would score mostly distractor
    sentences; this keeps the LAReQA protocol inside the selected paragraphs.
    """
    def article(key: str) -> str:
        return key.rsplit("/", 1)[0]

    wanted = {article(cand_keys[i]) for per in answers.values() for i in per.values()}
    keep = [i for i, k in enumerate(cand_keys) if article(k) in wanted]
    new_index = {old: new for new, old in enumerate(keep)}
    return ([cand_langs[i] for i in keep], [cand_texts[i] for i in keep], [cand_keys[i] for i in keep],
            {q: {lang: new_index[i] for lang, i in per.items()} for q, per in answers.items()})


def _build_qa(
    name: str,
    per_lang: dict[str, list[SquadArticle]],
    keys: dict[str, list[str]],
    articles: list[str] | None,
    max_questions: int | None,
    source: Path,
    restrict_pool: bool = False,
    sample_by: str = "article",
    sample_seed: int = 0,
) -> QABenchmark:
    languages = list(per_lang)
    if articles is not None:
        wanted = set(articles)
        known = set().union(*(set(k) for k in keys.values()))
        unknown = sorted(wanted - known)
        if unknown:
            raise BenchmarkError(source, f"{name}: unknown article title(s) {unknown}")
    # Candidates: every sentence of every kept paragraph, language by language.
    cand_langs, cand_texts, cand_keys = [], [], []
    answers: dict[str, dict[str, int]] = {}
    questions: dict[str, dict[str, str]] = {}
    article_of: dict[str, str] = {}
    context_of: dict[str, str] = {}
    kept_articles: list[str] = []
    for lang in languages:
        for a_i, (art, key) in enumerate(zip(per_lang[lang], keys[lang])):
            if articles is not None and key not in wanted:
                continue
            if lang == languages[0]:
                kept_articles.append(key)
            for p_i, par in enumerate(art.paragraphs):
                base = len(cand_texts)
                for s_i, s in enumerate(par.sentences):
                    cand_langs.append(lang)
                    cand_texts.append(s)
                    cand_keys.append(f"{lang}/{a_i}/{p_i}/{s_i}")
                for qa in par.qas:
                    answers.setdefault(qa.qid, {})[lang] = base + qa.sentence
                    questions.setdefault(qa.qid, {})[lang] = qa.question
                    # The first loaded language (English when loaded first) names the article and context.
                    article_of.setdefault(qa.qid, key)
                    context_of.setdefault(qa.qid, f"{key}/{p_i}")
    qids = sorted(answers)
    n_all = len(qids)
    if max_questions is not None:
        # A seeded sample, stratified by article (XQuAD-R) or context (MLQA-R) in
        # proportion to their questions: the first N ids would skip whole articles.
        strata = article_of if sample_by == "article" else context_of
        qids = stratified_sample(qids, [strata[q] for q in qids], max_questions, sample_seed)
        keep = set(qids)
        answers = {q: a for q, a in answers.items() if q in keep}
        questions = {q: t for q, t in questions.items() if q in keep}
        if restrict_pool:
            cand_langs, cand_texts, cand_keys, answers = _pool_of_question_paragraphs(
                cand_langs, cand_texts, cand_keys, answers)
    query_qids, query_langs, query_texts = [], [], []
    for lang in languages:
        for qid in qids:
            if lang in questions[qid]:
                query_qids.append(qid)
                query_langs.append(lang)
                query_texts.append(questions[qid][lang])
    if not query_qids:
        raise BenchmarkError(source, f"{name}: no questions left after the article/language selection")
    return QABenchmark(name, languages, query_qids, query_langs, query_texts, cand_langs, cand_texts, cand_keys,
                       answers, kept_articles, {q: article_of[q] for q in qids}, {q: context_of[q] for q in qids},
                       n_all)


def load_xquad_r(
    path: str | os.PathLike,
    languages: list[str] | None = None,
    articles: list[str] | None = None,
    max_questions: int | None = None,
    restrict_pool: bool = False,
    sample_seed: int = 0,
) -> QABenchmark:
    """Loads XQuAD-R (``{lang}.json`` per language).

    Args:
        path: the ``xquad-r`` directory.
        languages: languages to load (default: all 11).
        articles: keep only these articles (English titles); ``None`` keeps all.
        max_questions: a seeded sample of N questions, stratified by article.
        restrict_pool: keep only the paragraphs of the kept questions as candidates.
        sample_seed: the sample's seed.

    Returns:
        The benchmark; every question id exists in every language.

    Raises:
        BenchmarkError: a missing language file, an unknown article title, or
            bad content (see :func:`parse_squad_file`).
    """
    path = Path(path)
    languages = list(languages or XQUAD_R_LANGUAGES)
    files = _lang_files(path, "xquad_r", languages, XQUAD_R_LANGUAGES)
    per_lang = {lang: parse_squad_file(f) for lang, f in files.items()}
    ref = None
    if articles is not None:
        ref = per_lang.get("en") or (parse_squad_file(path / "en.json") if (path / "en.json").exists() else None)
    keys = {lang: _article_keys(lang, arts, ref, files[lang]) for lang, arts in per_lang.items()}
    bench = _build_qa("xquad_r", per_lang, keys, articles, max_questions, path, restrict_pool, "article", sample_seed)
    for qid, ans in bench.answers.items():
        missing = [lang for lang in languages if lang not in ans]
        if missing:
            raise BenchmarkError(path, f"xquad_r: question is missing in {missing}", f"question {qid}")
    return bench


_MLQA_ORIGINAL = re.compile(r"^(dev|test)-context-([a-z]{2})-question-([a-z]{2})\.json$")


def load_mlqa_r(
    path: str | os.PathLike,
    languages: list[str] | None = None,
    max_questions: int | None = None,
    mlqa_split: str | None = None,
    restrict_pool: bool = False,
    sample_seed: int = 0,
) -> QABenchmark:
    """Loads MLQA-R: LAReQA's ``{lang}.json`` files, or MLQA's original files.

    MLQA's original ``{dev|test}-context-{c}-question-{q}.json`` files carry no
    sentence breaks; the same-language files (``c == q``) are read and their
    contexts split with :func:`~hbt.data.sentences.split_sentences`. The mixed-language files hold
    the same questions and contexts and are not needed.

    Args:
        path: a directory with ``{lang}.json`` files or MLQA's original files.
        languages: languages to load (default: the 7 MLQA languages present).
        max_questions: a seeded sample of N questions, stratified by context.
        mlqa_split: ``dev`` or ``test`` for original files; default: the one
            present, ``dev`` (LAReQA's choice) when both are.

    Returns:
        The benchmark; a question id exists in 2 to 4 of the languages.

    Raises:
        BenchmarkError: a missing language, or bad content.
    """
    path = Path(path)
    if not path.is_dir():
        raise BenchmarkError(path, "mlqa_r: not a directory")
    languages = list(languages or MLQA_R_LANGUAGES)
    if all((path / f"{lang}.json").exists() for lang in languages):
        per_lang = {lang: parse_squad_file(path / f"{lang}.json") for lang in languages}
    else:
        originals: dict[tuple[str, str], Path] = {}
        for f in path.glob("*.json"):
            m = _MLQA_ORIGINAL.match(f.name)
            if m and m.group(2) == m.group(3):
                originals[(m.group(1), m.group(2))] = f
        if not originals:
            _lang_files(path, "mlqa_r", languages, MLQA_R_LANGUAGES)  # raises naming the missing file
        splits = sorted({s for s, _ in originals})
        split = mlqa_split or ("dev" if "dev" in splits else splits[0])
        per_lang = {}
        for lang in languages:
            f = originals.get((split, lang))
            if f is None:
                available = sorted(lng for s, lng in originals if s == split)
                raise BenchmarkError(
                    path,
                    f"mlqa_r: unknown language code {lang!r} (no {split}-context-{lang}-question-{lang}.json; "
                    f"available: {available})",
                )
            per_lang[lang] = parse_squad_file(f, split_when_missing=True)
    keys = {lang: [a.title for a in arts] for lang, arts in per_lang.items()}
    return _build_qa("mlqa_r", per_lang, keys, None, max_questions, path, restrict_pool, "context", sample_seed)
