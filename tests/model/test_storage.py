"""Model references: local dirs, storage URIs fetched into a cache, run names, hub ids, and clear refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hbt.model.storage import ModelNotFoundError, local_model_dir, resolve_model_ref


def _model(d: Path, weights: bytes = b"w") -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub").mkdir()
    (d / "sub" / "weights.bin").write_bytes(weights)
    return d


def test_uri_is_fetched_once_and_again_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("HBT_CACHE", str(tmp_path / "cache"))
    src = _model(tmp_path / "store" / "m")
    uri = f"file://{src}"
    got = Path(local_model_dir(uri))
    assert got.parent == tmp_path / "cache" / "models"
    assert (got / "sub" / "weights.bin").read_bytes() == b"w" and (got / "config.json").exists()
    assert local_model_dir(uri) == str(got)  # cached
    (src / "sub" / "weights.bin").write_bytes(b"retrained")
    again = Path(local_model_dir(uri))
    assert again != got and (again / "sub" / "weights.bin").read_bytes() == b"retrained"
    assert not list((tmp_path / "cache" / "models").glob("*.tmp-*"))
    assert local_model_dir(str(src)) == str(src)  # a local path is used in place


def test_references_resolve_or_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    run_model = _model(out / "hbt-s0" / "model")
    assert resolve_model_ref("hbt-s0", out) == str(run_model)  # a run name
    assert resolve_model_ref(str(out / "hbt-s0"), out) == str(run_model)  # a run dir by path
    assert resolve_model_ref(str(run_model), out) == str(run_model)
    assert resolve_model_ref("intfloat/multilingual-e5-small", out) == "intfloat/multilingual-e5-small"
    with pytest.raises(ModelNotFoundError, match="no-run: not a model directory.*no .*no-run/model"):
        resolve_model_ref("no-run", out)
    with pytest.raises(ModelNotFoundError, match="runs/typo"):  # 'runs' exists here: a path, not a hub id
        resolve_model_ref("runs/typo", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="without config.json"):
        resolve_model_ref(str(tmp_path / "empty"), out)
    with pytest.raises(ModelNotFoundError, match="no model directory there"):
        resolve_model_ref(f"file://{tmp_path}/nothing", out)
    shutil.rmtree(run_model / "sub")
    (run_model / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="no config.json there"):
        resolve_model_ref(f"file://{run_model}", out)
