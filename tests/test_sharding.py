"""Sharded from the first byte: what a rank holds while it loads, what `rayalign plan` counts, and the reference
cache's identity of a directory rayalign wrote.

Ranks are real processes in a real gloo group (spawned here: the load alone, without a Ray Train start-up)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.conftest import free_port

# About 65M parameters (260 MB in fp32): big enough that a whole copy stands far above a half share plus the
# process's own working memory.
CONFIG = dict(vocab_size=8192, hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
              num_key_value_heads=4, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rayalign.models import TINY, resolve_model

    out = tmp_path_factory.mktemp("sharding") / "model"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**CONFIG)).save_pretrained(out)
    AutoTokenizer.from_pretrained(resolve_model(TINY)).save_pretrained(out)
    return out


def _load_rank(rank: int, world: int, port: int, path: str, out: str) -> None:
    """One rank: join the group, build the trainable model as the trainer does, record its RSS rise over the
    build and the bytes of its local shards."""
    import torch.distributed as dist

    from rayalign import config
    from rayalign.memory import memory_mib, reset_peak
    from rayalign.train.loop import build_model
    from rayalign.train.sharding import shard_rows

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cfg = config.load(None, [f"model.name={path}"])
    import transformers.models.llama.modeling_llama  # noqa: F401  (imports are not the load's memory)

    reset_peak()
    base = memory_mib()[0]
    lm, _ = build_model(path, cfg, torch.device("cpu"), trainable=True)
    for p in lm.parameters():  # touch every weight, as the first step does (a memory-mapped load pages in lazily)
        shard_rows(p)[0].sum()
    rise = (memory_mib()[1] - base) * 2**20
    local = sum(shard_rows(p)[0].numel() * shard_rows(p)[0].element_size() for p in lm.parameters())
    first = {name: shard_rows(p)[0][:2].clone() for name, p in lm.named_parameters()}
    torch.save({"rise": rise, "local": local, "rows": first}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _spawn_load(path, world: int, out) -> list[dict]:
    import torch.multiprocessing as mp

    mp.start_processes(_load_rank, args=(world, free_port(), str(path), str(out)), nprocs=world,
                       start_method="spawn")
    return [torch.load(f"{out}/rank{r}.pt") for r in range(world)]


@pytest.fixture(scope="module")
def loads(model_dir, tmp_path_factory):
    return {world: _spawn_load(model_dir, world, tmp_path_factory.mktemp(f"load{world}")) for world in (1, 2)}


def test_no_rank_holds_a_whole_copy_while_the_model_loads(loads, model_dir):
    """At 2 ranks each rises by about its half of the weights; the one-process load (the control: a whole copy)
    rises by at least the whole."""
    full = sum(os.path.getsize(p) for p in model_dir.glob("*.safetensors"))
    [alone] = loads[1]
    assert alone["rise"] >= 0.9 * full, "the control load did not hold the model: the measurement cannot tell"
    for rank in loads[2]:
        assert rank["local"] == pytest.approx(full / 2, rel=0.02)
        assert rank["rise"] < 0.75 * full, f"a rank rose by {rank['rise'] / full:.2f} of the whole model"


def test_each_rank_holds_its_own_rows_of_the_files(loads, model_dir):
    from safetensors.torch import load_file

    weights = load_file(model_dir / "model.safetensors")
    for rank, loaded in enumerate(loads[2]):
        for name, rows in loaded["rows"].items():
            start = rank * -(-weights[name].shape[0] // 2)
            assert torch.equal(rows, weights[name][start:start + 2]), name


def test_plan_counts_the_shards_a_real_rank_holds(loads, model_dir):
    from transformers import LlamaConfig

    from rayalign.plan import shard_bytes

    counted = shard_bytes(LlamaConfig(**CONFIG), world=2)
    assert counted["frozen_local"] == 0
    assert counted["trainable_local"] * 4 == max(rank["local"] for rank in loads[2])


def test_plan_prints_per_gpu_memory_for_a_70b_model(capsys):
    from rayalign.cli import main

    assert main(["plan", "llama-3-70b", "--gpus", "32", "--nodes", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    gpu = result["per_gpu_bytes"]
    assert 70e9 < result["params"] < 71e9
    # 16 bytes a parameter of training state, a 32nd each: ~33 GiB before units and activations
    assert gpu["parameters"] + gpu["optimizer"] == pytest.approx(12 * result["params"] / 32, rel=0.01)
    assert gpu["total"] < 80 * 2**30


def test_a_directory_rayalign_wrote_is_keyed_by_its_recorded_identity(tmp_path):
    """The key never reads the weights (a changed byte leaves it), and a new write gets a new key."""
    from rayalign.train.checkpoint import write_identity
    from rayalign.train.reference import model_fingerprint

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    by_bytes = model_fingerprint(str(tmp_path))
    write_identity(tmp_path)
    keyed = model_fingerprint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"changed")
    assert model_fingerprint(str(tmp_path)) == keyed != by_bytes
    write_identity(tmp_path)
    assert model_fingerprint(str(tmp_path)) != keyed


def test_the_hf_writer_splits_files_and_writes_what_safetensors_and_transformers_read(tmp_path):
    """Headers written before the values: several files with an index, each readable by safetensors, the whole
    loadable by from_pretrained, with the values added."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from rayalign.train.checkpoint import HFWriter

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    torch.manual_seed(1)
    state = LlamaForCausalLM(config).state_dict()
    writer = HFWriter(tmp_path, torch.bfloat16, [(k, list(v.shape), v.dtype) for k, v in state.items()],
                      max_shard_bytes=4096)
    for name, value in state.items():
        writer.add(name, value)
    writer.close(config)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    files = sorted(set(index.values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    read = {k: v for f in files for k, v in load_file(tmp_path / f).items()}
    assert read.keys() == state.keys()
    assert all(torch.equal(read[k], v.to(torch.bfloat16)) for k, v in state.items())
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).state_dict()
    assert all(torch.equal(loaded[k], read[k]) for k in state)
