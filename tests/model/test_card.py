"""The model card: Hub front matter (base model, languages, data, licence, eval results), a name MTEB
reads, and loads that print no transformers load report."""

from __future__ import annotations

import json

import pytest
import yaml

from hbt.model.card import (
    XQUAD_R_HUB_ID,
    TrainingFacts,
    base_model_hub_id,
    card_front_matter,
    read_front_matter,
    render_model_card,
    training_datasets,
)
from hbt.model.metadata import EncoderMetadata

E5 = "intfloat/multilingual-e5-small"
LANGS = ["ar", "de", "en", "zh"]


def _facts(base: str, **kw) -> TrainingFacts:
    return TrainingFacts(base_model=base, training_data="xquad `x`", strategy="hybrid", alpha=0.3, steps=10,
                         seeds=[7], languages=LANGS, datasets=training_datasets("xquad", "../shared/data/xquad-r"),
                         model_name="hbt/multilingual-e5-small-hybrid-a0.3-s7", **kw)


def _front(card: str) -> dict:
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    assert isinstance(front, dict)
    return front


def test_front_matter_names_the_hub_base_model_languages_data_and_licence():
    card = render_model_card(EncoderMetadata(query_prefix="query: ", passage_prefix="passage: "), 128,
                             _facts("offline:multilingual-e5-small", num_layers=2))
    front = _front(card)
    assert front["base_model"] == E5
    assert front["language"] == LANGS
    assert front["datasets"] == [XQUAD_R_HUB_ID]
    # mE5 is MIT; hbt licenses what it fine-tunes from it under its own Apache-2.0 (the card says why).
    assert front["license"] == "apache-2.0" and "`mit`" in card
    assert front["library_name"] == "sentence-transformers" and front["pipeline_tag"] == "sentence-similarity"
    assert {"sentence-transformers", "hbt"} <= set(front["tags"])
    assert front["model_name"] == "hbt/multilingual-e5-small-hybrid-a0.3-s7" and "model-index" not in front
    assert "# hbt/multilingual-e5-small-hybrid-a0.3-s7" in card and "first 2 layers" in card
    assert "No evaluation results recorded at save time" in card


def test_eval_results_go_into_the_model_index():
    from huggingface_hub import ModelCardData

    evaluation = {"dev/multilingual/mAP": 0.4321, "dev/cross_lingual/mAP": 0.25, "xquad_r/multilingual/R@10": 0.9}
    card = render_model_card(EncoderMetadata(), 128, _facts("offline:multilingual-e5-small"), evaluation)
    front = _front(card)
    assert "model_name" not in front  # the model-index carries the name
    (entry,) = front["model-index"]
    assert entry["name"] == "hbt/multilingual-e5-small-hybrid-a0.3-s7"
    values = {(r["dataset"]["type"], m["name"]): m["value"] for r in entry["results"] for m in r["metrics"]}
    assert values == {(XQUAD_R_HUB_ID, "multilingual mAP"): 0.4321, (XQUAD_R_HUB_ID, "cross_lingual mAP"): 0.25,
                      (XQUAD_R_HUB_ID, "multilingual R@10"): 0.9}
    assert "| dev/multilingual/mAP | 0.4321 |" in card
    # huggingface_hub reads it back as the Hub does.
    parsed = ModelCardData(**front)
    assert parsed.model_name == entry["name"] and len(parsed.eval_results) == 3


def test_a_local_path_is_never_the_base_model(tiny_model_dir, tmp_path):
    card = render_model_card(EncoderMetadata(), 128, _facts(str(tiny_model_dir)))
    front = _front(card)
    assert "base_model" not in front and str(tiny_model_dir) not in card.split("---")[1]
    assert str(tiny_model_dir) in card  # the body still says where training started
    assert "license" not in front  # the base model's licence is unknown: not guessed
    with pytest.raises(ValueError, match="Hub id"):
        card_front_matter("hbt/x", base_model=str(tmp_path))
    # A Hub-looking name that is neither here nor in the Hub cache is not claimed as a Hub id.
    assert base_model_hub_id("runs/nowhere-on-this-machine") is None
    # A Hub cache snapshot is the model it caches.
    snap = tmp_path / "models--intfloat--multilingual-e5-small" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    assert base_model_hub_id(str(snap)) == E5


def test_training_facts_name_the_model_and_its_data(tmp_path):
    from hbt.config import load_config
    from hbt.train.loop import training_facts

    cfg = load_config(None, ["data.languages=[en,de,es]", "batching.strategy=hybrid", "batching.alpha=0.3",
                             "batching.seed=7", "model.num_layers=2"])
    facts = training_facts(cfg, step=12)
    assert facts.model_name == "hbt/multilingual-e5-small-l2-hybrid-a0.3-s7"
    assert facts.base_model == "offline:multilingual-e5-small" and facts.num_layers == 2
    assert facts.languages == ["en", "de", "es"] and facts.datasets == [XQUAD_R_HUB_ID]
    front = _front(render_model_card(EncoderMetadata(), 128, facts))
    assert front["base_model"] == E5 and front["language"] == ["en", "de", "es"]


@pytest.fixture(scope="module")
def e5_one_layer(tmp_path_factory):
    from hbt.model.offline import build_offline_e5_small

    return build_offline_e5_small(tmp_path_factory.mktemp("e5") / "model", num_layers=1)


def _printed(capfd, caplog) -> str:
    """What a load printed: transformers logs to a stream bound when it was first imported (which
    capfd may not see), and pytest's log capture gets the records too."""
    return "".join(capfd.readouterr()) + caplog.text


def test_saved_model_loads_without_a_load_report_and_mteb_names_it(e5_one_layer, tmp_path, capfd, caplog):
    from sentence_transformers import SentenceTransformer

    from hbt.model.card import load_sentence_transformer
    from hbt.model.encoder import load_encoder

    enc, tok = load_encoder(e5_one_layer)
    out = enc.save(tmp_path / "saved", tok, evaluation={"dev/multilingual/mAP": 0.5})
    front = read_front_matter(out)
    assert front["base_model"] == E5 and front["license"] == "mit"  # re-saved, not trained: mE5's licence
    name = front["model-index"][0]["name"]
    assert name == "hbt/saved"
    assert json.loads((out / "sentence_bert_config.json").read_text())["model_args"] == {"add_pooling_layer": False}

    capfd.readouterr()
    caplog.clear()
    load_encoder(out)
    SentenceTransformer(str(e5_one_layer), device="cpu")  # the offline build itself, as MTEB would load it
    named = load_sentence_transformer(out, device="cpu")  # SentenceTransformer(out) with the card's data
    logs = _printed(capfd, caplog)
    assert "MISSING" not in logs and "LOAD REPORT" not in logs, logs
    assert named.prompts == {"query": "query: ", "document": "passage: "}
    assert named.model_card_data.model_name == name and named.model_card_data.base_model == E5

    pytest.importorskip("mteb")
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

    # The meta mteb.evaluate(model, ...) files the results under (mteb.get_model_meta looks up
    # registered names only: a local path raises KeyError whatever the directory holds).
    meta = SentenceTransformerEncoderWrapper(named).mteb_model_meta
    assert meta.name == name != "no_model_name/available"
    assert meta.adapted_from == E5


def test_a_checkpoint_with_pooler_weights_loads_without_a_report(tmp_path, capfd, caplog):
    from transformers import BertConfig, BertModel

    from hbt.model.encoder import load_encoder
    from hbt.model.offline import _write_tokenizer

    src = tmp_path / "with_pooler"
    cfg = BertConfig(vocab_size=250037, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, pad_token_id=1)
    BertModel(cfg).save_pretrained(src)  # with its pooler, as Hub BERT checkpoints are
    _write_tokenizer(src)
    capfd.readouterr()
    caplog.clear()
    enc, tok = load_encoder(src)
    logs = _printed(capfd, caplog)
    assert "UNEXPECTED" not in logs and "MISSING" not in logs and "LOAD REPORT" not in logs, logs
    assert enc.backbone.pooler is None
    out = enc.save(tmp_path / "saved", tok)
    assert json.loads((out / "sentence_bert_config.json").read_text())["model_args"] == {"add_pooling_layer": False}
