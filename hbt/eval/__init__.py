"""Evaluation: benchmark loaders, Ray Data encoding, sharded FAISS search, metrics, the runner.

Each stage is its own module and can be used alone:

- :mod:`hbt.eval.benchmarks` turns XQuAD-R, MLQA-R, Tatoeba and MIRACL files into
  queries, candidates and relevance labels.
- :mod:`hbt.eval.encode` embeds texts with a pool of encoder actors (Ray Data).
- :mod:`hbt.eval.index` searches a sharded FAISS index and computes exact ranks.
- :mod:`hbt.eval.metrics` holds the metric functions (pure numpy).
- :mod:`hbt.eval.runner` ties them together (``evaluate``, ``run_eval_job``).
"""
