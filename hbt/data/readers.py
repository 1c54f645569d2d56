"""Readers that turn parallel QA data into grouped rows (one row per question id).

Each reader is a generator over one *unit* (a file, a folder or a shard of
one), so Ray Data can run units as separate read tasks and stream their rows.
Paths may be local or URIs (``s3://``, ``gs://``): files are opened through
pyarrow's filesystems.

Formats:
    xquad: a folder of SQuAD-format ``<lang>.json`` files (XQuAD-R, MLQA-R),
        one file per language, question ids shared across languages.
    jsonl / parquet: long rows ``{qid, lang, query, passage}``; the rows of
        one qid must be contiguous (that is what lets the reader group them
        while streaming).
    grouped_jsonl: ``{qid, translations: {lang: {query, passage}}}`` per line.
    mmarco_tsv: the mMARCO layout, id-aligned across languages:
        ``queries/<lang>.tsv`` (qid, text), ``collection/<lang>.tsv``
        (pid, text) and ``qrels.tsv`` (TREC ``qid 0 pid 1`` or ``qid pid``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from hbt.data.records import DataError, RecordGrouper

# ---------------------------------------------------------------- filesystem


def _fs_and_path(path: str):
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def read_bytes(path: str) -> bytes:
    """Reads a whole local or remote file."""
    fs, p = _fs_and_path(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def iter_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yields (1-based line number, decoded line) from a local or remote file.

    Raises:
        DataError: a line is not valid UTF-8 (named by file and line).
    """
    fs, p = _fs_and_path(path)
    compression = "gzip" if p.endswith(".gz") else None
    with fs.open_input_stream(p, compression=compression) as f:
        buf = b""
        lineno = 0
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                lineno += 1
                yield lineno, _decode(raw, path, lineno)
        if buf:
            lineno += 1
            yield lineno, _decode(buf, path, lineno)


def _decode(raw: bytes, path: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}", f"not UTF-8: byte {e.start} ({raw[e.start:e.start + 1]!r})") from None


def list_files(path: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files under ``path`` (or ``path`` itself) ending in one of ``suffixes``, sorted."""
    import pyarrow.fs as pafs

    fs, p = _fs_and_path(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no data at {path}")
    prefix = path[: len(path) - len(p)] if "://" in path else ""
    if info.type == pafs.FileType.File:
        return [path]
    found = fs.get_file_info(pafs.FileSelector(p, recursive=True))
    files = sorted(prefix + f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(suffixes))
    if not files:
        raise FileNotFoundError(f"no {'/'.join(suffixes)} files under {path}")
    return files


# ------------------------------------------------------------------- XQuAD


@dataclass
class SquadQuestion:
    """One question of a SQuAD-format file with its positive passage."""

    qid: str
    article: str
    query: str
    passage: str
    answer_crosses_sentence: bool


@dataclass
class ArticleSplit:
    """Which articles train, tune (dev) and test, with question counts."""

    train: list[str] = field(default_factory=list)
    dev: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    questions: dict[str, int] = field(default_factory=dict)


def answer_sentence_index(breaks: list[list[int]], answer_start: int) -> int | None:
    """Index of the sentence span ``[start, end)`` holding ``answer_start``, or None."""
    for i, (s, e) in enumerate(breaks):
        if s <= answer_start < e:
            return i
    return None


def iter_squad_file(path: str, lang: str, grouper: RecordGrouper) -> Iterator[SquadQuestion]:
    """Yields the questions of one SQuAD-format JSON file.

    The positive passage is the sentence holding the first answer's
    ``answer_start`` when the paragraph carries ``sentences`` and
    ``sentence_breaks`` (XQuAD-R, MLQA-R), else the paragraph.

    Raises:
        DataError: malformed JSON, a missing field, an empty text, or an
            answer outside every sentence (named by file and question id).
    """
    raw = read_bytes(path)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}", f"malformed JSON: {e.msg} (column {e.colno})") from None
    articles = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(articles, list):
        raise DataError(path, "missing field: 'data' (a list of articles)")
    for ai, art in enumerate(articles):
        title = art.get("title", f"article-{ai}")
        for pi, para in enumerate(art.get("paragraphs") or []):
            where_p = f"{path} [article {title!r}, paragraph {pi}]"
            context = para.get("context")
            sentences, breaks = para.get("sentences"), para.get("sentence_breaks")
            for qa in para.get("qas") or []:
                qid = qa.get("id")
                where = f"{path} [question {qid!r}]" if qid else where_p
                if not qid:
                    grouper.bad(where, "missing field: 'id'")
                    continue
                question = grouper.check_text(qa.get("question"), "question", where)
                if question is None:
                    continue
                answers = qa.get("answers") or []
                if not answers or not isinstance(answers[0].get("answer_start"), int):
                    grouper.bad(where, "missing field: 'answers[0].answer_start'")
                    continue
                start = answers[0]["answer_start"]
                text = answers[0].get("text", "")
                if sentences is not None and breaks is not None:
                    si = answer_sentence_index(breaks, start)
                    if si is None or si >= len(sentences):
                        grouper.bad(where, f"answer outside every sentence: answer_start {start}")
                        continue
                    passage = sentences[si]
                    # 'Wholly inside' is judged on the sentence text: the data's
                    # sentence strings can be trimmed relative to their break span.
                    crosses = text not in passage
                else:
                    if grouper.check_text(context, "context", where_p) is None:
                        continue
                    passage, crosses = context, False
                if grouper.check_text(passage, "passage", where) is None:
                    continue
                yield SquadQuestion(qid, title, question, passage, crosses)


def split_articles(titles: list[str], heldout: list[str], dev: list[str]) -> ArticleSplit:
    """Splits XQuAD articles into train / dev / test by title.

    Raises:
        ValueError: a configured article is not in the data.
    """
    known = set(titles)
    for name, lst in (("data.heldout_articles", heldout), ("data.dev_articles", dev)):
        unknown = [t for t in lst if t not in known]
        if unknown:
            raise ValueError(f"{name}: articles not in the data: {unknown}")
    test, dv = set(heldout), set(dev)
    return ArticleSplit(
        train=[t for t in titles if t not in test and t not in dv],
        dev=[t for t in titles if t in dv],
        test=[t for t in titles if t in test],
    )


def iter_xquad_dir(
    path: str,
    grouper: RecordGrouper,
    split: str = "train",
    heldout_articles: list[str] | None = None,
    dev_articles: list[str] | None = None,
) -> Iterator[dict[str, str]]:
    """Yields grouped rows of an XQuAD-format folder (one ``<lang>.json`` per language).

    Args:
        path: folder holding ``<lang>.json`` files.
        grouper: validation and grouping for the configured languages.
        split: ``train``, ``dev``, ``test`` or ``all`` (articles by title).
        heldout_articles: test articles; dev_articles: tuning articles.
    """
    by_qid: dict[str, dict[str, tuple[str, str]]] = {}
    first_seen: dict[str, str] = {}
    article_of: dict[str, str] = {}
    titles: list[str] = []
    for lang in grouper.languages:
        fpath = f"{path.rstrip('/')}/{lang}.json"
        seen: set[str] = set()
        for q in iter_squad_file(fpath, lang, grouper):
            if q.qid in seen:
                grouper.bad(f"{fpath} [question {q.qid!r}]", f"duplicate id: {q.qid!r} appears twice")
                continue
            seen.add(q.qid)
            if q.qid not in article_of:
                article_of[q.qid] = q.article
                first_seen[q.qid] = f"{fpath} [question {q.qid!r}]"
                if q.article not in titles:
                    titles.append(q.article)
            by_qid.setdefault(q.qid, {})[lang] = (q.query, q.passage)
    sp = split_articles(titles, heldout_articles or [], dev_articles or [])
    keep = set({"train": sp.train, "dev": sp.dev, "test": sp.test, "all": titles}[split])
    for qid, texts in by_qid.items():
        if article_of[qid] not in keep:
            continue
        row = grouper.finish(qid, texts, first_seen[qid])
        if row is not None:
            yield row


def xquad_split(path: str, languages: list[str], heldout: list[str], dev: list[str]) -> ArticleSplit:
    """The article split of an XQuAD folder with question counts per split (for logging)."""
    grouper = RecordGrouper(languages[:1], "skip")
    lang = languages[0]
    titles: list[str] = []
    per_article: dict[str, int] = {}
    for q in iter_squad_file(f"{path.rstrip('/')}/{lang}.json", lang, grouper):
        if q.article not in per_article:
            titles.append(q.article)
        per_article[q.article] = per_article.get(q.article, 0) + 1
    sp = split_articles(titles, heldout, dev)
    sp.questions = {name: sum(per_article[t] for t in getattr(sp, name)) for name in ("train", "dev", "test")}
    return sp


# ------------------------------------------------------- long and grouped rows


def _grouped_contiguous(
    records: Iterator[tuple[str, dict[str, Any]]], grouper: RecordGrouper, path: str
) -> Iterator[dict[str, str]]:
    """Groups contiguous ``(where, {qid, lang, query, passage})`` records by qid."""
    done: set[str] = set()
    cur_qid: str | None = None
    cur: dict[str, tuple[str, str]] = {}
    cur_where = ""

    def flush():
        if cur_qid is None:
            return None
        if cur_qid in bad_qids:
            # Its other records are dropped with it: count that too, nothing goes silently.
            grouper.bad(cur_where, f"dropped group: qid {cur_qid!r} had a bad record")
            return None
        return grouper.finish(cur_qid, cur, cur_where)

    bad_qids: set[str] = set()
    for where, rec in records:
        qid = rec.get("qid")
        if qid is None or (isinstance(qid, str) and not qid):
            grouper.bad(where, "missing field: 'qid'")
            continue
        qid = str(qid)
        if qid != cur_qid:
            row = flush()
            if row is not None:
                yield row
            if qid in done:
                grouper.bad(where, f"duplicate id: qid {qid!r} reappears after other qids (rows of one qid must be contiguous)")
                cur_qid, cur = None, {}
                continue
            done.add(qid)
            cur_qid, cur, cur_where = qid, {}, where
        lang = grouper.check_lang(rec.get("lang"), where)
        query = grouper.check_text(rec.get("query"), "query", where)
        passage = grouper.check_text(rec.get("passage"), "passage", where)
        if lang is None or query is None or passage is None:
            bad_qids.add(qid)
            continue
        if lang in cur:
            grouper.bad(where, f"duplicate id: qid {qid!r} has two {lang!r} records")
            bad_qids.add(qid)
            continue
        if grouper.wanted(lang):
            cur[lang] = (query, passage)
    row = flush()
    if row is not None:
        yield row


def _json_records(path: str, grouper: RecordGrouper) -> Iterator[tuple[str, dict[str, Any]]]:
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            grouper.bad(where, f"malformed JSON: {e.msg} (column {e.colno})")
            continue
        if not isinstance(rec, dict):
            grouper.bad(where, "malformed JSON: a line must hold an object")
            continue
        yield where, rec


def iter_long_jsonl(path: str, grouper: RecordGrouper) -> Iterator[dict[str, str]]:
    """Grouped rows from a JSONL file of ``{qid, lang, query, passage}`` lines."""
    yield from _grouped_contiguous(_json_records(path, grouper), grouper, path)


def iter_long_parquet(path: str, grouper: RecordGrouper) -> Iterator[dict[str, str]]:
    """Grouped rows from a Parquet file with columns ``qid, lang, query, passage`` (row numbers are 1-based)."""
    import pyarrow.parquet as pq

    fs, p = _fs_and_path(path)

    def records():
        with fs.open_input_file(p) as f:
            pf = pq.ParquetFile(f)
            missing = {"qid", "lang", "query", "passage"} - set(pf.schema_arrow.names)
            if missing:
                raise DataError(path, f"missing field(s): {sorted(missing)} (columns: {pf.schema_arrow.names})")
            n = 0
            for batch in pf.iter_batches(batch_size=4096, columns=["qid", "lang", "query", "passage"]):
                for rec in batch.to_pylist():
                    n += 1
                    yield f"{path}:row {n}", rec

    yield from _grouped_contiguous(records(), grouper, path)


def iter_grouped_jsonl(path: str, grouper: RecordGrouper) -> Iterator[dict[str, str]]:
    """Grouped rows from ``{qid, translations: {lang: {query, passage}}}`` lines."""
    seen: set[str] = set()
    for where, rec in _json_records(path, grouper):
        qid = rec.get("qid")
        if not qid:
            grouper.bad(where, "missing field: 'qid'")
            continue
        qid = str(qid)
        if qid in seen:
            grouper.bad(where, f"duplicate id: qid {qid!r} appears twice")
            continue
        seen.add(qid)
        trans = rec.get("translations")
        if not isinstance(trans, dict):
            grouper.bad(where, "missing field: 'translations'")
            continue
        texts: dict[str, tuple[str, str]] = {}
        ok = True
        for lang, t in trans.items():
            if grouper.check_lang(lang, where) is None:
                ok = False
                break
            if not isinstance(t, dict):
                grouper.bad(where, f"missing field: translations.{lang} must be an object")
                ok = False
                break
            q = grouper.check_text(t.get("query"), f"translations.{lang}.query", where)
            p = grouper.check_text(t.get("passage"), f"translations.{lang}.passage", where)
            if q is None or p is None:
                ok = False
                break
            if grouper.wanted(lang):
                texts[lang] = (q, p)
        if not ok:
            continue
        row = grouper.finish(qid, texts, where)
        if row is not None:
            yield row


# ------------------------------------------------------------------- mMARCO


def _read_tsv_ids(path: str, wanted: set[str], grouper: RecordGrouper) -> dict[str, str]:
    out: dict[str, str] = {}
    for lineno, line in iter_lines(path):
        if not line:
            continue
        parts = line.split("\t", 1)
        where = f"{path}:{lineno}"
        if len(parts) != 2:
            grouper.bad(where, "missing field: expected 'id<TAB>text'")
            continue
        if parts[0] in wanted:
            if parts[0] in out:
                grouper.bad(where, f"duplicate id: {parts[0]!r}")
                continue
            out[parts[0]] = parts[1]
    return out


def iter_mmarco(path: str, grouper: RecordGrouper, shard: int = 0, num_shards: int = 1) -> Iterator[dict[str, str]]:
    """Grouped rows from an mMARCO-layout folder, for the qrels lines ``i % num_shards == shard``.

    Each shard scans the per-language files for just its own ids, so shards
    run as independent read tasks and no process holds the whole collection.
    """
    root = path.rstrip("/")
    pairs: list[tuple[str, str, str]] = []
    for lineno, line in iter_lines(f"{root}/qrels.tsv"):
        if not line.strip() or (lineno - 1) % num_shards != shard:
            continue
        parts = line.split()
        where = f"{root}/qrels.tsv:{lineno}"
        if len(parts) == 4:
            qid, pid = parts[0], parts[2]
        elif len(parts) == 2:
            qid, pid = parts
        else:
            grouper.bad(where, "missing field: expected 'qid 0 pid 1' or 'qid pid'")
            continue
        pairs.append((qid, pid, where))
    qids = {q for q, _, _ in pairs}
    pids = {p for _, p, _ in pairs}
    queries = {lang: _read_tsv_ids(f"{root}/queries/{lang}.tsv", qids, grouper) for lang in grouper.languages}
    passages = {lang: _read_tsv_ids(f"{root}/collection/{lang}.tsv", pids, grouper) for lang in grouper.languages}
    seen: set[str] = set()
    for qid, pid, where in pairs:
        if qid in seen:
            continue  # mMARCO lists several positives for a few queries: the first one trains
        seen.add(qid)
        texts = {}
        for lang in grouper.languages:
            q, p = queries[lang].get(qid), passages[lang].get(pid)
            if q is not None and p is not None and q.strip() and p.strip():
                texts[lang] = (q, p)
        row = grouper.finish(qid, texts, where)
        if row is not None:
            yield row
