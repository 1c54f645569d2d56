"""The bi-encoder: prefixes, pooling, and serving the saved model with sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hbt.model.encoder import BiEncoder, encode_texts, load_encoder, mean_pool
from hbt.model.metadata import EncoderMetadata


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    m = torch.tensor([[1, 1, 0]])
    assert torch.equal(mean_pool(h, m), torch.tensor([[2.0, 2.0]]))


def test_prefix_kinds(tiny_model_dir):
    enc, _ = load_encoder(tiny_model_dir)
    assert enc.prefix(["x"], "query") == ["query: x"] and enc.prefix(["x"], "passage") == ["passage: x"]
    with pytest.raises(ValueError):
        enc.prefix(["x"], "doc")


def test_encode_texts_keeps_input_order(tiny_model_dir):
    enc, tok = load_encoder(tiny_model_dir)
    texts = ["a much longer text than the others, with many words", "b", "medium text here"]
    all_at_once = encode_texts(enc, tok, texts, "passage", batch_size=8)
    one_by_one = torch.cat([encode_texts(enc, tok, [t], "passage") for t in texts])
    torch.testing.assert_close(all_at_once, one_by_one, atol=1e-5, rtol=1e-4)
    assert torch.allclose(all_at_once.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_saved_model_serves_in_sentence_transformers(tiny_model_dir, tmp_path, pooling):
    from sentence_transformers import SentenceTransformer

    enc, tok = load_encoder(tiny_model_dir, pooling=pooling)
    out = enc.save(tmp_path / "saved", tok)
    texts = ["Wo liegt Warschau?", "华沙是波兰的首都。", "The Normans gave their name to Normandy."]
    ours = encode_texts(enc, tok, texts, "query").numpy()
    st = SentenceTransformer(str(out), device="cpu")
    theirs = st.encode(texts, prompt_name="query", normalize_embeddings=False)
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.9999
    reloaded, _ = load_encoder(out)
    assert reloaded.meta.pooling == pooling


def test_unknown_pooling_fails(tiny_model_dir):
    enc, _ = load_encoder(tiny_model_dir)
    with pytest.raises(ValueError, match="pooling"):
        BiEncoder(enc.backbone, EncoderMetadata(pooling="max"))


def test_saves_safetensors_and_refuses_pickled_weights(tiny_model_dir, tmp_path):
    # The trust boundary of docs/cluster.md: model weights never come from a pickle.
    import shutil

    import torch
    from safetensors.torch import load_file

    enc, tok = load_encoder(tiny_model_dir)
    out = enc.save(tmp_path / "saved", tok)
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    pickled = tmp_path / "pickled"
    shutil.copytree(out, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(load_file(out / "model.safetensors"), pickled / "pytorch_model.bin")
    with pytest.raises(OSError):
        load_encoder(pickled)
