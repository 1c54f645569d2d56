"""What training saves: a directory sentence-transformers and MTEB serve as trained, with a model card."""

from __future__ import annotations

from hbt.config import load_config
from hbt.model.encoder import load_encoder
from hbt.train.loop import save_trained_model


def _cfg(model_dir):
    return load_config(None, [f"model.name_or_path={model_dir}", "data.languages=[en,de,es]",
                              "model.max_query_length=24", "model.max_passage_length=48",
                              "batching.strategy=hybrid", "batching.alpha=0.3", "batching.seed=7"])


def test_trained_model_serves_with_training_length_and_e5_prompts(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    enc, tok = load_encoder(tiny_model_dir)
    out = save_trained_model(enc, tok, tmp_path / "model", _cfg(tiny_model_dir), step=12, metrics={"train/loss": 1.0})
    st = SentenceTransformer(str(out), device="cpu")
    assert st.prompts == {"query": "query: ", "document": "passage: "}
    assert st.max_seq_length == 48  # the larger of the query and passage training lengths
    assert load_encoder(out)[0].meta.max_seq_length == 48

    card = (out / "README.md").read_text()
    for fact in (str(tiny_model_dir), "hybrid", "0.3", "**Steps**: 12", "**Seed(s)**: 7", "en, de, es",
                 'SentenceTransformer("'):
        assert fact in card, fact
    assert "No evaluation results recorded at save time" in card


def test_model_card_lists_dev_metrics_known_at_save_time(tiny_model_dir, tmp_path):
    enc, tok = load_encoder(tiny_model_dir)
    out = save_trained_model(enc, tok, tmp_path / "model", _cfg(tiny_model_dir), step=4,
                             metrics={"train/loss": 1.0, "dev/xquad_r/multilingual/mAP": 0.4321, "dev/seconds": 3.0})
    card = (out / "README.md").read_text()
    assert "| dev/xquad_r/multilingual/mAP | 0.4321 |" in card and "dev/seconds" not in card
    assert "No evaluation results" not in card
