"""The small metadata file that tells a bi-encoder how to embed with a checkpoint.

A directory saved by hbt holds ``hbt_encoder.json``. A directory saved by
sentence-transformers (and no hbt file) is read from its own files instead:
pooling from ``1_Pooling/config.json``, prompts from
``config_sentence_transformers.json``, normalisation from ``modules.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hbt.config import HbtError, read_json_file, write_text_atomic

METADATA_FILE = "hbt_encoder.json"
# What to do about a damaged file of a model folder.
_HINT = "copy or save the model again"
ST_MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
ST_TRANSFORMER_FILE = "sentence_bert_config.json"
# The prompt names sentence-transformers and MTEB look up. hbt wrote "passage" before;
# such directories still load.
ST_QUERY_PROMPT = "query"
ST_DOCUMENT_PROMPT = "document"
_LEGACY_DOCUMENT_PROMPTS = ("passage",)
# Pooling config keys of sentence-transformers < 6 (one bool per mode).
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class ModelFormatError(HbtError, ValueError):
    """A model directory hbt cannot embed with exactly as its files say (the message names the file)."""


@dataclass
class EncoderMetadata:
    """How a checkpoint turns token states into a text embedding.

    Attributes:
        pooling: ``mean`` (masked mean of last hidden states) or ``cls``.
        query_prefix: prepended to every query (e5: ``"query: "``).
        passage_prefix: prepended to every passage (e5: ``"passage: "``).
        normalize: L2-normalise embeddings.
        source: free text on where the weights came from.
        max_seq_length: the token cut-off the model is served with (``None``: not recorded).
    """

    pooling: str = "mean"
    query_prefix: str = ""
    passage_prefix: str = ""
    normalize: bool = True
    source: str = ""
    max_seq_length: int | None = None


def write_metadata(model_dir: str | os.PathLike, meta: EncoderMetadata) -> None:
    """Writes ``hbt_encoder.json`` into a checkpoint dir."""
    write_text_atomic(Path(model_dir, METADATA_FILE), json.dumps(asdict(meta), indent=2))


def read_metadata(model_dir: str | os.PathLike) -> EncoderMetadata:
    """Reads how a checkpoint dir embeds.

    ``hbt_encoder.json`` when present; else the sentence-transformers files when
    ``modules.json`` is present; else the defaults (mean pooling, no prefixes, L2 norm).
    ``max_seq_length`` missing from the hbt file is taken from ``sentence_bert_config.json``.

    Raises:
        ModelFormatError: the sentence-transformers pooling combines several modes.
    """
    path = Path(model_dir, METADATA_FILE)
    if path.exists():
        raw = read_json_file(path, "hbt encoder metadata", _HINT)
        meta = EncoderMetadata(**{k: v for k, v in raw.items() if k in EncoderMetadata.__dataclass_fields__})
    elif Path(model_dir, ST_MODULES_FILE).exists():
        meta = read_sentence_transformers_metadata(model_dir)
    else:
        return EncoderMetadata()
    if meta.max_seq_length is None:
        meta.max_seq_length = _read_json(Path(model_dir, ST_TRANSFORMER_FILE)).get("max_seq_length")
    return meta


def read_modules(model_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of ``modules.json`` in order (empty when the dir has none)."""
    path = Path(model_dir, ST_MODULES_FILE)
    if not path.exists():
        return []
    return sorted(read_json_file(path, "sentence-transformers module list", _HINT, expect=list), key=lambda m: m["idx"])


def module_kind(entry: dict[str, Any]) -> str:
    """A ``modules.json`` entry's class name (``Dense``): the dotted path moved between releases
    (``sentence_transformers.models.Dense``, ``sentence_transformers.base.modules.dense.Dense``)."""
    return entry["type"].rsplit(".", 1)[-1]


def read_sentence_transformers_metadata(model_dir: str | os.PathLike) -> EncoderMetadata:
    """Pooling, prompts, normalisation and max length from a sentence-transformers directory.

    A model without a ``Normalize`` module is still L2-normalised when its similarity is
    cosine (the sentence-transformers default): hbt scores by inner product, which on
    normalised vectors ranks exactly as cosine does.

    Raises:
        ModelFormatError: the pooling combines several modes or leaves the prompt out.
    """
    d = Path(model_dir)
    modules = read_modules(d)
    kinds = [module_kind(m) for m in modules]
    pooling = "mean"
    if "Pooling" in kinds:
        entry = modules[kinds.index("Pooling")]
        pooling = _pooling_mode(_read_json(d / entry["path"] / "config.json"), d / entry["path"] / "config.json")
    st = _read_json(d / ST_CONFIG_FILE)
    prompts = st.get("prompts") or {}
    document = next((prompts[k] for k in (ST_DOCUMENT_PROMPT, *_LEGACY_DOCUMENT_PROMPTS) if k in prompts), "")
    similarity = st.get("similarity_fn_name") or "cosine"
    return EncoderMetadata(
        pooling=pooling,
        query_prefix=prompts.get(ST_QUERY_PROMPT, ""),
        passage_prefix=document,
        normalize="Normalize" in kinds or similarity == "cosine",
        source=f"sentence-transformers directory {d.name}",
        max_seq_length=_read_json(d / ST_TRANSFORMER_FILE).get("max_seq_length"),
    )


def _pooling_mode(cfg: dict[str, Any], where: Path) -> str:
    mode = cfg.get("pooling_mode")
    if mode is None:  # sentence-transformers < 6: one bool per mode, none set means mean
        modes = [m for k, m in _LEGACY_POOLING_KEYS.items() if cfg.get(k)] or ["mean"]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) != 1:
        raise ModelFormatError(f"{where}: pooling concatenates {modes}; hbt pools by one mode")
    if cfg.get("include_prompt", True) is False:
        raise ModelFormatError(f"{where}: pooling leaves the prompt tokens out (include_prompt: false); "
                               "hbt pools over every token")
    return modes[0]


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_file(path, "sentence-transformers config", _HINT) if path.exists() else {}
