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


# -- a local model's files are checked whole before Ray starts ------------------------------------------------


def _saved_model(d: Path) -> Path:
    """A model folder with the files a saved model has (a real safetensors file, JSON, a sub-module)."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 2}))
    save_file({"w": np.arange(64, dtype=np.float32).reshape(8, 8), "b": np.ones(8, np.float32)},
              str(d / "model.safetensors"))
    (d / "tokenizer.json").write_text(json.dumps({"model": {"vocab": ["x" * 40] * 80000}}))  # > 1 MB: tail-checked
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return d


def _cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


_DAMAGE = [
    ("model.safetensors", 0.0, "empty file"),
    ("model.safetensors", 0.5, "the tensors need"),
    ("model.safetensors", 0.02, "the header is"),  # cut inside the JSON header
    ("config.json", 0.0, "empty file"),
    ("config.json", 0.5, "not valid JSON"),
    ("tokenizer.json", 0.5, "cut short"),
    ("1_Pooling/config.json", 0.5, "not valid JSON"),
]


@pytest.mark.parametrize("name, keep, problem", _DAMAGE, ids=[f"{n}-{k}" for n, k, _ in _DAMAGE])
def test_a_damaged_model_file_is_named(tmp_path, name, keep, problem):
    out = tmp_path / "runs"
    model = _saved_model(out / "r1" / "model")
    for ref in ("r1", str(model), str(out / "r1")):  # run name, model dir, run dir
        resolve_model_ref(ref, out)
    _cut(model / name, keep)
    for ref in ("r1", str(model), str(out / "r1")):
        with pytest.raises(ModelNotFoundError) as e:
            resolve_model_ref(ref, out)
        msg = str(e.value)
        assert msg.startswith(f"{model / name}") and "damaged or truncated model file" in msg, msg
        assert problem in msg and "\n" not in msg and "copy or save the model again" in msg


def test_pytorch_weights_empty_or_cut_short(tmp_path):
    import zipfile

    model = _saved_model(tmp_path / "m")
    (model / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match=r"pytorch_model.bin: damaged or truncated model file \(empty file\)"):
        resolve_model_ref(str(model), tmp_path)
    with zipfile.ZipFile(model / "pytorch_model.bin", "w") as z:  # torch.save's format is a zip archive
        z.writestr("archive/data.pkl", b"x" * 4096)
    resolve_model_ref(str(model), tmp_path)
    _cut(model / "pytorch_model.bin", 0.6)
    with pytest.raises(ModelNotFoundError, match=r"pytorch_model.bin: damaged or truncated model file \(cut short"):
        resolve_model_ref(str(model), tmp_path)


def test_hidden_files_of_a_write_in_progress_are_not_checked(tmp_path):
    model = _saved_model(tmp_path / "m")
    (model / ".model.safetensors.tmp-1-ab.safetensors").write_bytes(b"")
    assert resolve_model_ref(str(model), tmp_path) == str(model)


def test_a_damaged_offline_build_says_it_is_rebuilt(tmp_path, monkeypatch):
    """The offline model's cache is hbt's own: the hint is to delete it (it is built again)."""
    from hbt.model import offline

    monkeypatch.setattr(offline, "cache_dir", lambda: tmp_path / "cache")
    built = _saved_model(tmp_path / "cache" / "models" / "multilingual-e5-small")
    monkeypatch.setattr(offline, "offline_model_dir", lambda num_layers=None: built)
    assert resolve_model_ref("offline:multilingual-e5-small", tmp_path) == str(built)
    _cut(built / "model.safetensors", 0.5)
    with pytest.raises(ModelNotFoundError, match=rf"delete {built}: it is built again on next use"):
        resolve_model_ref("offline:multilingual-e5-small", tmp_path)
    with pytest.raises(ModelNotFoundError, match="it is built again"):  # the same folder given by path
        resolve_model_ref(str(built), tmp_path)


@pytest.mark.parametrize("content", ["", '{"run_name": "r1", "model_dir": "s3://b/r'], ids=["zero-byte", "truncated"])
def test_a_damaged_run_record_is_named(tmp_path, content):
    from hbt.config import DamagedFileError

    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "result.json").write_text(content)
    with pytest.raises(DamagedFileError) as e:
        resolve_model_ref("r1", tmp_path)
    assert str(e.value).startswith(str(tmp_path / "r1" / "result.json")) and "\n" not in str(e.value)


@pytest.mark.parametrize("keep", [0.0, 0.5], ids=["zero-byte", "truncated"])
def test_hbt_eval_of_a_damaged_model_fails_before_ray(tmp_path, capsys, monkeypatch, keep):
    import ray

    import hbt.raysetup
    from hbt.cli import main

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(hbt.raysetup, "init_ray", no_ray)
    was_up = ray.is_initialized()  # another test of the session may have started it
    model = _saved_model(tmp_path / "model")
    _cut(model / "model.safetensors", keep)
    assert main(["eval", "--model", str(model), "--benchmark", "tatoeba", "--langs", "deu",
                 f"output_dir={tmp_path}/runs", "--no-track"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {model / 'model.safetensors'}: damaged or truncated model file"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert ray.is_initialized() == was_up and not (tmp_path / "runs").exists()
