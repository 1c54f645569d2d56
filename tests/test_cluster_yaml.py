"""cluster.yaml passes Ray's own autoscaler checks and stays safe to share.

``prepare_config`` is offline: it merges the AWS defaults shipped inside Ray
(``ray/autoscaler/aws/defaults.yaml``), merges setup commands and fills
per-type worker limits. The AWS calls (subnets, security groups, IAM) happen
later, in the provider's ``bootstrap_config`` during ``ray up``, which this
test does not run.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
WORLD = {"0.0.0.0/0", "::/0"}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text(encoding="utf-8"))


def test_passes_ray_schema_validation(raw: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(raw)
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_starts_with_the_command_that_uses_it() -> None:
    head = CLUSTER_YAML.read_text(encoding="utf-8").splitlines()[:15]
    assert head[0].startswith("#")
    assert any("ray up" in line and "cluster.yaml" in line for line in head)
    assert any("ray job submit" in line for line in head)


def _world_open_ports(rules: list[dict[str, Any]]) -> set[tuple[int, int]]:
    ports = set()
    for rule in rules:
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])}
        cidrs |= {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        if cidrs & WORLD:
            ports.add((rule.get("FromPort", -1), rule.get("ToPort", -1)))
    return ports


def test_only_ssh_is_open_to_the_world(raw: dict[str, Any]) -> None:
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    extra = raw["provider"].get("security_group", {}).get("IpPermissions", [])
    # The rules Ray will put on the group it creates: its defaults plus ours.
    effective = _create_default_inbound_rules({"sg-test"}, extra)
    assert _world_open_ports(effective) == {(22, 22)}
    # Node types must not bring their own (possibly open) security groups.
    for node in raw["available_node_types"].values():
        assert "SecurityGroupIds" not in node["node_config"]
        assert "NetworkInterfaces" not in node["node_config"]


def test_ray_token_auth_is_on_everywhere(raw: dict[str, Any]) -> None:
    # Worker `ray start --address` only enables token auth from the variable.
    assert "-e RAY_AUTH_MODE=token" in raw["docker"]["run_options"]
    assert "~/.ray/auth_token" in raw["file_mounts"]


def test_no_credentials_in_the_file() -> None:
    text = CLUSTER_YAML.read_text(encoding="utf-8")
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "AWS access key id"
    assert not re.search(r"(?i)aws_secret_access_key|aws_session_token|secret_key\s*:", text)
    assert "ssh_private_key" not in yaml.safe_load(text).get("auth", {})


def test_image_is_pinned_to_the_project_ray(raw: dict[str, Any]) -> None:
    docker = raw["docker"]
    images = [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    for node in raw["available_node_types"].values():
        if "worker_image" in node.get("docker", {}):
            images.append(node["docker"]["worker_image"])
    assert images
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    ray_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("ray["))
    ray_version = ray_pin.split("==")[1]
    for image in images:
        name, _, tag = image.partition(":")
        assert tag and "latest" not in tag and "nightly" not in tag, image
        # The image's Ray must be the Ray the package pins, or pip would
        # replace it on every node.
        assert tag.startswith(ray_version + "-"), (image, ray_version)


def test_worker_limits_are_set(raw: dict[str, Any]) -> None:
    assert isinstance(raw["max_workers"], int) and raw["max_workers"] > 0
    head = raw["head_node_type"]
    workers = {k: v for k, v in raw["available_node_types"].items() if k != head}
    assert workers
    for name, node in workers.items():
        assert "max_workers" in node and "min_workers" in node, name
        assert 0 <= node["min_workers"] <= node["max_workers"] <= raw["max_workers"], name
    gpu_types = [n["node_config"]["InstanceType"] for n in workers.values()]
    assert any(n["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for n in workers.values())
    assert len(gpu_types) >= 2


def test_setup_installs_the_package_without_a_cpu_torch(raw: dict[str, Any]) -> None:
    commands = " ".join(raw.get("setup_commands", []) + raw.get("worker_setup_commands", []))
    assert re.search(r"pip install .*-e .*hbt\[gpu\]", commands)
    assert "whl/cpu" not in commands and "+cpu" not in commands
    assert "~/hbt" in raw["file_mounts"]


@pytest.mark.parametrize("name", ["cluster-xlmr.yaml", "cluster-labse.yaml"])
def test_cluster_run_configs_validate(name: str) -> None:
    from hbt.config import XQUAD_R_LANGUAGES, load_config

    path = ROOT / "configs" / name
    first = path.read_text(encoding="utf-8").splitlines()[:10]
    assert any("ray job submit" in line and f"configs/{name}" in line for line in first)
    cfg = load_config(path)
    assert cfg.ray.use_gpu and cfg.ray.num_workers >= 8
    assert cfg.deepspeed.zero_stage == 2 and cfg.deepspeed.precision == "bf16"
    assert set(cfg.data.languages) <= set(XQUAD_R_LANGUAGES)
    assert len(cfg.study.seeds) == 3
    # Multi-node runs need shared storage and a shared tracking server.
    assert cfg.ray.storage_path and "://" in cfg.ray.storage_path
    assert cfg.tracking.uri and cfg.tracking.uri.startswith("http")


def test_dashboard_binds_loopback_and_nothing_binds_all_interfaces(raw: dict[str, Any]) -> None:
    # docs/cluster.md, "Security": the dashboard and job API only through `ray dashboard` (SSH);
    # MLflow on the head's private address (the Train workers log to it), never 0.0.0.0.
    head = " ".join(raw["head_start_ray_commands"])
    assert re.search(r"ray start --head .*--dashboard-host=127\.0\.0\.1\b", head)
    assert "0.0.0.0" not in yaml.safe_dump(raw) and "::" not in head
    assert re.search(r"mlflow server --host hbt-head\b", head)
    # hbt-head is the head's private address on the head too, so the local drivers reach MLflow.
    assert not re.search(r"127\.0\.0\.1 hbt-head", head)
