"""A tiny random-init multilingual encoder for fast tests (no download)."""

from __future__ import annotations

import os
from pathlib import Path

from hbt.model.metadata import EncoderMetadata, write_metadata


def build_tiny_model(out_dir: str | os.PathLike, hidden: int = 32, layers: int = 2, seed: int = 0,
                     dropout: float = 0.1) -> Path:
    """Writes a random-init BERT encoder that uses the real multilingual-e5 tokenizer.

    Args:
        out_dir: destination directory.
        hidden: hidden size (heads = hidden / 16).
        layers: encoder layers.
        seed: init seed, so two builds are identical.
        dropout: hidden and attention dropout (0 for exact gradient comparisons).

    Returns:
        The directory, loadable by :func:`hbt.model.encoder.load_encoder`.
    """
    import torch
    from transformers import BertConfig, BertModel

    from hbt.model.offline import _write_tokenizer

    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = BertConfig(
        vocab_size=250037,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 16, 1),
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
        pad_token_id=1,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out, safe_serialization=True)
    _write_tokenizer(out)
    write_metadata(out, EncoderMetadata(pooling="mean", query_prefix="query: ", passage_prefix="passage: ", source="tiny random init"))
    return out
