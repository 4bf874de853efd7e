"""Every manifest in cluster/ parses, has the fields its kind requires, and names things that exist."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from rayalign import config
from rayalign.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
MANIFESTS = sorted(CLUSTER.rglob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _by_kind(kind: str) -> list[dict]:
    return [doc for path in MANIFESTS for doc in _docs(path) if doc.get("kind") == kind]


def test_every_manifest_parses_to_mappings():
    assert {p.relative_to(CLUSTER).as_posix() for p in MANIFESTS} >= {
        "launcher-aws-gpu.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "runtime_env.yaml"}
    for path in MANIFESTS:
        docs = _docs(path)
        assert docs and all(isinstance(doc, dict) for doc in docs), path


def _containers(template: dict) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers, "a pod template needs containers"
    for container in containers:
        assert container["name"] and container["image"], container
    return containers


def _check_ray_cluster_spec(spec: dict) -> None:
    """The fields KubeRay's RayCluster CRD requires, and a GPU worker group."""
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values are strings"
    head_ports = {p["containerPort"] for c in _containers(head["template"]) for p in c.get("ports", [])}
    assert {6379, 8265} <= head_ports
    groups = spec["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    gpu_groups = 0
    for group in groups:
        assert isinstance(group["rayStartParams"], dict)
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        for container in _containers(group["template"]):
            limits = container.get("resources", {}).get("limits", {})
            gpu_groups += int(int(limits.get("nvidia.com/gpu", 0)) > 0)
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    claims = {v["persistentVolumeClaim"]["claimName"] for g in [head, *groups]
              for v in g["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
    pvcs = {doc["metadata"]["name"] for doc in _by_kind("PersistentVolumeClaim")}
    assert claims <= pvcs, f"volume claims without a manifest: {claims - pvcs}"


def test_raycluster_has_the_crd_fields():
    clusters = _by_kind("RayCluster")
    assert clusters
    for doc in clusters:
        assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
        _check_ray_cluster_spec(doc["spec"])


def test_rayjob_has_the_crd_fields_and_shuts_down():
    jobs = _by_kind("RayJob")
    assert jobs
    for doc in jobs:
        spec = doc["spec"]
        assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
        assert spec["entrypoint"].strip()
        assert spec["shutdownAfterJobFinishes"] is True
        assert isinstance(spec.get("ttlSecondsAfterFinished", 0), int)
        assert isinstance(yaml.safe_load(spec.get("runtimeEnvYAML", "{}")), dict)
        _check_ray_cluster_spec(spec["rayClusterSpec"])


def _rayalign_commands(text: str) -> list[list[str]]:
    """The argv of each `rayalign ...` / `python -m rayalign.cli ...` in a shell command line."""
    commands = []
    for part in re.split(r"&&|;|\|", text):
        words = shlex.split(part.replace("\\\n", " "))
        if words[:3] == ["python", "-m", "rayalign.cli"]:
            commands.append(words[3:])
        elif words[:1] == ["rayalign"]:
            commands.append(words[1:])
    return commands


def test_rayjob_entrypoint_is_a_valid_rayalign_command_on_an_existing_job():
    for doc in _by_kind("RayJob"):
        commands = _rayalign_commands(doc["spec"]["entrypoint"])
        assert commands, doc["spec"]["entrypoint"]
        for argv in commands:
            args = build_parser().parse_args(argv)
            assert args.command in ("train", "run", "sweep")
            assert (REPO / args.config).is_file(), args.config
            cfg = config.load(REPO / args.config, args.overrides)  # overrides are valid keys and values
            assert cfg.output_dir.startswith("/mnt/"), "a cluster job should write to shared storage"


def test_launcher_has_head_and_gpu_worker_types_with_autoscaling_bounds():
    launchers = [doc for path in MANIFESTS for doc in _docs(path) if "available_node_types" in doc]
    assert launchers
    for doc in launchers:
        assert doc["cluster_name"] and doc["provider"]["type"]
        types = doc["available_node_types"]
        assert doc["head_node_type"] in types
        workers = {name: t for name, t in types.items() if name != doc["head_node_type"]}
        assert workers, "no worker node type"
        for name, node in types.items():
            assert isinstance(node["node_config"], dict) and "resources" in node, name
        for name, node in workers.items():
            assert 0 <= node["min_workers"] <= node["max_workers"] <= doc["max_workers"], name
        gpu = [n for n in workers.values() if re.match(r"(g|p)\d", str(n["node_config"].get("InstanceType", "")))
               or n["resources"].get("GPU", 0) > 0]
        assert gpu, "no GPU worker type"
        assert any("--head" in c for c in doc["head_start_ray_commands"])
        assert any("--address" in c for c in doc["worker_start_ray_commands"])


def test_runtime_env_file_is_one_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    tree = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    RuntimeEnv(**tree)  # raises on unknown fields or malformed values
    assert "WANDB_API_KEY" not in tree.get("env_vars", {}), "secrets do not belong in a file"


@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*")), ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_every_job_file_named_in_cluster_exists(path):
    if not path.is_file():
        return
    for name in re.findall(r"\bjobs/[\w./-]+\.ya?ml\b", path.read_text()):
        assert (REPO / name).is_file(), f"{path.name} names {name}, which does not exist"


def test_local_two_nodes_script_is_valid_bash_with_usage():
    script = CLUSTER / "local_two_nodes.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    done = subprocess.run([str(script)], check=False, capture_output=True, text=True)
    assert done.returncode == 2 and "usage:" in done.stderr


def test_dockerfile_copies_what_the_entrypoints_need():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:\S+gpu", text, re.MULTILINE)
    for needed in ("rayalign", "jobs", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(needed)}\b", text, re.MULTILINE), needed
