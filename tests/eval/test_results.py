"""An evaluation's files: written whole or not at all, and a damaged one named in one line when read back."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from hbt.config import DamagedFileError, HbtError, dump_config, load_config
from hbt.eval.results import EvalResult


def _result(seed: int = 0) -> EvalResult:
    rng = np.random.default_rng(seed)
    ap = rng.random(40)
    return EvalResult(
        metrics={"xquad_r/multilingual/mAP": float(ap.mean())},
        per_query={"xquad_r/multilingual/AP": ap},
        matrices={"xquad_r/cross_lingual/mAP": {"languages": ["en", "de"], "values": [[0.5, 0.4], [0.3, 0.6]]}},
        info={"texts": 80},
        units={"xquad_r/multilingual/AP": {"question": np.array([f"q{i % 20}" for i in range(40)]),
                                           "article": np.array([f"a{i % 4}" for i in range(40)])}},
    )


def test_round_trip_leaves_no_temporary_files(tmp_path):
    _result().save(tmp_path / "ev")
    got = EvalResult.load(tmp_path / "ev")
    assert got.metrics == _result().metrics and got.info == {"texts": 80}
    np.testing.assert_array_equal(got.per_query["xquad_r/multilingual/AP"], _result().per_query["xquad_r/multilingual/AP"])
    assert list(got.units["xquad_r/multilingual/AP"]["question"][:2]) == ["q0", "q1"]
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == [
        "info.json", "matrices.json", "metrics.json", "per_query.npz"]


def _truncate(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name", ["per_query.npz", "metrics.json", "matrices.json", "info.json"])
@pytest.mark.parametrize("keep", [0.0, 0.5], ids=["zero-byte", "truncated"])
def test_a_damaged_file_is_named_in_one_line(tmp_path, name, keep):
    out = tmp_path / "ev"
    _result().save(out)
    _truncate(out / name, keep)
    with pytest.raises(DamagedFileError) as e:
        EvalResult.load(out)
    msg = str(e.value)
    assert msg.startswith(f"{out / name}") and "damaged or truncated" in msg and "\n" not in msg, msg
    assert f"run the evaluation again to rewrite {out}" in msg
    assert isinstance(pickle.loads(pickle.dumps(e.value)), HbtError)  # crosses Ray as it is


def test_a_corrupt_array_inside_a_whole_archive_is_named(tmp_path):
    out = tmp_path / "ev"
    _result().save(out)
    data = bytearray((out / "per_query.npz").read_bytes())
    mid = len(data) // 3
    data[mid:mid + 64] = bytes(64)  # the zip's directory is intact, a member's compressed bytes are not
    (out / "per_query.npz").write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match="per_query.npz: damaged or truncated"):
        EvalResult.load(out)


def test_metrics_of_the_wrong_shape_are_named(tmp_path):
    out = tmp_path / "ev"
    _result().save(out)
    (out / "metrics.json").write_text("[1, 2]")
    with pytest.raises(DamagedFileError, match=r"metrics.json: damaged or truncated .*expected an object"):
        EvalResult.load(out)


def test_a_save_that_fails_leaves_the_old_evaluation_whole(tmp_path):
    out = tmp_path / "ev"
    _result(0).save(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = _result(1)
    broken.info = {("a", "b"): 1}  # json cannot write a tuple key
    with pytest.raises(TypeError):
        broken.save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_save_cut_short_does_not_look_finished(tmp_path, monkeypatch):
    """metrics.json marks a finished evaluation: a save that dies midway leaves none, and no half file."""
    import hbt.eval.results as results

    out = tmp_path / "ev"
    _result(0).save(out)
    monkeypatch.setattr(results, "write_text_atomic", _dies_at("info.json", results.write_text_atomic))
    with pytest.raises(KeyboardInterrupt):
        _result(1).save(out)
    assert not (out / "metrics.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    with pytest.raises(HbtError, match="metrics.json: cannot read"):
        EvalResult.load(out)


def _dies_at(name, write):
    def wrapped(path, text):
        if path.name == name:
            raise KeyboardInterrupt
        return write(path, text)
    return wrapped


def _study(tmp_path):
    """A study folder with the layout ``hbt study --report-from`` reads (config, zero-shot, one evaluation)."""
    study = tmp_path / "study"
    cfg = load_config(None, ["study.strategies=[x_y,hbt]", "study.seeds=[0]", "study.bootstrap_samples=100"])
    study.mkdir()
    dump_config(cfg, study / "config.yaml")
    _result(0).save(study / "zero_shot")
    _result(1).save(study / "eval" / "x_y-s0")
    _result(2).save(study / "eval" / "hbt-s0")
    return study


@pytest.mark.parametrize("keep", [0.0, 0.5], ids=["zero-byte", "truncated"])
def test_report_from_a_study_with_a_damaged_npz_is_one_error_line(tmp_path, capsys, keep):
    from hbt.cli import main

    study = _study(tmp_path)
    bad = study / "eval" / "hbt-s0" / "per_query.npz"
    _truncate(bad, keep)
    assert main(["study", "--report-from", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: damaged or truncated") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err


def test_info_json_of_an_evaluation_is_read_as_json(tmp_path):
    out = tmp_path / "ev"
    _result().save(out)
    assert json.loads((out / "info.json").read_text()) == {"texts": 80}
