"""The small metadata file that tells a bi-encoder how to embed with a checkpoint."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

METADATA_FILE = "hbt_encoder.json"


@dataclass
class EncoderMetadata:
    """How a checkpoint turns token states into a text embedding.

    Attributes:
        pooling: ``mean`` (masked mean of last hidden states) or ``cls``.
        query_prefix: prepended to every query (e5: ``"query: "``).
        passage_prefix: prepended to every passage (e5: ``"passage: "``).
        normalize: L2-normalise embeddings.
        source: free text on where the weights came from.
    """

    pooling: str = "mean"
    query_prefix: str = ""
    passage_prefix: str = ""
    normalize: bool = True
    source: str = ""


def write_metadata(model_dir: str | os.PathLike, meta: EncoderMetadata) -> None:
    """Writes ``hbt_encoder.json`` into a checkpoint dir."""
    Path(model_dir, METADATA_FILE).write_text(json.dumps(asdict(meta), indent=2), encoding="utf-8")


def read_metadata(model_dir: str | os.PathLike) -> EncoderMetadata:
    """Reads ``hbt_encoder.json``; a dir without one gets the defaults (mean pooling, no prefixes)."""
    path = Path(model_dir, METADATA_FILE)
    if not path.exists():
        return EncoderMetadata()
    raw = json.loads(path.read_text(encoding="utf-8"))
    return EncoderMetadata(**{k: v for k, v in raw.items() if k in EncoderMetadata.__dataclass_fields__})
