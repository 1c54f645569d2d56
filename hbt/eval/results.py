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
        """Writes ``metrics.json``, ``matrices.json``, ``per_query.npz`` and ``info.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(self.metrics, indent=2, sort_keys=True), encoding="utf-8")
        (out / "matrices.json").write_text(json.dumps(self.matrices, indent=2), encoding="utf-8")
        (out / "info.json").write_text(json.dumps(self.info, indent=2, default=str), encoding="utf-8")
        arrays = {k: np.asarray(v) for k, v in self.per_query.items()}
        for k, units in self.units.items():
            arrays.update({f"{k}{_UNIT_SEP}{u}": np.asarray(v, dtype=str) for u, v in units.items()})
        np.savez_compressed(out / "per_query.npz", **arrays)

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "EvalResult":
        """Reads what :meth:`save` wrote."""
        out = Path(out_dir)
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        matrices = json.loads((out / "matrices.json").read_text(encoding="utf-8"))
        info_f = out / "info.json"
        info = json.loads(info_f.read_text(encoding="utf-8")) if info_f.exists() else {}
        per_query: dict[str, np.ndarray] = {}
        units: dict[str, dict[str, np.ndarray]] = {}
        with np.load(out / "per_query.npz", allow_pickle=False) as z:
            for k in z.files:
                key, _, unit = k.partition(_UNIT_SEP)
                if unit:
                    units.setdefault(key, {})[unit] = z[k]
                else:
                    per_query[key] = z[k]
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
