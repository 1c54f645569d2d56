"""Shared fixtures: tiny models, the offline e5 model, one local Ray for the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from hbt.config import resolve_path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# The benchmarks where the configs find them: ../shared/data beside the checkout where it
# exists, else where `hbt data fetch` put them ($HBT_DATA_ROOT first when set).
XQUAD_R = Path(resolve_path("../shared/data/xquad-r"))
MLQA_R = Path(resolve_path("../shared/data/mlqa-r"))
TATOEBA = Path(resolve_path("../shared/data/tatoeba"))
ASSETS = Path(__file__).resolve().parent / "assets"


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-init 2-layer, 32-d BERT with the real multilingual-e5 tokenizer."""
    from hbt.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def offline_e5_dir() -> Path:
    """The full offline multilingual-e5-small (built once, cached in ~/.cache/hbt)."""
    from hbt.model.offline import offline_model_dir

    return offline_model_dir()


@pytest.fixture(scope="session")
def offline_e5_2layer_dir() -> Path:
    """multilingual-e5-small cut to its first 2 layers (fast CPU training tests)."""
    from hbt.model.offline import offline_model_dir

    return offline_model_dir(num_layers=2)


@pytest.fixture(scope="session")
def _ray_session():
    import ray

    yield
    ray.shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """One local Ray shared by the session's tests (starting Ray costs seconds).

    Function-scoped so that a test that needs Ray down for a while (the
    ``ray start --head`` job test) can shut it down: the next test starts it again.
    """
    import ray

    from hbt.raysetup import init_ray

    init_ray(None)
    return ray


@pytest.fixture(autouse=True)
def _no_ambient_mlflow_uri(monkeypatch):
    """Tests pick their MLflow store explicitly; a URI in the caller's environment must not leak in."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
