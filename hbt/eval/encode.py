"""Embedding texts with a pool of encoder actors (Ray Data ``map_batches``).

The driver deduplicates the ``(kind, text)`` pairs (XQuAD-R sentences repeat
across questions and settings), sorts them by token length so a batch holds
texts of similar length (little padding), and streams them through
``map_batches`` over an :class:`~ray.data.ActorPoolStrategy` of
:class:`EncoderActor` s, each holding one model (on a GPU when
``eval.gpus_per_encoder > 0``). Results come back block by block into one
matrix; nothing is written to disk (no run ever read the shards back).
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from hbt.model.embed import KINDS, embed_batch, embed_texts, token_length_order, unique_items

log = logging.getLogger("hbt.eval")

PRECISIONS = ("fp32", "bf16", "bf16_weights")


class EncoderActor:
    """A Ray Data callable class: embeds a batch of rows ``{row, kind, text}``.

    Args:
        model_dir: a transformers dir readable by :func:`hbt.model.encoder.load_encoder`.
        precision: ``fp32``, ``bf16`` (autocast; on CPU this uses AMX where present) or
            ``bf16_weights`` (weights cast to bf16 once, no autocast).
        max_length: token cut-off (prefix included).
        pooling, query_prefix, passage_prefix: override the model's metadata.
        num_threads: torch intra-op threads (default: the CPUs Ray gave the actor).
    """

    def __init__(
        self,
        model_dir: str,
        precision: str = "fp32",
        max_length: int = 128,
        pooling: str | None = None,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        num_threads: int | None = None,
    ) -> None:
        import torch

        from hbt.model.encoder import load_encoder
        from hbt.model.storage import local_model_dir

        if num_threads:
            torch.set_num_threads(num_threads)
        # A storage URI is fetched here, on the actor's node: no driver path crosses nodes.
        self.encoder, self.tokenizer = load_encoder(local_model_dir(model_dir), pooling, query_prefix, passage_prefix)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.encoder.to(self.device).eval()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "bf16_weights":
            self.encoder.to(torch.bfloat16)
        self.precision = precision
        self.max_length = max_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb = embed_batch(self.encoder, self.tokenizer, [str(t) for t in batch["text"]],
                          [str(k) for k in batch["kind"]], self.max_length, self.precision, self.device)
        return {"row": np.asarray(batch["row"], dtype=np.int64), "embedding": emb}


@functools.lru_cache(maxsize=2)
def driver_tokenizer(model_dir: str) -> Any:
    """The tokenizer of ``model_dir`` (a storage URI fetches its non-weight files), loaded once per process.

    Loading XLM-R's tokenizer costs ~0.1 GB for a moment; the driver sorts and
    counts texts with it several times per evaluation.
    """
    from transformers import AutoTokenizer

    from hbt.model.storage import local_model_dir

    return AutoTokenizer.from_pretrained(local_model_dir(model_dir, weights=False))


def length_order(tokenizer: Any, items: Sequence[tuple[str, str]], max_length: int) -> np.ndarray:
    """:func:`~hbt.model.embed.token_length_order`, with ``tokenizer`` a tokenizer or a model dir/URI to load one from."""
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = driver_tokenizer(str(tokenizer))
    return token_length_order(tokenizer, items, max_length)


def resolve_eval_auto(cfg: Any, verbose: bool = True) -> Any:
    """The config with ``eval.precision`` / ``eval.num_encoders`` ``auto`` made concrete for the Ray cluster.

    Precision: ``bf16_weights`` on a bf16 GPU (encoders with GPUs) or a CPU with
    AMX or AVX512-BF16, else ``fp32``. Encoders: every GPU (at ``eval.gpus_per_encoder``), else every
    CPU Ray has (at ``eval.cpus_per_encoder``). Explicit values are kept. The
    choice is printed; the caller writes the returned config next to its results.
    """
    import ray

    from hbt.config import with_overrides
    from hbt.hardware import bf16_is_fast, resolve_precision

    e = cfg.eval
    if e.precision != "auto" and e.num_encoders != "auto":
        return cfg
    res = ray.cluster_resources() if ray.is_initialized() else {}
    gpu = e.gpus_per_encoder > 0 and res.get("GPU", 0) > 0
    updates: dict[str, Any] = {}
    if e.num_encoders == "auto":
        if gpu:
            updates["eval.num_encoders"] = max(1, int(res["GPU"] // e.gpus_per_encoder))
        else:
            updates["eval.num_encoders"] = max(1, int(res.get("CPU", 1) // e.cpus_per_encoder))
    if e.precision == "auto":
        updates["eval.precision"] = resolve_precision("auto", gpu)
    if verbose:
        why = "bf16 GPU" if gpu and bf16_is_fast(True) else ("bf16 CPU (AMX/AVX512-BF16)" if bf16_is_fast(False)
                                                             else "no bf16 GPU or CPU")
        log.info("eval auto: %s encoder actor(s), precision %s (%s; Ray has %g CPUs, %g GPUs)",
                 updates.get("eval.num_encoders", e.num_encoders), updates.get("eval.precision", e.precision), why,
                 res.get("CPU", 0), res.get("GPU", 0))
    return with_overrides(cfg, updates)


def token_lengths(model_dir: str, items: Sequence[tuple[str, str]], cfg: Any) -> np.ndarray:
    """Each ``(kind, text)`` item's token count as the encoder sees it, before the cut at ``eval.max_length``.

    The prompt prefix and the special tokens count. One pass of the driver's tokenizer
    serves both the length order of the encoding batches and :func:`truncated_shares`.
    """
    from hbt.model.metadata import read_metadata
    from hbt.model.storage import local_model_dir

    meta = read_metadata(local_model_dir(model_dir, weights=False))
    prefix = {"query": cfg.model.query_prefix if cfg.model.query_prefix is not None else meta.query_prefix,
              "passage": cfg.model.passage_prefix if cfg.model.passage_prefix is not None else meta.passage_prefix}
    tok = driver_tokenizer(str(model_dir))
    lengths = np.zeros(len(items), dtype=np.int64)
    step = 4096
    for s in range(0, len(items), step):
        chunk = items[s : s + step]
        # verbose=False: a text longer than the model's limit is what is being counted, not a mistake.
        enc = tok([prefix[k] + t for k, t in chunk], truncation=False, verbose=False)
        lengths[s : s + len(chunk)] = [len(x) for x in enc["input_ids"]]
    return lengths


def truncated_shares(lengths: np.ndarray, kinds: Sequence[str], max_length: int) -> dict[str, float]:
    """Share of queries and of passages longer than ``max_length`` tokens (:func:`token_lengths`' counts).

    The study's Reductions list these: a cut-off that truncates answer
    sentences changes what is evaluated.
    """
    kinds = np.asarray(kinds)
    return {k: float(np.mean(lengths[kinds == k] > max_length)) for k in KINDS if (kinds == k).any()}


def _actor_kwargs(model_dir: str, cfg: Any) -> dict[str, Any]:
    from hbt.hardware import resolve_precision

    return {
        "model_dir": str(model_dir),
        # `auto` resolved for the actors' hardware (GPU actors when they ask for GPUs).
        "precision": resolve_precision(cfg.eval.precision, cfg.eval.gpus_per_encoder > 0),
        "max_length": cfg.eval.max_length,
        "pooling": cfg.model.pooling,
        "query_prefix": cfg.model.query_prefix,
        "passage_prefix": cfg.model.passage_prefix,
        "num_threads": max(1, int(cfg.eval.cpus_per_encoder)),
    }


def _encoded(items: list[tuple[str, str]], model_dir: str, cfg: Any, lengths: np.ndarray | None = None):
    """The Ray Data pipeline embedding unique ``(kind, text)`` items: blocks of ``{row, embedding}``.

    ``lengths``: :func:`token_lengths` of the items when the caller has them (the batches are
    sorted by them, capped at the cut-off); else the items are tokenised here for the order.
    """
    import ray

    import pyarrow as pa

    if lengths is None:
        order = length_order(model_dir, items, cfg.eval.max_length)
    else:
        order = np.lexsort((np.arange(len(items)), np.minimum(lengths, cfg.eval.max_length)))
    bs = cfg.eval.batch_size
    # Blocks of a few batches: enough blocks to keep every actor busy, and the
    # length order survives inside each block. Each block is built as columns and
    # put in the object store at once, so the driver never holds a second copy of
    # every text (a list of row dicts cost ~300 bytes a text).
    step = bs * 4
    refs = []
    for s in range(0, len(order), step):
        sel = order[s : s + step]
        refs.append(ray.put(pa.table({"row": pa.array(sel, pa.int64()),
                                      "kind": pa.array([items[i][0] for i in sel], pa.string()),
                                      "text": pa.array([items[i][1] for i in sel], pa.string())})))
    from hbt.raysetup import own_local_ray

    ds = ray.data.from_arrow_refs(refs)
    # Restarts replace an encoder on a lost node. A local Ray that hbt started has one node to
    # lose, and Ray warns at every restartable actor whose constructor lives in the object store.
    restarts = {"max_restarts": 0} if own_local_ray() else {}
    with warnings.catch_warnings():
        # Ray 2.60 (pinned) names no parameter for max_restarts and calls the remote-args route
        # deprecated; it is the only one there is until Ray 2.64.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(
            EncoderActor,
            fn_constructor_kwargs=_actor_kwargs(model_dir, cfg),
            batch_size=bs,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=max(1, min(cfg.eval.num_encoders, len(refs)))),
            num_cpus=cfg.eval.cpus_per_encoder,
            num_gpus=cfg.eval.gpus_per_encoder,
            **restarts,
        )


def encode_to_store(texts: Sequence[str], kinds: Sequence[str], model_dir: str, cfg: Any):
    """Embeds texts like :func:`encode_with_ray`, but the embeddings stay in Ray's object store.

    Returns:
        A :class:`~hbt.eval.search.LazyEmbeddings` in input order: slicing it is
        free, ``np.asarray`` fetches the rows asked for, and
        :func:`~hbt.eval.search.make_index` searches it with actors that hold
        the blocks. The driver keeps one block id and offset per unique text. Its
        ``token_lengths`` are the texts' :func:`token_lengths`.
    """
    from hbt.eval.search import LazyEmbeddings, store_from_refs

    cfg = resolve_eval_auto(cfg, verbose=False)
    items, inverse = unique_items(texts, kinds)
    if not items:
        raise ValueError("encode_to_store: no texts")
    lengths = token_lengths(model_dir, items, cfg)
    refs = _stream_numpy_refs(_encoded(items, model_dir, cfg, lengths), len(items))
    out = LazyEmbeddings(store_from_refs(refs, len(items), cfg.eval), inverse)
    out.token_lengths = lengths[np.asarray(inverse)]  # per text, for truncated_shares
    return out


def _stream_numpy_refs(ds, total: int) -> list[Any]:
    """The encoded blocks as numpy refs, taken as the encoders finish them, with progress and an ETA."""
    import ray

    from hbt.progress import Progress

    to_numpy = ray.remote(_block_to_numpy).options(num_cpus=0)  # a conversion, not a claim on an encoder's CPU
    progress = Progress("encode", total, "texts")
    refs = []
    try:
        for bundle in ds.iter_internal_ref_bundles():
            refs += [to_numpy.remote(b) for b in bundle.block_refs]
            progress.update(bundle.num_rows() or 0)
    finally:
        progress.close()
    return refs


def _block_to_numpy(block: Any) -> dict[str, np.ndarray]:
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(block).to_numpy()


def encode_with_ray(
    texts: Sequence[str],
    kinds: Sequence[str],
    model_dir: str,
    cfg: Any,
    on_block: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embeds texts through Ray Data with an actor pool; Ray must be initialised.

    Args:
        texts: the texts.
        kinds: ``query`` or ``passage`` per text (picks the model's prefix).
        model_dir: the encoder checkpoint.
        cfg: an :class:`hbt.config.HBTConfig` (``eval.*`` sizes the pool and batches).
        on_block: called with the number of unique texts in each output block as it
            arrives (progress; the throughput benchmark times the steady state with it).

    Returns:
        (len(texts), dim) float32 embeddings in input order.
    """
    cfg = resolve_eval_auto(cfg, verbose=False)  # a no-op when the caller already resolved it
    items, inverse = unique_items(texts, kinds)
    if not items:
        return np.zeros((0, 0), np.float32)
    ds = _encoded(items, model_dir, cfg)
    unique_emb: np.ndarray | None = None
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if unique_emb is None:
            unique_emb = np.empty((len(items), batch["embedding"].shape[1]), np.float32)
            seen = np.zeros(len(items), dtype=bool)
        rows = batch["row"]
        if seen[rows].any():
            raise RuntimeError("encode_with_ray: a text came back twice from the actor pool")
        seen[rows] = True
        unique_emb[rows] = batch["embedding"]
        if on_block is not None:
            on_block(len(rows))
    if unique_emb is None or not seen.all():
        missing = len(items) if unique_emb is None else int((~seen).sum())
        raise RuntimeError(f"encode_with_ray: {missing} of {len(items)} texts came back without an embedding")
    return unique_emb[inverse]


def encode_in_process(
    texts: Sequence[str],
    kinds: Sequence[str],
    model_dir: str,
    cfg: Any,
) -> np.ndarray:
    """The same encoding without Ray (one :class:`EncoderActor` in this process); for tests and debugging."""
    kwargs = _actor_kwargs(model_dir, cfg)
    kwargs["num_threads"] = None  # keep this process's thread setting
    actor = EncoderActor(**kwargs)
    return encode_with_model(actor.encoder, actor.tokenizer, texts, kinds, cfg, actor.device,
                             precision=actor.precision)


def encode_with_model(encoder: Any, tokenizer: Any, texts: Sequence[str], kinds: Sequence[str], cfg: Any,
                      device: Any, precision: str | None = None) -> np.ndarray:
    """:func:`~hbt.model.embed.embed_texts` with the ``eval.*`` batch size, length and precision.

    Args:
        encoder: a :class:`hbt.model.encoder.BiEncoder` (put in eval mode by the caller).
        tokenizer: its tokenizer.
        texts, kinds: as for :func:`encode_with_ray`.
        cfg: the config (``eval.batch_size``, ``eval.max_length``, ``eval.precision``).
        device: where the encoder lives.
        precision: overrides ``eval.precision``. An encoder in memory keeps its
            weights (a training model must not be cast), so ``bf16_weights``
            runs as ``bf16`` autocast unless the weights are bf16 already.

    Returns:
        ``(len(texts), dim)`` float32 embeddings in input order.
    """
    import torch

    from hbt.hardware import resolve_precision

    precision = resolve_precision(precision or cfg.eval.precision, getattr(device, "type", str(device)) == "cuda")
    if precision == "bf16_weights" and next(encoder.parameters()).dtype != torch.bfloat16:
        precision = "bf16"
    return embed_texts(encoder, tokenizer, texts, kinds, cfg.eval.batch_size, cfg.eval.max_length, precision, device)
