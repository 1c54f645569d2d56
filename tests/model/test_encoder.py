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


def _st_model_with_dense(tiny_model_dir, out):
    """A sentence-transformers model built by sentence-transformers itself: Transformer, Pooling, Dense, Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(3)
    t = Transformer(str(tiny_model_dir), max_seq_length=64)
    st = SentenceTransformer(modules=[t, Pooling(32, "mean"), Dense(32, 16, activation_function=torch.nn.Tanh()),
                                      Normalize()], device="cpu",
                             prompts={"query": "query: ", "document": "passage: "})
    st.save(str(out))
    return out


TEXTS = ["Wo liegt Warschau?", "华沙是波兰的首都。", "The Normans gave their name to Normandy.", "x"]


def test_dense_and_normalize_round_trip_through_hbt(tiny_model_dir, tmp_path):
    import json

    from sentence_transformers import SentenceTransformer

    src = _st_model_with_dense(tiny_model_dir, tmp_path / "st")
    original = SentenceTransformer(str(src), device="cpu")
    enc, tok = load_encoder(src)
    assert len(enc.head) == 1 and enc.meta.normalize and enc.meta.query_prefix == "query: "
    for kind, prompt in (("query", "query"), ("passage", "document")):
        ours = encode_texts(enc, tok, TEXTS, kind, max_length=64).numpy()
        theirs = original.encode(TEXTS, prompt_name=prompt)
        assert ours.shape == (len(TEXTS), 16)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)

    saved = enc.save(tmp_path / "hbt", tok)
    kinds = [m["type"].rsplit(".", 1)[-1] for m in json.loads((saved / "modules.json").read_text())]
    assert kinds == ["Transformer", "Pooling", "Dense", "Normalize"]
    again = SentenceTransformer(str(saved), device="cpu")
    for prompt in ("query", "document"):
        np.testing.assert_allclose(again.encode(TEXTS, prompt_name=prompt), original.encode(TEXTS, prompt_name=prompt),
                                   atol=1e-5)
    reloaded, _ = load_encoder(saved)
    np.testing.assert_allclose(encode_texts(reloaded, tok, TEXTS, "query").numpy(),
                               encode_texts(enc, tok, TEXTS, "query").numpy(), atol=1e-6)


def test_a_module_hbt_cannot_apply_is_refused_by_name(tiny_model_dir, tmp_path):
    import json

    from hbt.config import HbtError

    src = _st_model_with_dense(tiny_model_dir, tmp_path / "st")
    modules = json.loads((src / "modules.json").read_text())
    modules.insert(3, {"idx": 99, "name": "99", "path": "99_LayerNorm", "type": "sentence_transformers.models.LayerNorm"})
    for i, m in enumerate(modules):
        m["idx"] = i
    (src / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(HbtError, match="LayerNorm"):
        load_encoder(src)


def test_sentence_transformers_dir_gives_pooling_and_prompts(tiny_model_dir, tmp_path):
    """No hbt_encoder.json: pooling from 1_Pooling, prompts from config_sentence_transformers.json."""
    import json

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer

    from hbt.model.metadata import read_metadata

    st = SentenceTransformer(modules=[Transformer(str(tiny_model_dir)), Pooling(32, "cls")], device="cpu",
                             prompts={"query": "q: ", "document": "d: "})
    st.save(str(tmp_path / "st"))
    (tmp_path / "st" / "hbt_encoder.json").unlink(missing_ok=True)
    enc, tok = load_encoder(tmp_path / "st")
    assert (enc.meta.pooling, enc.meta.query_prefix, enc.meta.passage_prefix) == ("cls", "q: ", "d: ")
    ours = encode_texts(enc, tok, TEXTS, "passage").numpy()
    theirs = st.encode(TEXTS, prompt_name="document", normalize_embeddings=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)

    # Directories written by hbt before the prompts were renamed name the document prompt "passage".
    cfg_path = tmp_path / "st" / "config_sentence_transformers.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prompts"] = {"query": "q: ", "passage": "p: "}
    cfg_path.write_text(json.dumps(cfg))
    assert read_metadata(tmp_path / "st").passage_prefix == "p: "


def test_saved_model_names_its_prompts_query_and_document(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    enc, tok = load_encoder(tiny_model_dir)
    out = enc.save(tmp_path / "saved", tok)
    st = SentenceTransformer(str(out), device="cpu")
    assert st.prompts == {"query": "query: ", "document": "passage: "}
    assert "SentenceTransformer(" in (out / "README.md").read_text()
