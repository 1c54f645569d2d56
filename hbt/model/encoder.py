"""The bi-encoder: one transformers encoder shared by queries and passages.

A saved bi-encoder is a transformers checkpoint plus the sentence-transformers files
(``modules.json``, pooling, prompts, a model card), so ``SentenceTransformer(dir)`` and
MTEB load it as they load any embedding model. Of sentence-transformers' modules, hbt
applies Transformer, Pooling (mean, cls), Dense and Normalize; a directory with any other
module is refused by name rather than embedded differently.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hbt.config import atomic_path, read_json_file, write_text_atomic
from hbt.model.card import TrainingFacts, default_model_name, render_model_card
from hbt.model.metadata import (
    ST_CONFIG_FILE,
    ST_DOCUMENT_PROMPT,
    ST_MODULES_FILE,
    ST_QUERY_PROMPT,
    ST_TRANSFORMER_FILE,
    EncoderMetadata,
    ModelFormatError,
    module_kind,
    read_metadata,
    read_modules,
    write_metadata,
)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the sequence axis."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first token's state."""
    return hidden[:, 0]


POOLERS = {"mean": mean_pool, "cls": cls_pool}


# sentence-transformers' Dense activations by the dotted name its config.json stores.
ACTIVATIONS = {
    "torch.nn.modules.activation.Tanh": nn.Tanh,
    "torch.nn.modules.linear.Identity": nn.Identity,
    "torch.nn.modules.activation.ReLU": nn.ReLU,
    "torch.nn.modules.activation.GELU": nn.GELU,
    "torch.nn.modules.activation.Sigmoid": nn.Sigmoid,
}


class Dense(nn.Module):
    """sentence-transformers' ``Dense`` module: ``activation(linear(x))`` on the pooled embedding.

    The parameter names (``linear.weight``, ``linear.bias``) are those sentence-transformers
    saves, so the weights file reads and writes unchanged.

    Args:
        in_features, out_features, bias: the linear layer.
        activation_function: a key of :data:`ACTIVATIONS`.

    Raises:
        ModelFormatError: an activation hbt does not know.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation_function: str = "torch.nn.modules.activation.Tanh") -> None:
        super().__init__()
        if activation_function not in ACTIVATIONS:
            raise ModelFormatError(f"Dense activation {activation_function!r} is not one hbt applies; "
                                   f"known: {sorted(ACTIVATIONS)}")
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation_function = activation_function
        self.activation = ACTIVATIONS[activation_function]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))

    def config(self) -> dict[str, Any]:
        """The ``config.json`` sentence-transformers reads."""
        return {"in_features": self.linear.in_features, "out_features": self.linear.out_features,
                "bias": self.linear.bias is not None, "activation_function": self.activation_function}

    @classmethod
    def load(cls, path: Path) -> "Dense":
        """Reads a sentence-transformers ``Dense`` folder (``config.json`` + weights).

        Raises:
            ModelFormatError: options hbt cannot apply (a residual, other input names) or no weights.
        """
        cfg = read_json_file(path / "config.json", "Dense module config", "copy or save the model again")
        if cfg.get("use_residual"):
            raise ModelFormatError(f"{path}: Dense with use_residual is not supported by hbt")
        for key in ("module_input_name", "module_output_name"):
            if cfg.get(key, "sentence_embedding") != "sentence_embedding":
                raise ModelFormatError(f"{path}: Dense {key}={cfg[key]!r}; hbt applies Dense to the sentence embedding only")
        dense = cls(cfg["in_features"], cfg["out_features"], cfg.get("bias", True),
                    cfg.get("activation_function", "torch.nn.modules.activation.Tanh"))
        if (path / "model.safetensors").exists():
            from safetensors.torch import load_file

            state = load_file(str(path / "model.safetensors"))
        elif (path / "pytorch_model.bin").exists():
            state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise ModelFormatError(f"{path}: Dense module without model.safetensors or pytorch_model.bin")
        dense.load_state_dict(state)
        return dense

    def save(self, path: Path) -> None:
        """Writes ``config.json`` and ``model.safetensors`` as sentence-transformers does."""
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path / "config.json", json.dumps(self.config(), indent=2))
        with atomic_path(path / "model.safetensors") as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp))


class BiEncoder(nn.Module):
    """Shared-weight query/passage encoder with pooling, prefixes, optional Dense layers and L2 norm.

    Args:
        backbone: any transformers encoder returning ``last_hidden_state``.
        meta: pooling, prefixes and normalisation.
        head: :class:`Dense` layers applied in order after pooling (LaBSE has one).
    """

    def __init__(self, backbone: nn.Module, meta: EncoderMetadata, head: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        if meta.pooling not in POOLERS:
            raise ValueError(f"unknown pooling {meta.pooling!r}; choose from {sorted(POOLERS)}")
        self.backbone = backbone
        self.meta = meta
        self.head = nn.ModuleList(head)
        self._pool = POOLERS[meta.pooling]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeds a tokenised batch.

        Returns:
            (batch, dim) embeddings, L2-normalised when the metadata says so.
        """
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        emb = self._pool(out.last_hidden_state, attention_mask)
        for layer in self.head:
            emb = layer(emb)
        return F.normalize(emb.float(), dim=-1) if self.meta.normalize else emb.float()

    def prefix(self, texts: Sequence[str], kind: str) -> list[str]:
        """Prepends the query or passage prefix (``kind`` is ``query`` or ``passage``)."""
        if kind not in ("query", "passage"):
            raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")
        p = self.meta.query_prefix if kind == "query" else self.meta.passage_prefix
        return [p + t for t in texts]

    def save(self, out_dir: str | os.PathLike, tokenizer=None, max_seq_length: int | None = None,
             training: TrainingFacts | None = None, evaluation: dict[str, float] | None = None,
             model_name: str | None = None) -> Path:
        """Saves in plain transformers format plus hbt and sentence-transformers metadata and a model card.

        The directory then loads with ``AutoModel.from_pretrained``, with
        :func:`load_encoder`, and with ``sentence_transformers.SentenceTransformer``.

        Args:
            out_dir: destination (created).
            tokenizer: saved beside the weights when given.
            max_seq_length: the cut-off to serve with; default the metadata's, else what the
                tokenizer and position embeddings allow (at most 512).
            training, evaluation: what the model card says (see :func:`hbt.model.card.render_model_card`).
            model_name: the card's name for the model; default ``training.model_name``, else
                ``hbt/<directory name>``.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(out, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        n = max_seq_length or self.meta.max_seq_length or _default_max_seq_length(self.backbone, tokenizer)
        meta = dataclasses.replace(self.meta, max_seq_length=n)
        write_metadata(out, meta)
        write_sentence_transformers_files(out, meta, getattr(self.backbone.config, "hidden_size", None), n,
                                          dense=list(self.head))
        name = model_name or (training.model_name if training else None) or default_model_name(out)
        write_text_atomic(out / "README.md", render_model_card(meta, n, training, evaluation, model_name=name))
        return out


def _default_max_seq_length(backbone: nn.Module, tokenizer) -> int:
    limits = [512, getattr(getattr(backbone, "config", None), "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    return min(int(x) for x in limits if isinstance(x, int) and x > 0)


def write_sentence_transformers_files(out: Path, meta: EncoderMetadata, hidden: int | None, max_seq_length: int = 512,
                                      dense: Sequence[Dense] = ()) -> None:
    """Writes the module list, pooling, Dense layers, normalisation and prompts that sentence-transformers reads.

    The prompts are named ``query`` and ``document``, the names MTEB asks a model for.
    The module types are sentence-transformers' short public paths, which every release
    since 3 resolves.
    """
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    for layer in dense:
        i = len(modules)
        modules.append({"idx": i, "name": str(i), "path": f"{i}_Dense", "type": "sentence_transformers.models.Dense"})
        layer.save(out / f"{i}_Dense")
    if meta.normalize:
        i = len(modules)
        modules.append({"idx": i, "name": str(i), "path": f"{i}_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / f"{i}_Normalize").mkdir(exist_ok=True)
    write_text_atomic(out / ST_MODULES_FILE, json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    write_text_atomic(
        out / "1_Pooling" / "config.json",
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
    )
    transformer_cfg: dict[str, Any] = {"max_seq_length": max_seq_length, "do_lower_case": False}
    if _drops_pooler(out):
        # The checkpoint has no pooler (hbt never uses it): without this, sentence-transformers
        # (and MTEB through it) builds one and transformers reports `pooler.dense.* MISSING`.
        transformer_cfg["model_args"] = {"add_pooling_layer": False}
    write_text_atomic(out / ST_TRANSFORMER_FILE, json.dumps(transformer_cfg))
    write_text_atomic(
        out / ST_CONFIG_FILE,
        json.dumps(
            {"prompts": {ST_QUERY_PROMPT: meta.query_prefix, ST_DOCUMENT_PROMPT: meta.passage_prefix},
             "default_prompt_name": None, "similarity_fn_name": "cosine", "model_type": "SentenceTransformer"},
            indent=2,
        ),
    )


def _weight_names(model_dir: str | os.PathLike) -> set[str] | None:
    """The tensor names of a local checkpoint's safetensors weights (``None``: none found)."""
    d = Path(model_dir)
    if (d / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(d / "model.safetensors"), framework="pt") as f:
            return set(f.keys())
    index = d / "model.safetensors.index.json"
    if index.is_file():
        return set(read_json_file(index, "weights index", "copy or save the model again").get("weight_map", {}))
    return None


def _has_pooler_weights(names: set[str]) -> bool:
    return any("pooler" in name.split(".")[:2] for name in names)


def _drops_pooler(model_dir: str | os.PathLike) -> bool:
    """Whether a local checkpoint's architecture builds a pooler its weights do not hold."""
    if not _is_bert(model_dir):
        return False
    names = _weight_names(model_dir)
    return names is not None and not _has_pooler_weights(names)


# The sentence-transformers modules hbt applies (by class name; see module_kind).
ST_MODULE_KINDS = ("Transformer", "Pooling", "Dense", "Normalize")


def read_head(model_dir: str | os.PathLike) -> tuple[str, list[Dense]]:
    """Reads ``modules.json``: where the transformer lies and the Dense layers after pooling.

    Returns:
        (the transformer's folder relative to ``model_dir``, the Dense layers in order);
        ``("", [])`` for a directory without ``modules.json``.

    Raises:
        ModelFormatError: a module hbt cannot apply (named with its folder), or modules
            in an order hbt does not reproduce.
    """
    modules = read_modules(model_dir)
    if not modules:
        return "", []
    kinds = [module_kind(m) for m in modules]
    where = Path(model_dir, ST_MODULES_FILE)
    unknown = [f"{m['type']} ({m['path'] or '.'})" for m, k in zip(modules, kinds) if k not in ST_MODULE_KINDS]
    if unknown:
        raise ModelFormatError(f"{where}: hbt cannot apply the sentence-transformers module(s) {unknown}; "
                               f"it applies {list(ST_MODULE_KINDS)}")
    # Transformer, Pooling, any Dense, then Normalize: the one order hbt's forward reproduces.
    body = [k for k in kinds if k != "Dense"]
    if body not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]) or (
            "Dense" in kinds and kinds.index("Dense") < kinds.index("Pooling")) or (
            "Normalize" in kinds and kinds[-1] != "Normalize"):
        raise ModelFormatError(f"{where}: modules {kinds}; hbt applies Transformer, Pooling, Dense..., Normalize "
                               "in that order")
    dense = [Dense.load(Path(model_dir, m["path"])) for m, k in zip(modules, kinds) if k == "Dense"]
    return modules[0]["path"], dense


def load_encoder(
    model_dir: str | os.PathLike,
    pooling: str | None = None,
    query_prefix: str | None = None,
    passage_prefix: str | None = None,
    torch_dtype: torch.dtype | None = None,
) -> tuple[BiEncoder, "object"]:
    """Loads a bi-encoder and its tokenizer from a transformers or sentence-transformers dir.

    Pooling and prompts come from ``hbt_encoder.json``, else from the sentence-transformers
    files; Dense and Normalize modules listed in ``modules.json`` are applied.

    Args:
        model_dir: a transformers checkpoint dir (or hub id on a machine that reaches the hub).
        pooling, query_prefix, passage_prefix: override the dir's metadata.
        torch_dtype: load the weights in this dtype.

    Returns:
        (encoder, tokenizer)

    Raises:
        OSError: the dir (or hub repo) has no safetensors weights.
        ModelFormatError: the dir holds a sentence-transformers module or pooling hbt cannot apply.
    """
    from transformers import AutoModel, AutoTokenizer

    local = os.path.isdir(model_dir)
    meta = read_metadata(model_dir) if local else EncoderMetadata()
    sub, head = read_head(model_dir) if local else ("", [])
    if pooling is not None:
        meta.pooling = pooling
    if meta.pooling not in POOLERS:
        raise ModelFormatError(f"{model_dir}: pooling {meta.pooling!r} is not one hbt applies ({sorted(POOLERS)})")
    if query_prefix is not None:
        meta.query_prefix = query_prefix
    if passage_prefix is not None:
        meta.passage_prefix = passage_prefix
    # Weights load from safetensors only: a pickled pytorch_model.bin can run code when
    # unpickled, and checkpoints come back from shared storage (docs/cluster.md, "Trust").
    src = str(Path(model_dir, sub)) if sub else str(model_dir)
    kwargs: dict = {"use_safetensors": True}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if _is_bert(src):
        # hbt never uses the pooler. Build it only when the checkpoint holds its weights (and
        # drop it after loading): either way transformers' load report has nothing to say
        # (no `pooler.* MISSING`, no `pooler.* UNEXPECTED`).
        names = _weight_names(src)
        with_pooler = names is not None and _has_pooler_weights(names)
        backbone = AutoModel.from_pretrained(src, add_pooling_layer=with_pooler, **kwargs)
        if with_pooler:
            backbone.pooler = None
    else:
        backbone = AutoModel.from_pretrained(src, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(src)
    if torch_dtype is not None:
        head = [layer.to(torch_dtype) for layer in head]
    return BiEncoder(backbone, meta, head), tokenizer


def _is_bert(model_dir: str | os.PathLike) -> bool:
    cfg = Path(model_dir, "config.json")
    if not cfg.exists():
        return False
    model_cfg = read_json_file(cfg, "model config", "copy or save the model again")
    return model_cfg.get("model_type") in ("bert", "xlm-roberta", "roberta")


@torch.inference_mode()
def encode_texts(
    encoder: BiEncoder,
    tokenizer,
    texts: Sequence[str],
    kind: str,
    batch_size: int = 64,
    max_length: int = 128,
) -> torch.Tensor:
    """Embeds texts of one kind with the right prefix (:func:`hbt.model.embed.embed_texts`, fp32).

    Returns:
        (len(texts), hidden) float32 embeddings in input order.
    """
    from hbt.model.embed import embed_texts

    encoder.eval()
    device = next(encoder.parameters()).device
    emb = embed_texts(encoder, tokenizer, list(texts), [kind] * len(texts), batch_size, max_length, "fp32", device)
    return torch.from_numpy(emb) if len(texts) else torch.empty(0, 0)
