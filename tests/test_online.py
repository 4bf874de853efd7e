"""The online trainer (one for all rounds) and the weight sync over a collective, on tiny models.

Invariants: 3 rounds of the persistent trainer give bitwise the losses and weights of 3 rounds of a new trainer per
round (what D2PO ran before); its worker processes stay the same; after a sync every sampler actor holds the
trainer's weights bitwise, and one killed between rounds comes back with them.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rayalign import config
from tests.conftest import QUICKSTART_DATA

TINY = ["model.name=tiny-llama", "train.batch_size=4", "train.micro_batch_size=2", "train.lr=1e-3",
        "train.warmup_ratio=0", "train.lr_schedule=constant", "train.cpus_per_worker=1", "train.threads=1",
        "data.max_length=96", "tracking.wandb=disabled", "model.reference=tiny-llama"]


def _round_files(tmp_path, rounds: int = 3, per_round: int = 8) -> list:
    rows = [json.loads(line) for line in QUICKSTART_DATA.read_text().splitlines()]
    files = []
    for r in range(rounds):
        path = tmp_path / f"round_{r + 1}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows[r * per_round:(r + 1) * per_round]))
        files.append(path)
    return files


def _cfg(tmp_path, *extra):
    return config.load(None, TINY + [f"output_dir={tmp_path}", *extra])


def _losses(run_dir) -> list[float]:
    from rayalign.tracking import read_metrics

    return [row["loss"] for row in read_metrics(run_dir)]


def test_three_rounds_of_the_persistent_trainer_equal_a_new_trainer_per_round(tmp_path):
    """Local mode, seeded: the same per-step losses and bitwise the same final weights."""
    from rayalign.sampling.hf import read_checkpoint
    from rayalign.train.driver import prepare_pairs, run_training
    from rayalign.train.online import TrainerGroup

    files = _round_files(tmp_path)
    base = _cfg(tmp_path, "train.num_workers=0")
    per_round, policy = [], "tiny-llama"
    for r, path in enumerate(files, start=1):
        cfg = dataclasses.replace(base, name=f"round_{r}", model=dataclasses.replace(base.model, name=policy),
                                  data=dataclasses.replace(base.data, path=str(path)))
        summary = run_training(cfg)
        per_round.append(_losses(cfg.run_dir))
        policy = summary["checkpoint"]

    trainer = TrainerGroup(dataclasses.replace(base, name="online"), "tiny-llama")
    try:
        persistent = []
        for path in files:
            pairs = prepare_pairs(dataclasses.replace(base, data=dataclasses.replace(base.data, path=str(path)))).pairs
            persistent.append([row["loss"] for row in trainer.train_round(pairs)["rows"]])
        trainer.call("save", str(tmp_path / "online_policy"), True)  # with the HF directory, as a last round's
        saved = trainer.call("saved")
    finally:
        trainer.close()
    assert persistent == per_round and len(per_round) == 3 and all(len(losses) == 2 for losses in per_round)
    assert per_round[0] != per_round[2]  # the rounds trained on different pairs
    ours, theirs = read_checkpoint(saved), read_checkpoint(policy)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


def _sampler_weights_equal(pool, checkpoint) -> list[bool]:
    import ray

    from rayalign.sampling.hf import read_checkpoint

    trained = read_checkpoint(checkpoint)
    return [all(torch.equal(weights[name], trained[name]) for name in trained)
            for weights in ray.get([actor.parameters.remote() for actor in pool.actors])]


def _restarted(actor, pid: int, timeout_s: float = 60) -> bool:
    import time

    import ray
    from ray.exceptions import RayActorError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ray.get(actor.pid.remote()) != pid:
                return True
        except RayActorError:  # the call reached it while it died
            pass
        time.sleep(0.2)
    return False


def test_workers_persist_and_every_sampler_gets_the_weights_bitwise_even_after_a_restart(tmp_path, ray_local):
    """Two FSDP ranks (gloo) send to two sampler actors over one group; a sampler killed between rounds catches up
    from the pool's version before it answers."""
    import ray

    from rayalign.export import export_checkpoint
    from rayalign.sampling.base import SamplingParams
    from rayalign.sampling.hf import HFSampler
    from rayalign.sampling.pool import SamplerPool
    from rayalign.train.driver import prepare_pairs
    from rayalign.train.online import TrainerGroup

    files = _round_files(tmp_path, rounds=2)
    cfg = _cfg(tmp_path, "train.num_workers=2", "train.cpus_per_worker=0.5", "name=online")
    trainer = TrainerGroup(cfg, "tiny-llama")
    pool = SamplerPool(model="tiny-llama", num_actors=2, num_cpus=0.5, chunk_size=1, batch_size=4)
    try:
        pids = trainer.pids()
        for r, path in enumerate(files, start=1):
            pairs = prepare_pairs(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(path)))).pairs
            trainer.train_round(pairs)
            assert trainer.pids() == pids and len(set(pids)) == 2
            trainer.call("save", str(tmp_path / f"policy_{r}"), r == 2)  # round 1: DCP shards, in the background
            sent = pool.receive_weights(trainer.send_weights)
            checkpoint = trainer.call("saved")
            if r == 1:  # the two ranks' shards, whole: exported, they are the weights the samplers got
                export_checkpoint(checkpoint, str(tmp_path / "policy_1_hf"))
                checkpoint = str(tmp_path / "policy_1_hf")
            assert _sampler_weights_equal(pool, checkpoint) == [True, True]
            assert sent["bytes"] == sum(t.numel() * 4 for t in HFSampler(checkpoint).model.parameters())

        killed = ray.get(pool.actors[1].pid.remote())
        ray.kill(pool.actors[1], no_restart=False)  # Ray restarts it on the constructor's (older) weights
        assert _restarted(pool.actors[1], killed)  # between two rounds' calls
        trained = HFSampler(checkpoint, batch_size=4)
        prompts = [trained.tokenizer.encode(f"Tell me about {i}.") for i in range(6)]
        greedy = SamplingParams(temperature=0, max_new_tokens=6)
        after = pool.generate(prompts, greedy)
        assert pool.last_stats["actors_caught_up"] == 1  # its first chunk was refused, the weights sent, then run
        assert [row[0].token_ids for row in after] == [row[0].token_ids for row in trained.generate(prompts, greedy)]
        assert _sampler_weights_equal(pool, checkpoint) == [True, True]
    finally:
        pool.shutdown()
        trainer.close()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_buckets_hold_whole_parameters_in_order_and_never_exceed_their_size_unless_one_alone_does(dtype):
    from rayalign.sampling.weight_sync import buckets

    plan = [("a", (10, 10)), ("b", (30,)), ("c", (200,)), ("d", (5, 2)), ("e", (1,))]
    size = torch.empty((), dtype=dtype).element_size()
    cut = buckets(plan, dtype, bucket_bytes=130 * size)
    assert [i for b in cut for i in b] == list(range(len(plan)))
    assert cut == [[0, 1], [2], [3, 4]]  # 100 + 30 fit; 200 alone (over the size); 10 + 1


TENSOR_PARALLEL = """
import json
import ray
ray.init(num_cpus=4, num_gpus=4, include_dashboard=False, logging_level="WARNING")  # declared, not real
from rayalign.cluster_fit import live_nodes
from rayalign.errors import ConfigError
from rayalign.sampling.pool import actor_placement, check_tensor_parallel, engine_groups
groups = engine_groups(2, 1.0, 0.0, 2, "PACK", 60)
options = actor_placement(groups, 1, 1.0, 0.0, 2)
strategy = options["scheduling_strategy"]
alone = actor_placement(groups[:1], 0, 1.0, 0.0, 2)["scheduling_strategy"]  # one engine: the same rules
try:
    check_tensor_parallel("vllm", 8, live_nodes())
    refused = None
except ConfigError as error:
    refused = str(error)
print(json.dumps({"bundles": [g.bundle_specs for g in groups],
                  "same_group": strategy.placement_group.id == groups[1].id,
                  "bundle": strategy.placement_group_bundle_index,
                  "captures": strategy.placement_group_capture_child_tasks, "num_gpus": options["num_gpus"],
                  "refused": refused, "alone_captures": alone.placement_group_capture_child_tasks}))
"""

COLOCATED = """
import json
import ray
ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, logging_level="WARNING")  # declared, not real
from rayalign import config
from rayalign.cluster_fit import check_together, live_nodes, together_demands
from rayalign.errors import ConfigError
from rayalign.sampling.colocate import check_colocate, colocated_groups

def refusal(call):
    try:
        call()
    except ConfigError as error:
        return str(error)

keys = ["pipeline=d2po", "train.use_gpu=true", "sampling.num_actors=2", "sampling.gpus_per_actor=0.6",
        "sampling.cpus_per_actor=0.5", "train.cpus_per_worker=1"]
apart, together = config.load(None, keys), config.load(None, keys + ["sampling.colocate=true"])
print(json.dumps({
    "hf": refusal(lambda: check_colocate(config.load(None, keys + ["sampling.colocate=true"]))),
    "apart": refusal(lambda: check_together(together_demands(apart), live_nodes())),
    "together": refusal(lambda: check_together(together_demands(together), live_nodes())),
    "bundles": colocated_groups(together)[0].bundle_specs}))
"""


def test_a_tensor_parallel_engine_gets_one_gpu_bundles_on_one_node_and_too_many_gpus_is_one_line():
    """2 engines of tensor parallelism 2 on a cluster of 4 declared GPUs: a group each of two one-GPU bundles, the
    actor in the first without a GPU of its own, its group captured for vLLM's workers; 8-way cannot exist."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", TENSOR_PARALLEL], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["bundles"] == [[{"CPU": 1.0, "GPU": 1.0}, {"GPU": 1.0}]] * 2
    assert found["same_group"] and found["bundle"] == 0 and found["captures"] and found["num_gpus"] == 0
    assert found["alone_captures"]
    assert found["refused"] == ("sampling.tensor_parallel_size=8 needs 8 GPUs on one node, and the largest node of "
                                "the cluster has 4; lower sampling.tensor_parallel_size or add larger nodes")


def test_colocated_engines_and_trainer_share_one_bundle_per_gpu_where_apart_they_would_not_fit():
    """2 declared GPUs: 2 engines of 0.6 GPU and a 1-GPU trainer do not fit apart (2.2 GPUs), but colocated each
    GPU's bundle holds an engine and a trainer rank (2 GPUs); colocation without vLLM is one line."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", COLOCATED], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["hf"] == ("sampling.colocate=true needs sampling.engine=vllm (its sleep mode frees the GPU for the "
                           "trainer)")
    assert found["apart"].startswith("the cluster can never run these at once: 1 for 1 Ray Train worker(s) + 1.2 for "
                                     "2 sampler actor(s) = 2.2 GPU")
    assert found["together"] is None
    assert found["bundles"] == [{"CPU": 1.5, "GPU": 1.0}] * 2


def test_a_trainer_resumed_from_a_rounds_background_checkpoint_continues_bitwise(tmp_path):
    """The round-1 checkpoint is written in the background while round 2 already trains (DCP copied the weights
    first); a trainer started from it trains round 2 to the same losses and weights."""
    from rayalign.sampling.hf import read_checkpoint
    from rayalign.train.driver import prepare_pairs
    from rayalign.train.online import TrainerGroup

    base = _cfg(tmp_path, "train.num_workers=0", "name=online")
    rounds = [prepare_pairs(dataclasses.replace(base, data=dataclasses.replace(base.data, path=str(path)))).pairs
              for path in _round_files(tmp_path, rounds=2)]
    first = TrainerGroup(base, "tiny-llama")
    try:
        first.train_round(rounds[0])
        first.call("save", str(tmp_path / "round_1"))
        whole = [row["loss"] for row in first.train_round(rounds[1])["rows"]]
        assert first.call("saved") == str(tmp_path / "round_1")
        first.call("save", str(tmp_path / "whole"), True)
        first.call("saved")
    finally:
        first.close()
    assert not (tmp_path / "round_1" / "model.safetensors").exists()  # training state only
    second = TrainerGroup(base, str(tmp_path / "round_1"))
    try:
        resumed = [row["loss"] for row in second.train_round(rounds[1])["rows"]]
        second.call("save", str(tmp_path / "resumed"), True)
        second.call("saved")
    finally:
        second.close()
    assert resumed == whole
    a, b = read_checkpoint(tmp_path / "whole"), read_checkpoint(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
