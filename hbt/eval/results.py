"""What an evaluation produces, and how it is collected and stored.

Metric keys read ``<benchmark>/<setting>/<metric>`` with an optional language
or pair level: ``xquad_r/multilingual/mAP``, ``xquad_r/monolingual/de/mAP``,
``xquad_r/cross_lingual/de-en/mAP``, ``xquad_r/bias/own_language_top1``,
``tatoeba/deu-eng/acc@1``, ``miracl/de/nDCG@10``. Definitions: docs/metrics.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hbt.config import read_json_file, read_npz_file, savez_atomic, write_text_atomic
from hbt.eval.metrics import per_query_key

# per_query.npz stores a key's row labels as "<key>::question" etc. (metric keys hold '@' and '/', never '::').
_UNIT_SEP = "::"


@dataclass
class EvalResult:
    """Everything one evaluation produced.

    Attributes:
        metrics: flat ``key -> value`` (see the module docstring for the key scheme).
        per_query: the same keys -> per-query values in a fixed query order
            (language, then sorted question id); a ``.../mAP`` metric's array
            is stored under ``.../AP`` (see :func:`per_query_key`), so two
            models evaluated with the same config can be compared with a paired
            bootstrap. Keys that average over languages or pairs hold the
            concatenation of their parts.
        matrices: ``key -> {"languages": [...], "values": [[...]]}``; row = query
            language, column = pool language.
        info: counts, timings and settings of the run.
        units: per ``per_query`` key, the row labels the study's bootstrap needs:
            ``question`` (the cluster: a question's language versions and pairs
            share it), ``article`` and ``stratum`` (the language or pair a
            macro-averaged key averages over; absent for plain means).
    """

    metrics: dict[str, float]
    per_query: dict[str, np.ndarray]
    matrices: dict[str, dict]
    info: dict[str, Any] = field(default_factory=dict)
    units: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def save(self, out_dir: str | os.PathLike) -> None:
        """Writes ``metrics.json``, ``matrices.json``, ``per_query.npz`` and ``info.json``.

        Each file is written whole or not at all (a temporary name, then a rename), and
        ``metrics.json``, the mark of a finished evaluation, is removed first and written
        last: an evaluation cut short never looks finished, nor mixes two runs' files.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        texts = {"matrices.json": json.dumps(self.matrices, indent=2),
                 "info.json": json.dumps(self.info, indent=2, default=str),
                 "metrics.json": json.dumps(self.metrics, indent=2, sort_keys=True)}  # fails before any write
        arrays = {k: np.asarray(v) for k, v in self.per_query.items()}
        for k, units in self.units.items():
            arrays.update({f"{k}{_UNIT_SEP}{u}": np.asarray(v, dtype=str) for u, v in units.items()})
        (out / "metrics.json").unlink(missing_ok=True)
        savez_atomic(out / "per_query.npz", **arrays)
        for name, text in texts.items():  # metrics.json last
            write_text_atomic(out / name, text)

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "EvalResult":
        """Reads what :meth:`save` wrote.

        Raises:
            DamagedFileError: a file is empty, cut short or not what :meth:`save` writes (the
                one-line message names it).
            HbtError: a file is missing.
        """
        out = Path(out_dir)
        hint = f"run the evaluation again to rewrite {out}"
        metrics = read_json_file(out / "metrics.json", "evaluation metrics", hint)
        matrices = read_json_file(out / "matrices.json", "evaluation matrices", hint)
        info_f = out / "info.json"
        info = read_json_file(info_f, "evaluation info", hint) if info_f.exists() else {}
        per_query: dict[str, np.ndarray] = {}
        units: dict[str, dict[str, np.ndarray]] = {}
        for k, v in read_npz_file(out / "per_query.npz", "per-query scores of an evaluation", hint).items():
            key, _, unit = k.partition(_UNIT_SEP)
            if unit:
                units.setdefault(key, {})[unit] = v
            else:
                per_query[key] = v
        return cls(metrics, per_query, matrices, info, units)


class Collector:
    """Accumulates metrics, per-query arrays and matrices under one key scheme."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.per_query: dict[str, np.ndarray] = {}
        self.matrices: dict[str, dict] = {}
        self.units: dict[str, dict[str, np.ndarray]] = {}

    def add(self, key: str, values: np.ndarray, questions: Any, articles: Any) -> None:
        """A metric that is the plain mean of per-query values; ``questions``/``articles`` label the rows."""
        values = np.asarray(values, dtype=np.float64)
        pk = per_query_key(key)
        self.per_query[pk] = values
        self.units[pk] = {"question": np.asarray(questions, dtype=str), "article": np.asarray(articles, dtype=str)}
        if not (len(self.units[pk]["question"]) == len(self.units[pk]["article"]) == values.size):
            raise ValueError(f"{key}: {values.size} values but {len(questions)} question and {len(articles)} article labels")
        self.metrics[key] = float(values.mean()) if values.size else float("nan")

    def add_mean(self, key: str, parts: list[str]) -> None:
        """A macro mean over languages/pairs; its per-query array is the concatenation, each part a stratum."""
        if not parts:
            return
        self.metrics[key] = float(np.mean([self.metrics[p] for p in parts]))
        pks = [per_query_key(p) for p in parts]
        pk = per_query_key(key)
        self.per_query[pk] = np.concatenate([self.per_query[p] for p in pks])
        self.units[pk] = {u: np.concatenate([self.units[p][u] for p in pks]) for u in ("question", "article")}
        self.units[pk]["stratum"] = np.concatenate([np.full(self.per_query[p].size, p) for p in pks]).astype(str)

    def alias(self, key: str, source: str) -> None:
        """``key`` reports the same number as ``source`` (e.g. Tatoeba's headline direction)."""
        self.metrics[key] = self.metrics[source]
        self.per_query[per_query_key(key)] = self.per_query[per_query_key(source)]
        self.units[per_query_key(key)] = self.units[per_query_key(source)]
