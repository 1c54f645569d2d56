"""The bi-encoder: one transformers encoder shared by queries and passages."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hbt.model.metadata import EncoderMetadata, read_metadata, write_metadata


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the sequence axis."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first token's state."""
    return hidden[:, 0]


POOLERS = {"mean": mean_pool, "cls": cls_pool}


class BiEncoder(nn.Module):
    """Shared-weight query/passage encoder with pooling, prefixes and L2 norm.

    Args:
        backbone: any transformers encoder returning ``last_hidden_state``.
        meta: pooling, prefixes and normalisation.
    """

    def __init__(self, backbone: nn.Module, meta: EncoderMetadata) -> None:
        super().__init__()
        if meta.pooling not in POOLERS:
            raise ValueError(f"unknown pooling {meta.pooling!r}; choose from {sorted(POOLERS)}")
        self.backbone = backbone
        self.meta = meta
        self._pool = POOLERS[meta.pooling]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeds a tokenised batch.

        Returns:
            (batch, hidden) embeddings, L2-normalised when the metadata says so.
        """
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        emb = self._pool(out.last_hidden_state, attention_mask)
        return F.normalize(emb.float(), dim=-1) if self.meta.normalize else emb.float()

    def prefix(self, texts: Sequence[str], kind: str) -> list[str]:
        """Prepends the query or passage prefix (``kind`` is ``query`` or ``passage``)."""
        if kind not in ("query", "passage"):
            raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")
        p = self.meta.query_prefix if kind == "query" else self.meta.passage_prefix
        return [p + t for t in texts]

    def save(self, out_dir: str | os.PathLike, tokenizer=None) -> Path:
        """Saves in plain transformers format plus hbt and sentence-transformers metadata.

        The directory then loads with ``AutoModel.from_pretrained``, with
        :func:`load_encoder`, and with ``sentence_transformers.SentenceTransformer``.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(out, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        write_metadata(out, self.meta)
        write_sentence_transformers_files(out, self.meta, getattr(self.backbone.config, "hidden_size", None))
        return out


def write_sentence_transformers_files(out: Path, meta: EncoderMetadata, hidden: int | None, max_seq_length: int = 512) -> None:
    """Writes the module list, pooling and normalisation files that sentence-transformers reads."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if meta.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": hidden,
                "pooling_mode_cls_token": meta.pooling == "cls",
                "pooling_mode_mean_tokens": meta.pooling == "mean",
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}), encoding="utf-8"
    )
    (out / "config_sentence_transformers.json").write_text(
        json.dumps(
            {"prompts": {"query": meta.query_prefix, "passage": meta.passage_prefix}, "default_prompt_name": None,
             "similarity_fn_name": "cosine"},
            indent=2,
        ),
        encoding="utf-8",
    )


def load_encoder(
    model_dir: str | os.PathLike,
    pooling: str | None = None,
    query_prefix: str | None = None,
    passage_prefix: str | None = None,
    torch_dtype: torch.dtype | None = None,
) -> tuple[BiEncoder, "object"]:
    """Loads a bi-encoder and its tokenizer from a transformers dir.

    Args:
        model_dir: a transformers checkpoint dir (or hub id on a machine that reaches the hub).
        pooling, query_prefix, passage_prefix: override the dir's metadata.
        torch_dtype: load the weights in this dtype.

    Returns:
        (encoder, tokenizer)

    Raises:
        OSError: the dir (or hub repo) has no safetensors weights.
    """
    from transformers import AutoModel, AutoTokenizer

    meta = read_metadata(model_dir) if os.path.isdir(model_dir) else EncoderMetadata()
    if pooling is not None:
        meta.pooling = pooling
    if query_prefix is not None:
        meta.query_prefix = query_prefix
    if passage_prefix is not None:
        meta.passage_prefix = passage_prefix
    # Weights load from safetensors only: a pickled pytorch_model.bin can run code when
    # unpickled, and checkpoints come back from shared storage (docs/cluster.md, "Trust").
    kwargs: dict = {"use_safetensors": True}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    backbone = AutoModel.from_pretrained(str(model_dir), add_pooling_layer=False, **kwargs) if _is_bert(model_dir) else AutoModel.from_pretrained(str(model_dir), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return BiEncoder(backbone, meta), tokenizer


def _is_bert(model_dir: str | os.PathLike) -> bool:
    cfg = Path(model_dir, "config.json")
    if not cfg.exists():
        return False
    return json.loads(cfg.read_text()).get("model_type") in ("bert", "xlm-roberta", "roberta")


@torch.inference_mode()
def encode_texts(
    encoder: BiEncoder,
    tokenizer,
    texts: Sequence[str],
    kind: str,
    batch_size: int = 64,
    max_length: int = 128,
) -> torch.Tensor:
    """Embeds texts with the right prefix, in length-sorted batches (less padding).

    Returns:
        (len(texts), hidden) float32 embeddings in input order.
    """
    encoder.eval()
    prefixed = encoder.prefix(texts, kind)
    order = sorted(range(len(prefixed)), key=lambda i: len(prefixed[i]))
    out = torch.empty(len(prefixed), 0)
    chunks: list[torch.Tensor] = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = tokenizer([prefixed[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        chunks.append(encoder(batch["input_ids"], batch["attention_mask"]))
    if not chunks:
        return out
    emb = torch.cat(chunks)
    result = torch.empty_like(emb)
    result[torch.tensor(order)] = emb
    return result
