"""Which checkpoint a restarted run continues from: the newest one every rank finished writing.

Ray Train registers a reported checkpoint when its controller next polls the
workers. A node lost between a report and that poll leaves a checkpoint that is
written in full but unknown to Ray, and Ray restarts from the one before.
hbt names each checkpoint by its step and, once every rank has uploaded its
files, writes a marker into it; a restart takes the newest marked checkpoint in
the run's storage, or Ray's when it is newer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hbt.model.storage import filesystem_and_path

COMPLETE_MARKER = "hbt_complete.json"
_NAME = re.compile(r"^checkpoint_step(\d{8})$")


def step_of(name: str) -> int | None:
    """The step of a checkpoint folder named by :func:`checkpoint_name`, else None."""
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def checkpoint_name(step: int) -> str:
    """The checkpoint folder of a step (sorts by step)."""
    return f"checkpoint_step{step:08d}"


def mark_complete(run_storage: str, step: int) -> None:
    """Writes the marker of the step's checkpoint (rank 0, after every rank's upload)."""
    filesystem, root = filesystem_and_path(run_storage)
    with filesystem.open_output_stream(f"{root}/{checkpoint_name(step)}/{COMPLETE_MARKER}") as f:
        f.write(json.dumps({"step": step}).encode())


def latest_complete(run_storage: str) -> int | None:
    """The step of the newest marked checkpoint in the run's storage folder, or None."""
    from pyarrow import fs

    filesystem, root = filesystem_and_path(run_storage)
    if filesystem.get_file_info(root).type != fs.FileType.Directory:
        return None
    steps = []
    for info in filesystem.get_file_info(fs.FileSelector(root, recursive=False)):
        step = step_of(info.base_name)
        if step is not None and info.type == fs.FileType.Directory and \
                filesystem.get_file_info(f"{info.path}/{COMPLETE_MARKER}").type == fs.FileType.File:
            steps.append(step)
    return max(steps, default=None)


def download(run_storage: str, step: int, dest: str | Path) -> Path:
    """Copies the step's checkpoint into ``dest`` (a folder of this process's own), returns it."""
    from pyarrow import fs

    filesystem, root = filesystem_and_path(run_storage)
    Path(dest).mkdir(parents=True, exist_ok=True)
    fs.copy_files(f"{root}/{checkpoint_name(step)}", str(dest), source_filesystem=filesystem,
                  destination_filesystem=fs.LocalFileSystem())
    return Path(dest)


def checkpoint_source(run_storage: str, step: int) -> str:
    """The step's checkpoint as messages name it (credentials in the URI redacted)."""
    from hbt.config import redact_uri
    from hbt.model.storage import join_uri

    name = checkpoint_name(step)
    return redact_uri(join_uri(run_storage, name)) if "://" in run_storage else str(Path(run_storage, name))


def check_latest_state(run_storage: str) -> None:
    """Reads the training state of the checkpoint a restart would take, before Ray starts.

    A damaged ``train_state.json`` then fails ``--resume`` in one line at once,
    not after Ray Train has restarted its workers ``ray.max_failures`` times.

    Raises:
        DamagedFileError: naming the file.
    """
    import tempfile

    from pyarrow import fs

    from hbt.train.state import STATE_FILE, TrainState

    step = latest_complete(run_storage)
    if step is None:
        return
    filesystem, root = filesystem_and_path(run_storage)
    with tempfile.TemporaryDirectory(prefix="hbt-state-") as d:
        source = f"{root}/{checkpoint_name(step)}/{STATE_FILE}"
        if filesystem.get_file_info(source).type == fs.FileType.File:
            fs.copy_files(source, f"{d}/{STATE_FILE}", source_filesystem=filesystem,
                          destination_filesystem=fs.LocalFileSystem())
        TrainState.load(d, source=checkpoint_source(run_storage, step))
