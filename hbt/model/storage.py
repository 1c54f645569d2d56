"""Where a model comes from: a local directory, a storage URI, a training run's name, or a hub id.

A storage URI (``s3://bucket/runs/x/model``, ``gs://…``, ``file:///…``; any
filesystem pyarrow reads) is copied once into a local cache on the machine
that needs it (``$HBT_CACHE/models``), keyed by the URI and the listing of its
files (names, sizes, modification times), so a model re-trained under the same
URI is fetched again. Each process that loads weights (an encoder actor on a
worker node, the driver for the tokenizer) calls :func:`local_model_dir`
itself: no path on one node's disk is handed to another.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from hbt.config import HbtError

OFFLINE_PREFIX = "offline:"
# ``org/name`` (optionally ``org/name@revision``): a Hugging Face hub id.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(HbtError):
    """A model reference that names nothing loadable (checked before any Ray work starts)."""


def is_uri(ref: str) -> bool:
    """``scheme://…`` (a storage URI), as opposed to a local path, run name or hub id."""
    return "://" in ref


def filesystem_and_path(ref: str):
    """(pyarrow filesystem, path on it) of a storage URI or a local path (made absolute)."""
    from pyarrow import fs

    if is_uri(ref):
        return fs.FileSystem.from_uri(ref)
    return fs.LocalFileSystem(), os.path.abspath(ref)


def _cache_root() -> Path:
    return Path(os.environ.get("HBT_CACHE") or Path.home() / ".cache" / "hbt") / "models"


def _listing(uri: str):
    """(filesystem, root path, [(relative path, size, mtime)]) of a model directory at a URI."""
    from pyarrow import fs

    try:
        filesystem, root = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
    except Exception as e:  # pyarrow raises OSError / ArrowInvalid with the reason
        raise ModelNotFoundError(f"{uri}: cannot reach the storage ({type(e).__name__}: {e})") from None
    if info.type != fs.FileType.Directory:
        raise ModelNotFoundError(f"{uri}: no model directory there")
    files = [
        (f.path[len(root):].lstrip("/"), f.size, f.mtime_ns)
        for f in filesystem.get_file_info(fs.FileSelector(root, recursive=True))
        if f.type == fs.FileType.File
    ]
    if not any(name == "config.json" for name, _, _ in files):
        raise ModelNotFoundError(f"{uri}: no config.json there, so not a saved model")
    return filesystem, root, sorted(files)


def check_storage(uri: str) -> None:
    """Fails with :class:`ModelNotFoundError` when a storage URI (``ray.storage_path``) cannot be reached.

    The folder itself may not exist yet (a new run creates it); its filesystem
    (bucket, endpoint, credentials) must answer. Called before Ray starts, so a
    typo in a bucket name fails in seconds, not after the first checkpoint.
    """
    from pyarrow import fs

    try:
        filesystem, root = fs.FileSystem.from_uri(uri)
        filesystem.get_file_info(root)
    except Exception as e:  # pyarrow raises OSError / ArrowInvalid with the reason
        raise ModelNotFoundError(f"ray.storage_path {uri}: cannot reach the storage ({type(e).__name__}: {e})") from None


def check_model_uri(uri: str) -> None:
    """Fails with :class:`ModelNotFoundError` when ``uri`` is unreachable or holds no saved model."""
    _listing(uri)


# Weight files: the driver needs a model's tokenizer and metadata, never these.
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")


def join_uri(base: str, *parts: str) -> str:
    """``base/part/...``, keeping a URI's query (``s3://b/x?endpoint_override=h`` -> ``s3://b/x/run/model?endpoint_override=h``)."""
    head, sep, query = base.partition("?")
    return "/".join([head.rstrip("/"), *parts]) + sep + query


def local_model_dir(ref: str, weights: bool = True) -> str:
    """A local directory holding ``ref``'s files: ``ref`` itself unless it is a storage URI.

    A URI is copied into ``$HBT_CACHE/models/<key>`` once; the copy goes to a
    temporary folder that is renamed when complete, so a crash never leaves a
    half model that a later call would serve.

    Args:
        ref: a local path or a storage URI.
        weights: ``False`` fetches everything but the weight files (the driver
            needs the tokenizer and metadata to sort and count texts, not the model).
    """
    if not is_uri(ref):
        return ref
    from pyarrow import fs

    filesystem, root, files = _listing(ref)
    if not weights:
        files = [f for f in files if not f[0].endswith(_WEIGHTS)]
    key = hashlib.sha256(repr((ref, files)).encode()).hexdigest()[:20] + ("" if weights else "-noweights")
    dest = _cache_root() / key
    if dest.is_dir():
        return str(dest)
    tmp = dest.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, _, _ in files:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        fs.copy_files(f"{root}/{name}", str(tmp / name), source_filesystem=filesystem,
                      destination_filesystem=fs.LocalFileSystem())
    try:
        tmp.rename(dest)
    except OSError:  # another process finished the same copy first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


def publish_model(source_fs, source_path: str, uri: str) -> None:
    """Copies a model directory (e.g. the final checkpoint's ``model/``) to ``uri``, replacing what is there."""
    from pyarrow import fs

    try:
        dest_fs, dest = fs.FileSystem.from_uri(uri)
        if dest_fs.get_file_info(dest).type == fs.FileType.Directory:
            dest_fs.delete_dir(dest)
        dest_fs.create_dir(dest, recursive=True)
        fs.copy_files(source_path, dest, source_filesystem=source_fs, destination_filesystem=dest_fs)
    except OSError as e:
        raise ModelNotFoundError(f"{uri}: cannot write the trained model there ({e})") from None


# JSON files larger than this are checked for a cut-off end only (tokenizer.json runs to 17 MB).
_JSON_PARSE_MAX = 1 << 20
# Files that are never empty in a saved model.
_NON_EMPTY = (".json", ".safetensors", ".bin", ".pt", ".pth", ".model")


def _safetensors_problem(f: Path, size: int) -> str | None:
    """Why a ``.safetensors`` file is not whole, or None: the 8-byte header length, the JSON header,
    and the tensors' byte ranges against the file's size (what ``safetensors.safe_open`` checks)."""
    if size < 8:
        return f"{size} bytes, shorter than the 8-byte header length"
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n > size - 8:
            return f"the header is {n} bytes long but only {size - 8} bytes follow"
        try:
            header = json.loads(fh.read(n))
        except (ValueError, RecursionError) as e:
            return f"the header is not JSON: {e}"
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return "the header lists a tensor without data_offsets"
    if 8 + n + end != size:
        return f"the tensors need {8 + n + end} bytes, the file has {size}"
    return None


def _model_file_problem(f: Path) -> str | None:
    """Why one file of a saved model is damaged or cut short, or None."""
    size = f.stat().st_size
    if size == 0:
        return "empty file" if f.name.endswith(_NON_EMPTY) else None
    if f.suffix == ".safetensors":
        return _safetensors_problem(f, size)
    if f.suffix == ".json":
        if size > _JSON_PARSE_MAX:
            with open(f, "rb") as fh:
                fh.seek(max(0, size - 64))
                tail = fh.read().rstrip()
            return None if tail.endswith((b"}", b"]")) else "cut short: it does not end its JSON"
        try:
            json.loads(f.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            return "not UTF-8"
        except json.JSONDecodeError as e:
            return f"not valid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        except RecursionError:
            return "not valid JSON: nested too deeply"
        return None
    if f.suffix in (".bin", ".pt", ".pth"):
        import zipfile

        with open(f, "rb") as fh:
            zipped = fh.read(2) == b"PK"  # torch.save's zip format (the legacy pickle format is not checked)
        if zipped:
            try:
                with zipfile.ZipFile(f):
                    pass
            except (zipfile.BadZipFile, OSError) as e:
                return f"cut short: {e}"
    return None


def check_model_files(model_dir: str | os.PathLike, hint: str = "copy or save the model again") -> None:
    """Fails with :class:`ModelNotFoundError` naming the first damaged file of a local model directory.

    Cheap checks, no weights loaded: every JSON file parses (large ones end their
    JSON), every ``.safetensors`` has a whole header and as many bytes as its tensors
    need, a zipped ``.bin`` has its central directory, and none of these is empty.
    Called before Ray starts, so a model cut short by a crash or a copy fails in a
    second, not in an encoder actor.

    Raises:
        ModelNotFoundError: a damaged file (the one-line message names it).
    """
    from hbt.config import damaged_file

    root = Path(model_dir)
    for f in sorted(root.rglob("*")):
        if f.name.startswith(".") or not f.is_file():
            continue  # hidden files: a write in progress (hbt.config.atomic_path), editor files
        try:
            problem = _model_file_problem(f)
        except OSError as e:
            problem = f"cannot read: {e.strerror or e}"
        if problem:
            raise ModelNotFoundError(str(damaged_file(f, "model file", problem, hint))) from None


def _repair_hint(model_dir: Path) -> str:
    """What to do about a damaged model: the offline models' cache is rebuilt, anything else copied again."""
    from hbt.model.offline import cache_dir

    try:
        model_dir.resolve().relative_to((cache_dir() / "models").resolve())
    except ValueError:
        return "copy or save the model again"
    return f"delete {model_dir}: it is built again on next use"


def resolve_model_ref(ref: str, output_dir: str | os.PathLike, storage_path: str | None = None) -> str:
    """What ``hbt eval --model`` names, made loadable; fails before Ray starts when it names nothing.

    In order: ``offline:…`` (the offline models); a storage URI (checked
    reachable, handed on as is: whoever loads it fetches it); a local model
    directory; a training run (``<output_dir>/<ref>/model``, which also takes
    ``study/runs/<run>``; else the model its ``result.json`` records, a
    storage URI when training ran with one; else ``<storage_path>/<ref>/model``);
    a hub id ``org/name``. A local model directory's files are checked whole
    (:func:`check_model_files`).

    Raises:
        ModelNotFoundError: none of these, a storage that cannot be reached, or a
            local model with a damaged file.
        DamagedFileError: the run's ``result.json`` is damaged.
    """
    from hbt.config import read_json_file

    if ref.startswith(OFFLINE_PREFIX):
        from hbt.model.offline import resolve_model_path

        built = resolve_model_path(ref)
        check_model_files(built, _repair_hint(Path(built)))
        return built
    if is_uri(ref):
        check_model_uri(ref)
        return ref
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and (path / "model" / "config.json").exists():
            path = path / "model"  # a run directory given by path
        elif not (path / "config.json").exists():
            raise ModelNotFoundError(f"{ref}: a directory without config.json, so not a saved model")
        check_model_files(path, _repair_hint(path))
        return str(path)
    run = Path(output_dir) / ref / "model"
    if (run / "config.json").exists():
        check_model_files(run)
        return str(run)
    record = run.parent / "result.json"
    if record.exists():
        recorded = read_json_file(record, "record of a training run",
                                  "delete it, or give the model's path or URI to --model").get("model_dir")
        if recorded and is_uri(recorded):
            check_model_uri(recorded)
            return recorded
    if storage_path and is_uri(storage_path):
        uri = join_uri(storage_path, ref, "model")
        try:
            check_model_uri(uri)
            return uri
        except ModelNotFoundError:
            pass
    # A hub id looks like a relative path; one whose first folder exists here was meant as a path.
    if HUB_ID.match(ref) and not Path(ref.split("/")[0]).exists():
        return ref
    raise ModelNotFoundError(
        f"{ref}: not a model directory, a storage URI, a hub id (org/name), or a training run "
        f"(no {run}" + (f", no {join_uri(storage_path, ref, 'model')}" if storage_path and is_uri(storage_path) else "")
        + ")"
    )


# Written last into a published base model: a copy cut short by a crash has none, and is published again.
PUBLISHED_MARKER = "hbt_published.json"


def publish_base_model(model_dir: str, storage: str) -> str:
    """Copies a local model directory to ``<storage>/_models/<key>`` once, and returns that URI.

    The key hashes the directory's listing (relative names, sizes, modification
    times), so every job that starts from the same files shares one copy, and a
    model rebuilt in place is published again. The marker file is written after
    the files: a half-published copy is never served.

    Raises:
        ModelNotFoundError: the storage cannot be written.
    """
    from pyarrow import fs

    root = Path(model_dir).resolve()
    files = sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in root.rglob("*") if p.is_file())
    key = hashlib.sha256(repr(files).encode()).hexdigest()[:20]
    uri = join_uri(storage, "_models", key)
    try:
        dest_fs, dest = fs.FileSystem.from_uri(uri)
        if dest_fs.get_file_info(f"{dest}/{PUBLISHED_MARKER}").type == fs.FileType.File:
            return uri
    except Exception as e:  # pyarrow raises OSError / ArrowInvalid with the reason
        raise ModelNotFoundError(f"ray.storage_path {storage}: cannot reach the storage ({e})") from None
    publish_model(fs.LocalFileSystem(), str(root), uri)
    with dest_fs.open_output_stream(f"{dest}/{PUBLISHED_MARKER}") as f:
        f.write(json.dumps({"source": str(root), "files": len(files)}).encode())
    return uri


def shareable_model(model_dir: str, cfg) -> str:
    """``model_dir`` as every node of the job's Ray cluster can load it.

    On a cluster whose nodes share no disk (:func:`hbt.config.on_cluster`,
    without ``ray.shared_filesystem``), a local directory resolved on the driver
    (the ``offline:`` model, a path) is published to ``ray.storage_path`` and
    its URI is handed on: each node fetches it into its own cache. URIs and hub
    ids are loadable anywhere already; a local run keeps its path.
    """
    from hbt.config import on_cluster

    if is_uri(model_dir) or not Path(model_dir).is_dir() or not on_cluster(cfg) or cfg.ray.shared_filesystem:
        return model_dir
    return publish_base_model(model_dir, cfg.ray.storage_path)


# Written by hbt training beside the final model: the run, and the articles it trained on, so that
# `hbt eval --model RUN` scores its held-out split by default (hbt.eval.job.held_out_split).
TRAINING_RECORD = "hbt_training.json"


def write_training_record(model_ref: str, record: dict) -> None:
    """Writes :data:`TRAINING_RECORD` into a model directory, local or at a storage URI."""
    text = json.dumps(record, indent=2)
    if not is_uri(model_ref):
        from hbt.config import write_text_atomic

        write_text_atomic(Path(model_ref) / TRAINING_RECORD, text)
        return
    filesystem, root = filesystem_and_path(model_ref)
    with filesystem.open_output_stream(f"{root.rstrip('/')}/{TRAINING_RECORD}") as f:
        f.write(text.encode("utf-8"))


def read_training_record(model_ref: str) -> dict | None:
    """The :data:`TRAINING_RECORD` of a model hbt trained; ``None`` for any other model (or a hub id).

    A storage URI's record comes with the model's other small files (:func:`local_model_dir`,
    cached: the evaluation fetches them for the tokenizer anyway).

    Raises:
        DamagedFileError: the record is there but damaged (one line naming it).
    """
    from hbt.config import read_json_file

    path = Path(local_model_dir(model_ref, weights=False)) / TRAINING_RECORD
    if not path.is_file():
        return None
    return read_json_file(path, "record of the model's training run",
                          f"delete it to evaluate the model without its training split ({TRAINING_RECORD})",
                          name=f"{model_ref.rstrip('/')}/{TRAINING_RECORD}")
