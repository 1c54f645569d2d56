"""The one way texts become embeddings: prefixes, tokenisation, the forward pass, and batching.

:func:`embed_batch` embeds one batch; :func:`embed_texts` deduplicates,
length-sorts and batches a list. The evaluation's Ray Data actors call
:func:`embed_batch` per batch, the in-training dev evaluation and
:func:`hbt.model.encoder.encode_texts` call :func:`embed_texts`, so every
number hbt reports comes from the same code.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

KINDS = ("query", "passage")


def embed_batch(encoder: Any, tokenizer: Any, texts: Sequence[str], kinds: Sequence[str], max_length: int,
                precision: str, device: Any) -> np.ndarray:
    """Embeds one batch with the model's query/passage prefixes; float32 ``(len(texts), dim)``.

    Args:
        precision: ``bf16`` runs the forward pass under bf16 autocast; anything
            else runs in the weights' own dtype (fp32, or bf16 weights).
    """
    import torch

    prefixed = list(texts)
    for kind in KINDS:
        pos = [i for i, k in enumerate(kinds) if k == kind]
        for i, t in zip(pos, encoder.prefix([texts[i] for i in pos], kind)):
            prefixed[i] = t
    tok = tokenizer(prefixed, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                                enabled=precision == "bf16"):
        emb = encoder(ids, mask)
    return emb.float().cpu().numpy()


def unique_items(texts: Sequence[str], kinds: Sequence[str]) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Deduplicates ``(kind, text)`` pairs.

    Returns:
        (unique pairs in first-seen order, inverse: position of each input in the unique list)
    """
    if len(texts) != len(kinds):
        raise ValueError(f"{len(texts)} texts but {len(kinds)} kinds")
    seen: dict[tuple[str, str], int] = {}
    inverse = np.empty(len(texts), dtype=np.int64)
    for i, (t, k) in enumerate(zip(texts, kinds)):
        if k not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {k!r}")
        inverse[i] = seen.setdefault((k, t), len(seen))
    return list(seen), inverse


def token_length_order(tokenizer: Any, items: Sequence[tuple[str, str]], max_length: int) -> np.ndarray:
    """Order of ``(kind, text)`` items by token length (ties by position), so batches pad little."""
    lengths = np.zeros(len(items), dtype=np.int64)
    step = 4096
    for s in range(0, len(items), step):
        enc = tokenizer([t for _, t in items[s : s + step]], add_special_tokens=False, truncation=True,
                        max_length=max_length)
        lengths[s : s + step] = [len(x) for x in enc["input_ids"]]
    return np.lexsort((np.arange(len(items)), lengths))


def embed_texts(encoder: Any, tokenizer: Any, texts: Sequence[str], kinds: Sequence[str], batch_size: int,
                max_length: int, precision: str, device: Any) -> np.ndarray:
    """Embeds texts with an encoder in memory: deduplicated, length-sorted batches of :func:`embed_batch`.

    Returns:
        ``(len(texts), dim)`` float32 embeddings in input order.
    """
    items, inverse = unique_items(texts, kinds)
    if not items:
        return np.zeros((0, 0), np.float32)
    order = token_length_order(tokenizer, items, max_length)
    out: np.ndarray | None = None
    for s in range(0, len(order), batch_size):
        sel = order[s : s + batch_size]
        emb = embed_batch(encoder, tokenizer, [items[i][1] for i in sel], [items[i][0] for i in sel],
                          max_length, precision, device)
        if out is None:
            out = np.empty((len(items), emb.shape[1]), np.float32)
        out[sel] = emb
    return out[inverse]
