"""Which rows form each global batch: a seeded global shuffle of question ids per epoch.

Training and ``hbt data inspect`` draw their global batches with this code:

- the rows are put in one canonical order, by :func:`hbt.data.records.stable_hash`
  of the qid, so the order does not depend on which read task finished first;
- every epoch is a permutation drawn from ``(seed, epoch)`` alone, so every
  worker derives the same one without communication, and a resumed run
  replays it from ``(epoch, batch in epoch)``;
- global batch ``k`` of an epoch is rows ``perm[k*B:(k+1)*B]`` and worker
  ``r`` takes its contiguous slice, so the workers' shards are disjoint in
  question ids and no qid appears twice in a global batch (each row is one qid).

A streaming reader with a small local shuffle buffer would instead hand out
rows in file order, so each global batch would hold one or two articles
(topically clustered negatives) and the epochs would walk the articles in turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hbt.data.records import DataError


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on ``(seed, epoch)``."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5EED])).permutation(n)


def canonical_order(qid_hashes: np.ndarray) -> np.ndarray:
    """Row order by qid hash (stable): the same rows give the same order whatever the read order was."""
    return np.argsort(np.asarray(qid_hashes, dtype=np.int64), kind="stable")


@dataclass(frozen=True)
class GlobalBatches:
    """The global batches of every epoch over ``num_rows`` rows in canonical order.

    Args:
        num_rows: training rows (one per question id).
        global_batch_size: pairs per global step.
        seed: the shuffle seed (``batching.seed``).
        shuffle: False keeps the canonical order in every epoch.

    Raises:
        DataError: fewer rows than one global batch (a ValueError).
    """

    num_rows: int
    global_batch_size: int
    seed: int
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.num_rows < self.global_batch_size:
            raise DataError(  # a ValueError too; an HbtError, so the CLI prints it as one line
                "training data",
                f"{self.num_rows} rows, fewer than one global batch of {self.global_batch_size}",
            )

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the remainder is dropped, like ``drop_last``)."""
        return self.num_rows // self.global_batch_size

    def rows(self, epoch: int, index: int) -> np.ndarray:
        """Row indices of global batch ``index`` of ``epoch`` (length ``global_batch_size``)."""
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch {index} of an epoch of {self.steps_per_epoch}")
        order = epoch_permutation(self.num_rows, self.seed, epoch) if self.shuffle else np.arange(self.num_rows)
        b = self.global_batch_size
        return order[index * b : (index + 1) * b]

    def worker_rows(self, epoch: int, index: int, rank: int, world_size: int) -> np.ndarray:
        """This worker's contiguous slice of the global batch (the slice its step plan covers)."""
        rows = self.rows(epoch, index)
        n = len(rows) // world_size
        return rows[rank * n : (rank + 1) * n]

    def position(self, step: int, start_epoch: int = 0) -> tuple[int, int]:
        """``(epoch, index)`` of the ``step``-th global batch of a run that started at epoch ``start_epoch``."""
        epoch, index = divmod(step, self.steps_per_epoch)
        return start_epoch + epoch, index
