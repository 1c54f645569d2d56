"""cluster.yaml passes Ray's own autoscaler checks, stays safe to share, and
launches the node types docs/cluster.md names for each hbt stage.

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


# ---------------------------------------------------------------------------
# Which node types Ray's autoscaler launches for hbt's resource demands
# ---------------------------------------------------------------------------
#
# Ray's own planners run here on cluster.yaml's node types, offline: autoscaler
# v2's ResourceDemandScheduler (what `ray up` starts in Ray 2.60 unless
# RAY_UP_enable_autoscaler_v2=0) and v1's ResourceDemandScheduler, whose
# get_nodes_for picks a node type per step. Both score node types the same way
# (AUTOSCALER_CONSERVE_GPU_NODES first, then the resource types matched, then
# utilisation), so each scenario asserts the same launches for both.
#
# The types are planned in two views:
#   "aws":      what `ray up` hands the autoscaler: cluster.yaml after Ray's
#               AWS lookup of the instance types (fillout_available_node_types_
#               resources), which adds `memory` and `accelerator_type:<GPU>`
#               to the declared CPU and GPU. EC2_CATALOGUE stands in for
#               ec2:DescribeInstanceTypes.
#   "declared": cluster.yaml's `resources` alone, as when that lookup fails.
# hbt never requests the keys the lookup adds, and unused keys lower a type's
# utilisation score, so the views differ at the margin: 5 to 8 encoders of
# {CPU: 2, GPU: 1} get one gpu_8x node in the "aws" view and as many
# gpu_1x_spot nodes in the "declared" one. EXPECTED lists both.

# vCPUs, memory (MiB), GPUs (EC2's GpuInfo name, count) of the instance types in cluster.yaml.
EC2_CATALOGUE: dict[str, tuple[int, int, tuple[str, int] | None]] = {
    "m6i.2xlarge": (8, 32 * 1024, None),
    "m6i.4xlarge": (16, 64 * 1024, None),
    "g6e.xlarge": (4, 32 * 1024, ("L40S", 1)),
    "p4d.24xlarge": (96, 1152 * 1024, ("A100", 8)),
}
# The running head's raylet: no CPU (cluster.yaml), some of the m6i.2xlarge's
# memory. Only Tune's trial bundle ({CPU: 0, memory: 256 MiB}) lands there.
HEAD_RUNTIME = {"CPU": 0.0, "memory": 8.0 * 1024**3, "object_store_memory": 4.0 * 1024**3}
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
CLUSTER_CONFIGS = [p for p in CONFIGS if p.name.startswith("cluster-")]


def _ec2_describe_instance_types(region: str, aws_credentials: Any = None) -> list[dict[str, Any]]:
    rows = []
    for name, (vcpus, mib, gpu) in EC2_CATALOGUE.items():
        row: dict[str, Any] = {"InstanceType": name, "VCpuInfo": {"DefaultVCpus": vcpus},
                               "MemoryInfo": {"SizeInMiB": mib}}
        if gpu:
            row["GpuInfo"] = {"Gpus": [{"Name": gpu[0], "Manufacturer": "NVIDIA", "Count": gpu[1]}]}
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def views(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from unittest import mock

    from ray.autoscaler._private.aws import node_provider as aws
    from ray.autoscaler._private.util import prepare_config

    declared = prepare_config(raw)
    with mock.patch.object(aws, "list_ec2_instances", _ec2_describe_instance_types):
        filled = aws.AWSNodeProvider.fillout_available_node_types_resources(declared)
    return {"aws": filled, "declared": declared}


class Stage:
    """One hbt stage's resource demands: single tasks/actors, and placement groups (PACK)."""

    def __init__(self, tasks: list[dict[str, float]] = (), gangs: list[list[dict[str, float]]] = ()) -> None:
        self.tasks = [dict(t) for t in tasks]
        self.gangs = [[dict(b) for b in g] for g in gangs]

    def bundles(self) -> list[dict[str, float]]:
        return self.tasks + [b for g in self.gangs for b in g]


def _load(path: Path):
    from hbt.config import ConfigError, config_from_dict, load_config

    try:
        return load_config(path)
    except ConfigError:
        # load_config also checks the config's local data paths; the resources don't depend on them.
        return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))


def hbt_stages(cfg) -> dict[str, Stage]:
    """The resources each hbt stage asks Ray for, as hbt's code asks them.

    - tokenise: Ray Data's read + tokenise tasks (hbt.data.pipeline), 1 CPU
      each (Ray Data's default), data.num_read_tasks at a time.
    - train: Ray Train's worker group (hbt.train.job): one placement group of
      ray.num_workers bundles {CPU: cpus_per_worker, GPU: gpus_per_worker},
      PACK (ScalingConfig's default); the Train controller takes no CPU.
    - train_1: the same with ray.num_workers=1, a single-GPU run.
    - encode: the evaluation's encoder actors (hbt.eval.encode, Ray Data's
      ActorPoolStrategy), eval.num_encoders of {CPU: cpus_per_encoder,
      GPU: gpus_per_encoder} (auto: sized to the cluster, at least 1).
    - search: the search actors (hbt.eval.search), at most eval.num_shards of
      the encoder's shape.
    - tune: per concurrent trial, the trial's own bundle
      (hbt.tune.search.TRIAL_DRIVER_RESOURCES) and its worker group.
    """
    from hbt.tune.search import TRIAL_DRIVER_RESOURCES

    r, e = cfg.ray, cfg.eval
    workers = r.num_workers if isinstance(r.num_workers, int) else max(r.num_workers)
    worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu and r.gpus_per_worker else {})}
    encoder = {"CPU": e.cpus_per_encoder, **({"GPU": e.gpus_per_encoder} if e.gpus_per_encoder else {})}
    encoders = 1 if e.num_encoders == "auto" else e.num_encoders
    trial = [[TRIAL_DRIVER_RESOURCES], [worker] * workers]
    return {
        "tokenise": Stage(tasks=[{"CPU": 1.0}] * cfg.data.num_read_tasks),
        "train": Stage(gangs=[[worker] * workers]),
        "train_1": Stage(gangs=[[worker]]),
        "encode": Stage(tasks=[encoder] * encoders),
        "search": Stage(tasks=[encoder] * e.num_shards),
        "tune": Stage(gangs=trial * cfg.tune.max_concurrent_trials),
    }


def plan_v2(view: dict[str, Any], stage: Stage, running: list[str] = ()) -> tuple[dict[str, int], list]:
    """Node types autoscaler v2 launches for ``stage`` on a cluster of the head plus ``running`` idle workers."""
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
    from ray.autoscaler.v2.scheduler import ResourceDemandScheduler, SchedulingRequest
    from ray.autoscaler.v2.schema import AutoscalerInstance
    from ray.autoscaler.v2.utils import ResourceRequestUtil
    from ray.core.generated.autoscaler_pb2 import GangResourceRequest, NodeState, ResourceRequestByCount
    from ray.core.generated.instance_manager_pb2 import Instance, NodeKind

    config = AutoscalingConfig(view, skip_content_hash=True)
    types = config.get_node_type_configs()

    def instance(i: int, node_type: str, kind, resources: dict[str, float]) -> AutoscalerInstance:
        return AutoscalerInstance(
            im_instance=Instance(instance_id=f"i{i}", instance_type=node_type, status=Instance.RAY_RUNNING,
                                 node_kind=kind, node_id=f"n{i}"),
            ray_node=NodeState(node_id=f"n{i}".encode(), ray_node_type_name=node_type,
                               total_resources=resources, available_resources=resources),
            cloud_instance_id=f"ec2-{i}",
        )

    nodes = [instance(0, config.get_head_node_type(), NodeKind.HEAD, HEAD_RUNTIME)]
    nodes += [instance(i + 1, t, NodeKind.WORKER, types[t].resources) for i, t in enumerate(running)]
    reply = ResourceDemandScheduler().schedule(SchedulingRequest(
        disable_launch_config_check=True,
        node_type_configs=types,
        max_num_nodes=config.get_max_num_nodes(),
        resource_requests=[ResourceRequestByCount(request=ResourceRequestUtil.make(t), count=1) for t in stage.tasks],
        gang_resource_requests=[GangResourceRequest(requests=[ResourceRequestUtil.make(b) for b in g])
                                for g in stage.gangs],
        current_instances=nodes,
    ))
    launched: dict[str, int] = {}
    for request in reply.to_launch:
        launched[request.instance_type] = launched.get(request.instance_type, 0) + request.count
    infeasible = [dict(r.resources_bundle) for r in reply.infeasible_resource_requests]
    infeasible += [dict(r.resources_bundle) for g in reply.infeasible_gang_resource_requests for r in g.requests]
    return launched, infeasible


def plan_v1(view: dict[str, Any], stage: Stage, running: list[str] = ()) -> tuple[dict[str, int], list]:
    """The same with autoscaler v1, update after update until it launches nothing more.

    v1 launches at most max(5, upscaling_speed x running nodes) of a type per
    update; here the nodes of one update join, idle, before the next.
    """
    import copy

    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import ResourceDemandScheduler
    from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE
    from ray.core.generated.common_pb2 import PlacementStrategy
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData

    types = view["available_node_types"]
    nodes = {"n0": (view["head_node_type"], NODE_KIND_HEAD, "10.0.0.0")}
    free = {"10.0.0.0": dict(HEAD_RUNTIME)}

    def join(node_type: str) -> None:
        ip = f"10.0.1.{len(nodes)}"
        nodes[f"n{len(nodes)}"] = (node_type, NODE_KIND_WORKER, ip)
        free[ip] = dict(types[node_type]["resources"])

    for t in running:
        join(t)

    class Provider:
        def node_tags(self, node_id: str) -> dict[str, str]:
            return {TAG_RAY_USER_NODE_TYPE: nodes[node_id][0], TAG_RAY_NODE_KIND: nodes[node_id][1]}

        def internal_ip(self, node_id: str) -> str:
            return nodes[node_id][2]

    groups = []
    for gang in stage.gangs:
        group = PlacementGroupTableData(strategy=PlacementStrategy.PACK)
        for bundle in gang:
            group.bundles.add().unit_resources.update(bundle)
        groups.append(group)
    launched: dict[str, int] = {}
    unfulfilled: list = []
    for _ in range(20):
        scheduler = ResourceDemandScheduler(Provider(), copy.deepcopy(types), view["max_workers"],
                                            view["head_node_type"], view["upscaling_speed"])
        to_launch, unfulfilled = scheduler.get_nodes_to_launch(
            nodes=list(nodes), launching_nodes={}, resource_demands=stage.tasks,
            unused_resources_by_ip=copy.deepcopy(free), pending_placement_groups=groups,
            max_resources_by_ip=copy.deepcopy(free), ensure_min_cluster_size=[],
            node_availability_summary=NodeAvailabilitySummary(node_availabilities={}),
        )
        if not to_launch:
            break
        for node_type, count in to_launch.items():
            launched[node_type] = launched.get(node_type, 0) + count
            for _ in range(count):
                join(node_type)
    return launched, [dict(u) for u in unfulfilled]


PLANNERS = {"v2": plan_v2, "v1": plan_v1}

# What the planners launch for each stage of the cluster configs, on an empty
# cluster (only the head up), by view. docs/cluster.md, "Node types", says the same.
EXPECTED: dict[str, dict[str, dict[str, int]]] = {
    "tokenise": {"aws": {"cpu": 1}, "declared": {"cpu": 1}},
    "train": {"aws": {"gpu_8x": 2}, "declared": {"gpu_8x": 2}},
    "train_1": {"aws": {"gpu_1x_spot": 1}, "declared": {"gpu_1x_spot": 1}},
    "encode": {"aws": {"gpu_8x": 1}, "declared": {"gpu_1x_spot": 8}},
    "search": {"aws": {"gpu_8x": 1}, "declared": {"gpu_1x_spot": 8}},
    "tune": {"aws": {"gpu_8x": 2}, "declared": {"gpu_8x": 2}},
}


def _gpu_types(view: dict[str, Any]) -> set[str]:
    return {name for name, t in view["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}


def test_node_types_declare_their_instances_resources(raw: dict[str, Any], views) -> None:
    for name, node in raw["available_node_types"].items():
        declared = node["resources"]
        vcpus, _, gpu = EC2_CATALOGUE[node["node_config"]["InstanceType"]]
        if name == raw["head_node_type"]:
            assert declared == {"CPU": 0}, "the head runs no Ray tasks"
            continue
        assert declared.get("CPU") == vcpus, name
        assert declared.get("GPU", 0) == (gpu[1] if gpu else 0), name
        # Ray's AWS lookup keeps every declared value and only adds memory and the GPU model.
        filled = views["aws"]["available_node_types"][name]["resources"]
        assert {k: filled[k] for k in declared} == declared, name
        assert set(filled) - set(declared) <= {"memory"} | ({f"accelerator_type:{gpu[0]}"} if gpu else set()), name
    assert _gpu_types(views["aws"]) == {"gpu_1x_spot", "gpu_8x"}


@pytest.mark.cluster
@pytest.mark.parametrize("view", ["aws", "declared"])
@pytest.mark.parametrize("planner", sorted(PLANNERS))
@pytest.mark.parametrize("path", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_cluster_configs_launch_the_documented_node_types(path: Path, planner: str, view: str, views) -> None:
    plan, types = PLANNERS[planner], views[view]
    stages = hbt_stages(_load(path))
    assert set(stages) == set(EXPECTED)
    for name, stage in stages.items():
        launched, infeasible = plan(types, stage)
        assert (launched, infeasible) == (EXPECTED[name][view], []), (name, stage.bundles())
    # A study evaluates right after training, on the two gpu_8x nodes the training left up.
    for name in ("encode", "search"):
        assert plan(types, stages[name], running=["gpu_8x", "gpu_8x"]) == ({}, []), name


@pytest.mark.cluster
@pytest.mark.parametrize("planner", sorted(PLANNERS))
def test_cpu_only_demand_never_launches_a_gpu_node(planner: str, views) -> None:
    # Up to the cpu type's whole capacity (max_workers x its CPUs) of 1-CPU tasks: Ray
    # Data asks for up to twice the CPUs it uses at a time, so the capacity must also
    # hold 4 x each config's read tasks (two doublings).
    types = views["aws"]
    cpu = types["available_node_types"]["cpu"]
    capacity = int(cpu["max_workers"] * cpu["resources"]["CPU"])
    for path in CONFIGS:
        assert 4 * _load(path).data.num_read_tasks <= capacity, path.name
    for n in (1, 8, capacity // 2, capacity):
        launched, infeasible = PLANNERS[planner](types, Stage(tasks=[{"CPU": 1.0}] * n))
        assert not infeasible and set(launched) == {"cpu"}, (n, launched)
        assert launched["cpu"] == -(-n // int(cpu["resources"]["CPU"])), (n, launched)


@pytest.mark.cluster
@pytest.mark.parametrize("planner", sorted(PLANNERS))
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_fits_the_cluster(path: Path, planner: str, views) -> None:
    # Every bundle of every shipped config fits some node type, and the planner
    # launches only CPU nodes for stages without GPUs. local.yaml and gpu.yaml are
    # single-machine configs: the node types they would get are not asserted.
    types = views["aws"]
    workers = {n: t for n, t in types["available_node_types"].items() if n != types["head_node_type"]}
    for name, stage in hbt_stages(_load(path)).items():
        for bundle in stage.bundles():
            assert any(all(t["resources"].get(k, 0) >= v for k, v in bundle.items()) for t in workers.values()), \
                (name, bundle)
        launched, infeasible = PLANNERS[planner](types, stage)
        assert infeasible == [], (name, infeasible)
        if not any(b.get("GPU", 0) for b in stage.bundles()):
            assert not set(launched) & _gpu_types(types), (name, launched)


def test_docs_list_every_node_type() -> None:
    # docs/cluster.md's node-type table: one row per type, with its instance type.
    text = (ROOT / "docs" / "cluster.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z0-9_]+)` \| ([a-z0-9.]+)\b", text, re.M)}
    nodes = yaml.safe_load(CLUSTER_YAML.read_text(encoding="utf-8"))["available_node_types"]
    assert {n: t["node_config"]["InstanceType"] for n, t in nodes.items()}.items() <= rows.items()
