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
from typing import Any, Callable, Iterator

from hbt.data.records import DataError, RecordGrouper, stable_hash
from hbt.data.squad import answer_sentence_index, parse_squad, passage_group  # noqa: F401  (answer_sentence_index re-exported)

# ---------------------------------------------------------------- filesystem


def _fs_and_path(path: str):
    from hbt.model.storage import filesystem_and_path

    return filesystem_and_path(path)


def read_bytes(path: str) -> bytes:
    """Reads a whole local or remote file."""
    fs, p = _fs_and_path(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def iter_lines(path: str, on_bad: Callable[[DataError], None] | None = None) -> Iterator[tuple[int, str]]:
    """Yields (1-based line number, decoded line) from a local or remote file (``.gz``: gzip).

    Args:
        path: the file.
        on_bad: called with the :class:`DataError` of a line that is not
            valid UTF-8, which is then left out (``RecordGrouper.bad``: raise
            or count); ``None`` raises it.

    Raises:
        DataError: a line is not valid UTF-8 (named by file and line), or the
            file cannot be read to its end (a truncated or corrupt ``.gz``; named by file).
    """
    fs, p = _fs_and_path(path)
    compression = "gzip" if p.endswith(".gz") else None
    try:
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
                    text = _decode(raw, path, lineno, on_bad)
                    if text is not None:
                        yield lineno, text
            if buf:
                lineno += 1
                text = _decode(buf, path, lineno, on_bad)
                if text is not None:
                    yield lineno, text
    except FileNotFoundError:
        raise
    except OSError as e:  # pyarrow's "Truncated compressed stream", a bad gzip header, ...
        raise DataError(path, f"unreadable file: {e}" + (" (a truncated or corrupt .gz file?)" if compression else "")) from None


def _decode(raw: bytes, path: str, lineno: int, on_bad: Callable[[DataError], None] | None = None) -> str | None:
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
        err = DataError(f"{path}:{lineno}", f"not UTF-8: byte {e.start} ({raw[e.start:e.start + 1]!r})")
        if on_bad is None:
            raise err from None
        on_bad(err)
        return None


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
    """One question of a SQuAD-format file with its positive passage.

    Attributes:
        group: the passage group of the answer sentence (:func:`hbt.data.squad.passage_group`).
    """

    qid: str
    article: str
    query: str
    passage: str
    answer_crosses_sentence: bool
    group: str = ""


@dataclass
class ArticleSplit:
    """Which articles train, tune (dev) and test, with question counts."""

    train: list[str] = field(default_factory=list)
    dev: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    questions: dict[str, int] = field(default_factory=dict)


def iter_squad_file(path: str, lang: str, grouper: RecordGrouper) -> Iterator[SquadQuestion]:
    """Yields the questions of one SQuAD-format JSON file (parsed by :func:`hbt.data.squad.parse_squad`).

    The positive passage is the sentence holding the first answer's
    ``answer_start`` when the paragraph carries ``sentences`` and
    ``sentence_breaks`` (XQuAD-R, MLQA-R), else the paragraph, whose span must
    then hold ``answer_start``.

    Raises:
        DataError: malformed JSON, a missing field, an empty text, a duplicate
            id, or an answer outside every sentence (named by file and item);
            with ``on_bad_record: skip`` item errors are counted instead.
    """
    articles = parse_squad(read_bytes(path), path, "context", on_bad=lambda e: grouper.bad(e.where, e.reason))
    for art in articles:
        for p_i, par in enumerate(art.paragraphs):
            for qa in par.qas:
                yield SquadQuestion(qa.qid, art.title, qa.question, par.sentences[qa.sentence],
                                    qa.answer_crosses_sentence, passage_group(art.title, p_i, qa.sentence))


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
    groups = _GroupUnion()
    titles: list[str] = []
    for lang in grouper.languages:
        fpath = f"{path.rstrip('/')}/{lang}.json"
        for q in iter_squad_file(fpath, lang, grouper):  # the parser rejects duplicate ids
            if q.qid not in article_of:
                article_of[q.qid] = q.article
                first_seen[q.qid] = f"{fpath} [question {q.qid!r}]"
                if q.article not in titles:
                    titles.append(q.article)
            groups.add(q.qid, lang, q.group)
            by_qid.setdefault(q.qid, {})[lang] = (q.query, q.passage)
    group_of = groups.resolve()
    sp = split_articles(titles, heldout_articles or [], dev_articles or [])
    keep = set({"train": sp.train, "dev": sp.dev, "test": sp.test, "all": titles}[split])
    for qid, texts in by_qid.items():
        if article_of[qid] not in keep:
            continue
        row = grouper.finish(qid, texts, first_seen[qid], group=group_of[qid], article=article_of[qid])
        if row is not None:
            yield row


class _GroupUnion:
    """Passage groups of an XQuAD folder: questions whose answer sentence is one sentence in *any* language.

    Translations are segmented differently now and then (two English answer
    sentences can be one Chinese sentence), so a group taken from one language
    alone would let a translation of the positive act as a negative in another.
    The groups are the connected components of "shares an answer sentence in
    some language", named by the smallest first-language position in them.
    """

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.owner: dict[tuple[str, str], str] = {}  # (lang, position) -> a qid holding it
        self.name: dict[str, str] = {}  # qid -> its first-seen (first language) position

    def _find(self, q: str) -> str:
        while self.parent[q] != q:
            self.parent[q] = self.parent[self.parent[q]]
            q = self.parent[q]
        return q

    def add(self, qid: str, lang: str, position: str) -> None:
        if qid not in self.parent:
            self.parent[qid] = qid
            self.name[qid] = position
        other = self.owner.setdefault((lang, position), qid)
        a, b = self._find(qid), self._find(other)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def resolve(self) -> dict[str, str]:
        """qid -> group id."""
        comp_name: dict[str, str] = {}
        for q, pos in self.name.items():
            root = self._find(q)
            comp_name[root] = min(comp_name.get(root, pos), pos)
        return {q: comp_name[self._find(q)] for q in self.name}


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
    """Groups contiguous ``(where, {qid, lang, query, passage[, passage_id]})`` records by qid.

    ``passage_id`` (optional, but then on every row of the file) names the
    positive's passage group; a qid's rows must agree on it. Without it the
    group is the qid.
    """
    done: set[str] = set()
    cur_qid: str | None = None
    cur: dict[str, tuple[str, str]] = {}
    cur_where = ""
    cur_group: str | None = None
    pids = PassageIds(path)

    def flush():
        if cur_qid is None:
            return None
        if cur_qid in bad_qids:
            # Its other records are dropped with it: count that too, nothing goes silently.
            grouper.bad(cur_where, f"dropped group: qid {cur_qid!r} had a bad record")
            return None
        return grouper.finish(cur_qid, cur, cur_where, group=cur_group)

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
            cur_qid, cur, cur_where, cur_group = qid, {}, where, None
        group = pids.check(rec, where)
        if cur_group is None:
            cur_group = group
        elif group != cur_group:
            grouper.bad(where, f"inconsistent field: qid {qid!r} has passage_id {group!r} here but {cur_group!r} before")
            bad_qids.add(qid)
            continue
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


class PassageIds:
    """Checks that the optional ``passage_id`` field is on every row of a file or on none.

    A file that gives it on some rows only would silently mix two meanings of
    a passage group (the passage, or the qid), so that is an error naming the line.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.present: bool | None = None
        self.first_where = ""

    def check(self, rec: dict[str, Any], where: str) -> str | None:
        """The record's passage id (``None`` when the file has none).

        Raises:
            DataError: the field's presence differs from the file's first row (always an error:
                the file itself is inconsistent, not one record).
        """
        pid = rec.get("passage_id")
        has = pid is not None and pid != ""
        if self.present is None:
            self.present, self.first_where = has, where
        elif has != self.present:
            state = "present" if has else "missing"
            first = "present" if self.present else "missing"
            raise DataError(where, f"inconsistent field: 'passage_id' is {state} here but {first} on the file's "
                                   f"first row ({self.first_where}); give it on every row or on none")
        return str(pid) if has else None


def _bad_line(grouper: RecordGrouper) -> Callable[[DataError], None]:
    """``iter_lines``' ``on_bad``: a line that is not UTF-8 is one bad record (raised, or counted and skipped)."""
    return lambda err: grouper.bad(err.where, err.reason)


def _json_records(path: str, grouper: RecordGrouper) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file:line, object)`` per non-blank line; a file without a single record is itself bad."""
    lines = 0
    for lineno, line in iter_lines(path, _bad_line(grouper)):
        if not line.strip():
            continue
        lines += 1
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
    if not lines:
        grouper.bad(path, "empty file: no records (a training file must hold at least one line)")


def iter_long_jsonl(path: str, grouper: RecordGrouper) -> Iterator[dict[str, str]]:
    """Grouped rows from a JSONL file of ``{qid, lang, query, passage}`` lines."""
    yield from _grouped_contiguous(_json_records(path, grouper), grouper, path)


def iter_long_parquet(path: str, grouper: RecordGrouper) -> Iterator[dict[str, str]]:
    """Grouped rows from a Parquet file with columns ``qid, lang, query, passage`` (row numbers are 1-based)."""
    import pyarrow.parquet as pq

    fs, p = _fs_and_path(path)

    def batches():
        """The file's record batches; a file pyarrow cannot read (0 bytes, truncated) is named, not a traceback."""
        import pyarrow as pa

        try:
            with fs.open_input_file(p) as f:
                pf = pq.ParquetFile(f)
                missing = {"qid", "lang", "query", "passage"} - set(pf.schema_arrow.names)
                if missing:
                    raise DataError(path, f"missing field(s): {sorted(missing)} (columns: {pf.schema_arrow.names})")
                cols = ["qid", "lang", "query", "passage"] + (["passage_id"] if "passage_id" in pf.schema_arrow.names else [])
                yield from pf.iter_batches(batch_size=4096, columns=cols)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as e:
            raise DataError(path, f"not a readable Parquet file: {e}") from None

    def records():
        n = 0
        for batch in batches():
            for rec in batch.to_pylist():
                n += 1
                yield f"{path}:row {n}", rec
        if not n:
            grouper.bad(path, "empty file: no records (a training file must hold at least one row)")

    yield from _grouped_contiguous(records(), grouper, path)


def iter_grouped_jsonl(path: str, grouper: RecordGrouper) -> Iterator[dict[str, str]]:
    """Grouped rows from ``{qid, translations: {lang: {query, passage}}}`` lines."""
    seen: set[str] = set()
    pids = PassageIds(path)
    for where, rec in _json_records(path, grouper):
        group = pids.check(rec, where)
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
        row = grouper.finish(qid, texts, where, group=group)
        if row is not None:
            yield row


# ------------------------------------------------------------------- mMARCO


def _read_tsv_ids(path: str, wanted: set[str], grouper: RecordGrouper) -> dict[str, str]:
    out: dict[str, str] = {}
    for lineno, line in iter_lines(path, _bad_line(grouper)):
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
    """Grouped rows from an mMARCO-layout folder, for the qids with ``stable_hash(qid) % num_shards == shard``.

    Sharding by a hash of the qid (not by qrels line) keeps every qrels line of
    a multi-positive query in one read task, so no qid reaches two tasks. The
    passage group is the positive's pid.

    Each shard scans the per-language files for just its own ids, so shards
    run as independent read tasks and no process holds the whole collection.
    """
    root = path.rstrip("/")
    pairs: list[tuple[str, str, str]] = []
    for lineno, line in iter_lines(f"{root}/qrels.tsv", _bad_line(grouper)):
        if not line.strip():
            continue
        parts = line.split()
        if parts and num_shards > 1 and stable_hash(parts[0]) % num_shards != shard:
            continue
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
        row = grouper.finish(qid, texts, where, group=pid)
        if row is not None:
            yield row
