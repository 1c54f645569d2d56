"""Resumable training state besides the weights and optimizer (which DeepSpeed saves)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from hbt.config import damaged_file, read_json_file, write_text_atomic

STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    """Where the run is: enough to continue with the same data order.

    Attributes:
        step: optimizer steps done.
        epoch: the data epoch in progress.
        batch_in_epoch: global batches of this epoch already trained on (the next one is
            :meth:`hbt.data.batches.GlobalBatches.rows` of ``(epoch, batch_in_epoch)``).
        samples: global training pairs seen.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples: int = 0

    def save(self, directory: str | os.PathLike) -> None:
        """Writes ``train_state.json`` whole or not at all (a temporary name, then a rename)."""
        write_text_atomic(Path(directory, STATE_FILE), json.dumps(asdict(self)))

    @classmethod
    def load(cls, directory: str | os.PathLike, source: str | None = None) -> "TrainState":
        """Reads ``train_state.json`` (a fresh state when absent).

        Args:
            directory: the checkpoint folder, as this process sees it (often a temporary copy).
            source: the checkpoint's own name for messages (its storage path or URI);
                default ``directory``.

        Raises:
            DamagedFileError: the file is empty, cut short, or not a state hbt writes; the
                one-line message names the file (under ``source``). An
                :class:`~hbt.config.HbtError`, so it pickles across Ray and the CLI prints
                it as ``error: ...`` with exit 2.
        """
        p = Path(directory, STATE_FILE)
        if not p.exists():
            return cls()
        shown = f"{str(source).rstrip('/')}/{STATE_FILE}" if source else str(p)
        hint = (f"delete the checkpoint folder {source or directory} to resume from an earlier checkpoint, "
                "or train from the start")
        what = "training state of a checkpoint"
        raw = read_json_file(p, what, hint, name=shown)
        names = {f.name for f in fields(cls)}
        bad = sorted(k for k, v in raw.items() if k not in names or not isinstance(v, int) or isinstance(v, bool)
                     or v < 0)
        missing = sorted(names - set(raw))
        if bad or missing:
            problem = f"unexpected or non-count keys {bad}" if bad else f"missing keys {missing}"
            raise damaged_file(shown, what, problem, hint)
        return cls(**raw)
