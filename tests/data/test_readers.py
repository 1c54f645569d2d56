"""Readers: the shipped XQuAD-R round trip, the other formats, and bad input."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from hbt.config import XQUAD_R_LANGUAGES, load_config
from hbt.data.pipeline import iter_rows_local
from hbt.data.readers import (
    answer_sentence_index,
    iter_grouped_jsonl,
    iter_long_jsonl,
    iter_long_parquet,
    iter_mmarco,
    iter_squad_file,
    iter_xquad_dir,
    xquad_split,
)
from hbt.data.records import DataError, RecordGrouper

from ..conftest import XQUAD_R


def test_xquad_r_round_trip_every_language():
    """11 languages, 48 articles, 1190 questions each; answer sentences hold answer_start."""
    crossing: dict[str, int] = {}
    for lang in XQUAD_R_LANGUAGES:
        path = XQUAD_R / f"{lang}.json"
        grouper = RecordGrouper([lang])
        qs = list(iter_squad_file(str(path), lang, grouper))
        assert len(qs) == 1190
        assert len({q.article for q in qs}) == 48
        assert len({q.qid for q in qs}) == 1190
        doc = json.loads(path.read_text())
        n_inside = n_cross = 0
        for art in doc["data"]:
            for para in art["paragraphs"]:
                for qa in para["qas"]:
                    start, text = qa["answers"][0]["answer_start"], qa["answers"][0]["text"]
                    si = answer_sentence_index(para["sentence_breaks"], start)
                    s, e = para["sentence_breaks"][si]
                    assert s <= start < e
                    assert para["context"][start:start + len(text)] == text
                    if text in para["sentences"][si]:
                        n_inside += 1
                    else:
                        n_cross += 1
        crossing[lang] = n_cross
        assert sum(q.answer_crosses_sentence for q in qs) == n_cross
        assert n_inside + n_cross == 1190
    # The data README: between 2 (ru) and 21 (tr) answers cross a sentence break.
    assert min(crossing.values()) == 2 and crossing["ru"] == 2
    assert max(crossing.values()) == 21 and crossing["tr"] == 21
    print("answers crossing a sentence break per language:", crossing)


def test_xquad_dir_groups_all_languages_per_qid():
    grouper = RecordGrouper(list(XQUAD_R_LANGUAGES))
    rows = list(iter_xquad_dir(str(XQUAD_R), grouper, split="all"))
    assert len(rows) == 1190
    assert set(rows[0]) == {"qid", "passage_group", "article"} | {f"{s}_{lang}" for s in "qp" for lang in XQUAD_R_LANGUAGES}
    assert grouper.skips.total == 0


def test_article_split_is_disjoint_and_logged():
    heldout, dev = ["Warsaw", "Normans", "Oxygen"], ["Geology"]
    split = xquad_split(str(XQUAD_R), ["en"], heldout, dev)
    assert set(split.test) == set(heldout) and split.dev == dev
    assert not set(split.train) & (set(heldout) | set(dev))
    assert sum(split.questions.values()) == 1190
    grouper = RecordGrouper(["en", "de"])
    train = {r["qid"] for r in iter_xquad_dir(str(XQUAD_R), grouper, "train", heldout, dev)}
    test = {r["qid"] for r in iter_xquad_dir(str(XQUAD_R), grouper, "test", heldout, dev)}
    assert len(train) == split.questions["train"] and len(test) == split.questions["test"]
    assert not train & test


def test_unknown_heldout_article_fails():
    with pytest.raises(ValueError, match="Atlantis"):
        xquad_split(str(XQUAD_R), ["en"], ["Atlantis"], [])


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _long(qid, lang, q="a question", p="a passage"):
    return json.dumps({"qid": qid, "lang": lang, "query": q, "passage": p})


def test_long_jsonl_groups_contiguous_rows(tmp_path):
    f = _write(tmp_path / "a.jsonl", [_long("1", "en"), _long("1", "de"), _long("2", "en"), _long("2", "de"), _long("2", "fr")])
    rows = list(iter_long_jsonl(f, RecordGrouper(["en", "de"])))
    assert [r["qid"] for r in rows] == ["1", "2"]


@pytest.mark.parametrize(
    "lines, match",
    [
        (['{"qid": "1", "lang": "en", "query": "q"'], r"a\.jsonl:1: malformed JSON"),
        ([_long("1", "en"), json.dumps({"qid": "1", "lang": "de", "query": "q"})], r"a\.jsonl:2: missing field: 'passage'"),
        ([_long("1", "en"), _long("1", "de", q="  ")], r"a\.jsonl:2: empty text: field 'query'"),
        ([_long("1", "en"), _long("1", "xx")], r"a\.jsonl:2: unknown language: 'xx'"),
        ([_long("1", "en")], r"a\.jsonl:1: too few languages"),
        ([_long("1", "en"), _long("1", "de"), _long("2", "en"), _long("2", "de"), _long("1", "en")], r"a\.jsonl:5: duplicate id"),
    ],
)
def test_long_jsonl_bad_input_names_file_and_line(tmp_path, lines, match):
    f = _write(tmp_path / "a.jsonl", lines)
    with pytest.raises(DataError, match=match):
        list(iter_long_jsonl(f, RecordGrouper(["en", "de"])))


def test_non_utf8_bytes_name_the_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes((_long("1", "en") + "\n").encode() + b'{"qid": "1", "lang": "de", "query": "\xff", "passage": "x"}\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: not UTF-8"):
        list(iter_long_jsonl(str(p), RecordGrouper(["en", "de"])))


def test_skip_mode_counts_every_bad_record(tmp_path):
    f = _write(tmp_path / "a.jsonl", [
        _long("1", "en"), _long("1", "de"),
        "{broken",
        _long("2", "en"), _long("2", "xx"),
        _long("3", "en"),
        _long("4", "en"), _long("4", "de"),
    ])
    grouper = RecordGrouper(["en", "de"], "skip")
    rows = list(iter_long_jsonl(f, grouper))
    assert [r["qid"] for r in rows] == ["1", "4"]
    # malformed line, unknown language, qid 2 dropped with it, qid 3 with one language
    assert grouper.skips.total == 4
    assert grouper.skips.as_metrics()["data/skipped_records"] == 4.0
    reasons = Counter({k.split("/")[-1]: v for k, v in grouper.skips.as_metrics().items() if k.startswith("data/skipped/")})
    assert reasons["malformed_json"] == 1 and reasons["unknown_language"] == 1
    assert reasons["dropped_group"] == 1 and reasons["too_few_languages"] == 1


def test_grouped_jsonl_gz_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "g.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        for i in range(3):
            f.write(json.dumps({"qid": str(i), "translations": {"en": {"query": f"q{i}", "passage": "p"},
                                                                "de": {"query": f"f{i}", "passage": "p"}}}) + "\n")
    rows = list(iter_grouped_jsonl(str(p), RecordGrouper(["en", "de"])))
    assert [r["q_de"] for r in rows] == ["f0", "f1", "f2"]

    table = pa.table({"qid": ["1", "1", "2"], "lang": ["en", "de", "en"], "query": ["a", "b", "c"], "passage": ["x", "y", "z"]})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t\.parquet:row 3: too few languages"):
        list(iter_long_parquet(str(tmp_path / "t.parquet"), RecordGrouper(["en", "de"])))


def _mmarco(root: Path, qrels: list[str], passages: int = 10) -> None:
    """An mMARCO-layout fixture: 10 queries and ``passages`` passages (pid 100 + i) in en and de."""
    for lang in ("en", "de"):
        (root / "queries").mkdir(exist_ok=True)
        (root / "collection").mkdir(exist_ok=True)
        _write(root / "queries" / f"{lang}.tsv", [f"{q}\t{lang} query {q}" for q in range(10)])
        _write(root / "collection" / f"{lang}.tsv", [f"{100 + q}\t{lang} passage {q}" for q in range(passages)])
    _write(root / "qrels.tsv", qrels)


def test_mmarco_layout_shards_are_disjoint(tmp_path):
    _mmarco(tmp_path, [f"{q}\t0\t{100 + q}\t1" for q in range(10)])
    shards = [list(iter_mmarco(str(tmp_path), RecordGrouper(["en", "de"]), k, 3)) for k in range(3)]
    qids = [r["qid"] for s in shards for r in s]
    assert sorted(qids, key=int) == [str(q) for q in range(10)]
    row0 = next(r for s in shards for r in s if r["qid"] == "0")
    assert row0["p_de"] == "de passage 0" and row0["passage_group"] == "100"


def test_mmarco_multi_positive_query_across_a_shard_boundary(tmp_path):
    """qid 7 has positives on qrels lines 8 and 9: a line-based split would hand it to two read tasks."""
    qrels = [f"{q}\t0\t{100 + q}\t1" for q in range(7)] + ["7\t0\t107\t1", "7\t0\t110\t1"]
    _mmarco(tmp_path, qrels + [f"{q}\t0\t{100 + q}\t1" for q in (8, 9)], passages=12)
    for n in (2, 3, 4):
        shards = [list(iter_mmarco(str(tmp_path), RecordGrouper(["en", "de"]), k, n)) for k in range(n)]
        holders = [k for k, s in enumerate(shards) if any(r["qid"] == "7" for r in s)]
        assert len(holders) == 1, (n, holders)  # one read task owns the qid
        qids = [r["qid"] for s in shards for r in s]
        assert sorted(qids, key=int) == [str(q) for q in range(10)]
        row7 = next(r for r in shards[holders[0]] if r["qid"] == "7")
        assert row7["passage_group"] == "107"  # the first positive trains; its pid is the group


def test_passage_id_names_the_group_else_the_qid(tmp_path):
    with_pid = [json.dumps({"qid": "1", "lang": lang, "query": "q", "passage": "p", "passage_id": "P9"}) for lang in ("en", "de")]
    rows = list(iter_long_jsonl(_write(tmp_path / "a.jsonl", with_pid), RecordGrouper(["en", "de"])))
    assert rows[0]["passage_group"] == "P9"
    rows = list(iter_long_jsonl(_write(tmp_path / "b.jsonl", [_long("1", "en"), _long("1", "de")]), RecordGrouper(["en", "de"])))
    assert rows[0]["passage_group"] == "1"


@pytest.mark.parametrize("fmt", ["long", "grouped"])
def test_passage_id_on_some_rows_only_names_file_and_line(tmp_path, fmt):
    if fmt == "long":
        lines = [json.dumps({"qid": "1", "lang": lang, "query": "q", "passage": "p", "passage_id": "P1"}) for lang in ("en", "de")]
        lines += [_long("2", "en"), _long("2", "de")]
        reader, bad_line = iter_long_jsonl, 3
    else:
        tr = {lang: {"query": "q", "passage": "p"} for lang in ("en", "de")}
        lines = [json.dumps({"qid": "1", "translations": tr}), json.dumps({"qid": "2", "passage_id": "P", "translations": tr})]
        reader, bad_line = iter_grouped_jsonl, 2
    f = _write(tmp_path / "a.jsonl", lines)
    # An inconsistent file is an error even in skip mode: counting its rows would mix two meanings of a group.
    for mode in ("error", "skip"):
        with pytest.raises(DataError, match=rf"a\.jsonl:{bad_line}: inconsistent field: 'passage_id' is"):
            list(reader(f, RecordGrouper(["en", "de"], mode)))


def test_xquad_questions_on_one_sentence_share_a_group_in_every_language():
    grouper = RecordGrouper(["en", "de", "zh"])
    rows = list(iter_xquad_dir(str(XQUAD_R), grouper, split="all"))
    by_group = Counter(r["passage_group"] for r in rows)
    shared = [g for g, n in by_group.items() if n > 1]
    assert len(shared) > 100  # several questions are often asked about one sentence
    # Two questions whose answer sentence is the same sentence in any language are one group,
    # also where the languages segment differently (e.g. zh joins two English sentences).
    for lang in ("en", "de", "zh"):
        by_answer: dict[tuple[str, str], set[str]] = {}
        for r in rows:
            by_answer.setdefault((r["article"], r[f"p_{lang}"]), set()).add(r["passage_group"])
        assert all(len(g) == 1 for g in by_answer.values()), lang
    zh_only = [key for key, g in Counter((r["article"], r["p_zh"]) for r in rows).items()
               if g > 1 and len({r["p_en"] for r in rows if (r["article"], r["p_zh"]) == key}) > 1]
    assert zh_only  # the case a single-language group would miss exists in the data
    assert all(r["article"] and r["passage_group"].startswith(r["article"] + "/") for r in rows)


def test_iter_rows_local_respects_max_questions():
    cfg = load_config(None, ["data.languages=[en,de]", "data.max_questions=50"])
    rows, skips = iter_rows_local(cfg)
    assert len(rows) == 50 and skips.total == 0


def test_skip_mode_leaves_out_only_the_non_utf8_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes("\n".join([_long("1", "en"), _long("1", "de")]).encode() + b"\n"
                  + b'{"qid": "2", "lang": "de", "query": "\xff", "passage": "x"}\n'
                  + "\n".join([_long("3", "en"), _long("3", "de")]).encode() + b"\n")
    grouper = RecordGrouper(["en", "de"], "skip")
    assert [r["qid"] for r in iter_long_jsonl(str(p), grouper)] == ["1", "3"]
    assert grouper.skips.counts == Counter({"not UTF-8": 1})
    assert grouper.skips.examples[0].startswith(f"{p}:3: not UTF-8")


def test_mmarco_non_utf8_line_is_one_counted_skip(tmp_path):
    _mmarco(tmp_path, [f"{q}\t0\t{100 + q}\t1" for q in range(10)])
    de = tmp_path / "queries" / "de.tsv"
    de.write_bytes(de.read_bytes().replace(b"de query 4", b"de query \xff"))
    grouper = RecordGrouper(["en", "de"], "skip")
    assert len(list(iter_mmarco(str(tmp_path), grouper))) == 9  # only qid 4 (its de query unreadable) is lost
    assert grouper.skips.counts["not UTF-8"] == 1
    with pytest.raises(DataError, match=r"queries/de\.tsv:5: not UTF-8"):
        list(iter_mmarco(str(tmp_path), RecordGrouper(["en", "de"])))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_an_empty_file_is_named_or_counted(tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / f"a.{fmt}"
    if fmt == "jsonl":
        p.write_text("\n")
        reader = iter_long_jsonl
    else:
        pq.write_table(pa.table({c: pa.array([], pa.string()) for c in ("qid", "lang", "query", "passage")}), p)
        reader = iter_long_parquet
    with pytest.raises(DataError, match=rf"^{p}: empty file"):
        list(reader(str(p), RecordGrouper(["en", "de"])))
    grouper = RecordGrouper(["en", "de"], "skip")
    assert list(reader(str(p), grouper)) == [] and grouper.skips.counts == Counter({"empty file": 1})
