"""The model card (``README.md``) written into every saved bi-encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from hbt.model.metadata import EncoderMetadata


@dataclass
class TrainingFacts:
    """What a model card says about how the model was trained.

    Attributes:
        base_model: the starting checkpoint (``model.name_or_path``).
        training_data: the data, its format and languages, in words.
        strategy: the batching strategy (``hybrid``, ``mono`` ...).
        alpha: P(monolingual batch) for ``hybrid``; ``None`` for the other strategies.
        steps: optimizer steps trained.
        seeds: the seed(s) of the run.
        other: further settings worth knowing (lr, temperature, batch size), label -> value.
    """

    base_model: str
    training_data: str
    strategy: str
    alpha: float | None
    steps: int
    seeds: list[int]
    other: dict[str, str] = field(default_factory=dict)


def render_model_card(meta: EncoderMetadata, max_seq_length: int, training: TrainingFacts | None = None,
                      evaluation: Mapping[str, float] | None = None) -> str:
    """The Markdown card: training facts, evaluation results when known, and how to load the model.

    Args:
        meta: the model's pooling, prompts and normalisation.
        max_seq_length: the token cut-off written for sentence-transformers.
        training: how it was trained; ``None`` for a model saved outside training.
        evaluation: metric name -> value known at save time (e.g. the dev metrics); the
            section says so plainly when there are none.
    """
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
             "tags: [sentence-transformers, feature-extraction, hbt]", "---", "",
             "# Multilingual bi-encoder trained with hbt", "",
             "A dense retriever fine-tuned with hybrid batch training (hbt). Queries and passages share "
             "the encoder; each gets its prompt.", "", "## Training", ""]
    if training is None:
        lines.append("Not recorded: this model was saved outside an hbt training run.")
    else:
        facts = {"Base model": f"`{training.base_model}`", "Training data": training.training_data,
                 "Batching strategy": training.strategy,
                 "alpha (P(monolingual batch))": "n/a" if training.alpha is None else f"{training.alpha:g}",
                 "Steps": str(training.steps), "Seed(s)": ", ".join(str(s) for s in training.seeds),
                 **training.other}
        lines += [f"- **{k}**: {v}" for k, v in facts.items()]
    lines += ["", "## Embedding", "",
              f"- **Pooling**: {meta.pooling}; **L2-normalised**: {'yes' if meta.normalize else 'no'}",
              f"- **Prompts**: query `{meta.query_prefix!r}`, document `{meta.passage_prefix!r}`",
              f"- **max_seq_length**: {max_seq_length} tokens (prompt included)", "",
              "## Evaluation", ""]
    if evaluation:
        lines += ["Known when the model was saved:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(evaluation.items())]
    else:
        lines.append("**No evaluation results recorded at save time** (no dev evaluation ran during training: "
                     "set `train.dev_eval_every`). Evaluate with `hbt eval --config FILE --model <this directory>`.")
    lines += ["", "## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
              'model = SentenceTransformer("path/to/this/directory")',
              'queries = model.encode(["Where is Warsaw?"], prompt_name="query")',
              'documents = model.encode(["Warsaw is the capital of Poland."], prompt_name="document")',
              "scores = model.similarity(queries, documents)", "```", "",
              "hbt itself: `hbt.model.encoder.load_encoder(path)`; MTEB picks the `query` and `document` prompts up "
              "by name.", ""]
    return "\n".join(lines)
