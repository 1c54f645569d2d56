"""MIRACL: topics, graded TREC qrels and a passage corpus, in the layout of the ``miracl/miracl`` repos."""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from hbt.data.squad import require_field
from hbt.eval.benchmarks._files import BenchmarkError, read_lines


@dataclass
class AdhocBenchmark:
    """Ad hoc retrieval: topics, graded qrels and a passage corpus (MIRACL).

    Attributes:
        name: ``miracl``.
        lang: the language code.
        query_ids: topic ids (sorted), only those with a positive judgment.
        query_texts: topic texts.
        doc_ids: passage ids in corpus order.
        doc_texts: ``title + " " + text`` of each passage.
        qrels: ``qid -> docid -> grade`` (0 = judged non-relevant).
    """

    name: str
    lang: str
    query_ids: list[str]
    query_texts: list[str]
    doc_ids: list[str]
    doc_texts: list[str]
    qrels: dict[str, dict[str, int]]


def miracl_files(root: str | os.PathLike, lang: str, split: str = "dev") -> tuple[Path, Path, list[Path]]:
    """Where MIRACL's files live, in the layout of the ``miracl/miracl`` and ``miracl/miracl-corpus`` repos.

    ``{root}/miracl-v1.0-{lang}/topics/topics.miracl-v1.0-{lang}-{split}.tsv``,
    ``{root}/miracl-v1.0-{lang}/qrels/qrels.miracl-v1.0-{lang}-{split}.tsv`` and
    ``{root}/miracl-corpus-v1.0-{lang}/docs-*.jsonl[.gz]``.

    Returns:
        (topics file, qrels file, corpus files in shard order).

    Raises:
        BenchmarkError: a file or the corpus is missing (unknown language).
    """
    root = Path(root)
    base = root / f"miracl-v1.0-{lang}"
    topics = base / "topics" / f"topics.miracl-v1.0-{lang}-{split}.tsv"
    qrels = base / "qrels" / f"qrels.miracl-v1.0-{lang}-{split}.tsv"
    corpus_dir = root / f"miracl-corpus-v1.0-{lang}"
    corpus = sorted(
        glob.glob(str(corpus_dir / "docs-*.jsonl")) + glob.glob(str(corpus_dir / "docs-*.jsonl.gz")),
        key=lambda p: int(re.search(r"docs-(\d+)", os.path.basename(p)).group(1)),
    )
    available = sorted(p.name.removeprefix("miracl-v1.0-") for p in root.glob("miracl-v1.0-*"))
    for f in (topics, qrels):
        if not f.exists():
            raise BenchmarkError(
                root,
                f"miracl: unknown language code {lang!r} or split {split!r} (no {f.relative_to(root)}; "
                f"available languages: {available})",
            )
    if not corpus:
        raise BenchmarkError(root, f"miracl: no corpus for {lang!r} (no {corpus_dir.name}/docs-*.jsonl[.gz])")
    return topics, qrels, [Path(p) for p in corpus]


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def load_miracl(
    root: str | os.PathLike, lang: str, split: str = "dev", max_questions: int | None = None
) -> AdhocBenchmark:
    """Loads one MIRACL language (see :func:`miracl_files` for the layout).

    Topics are ``qid<TAB>query`` lines, qrels are TREC lines
    ``qid Q0 docid grade``, the corpus is JSON lines with ``docid``, ``title``
    and ``text``. Topics with no positive judgment are dropped (they have no
    defined nDCG or recall).

    Args:
        root: the directory holding ``miracl-v1.0-{lang}`` and ``miracl-corpus-v1.0-{lang}``.
        lang: the MIRACL language code.
        split: the topics/qrels split (``dev`` has public labels).
        max_questions: keep the first N topic ids in sorted order.

    Raises:
        BenchmarkError: a missing file, or a malformed line (named by file and line number).
    """
    topics_f, qrels_f, corpus_fs = miracl_files(root, lang, split)
    topics: dict[str, str] = {}
    for i, line in enumerate(read_lines(topics_f)):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip():
            raise BenchmarkError(topics_f, "expected 'qid<TAB>query'", f"line {i + 1}")
        topics[parts[0].strip()] = parts[1].strip()
    qrels: dict[str, dict[str, int]] = {}
    line_of: dict[tuple[str, str], int] = {}
    for i, line in enumerate(read_lines(qrels_f)):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise BenchmarkError(qrels_f, "expected 'qid Q0 docid grade'", f"line {i + 1}")
        try:
            grade = int(parts[3])
        except ValueError:
            raise BenchmarkError(qrels_f, f"grade {parts[3]!r} is not an integer", f"line {i + 1}") from None
        qrels.setdefault(parts[0], {})[parts[2]] = grade
        line_of[(parts[0], parts[2])] = i + 1
    unknown = sorted(set(qrels) - set(topics))
    if unknown:
        raise BenchmarkError(qrels_f, f"qrels name topics missing from {topics_f.name}: {unknown[:5]}")
    doc_ids, doc_texts, seen = [], [], set()
    for f in corpus_fs:
        try:
            with _open_text(f) as fh:
                for i, line in enumerate(fh):
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise BenchmarkError(f, f"malformed JSON: {e.msg}", f"line {i + 1}") from None
                    item = f"line {i + 1}"
                    docid = require_field(doc, "docid", f, item, str)
                    text = require_field(doc, "text", f, item, str)
                    title = doc.get("title", "") or ""
                    if docid in seen:
                        raise BenchmarkError(f, f"duplicate docid {docid!r}", item)
                    seen.add(docid)
                    doc_ids.append(docid)
                    doc_texts.append(f"{title} {text}".strip())
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise BenchmarkError(f, f"cannot read: {e}") from None
    # A judged passage missing from the corpus would count as never retrieved and
    # silently lower nDCG and recall: a wrong corpus or a truncated download.
    missing = sorted((line_of[(q, d)], q, d) for q, judged in qrels.items() for d in judged if d not in seen)
    if missing:
        n, q, d = missing[0]
        raise BenchmarkError(qrels_f, f"judged docid {d!r} (topic {q}) is not in the corpus "
                             f"({len(missing)} judged docids missing in all)", f"line {n}")
    qids = sorted(q for q in topics if any(g > 0 for g in qrels.get(q, {}).values()))
    if max_questions is not None:
        qids = qids[:max_questions]
    if not qids:
        raise BenchmarkError(qrels_f, "miracl: no topic has a positive judgment")
    return AdhocBenchmark("miracl", lang, qids, [topics[q] for q in qids], doc_ids, doc_texts,
                          {q: qrels[q] for q in qids})
