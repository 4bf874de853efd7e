"""The "can the cluster ever run it" check, by hand on node lists, and against the real local cluster."""

from __future__ import annotations

import json

import pytest
import yaml

from rayalign import config
from rayalign.cluster_fit import (
    NODES_ENV,
    Demand,
    auto_workers,
    autoscaling_nodes,
    check_fit,
    check_local,
    check_together,
    job_demands,
    node_resources,
    resolve_workers,
    sampler_demand,
    together_demands,
    trainer_demand,
    waiting_line,
    watch_waiting,
)
from rayalign.errors import ConfigError
from tests.conftest import REPO

TWO_NODES = [{"CPU": 2.0, "GPU": 0.0}, {"CPU": 1.0, "GPU": 0.0}]
GPU_NODES = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]


def demand(count, cpus, gpus=0.0):
    return Demand("worker", count, cpus, gpus, "train.x")


@pytest.mark.parametrize("nodes, wanted, reserved, fits", [
    (TWO_NODES, demand(3, 1), 0, True),          # 2 + 1
    (TWO_NODES, demand(4, 1), 0, False),
    (TWO_NODES, demand(1, 2), 0, True),
    (TWO_NODES, demand(2, 2), 0, False),         # 3 CPUs in all, but one node has only 1
    (TWO_NODES, demand(1, 3), 0, False),         # no node has 3
    (TWO_NODES, demand(2, 1), 1, True),          # the entrypoint's CPU comes off the 2-CPU node
    (TWO_NODES, demand(1, 2), 1, False),
    (GPU_NODES, demand(2, 4, 1), 0, True),
    (GPU_NODES, demand(3, 1, 1), 0, False),      # GPUs, not CPUs, run out
    (GPU_NODES, demand(4, 1, 0.5), 0, True),     # fractional GPUs share
    ([], demand(1, 1), 0, False),
])
def test_check_fit_by_hand(nodes, wanted, reserved, fits):
    if fits:
        check_fit(wanted, nodes, reserved_cpus=reserved)
    else:
        with pytest.raises(ConfigError, match="lower train.x, or add nodes"):
            check_fit(wanted, nodes, reserved_cpus=reserved)


def test_the_message_says_what_each_needs_what_the_nodes_have_and_the_room():
    check_fit(sampler_demand(4, 1, 0.5), GPU_NODES)  # 2 per node by their GPUs
    with pytest.raises(ConfigError) as error:
        check_fit(sampler_demand(5, 1, 0.5), GPU_NODES)
    assert str(error.value) == ("the cluster can never run 5 sampler actor(s) of 1 CPU + 0.5 GPU each: its nodes have "
                                "8 CPU + 1 GPU, 8 CPU + 1 GPU, room for 4; lower sampling.num_actors / "
                                "sampling.cpus_per_actor / sampling.gpus_per_actor / sampling.tensor_parallel_size, or "
                                "add nodes (a cluster that autoscales: submit with --autoscaling CLUSTER_YAML, or set "
                                "RAYALIGN_NO_FIT_CHECK=1)")


def test_job_demands_follow_the_pipeline():
    train = config.load(None, ["train.num_workers=2", "train.cpus_per_worker=3"])
    assert [(d.what, d.count, d.cpus) for d in job_demands(train)] == [("Ray Train worker", 2, 3)]
    inco = config.load(None, ["pipeline=inco", "sampling.num_actors=4", "sampling.gpus_per_actor=0.25"])
    assert [(d.what, d.count, d.gpus) for d in job_demands(inco)] == [("Ray Train worker", 1, 0.0),
                                                                      ("sampler actor", 4, 0.25)]
    gpu = config.load(None, ["train.use_gpu=true"])
    assert job_demands(gpu)[0].gpus == 1.0


def test_training_on_the_local_cluster_refuses_what_it_can_never_place(ray_local, tmp_path):
    """The local test cluster has 2 CPUs: a 3-CPU worker would wait forever; it fails at once instead."""
    import ray

    assert node_resources(ray.nodes()) == [{"CPU": 2.0, "GPU": 0.0}]
    check_local(demand(2, 1))
    from rayalign.train.driver import run_training
    from tests.conftest import QUICKSTART_DATA

    cfg = config.load(None, ["model.name=tiny-llama", f"data.path={QUICKSTART_DATA}", "train.cpus_per_worker=3",
                             f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"never run 1 Ray Train worker\(s\) of 3 CPU each: its nodes have 2 CPU"):
        run_training(cfg)


@pytest.mark.parametrize("machine, overrides, workers", [
    ({"CPU": 2.0, "GPU": 0.0}, ["train.cpus_per_worker=2"], 0),  # one worker fits here: local mode
    ({"CPU": 2.0, "GPU": 0.0}, ["train.cpus_per_worker=3"], 1),  # it does not: Ray places a worker where it fits
    ({"CPU": 16.0, "GPU": 0.0}, ["train.use_gpu=true"], 1),  # no GPU here
    ({"CPU": 16.0, "GPU": 1.0}, ["train.use_gpu=true"], 0),
    (None, ["train.cpus_per_worker=1"], 1),  # a cluster of several nodes
])
def test_auto_workers_by_hand(machine, overrides, workers):
    assert auto_workers(machine, config.load(None, overrides).train) == workers


def test_auto_resolves_on_the_jobs_one_node_cluster_and_a_run_says_its_mode(ray_local, tmp_path):
    """The local test cluster is one node of 2 CPUs: auto is local mode for a 2-CPU worker, a Ray Train worker for a
    3-CPU one (refused there by the fit check), and a number stays what it is."""
    from rayalign.train.driver import run_training
    from tests.conftest import QUICKSTART_DATA

    assert resolve_workers(config.load(None, ["train.cpus_per_worker=2"])).train.num_workers == 0
    assert resolve_workers(config.load(None, ["train.cpus_per_worker=3"])).train.num_workers == 1
    two = config.load(None, ["train.num_workers=2"])
    assert resolve_workers(two) is two
    summary = run_training(config.load(None, [
        "model.name=tiny-llama", f"data.path={QUICKSTART_DATA}", "data.limit=4", "data.max_length=128",
        "train.batch_size=4", "train.micro_batch_size=4", "train.cpus_per_worker=2", "tracking.wandb=disabled",
        f"output_dir={tmp_path}", "name=auto"]))
    assert summary["mode"] == "local mode" and "worker_group_start_s" not in summary["phases_s"]
    assert config.load(tmp_path / "auto" / "config.yaml").train.num_workers == 0  # what ran, saved


def test_what_runs_at_once_must_fit_at_once_by_hand(monkeypatch):
    """A GPU trainer and a GPU sampler each fit a one-GPU node, but not together: an online pipeline holds both."""
    trainer, sampler = Demand("Ray Train worker", 1, 1, 1.0, "train.*"), Demand("sampler actor", 2, 1, 0.5, "sampling.*")
    one_gpu, two_gpus = [{"CPU": 8.0, "GPU": 1.0}], [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]
    for demand in (trainer, sampler):
        check_fit(demand, one_gpu)
    with pytest.raises(ConfigError) as error:
        check_together([trainer, sampler], one_gpu)
    assert str(error.value).startswith("the cluster can never run these at once: 1 for 1 Ray Train worker(s) + 1 "
                                       "for 2 sampler actor(s) = 2 GPU, and its nodes have 1 GPU in all; lower "
                                       "train.* / sampling.*")
    check_together([trainer, sampler], two_gpus)
    with pytest.raises(ConfigError, match="= 9 CPU, and its nodes have 8 CPU"):
        check_together([trainer, Demand("sampler actor", 4, 2, 0.0, "sampling.*")], two_gpus)
    monkeypatch.setenv("RAYALIGN_NO_FIT_CHECK", "1")
    check_together([trainer, sampler], one_gpu)


def test_only_an_online_pipeline_adds_its_phases_together():
    d2po = config.load(None, ["pipeline=d2po", "train.use_gpu=true", "sampling.gpus_per_actor=0.5",
                              "sampling.num_actors=2", "d2po.disc_cpus=1"])
    assert [(d.what, d.count, d.cpus, d.gpus) for d in together_demands(d2po)] == [
        ("Ray Train worker", 1, 1, 1.0), ("sampler actor", 2, 1, 0.5), ("discriminator replica", 1, 1.0, 0.0)]
    assert together_demands(config.load(None, ["pipeline=inco", "train.use_gpu=true"])) == []


def test_an_autoscaling_cluster_can_turn_the_check_off(monkeypatch):
    monkeypatch.setenv("RAYALIGN_NO_FIT_CHECK", "1")
    check_fit(demand(8, 4), TWO_NODES)


def test_waiting_line_by_hand():
    line = waiting_line([{"CPU": 2.0}, {"CPU": 2.0, "GPU": 1.0}], 61.4, {"CPU": 1.0}, {"CPU": 8.0, "GPU": 1.0},
                        "train.x")
    assert line == ("rayalign: waited 61 s for {CPU: 2} + {CPU: 2, GPU: 1}; the cluster has 1 CPU free of 8 CPU + 1 GPU: "
                    "other jobs or actors hold the rest. Free them, add nodes, or lower train.x")


def test_a_waiting_worker_group_says_what_it_waits_for_until_it_starts(ray_local, capsys):
    """A placement group (what a Ray Train worker group waits in) pending behind an actor that holds the cluster's
    2 CPUs: a line each second while it waits, none once the actor is gone and the group is placed."""
    import time

    from ray.util import placement_group, remove_placement_group

    @ray_local.remote(num_cpus=2)
    class Holder:
        def ready(self):
            return True

    holder = Holder.remote()
    ray_local.get(holder.ready.remote())
    stop = watch_waiting(1.0, "train.x")
    group = placement_group([{"CPU": 1.0}])
    try:
        time.sleep(2.5)
        waiting = capsys.readouterr().out.splitlines()
        assert len(waiting) >= 2 and all(line.startswith("rayalign: waited") for line in waiting), waiting
        assert "for {CPU: 1}; the cluster has 0 CPU free of 2 CPU" in waiting[-1]
        ray_local.kill(holder)
        ray_local.get(group.ready(), timeout=30)
        capsys.readouterr()
        time.sleep(2.5)
        assert capsys.readouterr().out == ""
    finally:
        stop()
        remove_placement_group(group)


@pytest.mark.parametrize("manifest", ["launcher-aws-gpu.yaml", "kuberay/raycluster.yaml"])
def test_an_autoscaling_cluster_is_checked_against_the_nodes_it_can_grow_to(manifest):
    """The shipped manifests scale GPU workers from 0 to 4 (one GPU each) beside a CPU-only head: a 4-GPU-worker
    job fits the nodes they can grow to, a 5-worker one never can, whatever runs now."""
    nodes = autoscaling_nodes(yaml.safe_load((REPO / "cluster" / manifest).read_text()), manifest)
    assert sorted(n["GPU"] for n in nodes) == [0.0, 1.0, 1.0, 1.0, 1.0]
    fits = config.load(None, ["train.use_gpu=true", "train.num_workers=4", "train.batch_size=4",
                              "train.micro_batch_size=1"])
    check_fit(job_demands(fits)[0], nodes)
    too_big = config.load(None, ["train.use_gpu=true", "train.num_workers=5", "train.batch_size=5",
                                 "train.micro_batch_size=1"])
    with pytest.raises(ConfigError, match="never run 5 Ray Train worker"):
        check_fit(job_demands(too_big)[0], nodes)


def test_the_jobs_own_check_reads_the_nodes_submit_hands_it(ray_local, monkeypatch):
    """In the job, $RAYALIGN_CLUSTER_NODES (set by submit --autoscaling) stands for the cluster: the 2-CPU test
    cluster refuses a 3-CPU worker, the grown description accepts it."""
    demand = trainer_demand(config.load(None, ["train.num_workers=1", "train.cpus_per_worker=3"]).train)
    with pytest.raises(ConfigError):
        check_local(demand)
    monkeypatch.setenv(NODES_ENV, json.dumps([{"CPU": 8.0, "GPU": 0.0}]))
    check_local(demand)
