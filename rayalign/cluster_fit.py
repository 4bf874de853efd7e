"""Can the cluster ever run what a job asks for? Checked before anything waits on Ray's scheduler.

Ray waits without a word for resources that no node has (a trainer worker asking for 4 CPUs on a
2-CPU cluster waits forever), so the trainer, the sampler pool and `rayalign submit` check first and
stop with one line naming what does not fit, what the cluster has, and the keys to change. This is a
"can it ever" check against the cluster's total resources, not a wait for resources in use. A cluster
that adds nodes on demand (an autoscaler) can run more than its nodes now hold: it is checked against the
nodes its description lets it grow to (`autoscaling_nodes`: a cluster launcher config or a KubeRay RayCluster,
given to `rayalign submit --autoscaling FILE`, which hands them to the job in $RAYALIGN_CLUSTER_NODES so the
job's own check follows the same rule). ``RAYALIGN_NO_FIT_CHECK=1`` turns the check off.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass

from rayalign.errors import ConfigError


@dataclass(frozen=True)
class Demand:
    """`count` units of one kind that must run at the same time, each on one node."""

    what: str
    count: int
    cpus: float
    gpus: float
    keys: str
    """The config keys that set it, named in the error."""


def trainer_demand(train) -> Demand:
    return Demand("Ray Train worker", 0 if train.local_mode else train.processes, train.cpus_per_worker,
                  1.0 if train.use_gpu else 0.0, "train.num_workers / train.cpus_per_worker / train.use_gpu")


def sampler_demand(num_actors: int, cpus: float, gpus: float) -> Demand:
    return Demand("sampler actor", num_actors, cpus, gpus,
                  "sampling.num_actors / sampling.cpus_per_actor / sampling.gpus_per_actor / sampling.tensor_parallel_size")


def job_demands(cfg) -> list[Demand]:
    """What a job's phases ask for, each phase on its own (they take turns): the trainer, and the sampler pool of
    a pipeline that samples (synthesis, online rounds, evaluation)."""
    from rayalign.recipes import get_recipe

    demands, recipe = [trainer_demand(cfg.train)], get_recipe(cfg.pipeline)
    if recipe.starts_pool(cfg):
        s = cfg.sampling
        demands.append(sampler_demand(s.num_actors, s.cpus_per_actor, s.gpus_per_engine))
    return demands


def node_resources(nodes: list[dict]) -> list[dict[str, float]]:
    """{"CPU", "GPU"} of each alive node, from `ray.nodes()` rows ({"Alive", "Resources"})."""
    return [{"CPU": float(n["Resources"].get("CPU", 0)), "GPU": float(n["Resources"].get("GPU", 0))}
            for n in nodes if n.get("Alive", True)]


def _units(node: dict[str, float], demand: Demand) -> int:
    """How many of `demand`'s units one node holds."""
    fits = [math.floor(node[kind] / need + 1e-9) for kind, need in (("CPU", demand.cpus), ("GPU", demand.gpus))
            if need > 0]
    return min(fits) if fits else demand.count


def _cpu_gpu(cpus: float, gpus: float = 0.0) -> str:
    """"2 CPU", or "8 CPU + 1 GPU": resources as every message here writes them."""
    return f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")


def check_fit(demand: Demand, nodes: list[dict[str, float]], reserved_cpus: float = 0.0) -> None:
    """A one-line ConfigError unless the nodes can hold `demand.count` units at once.

    `reserved_cpus` (e.g. a submitted job's entrypoint) is taken from the largest node first.
    """
    if os.environ.get("RAYALIGN_NO_FIT_CHECK"):
        return
    nodes = sorted((dict(n) for n in nodes), key=lambda n: -n["CPU"])
    if nodes and reserved_cpus:
        nodes[0]["CPU"] = max(0.0, nodes[0]["CPU"] - reserved_cpus)
    units = sum(_units(node, demand) for node in nodes)
    if units >= demand.count:
        return
    each = _cpu_gpu(demand.cpus, demand.gpus)
    has = ", ".join(_cpu_gpu(n["CPU"], n["GPU"]) for n in nodes) or "no nodes"
    reserved = f" after {reserved_cpus:g} CPU for the entrypoint" if reserved_cpus else ""
    raise ConfigError(f"the cluster can never run {demand.count} {demand.what}(s) of {each} each: its nodes have "
                      f"{has}{reserved}, room for {units}; lower {demand.keys}, or add nodes (a cluster that "
                      "autoscales: submit with --autoscaling CLUSTER_YAML, or set RAYALIGN_NO_FIT_CHECK=1)")


def check_together(demands: list[Demand], nodes: list[dict[str, float]]) -> None:
    """A one-line ConfigError unless the nodes hold `demands` at once, in total CPUs and GPUs: what an online
    pipeline runs together (its samplers stay up through training, beside its services). Each demand alone is
    `check_fit`'s; this is the sum's necessary condition, so a job that could only run its phases in turns stops
    here, not waiting for a GPU its own samplers hold."""
    if os.environ.get("RAYALIGN_NO_FIT_CHECK"):
        return
    for kind in ("GPU", "CPU"):
        need = [(d, d.count * (d.gpus if kind == "GPU" else d.cpus)) for d in demands]
        asked, have = sum(n for _, n in need), sum(node[kind] for node in nodes)
        if asked > have + 1e-9:
            parts = " + ".join(f"{n:g} for {d.count} {d.what}(s)" for d, n in need if n)
            keys = " / ".join(d.keys for d, n in need if n)
            raise ConfigError(f"the cluster can never run these at once: {parts} = {asked:g} {kind}, and its nodes "
                              f"have {have:g} {kind} in all; lower {keys}, or add nodes (a cluster that autoscales: "
                              "submit with --autoscaling CLUSTER_YAML, or set RAYALIGN_NO_FIT_CHECK=1)")


def together_demands(cfg) -> list[Demand]:
    """What a job of a recipe whose phases run at once (`Recipe.concurrent`) holds at the same time: the trainer, the
    sampler pool and its services; [] for a recipe whose phases take turns. A trainer in local mode (or auto) counts
    as one worker: it reserves nothing from Ray, but its CPUs and GPU are busy all the same. Colocated
    (`sampling.colocate`), a trainer rank per engine takes the rest of the engine's GPU."""
    from rayalign.recipes import get_recipe

    recipe = get_recipe(cfg.pipeline)
    if not recipe.concurrent:
        return []
    s = cfg.sampling
    trainer = dataclasses.replace(trainer_demand(cfg.train), count=cfg.train.processes)
    if s.colocate:
        trainer = dataclasses.replace(trainer, count=s.num_actors, gpus=1.0 - s.gpus_per_actor)
    return [trainer, sampler_demand(s.num_actors, s.cpus_per_actor, s.gpus_per_engine),
            *recipe.services(cfg)]


NODES_ENV = "RAYALIGN_CLUSTER_NODES"
"""JSON list of {"CPU", "GPU"}: the nodes an autoscaling cluster can grow to (set by `rayalign submit --autoscaling`)."""


def live_nodes() -> list[dict[str, float]]:
    """The nodes of the Ray cluster this process is connected to, or those it can grow to (`NODES_ENV`)."""
    import ray

    grown = os.environ.get(NODES_ENV)
    return json.loads(grown) if grown else node_resources(ray.nodes())


def check_local(demand: Demand) -> None:
    """`check_fit` against the Ray cluster this process is connected to, or the nodes it can grow to."""
    check_fit(demand, live_nodes())


def autoscaling_nodes(description: dict, where: str = "the cluster description") -> list[dict[str, float]]:
    """Every node an autoscaling cluster can have at once: a cluster launcher config (available_node_types, each
    with `resources` and `max_workers`; the head_node_type once) or a KubeRay RayCluster (the head group once, each
    worker group `maxReplicas` times, with its container's cpu and nvidia.com/gpu limits)."""
    if "available_node_types" in description:
        nodes = []
        for name, kind in description["available_node_types"].items():
            resources = kind.get("resources") or {}
            if "CPU" not in resources:
                raise ConfigError(f"{where}: node type {name} has no resources.CPU; write its CPU (and GPU) count "
                                  "there, as the autoscaler needs for a fit check")
            count = 1 if name == description.get("head_node_type") else int(kind.get("max_workers", 0))
            nodes += [{"CPU": float(resources["CPU"]), "GPU": float(resources.get("GPU", 0))}] * count
        return nodes
    spec = description.get("spec") or {}
    if "headGroupSpec" not in spec:
        raise ConfigError(f"{where}: neither a cluster launcher config (available_node_types) nor a KubeRay "
                          "RayCluster (spec.headGroupSpec)")
    groups = [(spec["headGroupSpec"], 1)] + [(g, int(g.get("maxReplicas", g.get("replicas", 0))))
                                             for g in spec.get("workerGroupSpecs", [])]
    return [_pod_resources(group) for group, count in groups for _ in range(count)]


def _pod_resources(group: dict) -> dict[str, float]:
    """A KubeRay group's node: Ray's own num-cpus/num-gpus start parameters, else its ray container's limits."""
    params = group.get("rayStartParams") or {}
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    cpu = str(params.get("num-cpus", limits.get("cpu", 0)))
    cpus = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return {"CPU": cpus, "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}


def trainer_fits_beside(train, pool_gpus: float) -> bool:
    """Whether the trainer can start now beside a running sampler pool (whose actors use `pool_gpus` GPU each).
    In local mode (auto included, where it resolves so) it takes nothing from Ray, so yes, unless both would share
    the GPU (vLLM holds most of its memory). With workers: when the free resources of a one-node cluster hold them
    all; on several nodes Ray does not say what is free on each, and a guess wrong would leave the workers waiting
    on the pool forever."""
    import ray

    train = resolved_train(train)
    if train.local_mode:
        return not (train.use_gpu and pool_gpus > 0)
    if len(node_resources(ray.nodes())) != 1:
        return False
    free = ray.available_resources()
    node = {"CPU": float(free.get("CPU", 0)), "GPU": float(free.get("GPU", 0))}
    return _units(node, trainer_demand(train)) >= train.processes


def resolve_workers(cfg):
    """`cfg` with train.num_workers: auto resolved (`resolved_train`)."""
    train = resolved_train(cfg.train)
    return cfg if train is cfg.train else dataclasses.replace(cfg, train=train)


def resolved_train(train):
    """`train` (a TrainConfig) with num_workers: auto resolved by `auto_workers` for the machine this process
    trains on: the Ray cluster this process has joined when it has one node (several: None); None for a job that
    names a cluster by RAY_ADDRESS and has not joined it (a submitted `rayalign train`: joining now would move its
    working directory before it reads its data); else this process's machine. A Tune trial resolves auto to 1
    itself (Ray Train's local mode cannot report inside a trial)."""
    if train.num_workers != "auto":
        return train
    import ray

    if ray.is_initialized():
        nodes = node_resources(ray.nodes())
        here = nodes[0] if len(nodes) == 1 else None
    elif os.environ.get("RAY_ADDRESS"):
        here = None
    else:
        import torch

        here = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    return dataclasses.replace(train, num_workers=auto_workers(here, train))


def auto_workers(machine: dict[str, float] | None, train) -> int:
    """What train.num_workers: auto means on `machine` ({"CPU", "GPU"}; None: a cluster of several nodes): 0, local
    mode (no worker group to start: the quickest on one machine), when it holds one worker of `train`; else 1 Ray
    Train worker, which Ray places on a node that fits."""
    one = dataclasses.replace(trainer_demand(train), count=1)
    return 0 if machine is not None and _units(machine, one) >= 1 else 1


def waiting_line(bundles: list[dict[str, float]], waited_s: float, free: dict, total: dict, keys: str) -> str:
    """The line printed while a placement group of `bundles` waits: what it asks, what the cluster has free."""
    asked = " + ".join(f"{{{', '.join(f'{k}: {v:g}' for k, v in sorted(b.items()))}}}" for b in bundles)
    free_now = _cpu_gpu(free.get("CPU", 0), free.get("GPU", 0))
    return (f"rayalign: waited {waited_s:.0f} s for {asked}; the cluster has {free_now} free of "
            f"{_cpu_gpu(total.get('CPU', 0), total.get('GPU', 0))}: other jobs or actors hold the rest. Free them, "
            f"add nodes, or lower {keys}")


def watch_waiting(every_s: float, keys: str):
    """Print `waiting_line` every `every_s` seconds while a placement group made after this call is pending
    (a Ray Train worker group waits in one, silently). Returns the function that stops the watch."""
    import threading
    import time

    import ray
    from ray.util import placement_group_table

    before, began, stop = set(placement_group_table()), time.monotonic(), threading.Event()

    def watch() -> None:
        while not stop.wait(max(every_s, 1.0)):
            try:
                pending = [pg for pg_id, pg in placement_group_table().items()
                           if pg_id not in before and pg["state"] == "PENDING"]
                free, total = ray.available_resources(), ray.cluster_resources()
            except Exception:  # noqa: BLE001 - Ray going down under the watch: the run's outcome says what happened
                return
            for pg in pending:
                print(waiting_line(list(pg["bundles"].values()), time.monotonic() - began, free, total, keys),
                      flush=True)

    threading.Thread(target=watch, daemon=True, name="rayalign-wait-watch").start()
    return stop.set
