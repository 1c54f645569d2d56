"""The model hand-off through storage: train into an S3-compatible server, delete every local copy, evaluate.

The server is moto's standalone S3 (a real HTTP server in this process); pyarrow
reaches it through ``endpoint_override`` in the storage URI, as a cluster would
reach S3 or MinIO.
"""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest

from hbt.config import load_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_storage(monkeypatch, tmp_path):
    """A bucket on a moto S3 server, the credentials in the environment (Ray's processes inherit them)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                 "HBT_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1").create_bucket(Bucket="hbt")
    yield f"s3://hbt/runs?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    server.stop()


@pytest.mark.slow
def test_trained_model_is_evaluated_from_storage_alone(tiny_model_dir, tmp_path, s3_storage):
    import ray

    from hbt.eval.runner import evaluate
    from hbt.model.storage import join_uri, local_model_dir, resolve_model_ref
    from hbt.raysetup import init_ray
    from hbt.train.job import run_training

    ray.shutdown()  # a fresh local Ray that inherits the storage credentials
    init_ray(None)
    try:
        out_dir = tmp_path / "out"
        cfg = load_config(None, [
            f"output_dir={out_dir}", f"model.name_or_path={tiny_model_dir}", "data.languages=[en,de]",
            "data.max_questions=32", "batching.global_batch_size=8", "model.max_passage_length=32",
            "model.max_query_length=16", "train.max_steps=3", "train.warmup_steps=1", "train.lr=1e-3",
            "tracking.experiment=hbt-tests", "run_name=handoff", f"ray.storage_path={s3_storage}",
            "eval.benchmarks=[xquad_r,tatoeba]", "eval.languages=[en,de]", "eval.tatoeba_languages=[deu]",
            "eval.max_questions=8", "eval.pool=question_paragraphs", "eval.precision=fp32", "eval.num_encoders=1",
        ])
        trained = run_training(cfg)
        uri = join_uri(s3_storage, "handoff", "model")
        assert trained["model_dir"] == uri
        assert not (out_dir / "handoff" / "model").exists()  # no driver copy to hand over

        local = local_model_dir(uri)  # a local copy, to evaluate before deleting it
        before = evaluate(cfg, local, str(tmp_path / "ev-local")).metrics

        # Delete every local copy on the driver: the fetch cache and the run's record.
        shutil.rmtree(tmp_path / "cache")
        record = json.loads((out_dir / "handoff" / "result.json").read_text())
        assert record["model_dir"] == uri
        by_run = resolve_model_ref("handoff", out_dir, cfg.ray.storage_path)  # via result.json
        (out_dir / "handoff" / "result.json").unlink()
        assert resolve_model_ref("handoff", out_dir, cfg.ray.storage_path) == by_run == uri  # via the storage
        assert not list(tmp_path.rglob("model.safetensors")) and not list(tmp_path.rglob("pytorch_model.bin"))

        after_run = evaluate(cfg, by_run, str(tmp_path / "ev-run")).metrics
        after_uri = evaluate(cfg, resolve_model_ref(uri, out_dir), str(tmp_path / "ev-uri")).metrics
        assert set(before) == set(after_run) == set(after_uri) and len(before) > 50
        for k, v in before.items():
            assert after_run[k] == pytest.approx(v, abs=1e-5) and after_uri[k] == pytest.approx(v, abs=1e-5), k
        assert np.isfinite(list(before.values())).all()
    finally:
        ray.shutdown()
