"""Benchmark loaders on the real shared data, on small fixtures, and on bad input."""

from __future__ import annotations

import collections
import copy
import json
from pathlib import Path

import pytest

from hbt.config import XQUAD_R_LANGUAGES, resolve_path
from hbt.eval.benchmarks import (
    BenchmarkError,
    load_miracl,
    load_mlqa_r,
    load_tatoeba,
    load_xquad_r,
    split_sentences,
)

# The same locations conftest.py names (conftest itself is not importable): ../shared/data
# where it exists, else the fetch cache (`hbt data fetch`).
XQUAD_R, MLQA_R, TATOEBA = (Path(resolve_path(f"../shared/data/{d}")) for d in ("xquad-r", "mlqa-r", "tatoeba"))
EVAL_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "eval"


# -- real data ----------------------------------------------------------------


@pytest.fixture(scope="module")
def xquad():
    return load_xquad_r(XQUAD_R)


def test_xquad_r_counts(xquad):
    assert xquad.languages == XQUAD_R_LANGUAGES
    assert len(xquad.answers) == 1190
    assert xquad.num_queries == 11 * 1190
    assert collections.Counter(xquad.query_langs) == {lang: 1190 for lang in XQUAD_R_LANGUAGES}
    assert all(len(a) == 11 for a in xquad.answers.values())
    assert len(xquad.articles) == 48
    # every sentence of every paragraph is a candidate (English has 1180)
    assert sum(1 for lang in xquad.cand_langs if lang == "en") == 1180


def test_xquad_r_answer_sentence_holds_the_answer(xquad):
    # The first question of the data: "How many points did the Panthers defense surrender?" -> 308
    qid = "56beb4343aeaaa14008c925b"
    for lang in ("en", "de", "zh"):
        assert "308" in xquad.cand_texts[xquad.answers[qid][lang]]
    assert xquad.cand_langs[xquad.answers[qid]["de"]] == "de"


def test_xquad_r_query_order_is_language_then_qid(xquad):
    en = [xquad.query_qids[i] for i in xquad.queries_in("en")]
    assert en == sorted(en)
    assert xquad.queries_in("ar")[0] == 0


def test_xquad_r_articles_and_cap():
    b = load_xquad_r(XQUAD_R, ["de", "en", "zh"], articles=["Warsaw", "Normans"], max_questions=25)
    assert b.articles == ["Warsaw", "Normans"]
    assert len(b.answers) == 25 and b.num_queries == 75
    full = load_xquad_r(XQUAD_R, ["de", "en", "zh"], articles=["Warsaw", "Normans"])
    assert set(b.answers) <= set(full.answers) and b.all_questions == len(full.answers)
    assert set(b.question_article.values()) == {"Warsaw", "Normans"}  # a sample of both articles
    assert full.num_candidates == b.num_candidates  # the cap touches questions, not the pool
    with pytest.raises(BenchmarkError, match="unknown article"):
        load_xquad_r(XQUAD_R, ["en"], articles=["Atlantis"])


def test_mlqa_r_qids_in_two_to_four_languages():
    b = load_mlqa_r(MLQA_R)
    counts = collections.Counter(len(a) for a in b.answers.values())
    assert set(counts) == {2, 3, 4}
    assert counts == {4: 820, 3: 263, 2: 65}
    assert collections.Counter(b.query_langs)["en"] == 1148
    # X -> Y scores only the questions present in both
    de_en = b.queries_in("de", also_in="en")
    assert all("en" in b.answers[b.query_qids[i]] for i in de_en)
    assert 0 < de_en.size <= collections.Counter(b.query_langs)["de"]


def test_tatoeba_real():
    (deu,) = load_tatoeba(TATOEBA, ["deu"])
    assert len(deu.src_texts) == len(deu.eng_texts) == 1000


# -- MLQA's original files and the sentence splitter ------------------------------


def test_mlqa_original_format_fixture():
    b = load_mlqa_r(EVAL_ASSETS / "mlqa_original", ["en", "de", "zh"])
    assert b.languages == ["en", "de", "zh"]
    assert b.cand_texts[: 3] == [
        "The river rises in the Alps.",
        "It flows north through three countries!",
        "Its delta lies in the Netherlands.",
    ]
    assert "Dr. J. Smith wrote the report in 1990." in b.cand_texts
    zh = [t for t, lang in zip(b.cand_texts, b.cand_langs) if lang == "zh"]
    assert zh == ["这条河发源于阿尔卑斯山。", "它向北流经三个国家！", "它的三角洲位于荷兰。"]
    assert b.answers["q1"] == {"en": 0, "de": b.cand_texts.index("Der Fluss entspringt in den Alpen."),
                               "zh": b.cand_texts.index("这条河发源于阿尔卑斯山。")}
    assert set(b.answers["q3"]) == {"en", "zh"}
    assert b.cand_texts[b.answers["q3"]["zh"]] == "它向北流经三个国家！"
    # the mixed-language file (context en, question de) is not read
    assert b.num_queries == 5 + 3 + 2


def test_split_sentences_scripts():
    text = "Der Preis stieg um 3.5 Prozent. Dr. Müller sagte dies! 价格上涨了。他说了这个！ यह सच है। क्या यह सच है? هل هذا صحيح؟ نعم"
    spans = split_sentences(text)
    parts = [text[s:e].strip() for s, e in spans]
    assert parts == [
        "Der Preis stieg um 3.5 Prozent.",
        "Dr. Müller sagte dies!",
        "价格上涨了。",
        "他说了这个！",
        "यह सच है।",
        "क्या यह सच है?",
        "هل هذا صحيح؟",
        "نعم",
    ]
    # spans are contiguous: any offset lies in exactly one
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_split_sentences_keeps_lowercase_continuations_and_quotes():
    text = 'He said "Go." Then he left. e.g. this stays. Version 2.0 is out.'
    parts = [text[s:e].strip() for s, e in split_sentences(text)]
    assert parts == ['He said "Go."', "Then he left. e.g. this stays.", "Version 2.0 is out."]


# -- MIRACL fixture ----------------------------------------------------------------


def test_miracl_fixture():
    sw = load_miracl(EVAL_ASSETS / "miracl", "sw")
    assert sw.query_ids == ["10", "11"]  # topic 12 has no positive judgment
    assert sw.doc_ids == ["1#0", "1#1", "2#0", "3#0", "4#0", "5#0"]  # gz shards read in order
    assert sw.doc_texts[0] == "Nairobi Nairobi ni mji mkuu wa Kenya."
    assert sw.qrels["10"] == {"1#0": 1, "4#0": 0, "1#1": 1}
    de = load_miracl(EVAL_ASSETS / "miracl", "de", max_questions=1)
    assert de.query_ids == ["20"] and de.qrels["20"]["7#0"] == 2
    with pytest.raises(BenchmarkError, match="unknown language code 'xx'"):
        load_miracl(EVAL_ASSETS / "miracl", "xx")


def _copy_miracl(tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "miracl"
    shutil.copytree(EVAL_ASSETS / "miracl", dst)
    return dst


def test_miracl_bad_lines(tmp_path):
    root = _copy_miracl(tmp_path)
    qrels = root / "miracl-v1.0-de" / "qrels" / "qrels.miracl-v1.0-de-dev.tsv"
    qrels.write_text(qrels.read_text() + "21 Q0 8#0\n")
    with pytest.raises(BenchmarkError, match=r"qrels\.miracl-v1\.0-de-dev\.tsv \[line 5\]"):
        load_miracl(root, "de")
    root = _copy_miracl(tmp_path / "b")
    corpus = root / "miracl-corpus-v1.0-de" / "docs-1.jsonl"
    corpus.write_text(corpus.read_text() + '{"docid": "x", "title": "t"}\n')
    with pytest.raises(BenchmarkError, match=r"docs-1\.jsonl \[line 3\]: missing field 'text'"):
        load_miracl(root, "de")


def test_miracl_qrels_naming_a_missing_document(tmp_path):
    """A judged passage absent from the corpus would silently lower nDCG and recall: refused, with its line."""
    root = _copy_miracl(tmp_path)
    qrels = root / "miracl-v1.0-de" / "qrels" / "qrels.miracl-v1.0-de-dev.tsv"
    qrels.write_text(qrels.read_text() + "20\tQ0\tgone#3\t1\n")
    with pytest.raises(BenchmarkError, match=r"de-dev\.tsv \[line 5\]: judged docid 'gone#3' \(topic 20\) is not in"):
        load_miracl(root, "de")


# -- bad input -----------------------------------------------------------------


@pytest.fixture(scope="module")
def xquad_en_doc():
    return json.loads((XQUAD_R / "en.json").read_text(encoding="utf-8"))


def _write_lang(tmp_path: Path, doc, lang: str = "en") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / f"{lang}.json").write_text(json.dumps(doc), encoding="utf-8")
    return tmp_path


def test_missing_field_names_file_and_question(tmp_path, xquad_en_doc):
    doc = copy.deepcopy(xquad_en_doc)
    qa = doc["data"][0]["paragraphs"][0]["qas"][1]
    del qa["question"]
    d = _write_lang(tmp_path, doc)
    with pytest.raises(BenchmarkError) as e:
        load_xquad_r(d, ["en"])
    msg = str(e.value)
    assert "en.json" in msg and qa["id"] in msg and "missing field 'question'" in msg
    assert e.value.item == f"question {qa['id']}"


def test_missing_sentences_field(tmp_path, xquad_en_doc):
    doc = copy.deepcopy(xquad_en_doc)
    del doc["data"][2]["paragraphs"][1]["sentences"]
    with pytest.raises(BenchmarkError, match=r"en\.json \[article 'Normans' paragraph 1\]: missing field 'sentences'"):
        load_xquad_r(_write_lang(tmp_path, doc), ["en"])


def test_answer_outside_every_sentence(tmp_path, xquad_en_doc):
    doc = copy.deepcopy(xquad_en_doc)
    par = doc["data"][0]["paragraphs"][0]
    qa = par["qas"][0]
    qa["answers"][0]["answer_start"] = len(par["context"]) + 10
    with pytest.raises(BenchmarkError, match=rf"\[question {qa['id']}\]: answer_start \d+ lies outside every sentence"):
        load_xquad_r(_write_lang(tmp_path, doc), ["en"])


def test_answer_text_crossing_a_break_is_fine(tmp_path, xquad_en_doc):
    doc = copy.deepcopy(xquad_en_doc)
    par = doc["data"][0]["paragraphs"][0]
    end = par["sentence_breaks"][0][1]
    par["qas"][0]["answers"][0] = {"answer_start": end - 3, "text": par["context"][end - 3 : end + 10]}
    b = load_xquad_r(_write_lang(tmp_path, doc), ["en"])
    assert b.answers[par["qas"][0]["id"]]["en"] == 0


def test_malformed_json(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "en.json").write_text('{"data": [ {"title": "x", ', encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"en\.json: malformed JSON: .* line 1"):
        load_xquad_r(tmp_path, ["en"])


def test_unknown_language_code():
    with pytest.raises(BenchmarkError, match=r"unknown language code 'xx'.*available"):
        load_xquad_r(XQUAD_R, ["en", "xx"])
    with pytest.raises(BenchmarkError, match=r"unknown language code 'el'"):
        load_mlqa_r(EVAL_ASSETS / "mlqa_original", ["en", "el"])
    with pytest.raises(BenchmarkError, match=r"tatoeba: unknown language code 'xyz'"):
        load_tatoeba(TATOEBA, ["deu", "xyz"])


def test_duplicate_question_id(tmp_path, xquad_en_doc):
    doc = copy.deepcopy(xquad_en_doc)
    qas = doc["data"][0]["paragraphs"][0]["qas"]
    qas[1]["id"] = qas[0]["id"]
    with pytest.raises(BenchmarkError, match="duplicate question id"):
        load_xquad_r(_write_lang(tmp_path, doc), ["en"])


def test_tatoeba_bad_files(tmp_path):
    (tmp_path / "tatoeba.abc-eng.abc").write_text("eins\nzwei\n", encoding="utf-8")
    (tmp_path / "tatoeba.abc-eng.eng").write_text("one\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match="2 lines but tatoeba.abc-eng.eng has 1"):
        load_tatoeba(tmp_path, ["abc"])
    (tmp_path / "tatoeba.abc-eng.eng").write_text("one\n\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"tatoeba\.abc-eng\.eng \[line 2\]: empty line"):
        load_tatoeba(tmp_path, ["abc"])
    (tmp_path / "tatoeba.abc-eng.eng").write_bytes(b"one\n\xff\xfe\n")
    with pytest.raises(BenchmarkError, match=r"\[line 2\]: not UTF-8"):
        load_tatoeba(tmp_path, ["abc"])
