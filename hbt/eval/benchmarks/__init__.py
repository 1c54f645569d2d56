"""Benchmark loaders: each dataset becomes queries, a candidate pool and relevance labels.

Three shapes cover the four benchmarks, one module each:

- :mod:`.qa`: :class:`QABenchmark` (XQuAD-R, MLQA-R; the LAReQA protocol):
  parallel questions in several languages, every sentence of every paragraph
  is a candidate, and a question's relevant candidates are the answer
  sentences of its parallel versions.
- :mod:`.tatoeba`: :class:`BitextBenchmark`: line ``i`` of one side is the
  translation of line ``i`` of the other.
- :mod:`.miracl`: :class:`AdhocBenchmark`: topics, graded TREC qrels and a passage corpus.

Every loader raises :class:`BenchmarkError` naming the file and the item
(question id, article, line number) when the input cannot be used.
:mod:`hbt.eval.registry` maps benchmark names to these loaders.
"""

from hbt.data.sentences import split_sentences
from hbt.eval.benchmarks._files import BenchmarkError
from hbt.eval.benchmarks.miracl import AdhocBenchmark, load_miracl, miracl_files
from hbt.eval.benchmarks.qa import (
    QABenchmark,
    load_mlqa_r,
    load_xquad_r,
    parse_squad_file,
)
from hbt.eval.benchmarks.tatoeba import BitextBenchmark, load_tatoeba, sample_tatoeba

__all__ = [
    "AdhocBenchmark", "BenchmarkError", "BitextBenchmark", "QABenchmark", "load_miracl", "load_mlqa_r",
    "load_tatoeba", "load_xquad_r", "miracl_files", "parse_squad_file", "sample_tatoeba", "split_sentences",
]
