"""The training record schema and bad-record handling.

The streaming unit is one row per question id carrying all its translations:
``{"qid": str, "passage_group": str, "article": str, "q_<lang>": str, "p_<lang>": str, ...}``
for every configured language, in a fixed column set. ``passage_group`` is
shared by a positive passage and all its translations (the loss masks
candidates of the row's own group); ``article`` names the source article or
context where the format knows it, else ``""``. Rows are therefore self-contained: a worker
can build a monolingual or a cross-lingual pair from any row without a
central sampler, and data-parallel shards are disjoint in question ids.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from hbt.config import KNOWN_LANGUAGES, HbtError


class DataError(HbtError, ValueError):
    """A bad input record; the message names the file and line (or item)."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class ItemError(DataError):
    """A bad file or item in it (benchmark files, SQuAD documents): names the file and the item.

    Attributes:
        file: the offending file (or directory).
        item: the offending item (question id, article, line number), if any.
    """

    def __init__(self, file: str | os.PathLike, message: str, item: str | None = None) -> None:
        super().__init__(str(file) + (f" [{item}]" if item else ""), message)
        self.file = str(file)
        self.item = item


def query_col(lang: str) -> str:
    """Column holding the query text in ``lang``."""
    return f"q_{lang}"


def passage_col(lang: str) -> str:
    """Column holding the positive passage text in ``lang``."""
    return f"p_{lang}"


@dataclass
class SkipLog:
    """Counts of skipped records by reason, with the first few locations kept."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, err: DataError) -> None:
        """Records one skipped record."""
        self.counts[err.reason.split(":")[0]] += 1
        if len(self.examples) < 20:
            self.examples.append(str(err))

    def merge(self, other: "SkipLog") -> None:
        """Adds another log's counts."""
        self.counts.update(other.counts)
        self.examples.extend(other.examples[: max(0, 20 - len(self.examples))])

    @property
    def total(self) -> int:
        """All skipped records."""
        return sum(self.counts.values())

    def as_metrics(self) -> dict[str, float]:
        """``data/skipped_records`` plus one counter per reason."""
        out = {"data/skipped_records": float(self.total)}
        for reason, n in self.counts.items():
            out[f"data/skipped/{_slug(reason)}"] = float(n)
        return out


def stable_hash(text: str) -> int:
    """A stable 63-bit hash (ids as int64 tensors; shard assignment): blake2b, not Python's salted ``hash``."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s.lower()).strip("_")[:60]


class RecordGrouper:
    """Builds grouped rows from per-language records and validates them.

    Args:
        languages: the configured training languages (every row must carry all).
        on_bad_record: ``error`` raises :class:`DataError`; ``skip`` counts it.
    """

    def __init__(self, languages: list[str], on_bad_record: str = "error") -> None:
        self.languages = list(languages)
        self._wanted = set(languages)
        self.on_bad_record = on_bad_record
        self.skips = SkipLog()

    def bad(self, where: str, reason: str) -> None:
        """Raises or counts a bad record, as configured."""
        err = DataError(where, reason)
        if self.on_bad_record == "error":
            raise err
        self.skips.add(err)

    def check_text(self, value: Any, name: str, where: str) -> str | None:
        """Returns a non-empty string or reports the record as bad."""
        if value is None:
            self.bad(where, f"missing field: {name!r}")
            return None
        if not isinstance(value, str):
            self.bad(where, f"wrong type: field {name!r} must be a string, got {type(value).__name__}")
            return None
        if not value.strip():
            self.bad(where, f"empty text: field {name!r}")
            return None
        return value

    def check_lang(self, lang: Any, where: str) -> str | None:
        """Returns a known language code, or reports the record as bad."""
        if not isinstance(lang, str) or not lang:
            self.bad(where, "missing field: 'lang'")
            return None
        if lang not in KNOWN_LANGUAGES:
            self.bad(where, f"unknown language: {lang!r} (known: {', '.join(KNOWN_LANGUAGES)})")
            return None
        return lang

    def wanted(self, lang: str) -> bool:
        """Whether ``lang`` is a configured training language (others are ignored, not bad)."""
        return lang in self._wanted

    def finish(self, qid: str, texts: dict[str, tuple[str, str]], where: str, group: str | None = None,
               article: str = "") -> dict[str, str] | None:
        """Turns one qid's translations into a grouped row, or reports it as bad.

        Args:
            qid: the question id.
            texts: lang -> (query, passage) for the configured languages found.
            where: file and line of the qid's first record.
            group: the positive passage's group (default: the qid, i.e. a passage of its own).
            article: the source article or context, ``""`` when unknown.
        """
        missing = [lang for lang in self.languages if lang not in texts]
        if missing:
            if len(texts) < 2:
                self.bad(where, f"too few languages: qid {qid!r} has {sorted(texts)} (cross-lingual pairs need two)")
            else:
                self.bad(where, f"missing languages: qid {qid!r} lacks {missing} of the configured languages")
            return None
        row = {"qid": qid, "passage_group": group if group is not None else qid, "article": article}
        for lang in self.languages:
            q, p = texts[lang]
            row[query_col(lang)] = q
            row[passage_col(lang)] = p
        return row


def columns(languages: Iterable[str]) -> list[str]:
    """The grouped row's columns in order."""
    cols = ["qid", "passage_group", "article"]
    for lang in languages:
        cols += [query_col(lang), passage_col(lang)]
    return cols
