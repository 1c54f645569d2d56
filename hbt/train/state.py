"""Resumable training state besides the weights and optimizer (which DeepSpeed saves)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

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
        """Writes ``train_state.json``."""
        Path(directory, STATE_FILE).write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "TrainState":
        """Reads ``train_state.json`` (a fresh state when absent)."""
        p = Path(directory, STATE_FILE)
        if not p.exists():
            return cls()
        return cls(**json.loads(p.read_text(encoding="utf-8")))
