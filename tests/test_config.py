"""The config tree: strict keys, types, cross-field rules, every shipped YAML, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hbt.cli import main
from hbt.config import PROJECT_ROOT, ConfigError, HBTConfig, dump_config, load_config, with_overrides

SHIPPED = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), f"{path.name} must start with a comment giving its command"
    assert "hbt " in path.read_text().split("\n\n")[0] or "ray_jobs" in path.read_text().split("\n\n")[0]
    load_config(path)


def test_every_tune_space_validates():
    from hbt.tune.space import load_space

    spaces = sorted((PROJECT_ROOT / "tune_spaces").glob("*.yaml"))
    assert {p.name for p in spaces} >= {"alpha.yaml", "full.yaml"}
    for p in spaces:
        assert p.read_text().startswith("#")
        load_space(p, HBTConfig())


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_misspelled_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"batching\.alhpa: unknown key"):
        load_config(_write(tmp_path, "batching:\n  alhpa: 0.5\n"))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        load_config(_write(tmp_path, "train:\n  max_steps: many\n"))


def test_alpha_out_of_range_is_named():
    with pytest.raises(ConfigError, match=r"batching\.alpha: .*\[0, 1\]"):
        load_config(None, ["batching.alpha=1.5"])


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["batching.global_batch_size=33"], r"global_batch_size \(33\) must be divisible by ray\.num_workers \(2\)"),
        (["data.languages=[en,xx]"], r"data\.languages.*unknown language"),
        (["batching.strategy=single", "batching.single_language=fr", "data.languages=[en,de]"], "single_language"),
        (["data.heldout_articles=[A]", "data.dev_articles=[A]"], "overlaps"),
        (["train.grad_cache=true", "train.grad_cache_chunk=3"], "grad_cache_chunk"),
        (["deepspeed.precision=bf16"], "use_gpu"),
        (["data.path=/tmp", "data.languages=[en,de]"], r"not present in the data"),
        (["nosuchsection.x=1"], r"nosuchsection: unknown key"),
    ],
)
def test_cross_field_contradictions(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_languages_missing_from_the_data_fail():
    with pytest.raises(ConfigError, match=r"data\.languages \['fr'\] are not present"):
        load_config(None, ["data.languages=[en,fr]"])


def test_overrides_and_resolved_dump_round_trip(tmp_path):
    cfg = load_config(None, ["batching.alpha=0.25", "train.lr=1e-4", "data.languages=[en,de]"])
    assert cfg.batching.alpha == 0.25 and cfg.train.lr == 1e-4
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg
    assert with_overrides(cfg, {"batching.alpha": 1.0}).batching.alpha == 1.0
    with pytest.raises(ConfigError, match="unknown key"):
        with_overrides(cfg, {"batching.nope": 1})


def test_cli_validate_reports_the_key(tmp_path, capsys):
    assert main(["config", "validate", str(_write(tmp_path, "batching:\n  alpha: 1.5\n"))]) == 2
    assert "batching.alpha" in capsys.readouterr().err
    assert main(["config", "validate", str(PROJECT_ROOT / "configs" / "local.yaml")]) == 0


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "hbt.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for sub in ("config", "model", "data", "train", "eval", "tune", "study"):
        assert sub in out
    sub = subprocess.run([sys.executable, "-m", "hbt.cli", "train", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--resume" in sub


def test_data_inspect_prints_strategy_stats(capsys):
    import json

    assert main(["data", "inspect", "--steps", "300", "batching.alpha=0.3", "data.languages=[en,de,zh]"]) == 0
    stats = json.loads(capsys.readouterr().out)
    hybrid = stats["strategies"]["hybrid"]
    assert 0.2 < hybrid["batch_types"]["mono"] < 0.4
    assert all(s["qid_duplicates"] == 0 for s in stats["strategies"].values())
    assert stats["strategies"]["cross"]["cross_pairs_with_same_language"] == 0


def test_resolve_path_order(tmp_path, monkeypatch):
    """Explicit path, then $HBT_DATA_ROOT, then ../shared/data beside the checkout, then the fetch cache."""
    import hbt.config as config

    project = tmp_path / "checkout"
    shared = tmp_path / "shared" / "data"  # ../shared/data seen from the checkout
    root, cache = tmp_path / "root", tmp_path / "cache"
    project.mkdir()
    monkeypatch.setattr(config, "PROJECT_ROOT", project)
    monkeypatch.delenv("HBT_DATA_ROOT", raising=False)
    monkeypatch.setenv("HBT_CACHE", str(cache))
    rel = "../shared/data/xquad-r"
    resolve = config.resolve_path

    # Explicit: URIs and absolute paths are taken as they are, present or not.
    assert resolve("s3://bucket/xquad-r") == "s3://bucket/xquad-r"
    assert resolve(str(tmp_path / "elsewhere" / "xquad-r")) == str(tmp_path / "elsewhere" / "xquad-r")

    # Nowhere: the places searched, and the first of them is returned.
    assert config.data_candidates(rel) == [shared / "xquad-r", cache / "data" / "xquad-r"]
    assert resolve(rel) == str(shared / "xquad-r")
    # Paths outside ../shared/data have no cache fallback.
    assert config.data_candidates("mydata/train") == [project / "mydata" / "train"]

    (cache / "data" / "xquad-r").mkdir(parents=True)
    assert resolve(rel) == str(cache / "data" / "xquad-r")  # only the fetch cache holds it
    (shared / "xquad-r").mkdir(parents=True)
    assert resolve(rel) == str(shared / "xquad-r")  # ../shared/data beats the cache

    monkeypatch.setenv("HBT_DATA_ROOT", str(root / "checkout"))
    assert config.data_candidates(rel)[0] == root / "shared" / "data" / "xquad-r"
    assert resolve(rel) == str(shared / "xquad-r")  # the root lacks it: on to ../shared/data
    (root / "shared" / "data" / "xquad-r").mkdir(parents=True)
    assert resolve(rel) == str(root / "shared" / "data" / "xquad-r")  # the root beats ../shared/data

    monkeypatch.delenv("HBT_CACHE")
    assert config.data_cache_dir() == Path.home() / ".cache" / "hbt" / "data"


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["study.domain_shift_endpoints=[mlqa_r/monolingual/mAP]"], r"study endpoint 'mlqa_r/monolingual/mAP' is not produced"),
        (["eval.benchmarks=[xquad_r,tatoeba]", "study.primary_endpoint=xquad_r/multilingual/nDCG@100"], "study endpoint"),
        (["study.strategies=[x_x_mono,x_y]"], r"study\.strategies must hold study\.under_test \('hbt'\)"),
        (["study.strategies=[hbt]"], "at least one baseline"),
        (["study.noninferiority_margin=0"], r"study\.noninferiority_margin"),
        (["study.bootstrap_unit=row"], r"study\.bootstrap_unit"),
        (["study.seeds=[1,1]"], r"study\.seeds"),
    ],
)
def test_study_statistics_are_checked_at_load(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_version_and_one_line_data_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hbt.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("hbt 0.")
    bad = tmp_path / "a.jsonl"
    bad.write_text('{"qid": "1", "lang": "en", "query": "q", "passage": "p", "passage_id": "x"}\n'
                   '{"qid": "1", "lang": "de", "query": "q", "passage": "p"}\n', encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "hbt.cli", "data", "inspect", f"data.path={bad}", "data.format=jsonl",
                          "data.languages=[en,de]", "batching.global_batch_size=2", "ray.num_workers=1"],
                         capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"error: {bad}:2: inconsistent field: 'passage_id'") and "Traceback" not in out.stderr


# -- what a config points at, checked at load (issue #16) ------------------------------


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["eval.languages=[xx]"], "eval.languages"),
        (["eval.languages=[th]", "eval.benchmarks=[mlqa_r]"], "eval.languages"),  # th: XQuAD-R only
        (["eval.languages=[th]", "eval.benchmarks=[xquad_r,mlqa_r]"], "eval.languages"),  # nothing left for MLQA-R
        (["eval.languages=[en,en]"], "eval.languages"),
        (["eval.tatoeba_languages=[deu,de]"], "eval.tatoeba_languages"),
        (["eval.miracl_languages=[ar,ara]"], "eval.miracl_languages"),
        (["eval.benchmarks=[miracl]", "eval.miracl_languages=[ar]"], "eval.miracl_path"),
        (["eval.benchmarks=[xquad_r,miracl]", "eval.miracl_languages=[ar]", "eval.miracl_path=/nonexistent/miracl"],
         "eval.miracl_path"),
        (["eval.benchmarks=[tatoeba]", "eval.tatoeba_path=/nonexistent/tatoeba-copy"], "eval.tatoeba_path"),
        (["eval.benchmarks=[mlqa_r]", "eval.mlqa_r_path=no/such/dir"], "eval.mlqa_r_path"),
        (["data.format=jsonl", "data.path=/nonexistent/train.jsonl"], "data.path"),
        (["data.format=mmarco_tsv", "data.path=/nonexistent/mmarco", "data.languages=[en,de]"], "data.path"),
        (["train.lr=.inf"], "train.lr"),
        (["train.temperature=.nan"], "train.temperature"),
        (["data.language_weights={ar: .inf}"], "data.language_weights.ar"),
        (["deepspeed.extra={optimizer: {params: {eps: .nan}}}"], "deepspeed.extra.optimizer.params.eps"),
        (["model.num_layers=13"], "model.num_layers"),
    ],
)
def test_load_checks_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert key in str(e.value)


def test_valid_pointers_pass():
    load_config(None, ["eval.languages=[el,de]", "eval.benchmarks=[xquad_r,mlqa_r]"])  # el: XQuAD-R only, kept there
    load_config(None, ["eval.benchmarks=[tatoeba]", "eval.languages=[en]", "eval.tatoeba_languages=[tgl,urd]"])
    load_config(None, ["data.format=jsonl", "data.path=s3://bucket/train"])  # URIs are not checked
    load_config(None, ["model.num_layers=12", "model.name_or_path=org/not-a-local-model"])
    load_config(None, ["model.num_layers=40", "model.name_or_path=org/not-a-local-model"])  # hub names: skipped


def test_num_layers_against_a_local_model_dir(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    load_config(None, [f"model.name_or_path={tmp_path}", "model.num_layers=2"])
    with pytest.raises(ConfigError, match=r"model\.num_layers \(3\) exceeds the 2 layers"):
        load_config(None, [f"model.name_or_path={tmp_path}", "model.num_layers=3"])


def test_tatoeba_codes_match_the_fetched_files():
    from hbt.config import TATOEBA_LANGUAGES
    from hbt.data.fetch import DATASETS

    pinned = {n.split(".")[1].split("-")[0] for n in DATASETS["tatoeba"].pins if n.startswith("tatoeba.")}
    assert sorted(pinned) == TATOEBA_LANGUAGES


def test_missing_benchmark_folders_are_left_to_the_fetch_flow(tmp_path):
    """A missing xquad-r/mlqa-r/tatoeba folder loads (so --fetch can fetch it); validate names the fetch command."""
    from hbt.config import FETCHABLE_FOLDERS
    from hbt.data.fetch import DATASETS, MissingDataError, ensure_data

    assert set(FETCHABLE_FOLDERS) == {d.folder for d in DATASETS.values()}
    cfg = load_config(None, [f"eval.xquad_r_path={tmp_path}/xquad-r"])
    with pytest.raises(MissingDataError, match=r"(?s)eval\.xquad_r_path .*get it with: hbt data fetch xquad_r"):
        ensure_data(cfg)
    rc = subprocess.run([sys.executable, "-m", "hbt.cli", "config", "validate", str(PROJECT_ROOT / "configs" / "local.yaml"),
                         f"eval.xquad_r_path={tmp_path}/xquad-r"], capture_output=True, text=True, timeout=120,
                        cwd=PROJECT_ROOT)
    assert rc.returncode == 2 and "hbt data fetch xquad_r" in rc.stderr and "Traceback" not in rc.stderr


def test_another_machines_paths_are_not_checked_here(tmp_path):
    """The cluster configs name the head's disks (output_dir /home/ray/...): checked there, not on a laptop."""
    from hbt.config import paths_are_local

    missing_root = "/nonexistent-host-root/hbt-runs"
    cfg = load_config(None, [f"output_dir={missing_root}", "eval.benchmarks=[tatoeba]", "eval.tatoeba_path=/x/y"])
    assert not paths_are_local(cfg)
    assert paths_are_local(load_config(None, [f"output_dir={tmp_path}/new-runs"]))


def test_cli_validate_one_error_line_no_traceback(tmp_path):
    cfg = _write(tmp_path, "data:\n  format: jsonl\n  path: /nonexistent/train.jsonl\n")
    out = subprocess.run([sys.executable, "-m", "hbt.cli", "config", "validate", str(cfg), "train.lr=.inf"],
                         capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert out.returncode == 2, out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr
    assert "train.lr" in out.stderr
    out = subprocess.run([sys.executable, "-m", "hbt.cli", "config", "validate", str(cfg)],
                         capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [
        f"error: invalid config ({cfg}): data.path: no such file or directory: /nonexistent/train.jsonl"]


def test_dumped_config_holds_no_credentials(tmp_path):
    from hbt.config import dump_config

    cfg = load_config(None, ["tracking.uri=http://alice:s3cret@mlflow.example:5000",
                             "ray.storage_path=s3://bucket/runs?endpoint_override=minio:9000"])
    dump_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "s3cret" not in text
    assert "http://alice:***@mlflow.example:5000" in text and "endpoint_override=minio:9000" in text
    # A key in the storage URI would be copied into result.json, MLflow tags and messages: refused at load.
    with pytest.raises(ConfigError, match="ray.storage_path: .*holds a credential") as e:
        load_config(None, ["ray.storage_path=s3://bucket/runs?endpoint_override=minio:9000&secret_key=abc"])
    assert "abc" not in str(e.value)


# A Ray address nobody listens on: a refusal that comes after any Ray work would hang or fail differently.
_DEAD_RAY = "ray.address=127.0.0.1:9"


_BREAKS = [
    # Break 1: checkpoints on the driver's disk (unset, or a plain path).
    ([], "ray.storage_path"),
    (["ray.storage_path=/tmp/hbt-ray-results"], "ray.storage_path"),
    (["ray.storage_path=file:///tmp/hbt-ray-results"], "ray.storage_path"),
    # Break 3: the MLflow store on the driver's disk (unset: a sqlite file under output_dir).
    (["ray.storage_path=s3://bucket/runs"], "tracking.uri"),
    (["ray.storage_path=s3://bucket/runs", "tracking.uri=sqlite:////tmp/mlflow.db"], "tracking.uri"),
    (["ray.storage_path=s3://bucket/runs", "tracking.uri=/tmp/mlruns"], "tracking.uri"),
    # Break 2: the default offline model is resolved on the driver; with local storage it has nowhere to go.
    (["model.name_or_path=offline:multilingual-e5-small"], "ray.storage_path"),
]


def _cluster_args(command: str, tmp_path: Path, overrides: list[str]) -> list[str]:
    args = [command, "-c", str(PROJECT_ROOT / "configs" / "local.yaml"), _DEAD_RAY, f"output_dir={tmp_path}", *overrides]
    return args + (["--space", str(PROJECT_ROOT / "tune_spaces" / "alpha.yaml")] if command == "tune" else [])


@pytest.mark.parametrize("overrides, key", _BREAKS)
@pytest.mark.parametrize("command", ["train", "eval", "study", "tune"])
def test_one_node_stores_are_refused_on_a_cluster_before_ray(tmp_path, capsys, monkeypatch, overrides, key, command):
    def no_ray(*args, **kwargs):  # any Ray work would start here: the refusal must come first
        raise AssertionError("Ray was started")

    for where in ("hbt.raysetup.init_ray", "hbt.train.job.init_ray", "hbt.study.runner.init_ray"):
        monkeypatch.setattr(where, no_ray)
    assert main(_cluster_args(command, tmp_path, overrides)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {key} is ") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "ray_results").exists()


def test_the_cluster_refusal_is_one_line_from_the_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hbt.cli", *_cluster_args("train", tmp_path, [])],
                         capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert out.returncode == 2 and out.stderr.startswith("error: ray.storage_path is unset"), out.stderr
    assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr


def test_a_cluster_config_with_shared_stores_passes_the_handoff_check(monkeypatch):
    from hbt.config import check_cluster_handoffs, on_cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = load_config(None, [])
    assert not on_cluster(local)
    check_cluster_handoffs(local)  # one machine: its disk is every process's disk
    check_cluster_handoffs(load_config(None, [_DEAD_RAY, "ray.storage_path=s3://b/r", "tracking.uri=http://h:5000"]))
    check_cluster_handoffs(load_config(None, [_DEAD_RAY, "ray.shared_filesystem=true"]))  # NFS: the user says so
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # what `ray job submit` gives its driver
    assert on_cluster(local)
    with pytest.raises(ConfigError, match="^ray.storage_path is unset"):
        check_cluster_handoffs(local)


def test_elastic_worker_counts_are_checked_against_the_global_batch():
    cfg = load_config(None, ["ray.num_workers=[1,2]", "batching.global_batch_size=8"])
    assert (cfg.ray.min_workers, cfg.ray.max_workers, cfg.ray.elastic) == (1, 2, True)
    with pytest.raises(ConfigError, match=r"by every count in \[2, 3\]; not by \[3\]"):
        load_config(None, ["ray.num_workers=[2,3]", "batching.global_batch_size=8"])
    with pytest.raises(ConfigError, match="needs deepspeed.zero_stage 0"):
        load_config(None, ["ray.num_workers=[1,2]", "deepspeed.zero_stage=2"])
    with pytest.raises(ConfigError, match="ray.num_workers"):
        load_config(None, ["ray.num_workers=[2,1]"])


# -- paths of the wrong kind, one-line errors, files written whole, usage errors without secrets --------------


def _kinds(tmp_path):
    a_file = tmp_path / "a.json"
    a_file.write_text("{}")
    empty = tmp_path / "empty"
    empty.mkdir()
    return a_file, empty


@pytest.mark.parametrize("overrides, key", [
    (["data.format=xquad", "data.path={file}"], "data.path"),
    (["data.format=mmarco_tsv", "data.path={file}", "data.languages=[en,de]"], "data.path"),
    (["data.format=jsonl", "data.path={dir}", "data.languages=[en,de]"], "data.path"),
    (["data.format=parquet", "data.path={dir}", "data.languages=[en,de]"], "data.path"),
    (["eval.xquad_r_path={file}"], "eval.xquad_r_path"),
    (["eval.benchmarks=[mlqa_r]", "eval.mlqa_r_path={file}"], "eval.mlqa_r_path"),
    (["eval.benchmarks=[tatoeba]", "eval.tatoeba_path={file}"], "eval.tatoeba_path"),
    (["eval.benchmarks=[miracl]", "eval.miracl_languages=[de]", "eval.miracl_path={file}"], "eval.miracl_path"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_cli_validate_refuses_a_path_of_the_wrong_kind(tmp_path, capsys, overrides, key):
    a_file, empty = _kinds(tmp_path)
    args = [o.format(file=a_file, dir=empty) for o in overrides]
    assert main(["config", "validate", str(PROJECT_ROOT / "configs" / "local.yaml"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config") and f": {key}: " in err and len(err.splitlines()) == 1, err


def test_paths_of_the_right_kind_pass(tmp_path):
    a_file, empty = _kinds(tmp_path)
    train = tmp_path / "train.jsonl"
    train.write_text("")
    (empty / "part-0.jsonl.gz").write_bytes(b"")
    load_config(None, ["data.format=jsonl", f"data.path={train}", "data.languages=[en,de]"])  # a file
    load_config(None, ["data.format=jsonl", f"data.path={empty}", "data.languages=[en,de]"])  # a folder of them
    load_config(None, ["eval.benchmarks=[miracl]", "eval.miracl_languages=[de]", f"eval.miracl_path={tmp_path}"])


def test_several_problems_and_schema_errors_are_one_line(tmp_path, capsys):
    cfg = _write(tmp_path, "train:\n  lr: .inf\n  max_steps: many\nbatching:\n  alhpa: 1\n")
    assert main(["config", "validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: invalid config ({cfg}): "), err
    assert "train.lr" in err and "train.max_steps" in err and "batching.alhpa: unknown key" in err
    with pytest.raises(ConfigError) as e:  # the load checks: every problem, one line
        load_config(None, ["eval.languages=[xx]", "model.num_layers=13"])
    assert "\n" not in str(e.value) and "eval.languages" in str(e.value) and "model.num_layers" in str(e.value)
    with pytest.raises(ConfigError) as e:  # a cross-field rule names its keys without a '<root>' prefix
        load_config(None, ["batching.global_batch_size=33"])
    assert str(e.value).startswith("invalid config (defaults): batching.global_batch_size (33)")


@pytest.mark.parametrize("text, where, problem", [
    ("train:\n  lr: [1e-4\nbatching:\n  alpha: 1\n", ":3:", "expected ',' or ']'"),
    ("train:\n  lr: 1\n max_steps: 2\n", ":3:2", "expected <block end>"),
    ('run_name: "x\n', ":2:1", "end of stream"),
    ("a: b: c\n", ":1:5", "mapping values are not allowed here"),
], ids=["flow", "indent", "quote", "mapping"])
def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path, capsys, text, where, problem):
    cfg = _write(tmp_path, text)
    assert main(["config", "validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {cfg}{where}") and "not valid YAML" in err, err
    assert problem in err


def test_json_files_are_read_or_named_in_one_line(tmp_path):
    from hbt.config import DamagedFileError, HbtError, read_json_file

    f = tmp_path / "state.json"
    f.write_text('{"a": [1, 2]}')
    assert read_json_file(f, "a state") == {"a": [1, 2]}
    for content, problem in [("", "empty file"), ("  \n", "empty file"), ('{"a": [1,', "not valid JSON"),
                             ("[1]", "expected an object at the top level, got list")]:
        f.write_text(content)
        with pytest.raises(DamagedFileError) as e:
            read_json_file(f, "a state", "delete it to start again")
        msg = str(e.value)
        assert msg.startswith(str(f)) and f"damaged or truncated a state ({problem}" in msg and "\n" not in msg
        assert msg.endswith("; delete it to start again")
    f.write_bytes(b'{"a": "caf\xe9"}')
    with pytest.raises(DamagedFileError, match="not UTF-8 at byte 10"):
        read_json_file(f, "a state")
    with pytest.raises(HbtError, match=r"missing.json: cannot read a state: No such file"):
        read_json_file(tmp_path / "missing.json", "a state")
    with pytest.raises(HbtError, match=r"cannot read a state: Is a directory"):
        read_json_file(tmp_path, "a state")


def test_atomic_writes_replace_whole_or_leave_the_old_file(tmp_path):
    import numpy as np

    from hbt.config import atomic_path, read_npz_file, savez_atomic, write_bytes_atomic, write_text_atomic

    f = tmp_path / "report.json"
    write_text_atomic(f, '{"v": 1}')
    write_bytes_atomic(f, b'{"v": 2}')
    assert f.read_text() == '{"v": 2}'
    with pytest.raises(RuntimeError), atomic_path(f) as tmp:
        tmp.write_text('{"v": 3, "cut sh')
        raise RuntimeError("crash mid-write")
    assert f.read_text() == '{"v": 2}' and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    savez_atomic(tmp_path / "a.npz", x=np.arange(3))  # np.savez adds no second suffix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "report.json"]
    assert read_npz_file(tmp_path / "a.npz", "arrays")["x"].tolist() == [0, 1, 2]


def test_a_dumped_config_is_written_whole(tmp_path):
    cfg = load_config(None, [])
    dump_config(cfg, tmp_path / "run" / "config.yaml")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.yaml"]


def test_a_usage_error_is_one_line_without_credentials(capsys):
    with pytest.raises(SystemExit) as e:
        main(["config", "validate", "x.yaml", "--tracking=http://alice:s3cret@mlflow.example:5000",
              "--store=s3://b/r?endpoint_override=h&secret_key=abc"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "abc" not in err and "http://alice:***@mlflow.example:5000" in err
    assert len(err.splitlines()) == 1 and err.startswith("error: hbt: unrecognized arguments: "), err
    with pytest.raises(SystemExit):
        main(["eval", "--benchmark"])  # a subcommand's own parser: the same class
    err = capsys.readouterr().err
    assert err.startswith("error: hbt eval: argument --benchmark: expected one argument") and len(err.splitlines()) == 1


def test_an_override_of_the_wrong_form_does_not_echo_a_password():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["tracking.uri:http://alice:s3cret@mlflow.example:5000"])
    assert "s3cret" not in str(e.value) and "alice:***@" in str(e.value)
