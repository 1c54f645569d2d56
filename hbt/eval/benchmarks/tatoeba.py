"""Tatoeba (XTREME): line ``i`` of one side is the translation of line ``i`` of the other."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hbt.eval.benchmarks._files import BenchmarkError, read_lines


@dataclass
class BitextBenchmark:
    """One Tatoeba language pair: ``src_texts[i]`` translates ``eng_texts[i]``.

    Attributes:
        lang: the ISO 639-3 code of the non-English side (``deu``, ``cmn``...).
        src_texts: the non-English sentences.
        eng_texts: the English sentences.
    """

    lang: str
    src_texts: list[str]
    eng_texts: list[str]
    query_lines: list[int] | None = None

    @property
    def queries(self) -> list[int]:
        """The lines used as queries (both directions); every line stays a target."""
        return list(range(len(self.src_texts))) if self.query_lines is None else self.query_lines


def sample_tatoeba(pairs: list[BitextBenchmark], n: int | None, seed: int) -> list[BitextBenchmark]:
    """Seeded random query lines per pair; the full other side stays the search target (XTREME's pool)."""
    if n is None:
        return pairs
    out = []
    for p in pairs:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A70, *p.lang.encode()]))
        lines = sorted(rng.choice(len(p.src_texts), size=min(n, len(p.src_texts)), replace=False).tolist())
        out.append(BitextBenchmark(p.lang, p.src_texts, p.eng_texts, lines))
    return out


def load_tatoeba(path: str | os.PathLike, languages: list[str]) -> list[BitextBenchmark]:
    """Loads Tatoeba pairs ``tatoeba.{xxx}-eng.{xxx}`` / ``tatoeba.{xxx}-eng.eng``.

    Args:
        path: the ``tatoeba`` directory.
        languages: ISO 639-3 codes, in the order to report them.

    Returns:
        One :class:`BitextBenchmark` per language.

    Raises:
        BenchmarkError: an unknown language (no file), sides of different
            length, an empty line, or a file that is not UTF-8.
    """
    path = Path(path)
    if not path.is_dir():
        raise BenchmarkError(path, "tatoeba: not a directory")
    out = []
    for lang in languages:
        src, eng = path / f"tatoeba.{lang}-eng.{lang}", path / f"tatoeba.{lang}-eng.eng"
        if not src.exists() or not eng.exists():
            available = sorted(p.name.split(".")[1].split("-")[0] for p in path.glob("tatoeba.*-eng.eng"))
            raise BenchmarkError(
                path, f"tatoeba: unknown language code {lang!r} (no {src.name}; available: {available})"
            )
        a, b = read_lines(src), read_lines(eng)
        if len(a) != len(b):
            raise BenchmarkError(src, f"{len(a)} lines but {eng.name} has {len(b)}; the sides must be parallel")
        for f, lines in ((src, a), (eng, b)):
            for i, ln in enumerate(lines):
                if not ln.strip():
                    raise BenchmarkError(f, "empty line", f"line {i + 1}")
        out.append(BitextBenchmark(lang, a, b))
    return out
