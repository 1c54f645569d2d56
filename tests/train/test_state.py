"""``train_state.json``: written whole or not at all; a damaged one is an HbtError naming the checkpoint's file."""

from __future__ import annotations

import pickle

import pytest

from hbt.config import DamagedFileError, HbtError
from hbt.train.state import STATE_FILE, TrainState


def test_save_is_whole_and_leaves_no_temporary_file(tmp_path):
    TrainState(step=7, epoch=1, batch_in_epoch=3, samples=224).save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]
    assert TrainState.load(tmp_path) == TrainState(7, 1, 3, 224)
    assert TrainState.load(tmp_path / "nothing-here") == TrainState()  # absent: a fresh run


@pytest.mark.parametrize("content, problem", [
    ("", "empty file"),
    ('{"step": 7, "epoch": 1, "batch_in_ep', "not valid JSON"),
    ("[7, 1, 3, 224]", "expected an object"),
    ('{"step": 7, "epoch": 1, "batch_in_epoch": 3}', "missing keys ['samples']"),
    ('{"step": "7", "epoch": 1, "batch_in_epoch": 3, "samples": 0}', "non-count keys ['step']"),
    ('{"step": 7, "epoch": 1, "batch_in_epoch": 3, "samples": 0, "lr": 1}', "['lr']"),
], ids=["zero-byte", "truncated", "array", "missing", "string", "unknown"])
def test_a_damaged_state_names_the_file_in_one_line(tmp_path, content, problem):
    (tmp_path / STATE_FILE).write_text(content)
    with pytest.raises(DamagedFileError) as e:
        TrainState.load(tmp_path)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / STATE_FILE)) and problem in msg and "\n" not in msg, msg
    assert "resume from an earlier checkpoint" in msg


def test_a_temporary_copy_is_named_by_the_checkpoint_it_came_from(tmp_path):
    """Workers read a downloaded copy; the message names the checkpoint in the run's storage."""
    (tmp_path / STATE_FILE).write_text('{"step": 1')
    source = "s3://bucket/runs/r1/checkpoint_step00000040"
    with pytest.raises(DamagedFileError) as e:
        TrainState.load(tmp_path, source=source)
    assert str(e.value).startswith(f"{source}/{STATE_FILE}:1:") and str(tmp_path) not in str(e.value)


def test_the_error_crosses_process_boundaries_as_an_hbt_error(tmp_path):
    """Raised in a Ray Train worker, it reaches the driver pickled (WorkerGroupError.worker_failures)."""
    (tmp_path / STATE_FILE).write_text("")
    with pytest.raises(DamagedFileError) as e:
        TrainState.load(tmp_path)
    back = pickle.loads(pickle.dumps(e.value))
    assert isinstance(back, HbtError) and str(back) == str(e.value)
