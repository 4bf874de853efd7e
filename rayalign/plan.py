"""`rayalign plan MODEL --gpus N [--nodes K]`: memory per GPU and per node, and checkpoint sizes, before a cluster is
rented.

The shard sizes are counted, not estimated: the model is built on the meta device, the trainer's own FSDP2 units
are applied (`rayalign.train.sharding.apply_fsdp`) over a fake process group of N ranks, and rank 0's local shards
(the largest: FSDP2 gives rank 0 ⌈rows / N⌉ rows) are summed. On them:

- parameters: trainable shards in fp32 (master weights; pure_bfloat16: bf16), frozen ones in bf16 under mixed
  precision; a separate reference model (`model.reference`) adds its frozen bf16 shards;
- gradients: the trainable shards in fp32 (reduce-scattered), plus the largest unit's unsharded gradient;
- optimizer: AdamW's two moments of the trainable shards (fp32; pure_bfloat16: bf16);
- gathered units: the two largest units unsharded in the compute dtype (the unit running and the one prefetched);
- activations, the one hand formula: with activation checkpointing, each layer's input kept (tokens × hidden × 2
  bytes) plus one layer's recomputed activations (tokens × 34·hidden bytes, Korthikanti et al.'s per-layer count
  with flash attention); without, every layer's; plus one log-prob slice of the head (chunk × vocab × 4 bytes × 3).
  Tokens = 2 × micro-batch × data.max_length (chosen and rejected, padded).

Host RAM per node counts what a rank holds on the CPU while loading (one parameter's shard read from the files) on
top of a runtime allowance per process (CUDA context, torch, Ray: `RUNTIME_BYTES`, an assumption), and rank 0's
node adds the HF export's one whole parameter in fp32 (the largest).
"""

from __future__ import annotations

import math

from rayalign.models import PLAIN, LoadOptions

GIB = 2**30
RUNTIME_BYTES = 3 * GIB  # per training process on the host: CUDA context, torch, transformers, Ray worker
KNOWN = {  # public architecture configs, for planning without a download
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "llama-3-70b": dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False),
}


def model_config(name: str, options: LoadOptions = PLAIN):
    """An HF config: one of `KNOWN`, or a model rayalign resolves (directory, embedded name, hub id), loaded with
    `options` (`rayalign.models.LoadOptions`)."""
    from transformers import LlamaConfig

    from rayalign.models import load_config

    if name.lower() in KNOWN:
        return LlamaConfig(**KNOWN[name.lower()])
    return load_config(name, options)


def shard_bytes(config, world: int, lora_r: int = 0, lora_targets=("all-linear",)) -> dict:
    """Counted on rank 0 of `world` fake ranks: its elements of trainable and frozen parameters, the largest two
    units' full element counts, and the totals. Builds on the meta device: no memory, any model size."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers import AutoModelForCausalLM

    from rayalign.logprobs import ResponseLogps
    from rayalign.models import with_lora
    from rayalign.train.sharding import apply_fsdp, shard_units

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(config)
            lm.tie_weights()
            if lora_r:
                lm = with_lora(lm, lora_r, 2 * lora_r, 0.0, list(lora_targets))
        model = ResponseLogps(lm)
        units = sorted((sum(p.numel() for p in {id(p): p for m in unit for p in m.parameters()}.values())
                        for unit in shard_units(model)), reverse=True)  # a tied weight counted once
        apply_fsdp(model, init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",)))
        local = {True: 0, False: 0}
        for p in model.parameters():
            local[p.requires_grad] += p.to_local().numel()
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        largest_param = max(p.numel() for p in model.parameters())
    finally:
        if owned:
            dist.destroy_process_group()
    return {"trainable_local": local[True], "frozen_local": local[False], "largest_units": units[:2],
            "params": total, "trainable_params": trainable, "largest_param": largest_param,
            "largest_param_local": math.ceil(largest_param / world)}


def plan(model: str, gpus: int, nodes: int, cfg) -> dict:
    """The figures `rayalign plan` prints, in bytes, for `cfg`'s numerics, micro-batch and length."""
    config = model_config(model, cfg.model.options)
    t = cfg.train
    counted = shard_bytes(config, gpus, t.lora_r, t.lora_target_modules)
    pure = cfg.model.dtype == "pure_bfloat16"
    master, moment = (2, 2) if pure else (4, 4)
    hidden, layers = config.hidden_size, config.num_hidden_layers
    tokens = 2 * t.micro_batch_size * cfg.data.max_length
    reference = counted["trainable_local"] + counted["frozen_local"] if cfg.model.reference else 0
    checkpointing = t.activation_checkpointing_on
    kept = layers * tokens * hidden * 2 if checkpointing else layers * tokens * 34 * hidden
    per_gpu = {
        "parameters": counted["trainable_local"] * master + counted["frozen_local"] * 2 + reference * 2,
        "gradients": counted["trainable_local"] * 4 + counted["largest_units"][0] * 2,
        "optimizer": counted["trainable_local"] * 2 * moment,
        "gathered_units": sum(counted["largest_units"]) * 2,
        "activations": kept + tokens * 34 * hidden + cfg.model.chunk_size * config.vocab_size * 4 * 3,
    }
    per_gpu["total"] = sum(per_gpu.values())
    per_node = -(-gpus // nodes)
    host = per_node * (RUNTIME_BYTES + counted["largest_param_local"] * 4)
    export_bytes = 2 if t.export_dtype_resolved == "bfloat16" else 4
    return {
        "model": model, "gpus": gpus, "nodes": nodes, "params": counted["params"],
        "trainable_params": counted["trainable_params"], "micro_batch_size": t.micro_batch_size,
        "max_length": cfg.data.max_length, "activation_checkpointing": checkpointing,
        "dtype": cfg.model.dtype, "per_gpu_bytes": per_gpu,
        "host_ram_per_node_bytes": host, "host_ram_rank0_node_bytes": host + counted["largest_param"] * 4,
        "checkpoint_bytes": counted["trainable_params"] * (master + (2 * moment if t.save_optimizer else 0)),
        "export_bytes": counted["params"] * export_bytes,
        "shards_counted": {k: counted[k] for k in ("trainable_local", "frozen_local", "largest_units")},
    }


def lines(result: dict) -> list[str]:
    g = result["per_gpu_bytes"]
    fmt = lambda b: f"{b / GIB:.2f} GiB"
    return [
        f"{result['model']}: {result['params'] / 1e9:.2f}B parameters ({result['trainable_params'] / 1e9:.2f}B "
        f"trainable) on {result['gpus']} GPUs in {result['nodes']} node(s), {result['dtype']}, micro-batch "
        f"{result['micro_batch_size']} x {result['max_length']} tokens, activation checkpointing "
        f"{'on' if result['activation_checkpointing'] else 'off'}",
        f"per GPU: {fmt(g['total'])} = parameters {fmt(g['parameters'])} + gradients {fmt(g['gradients'])} + "
        f"optimizer {fmt(g['optimizer'])} + gathered units {fmt(g['gathered_units'])} + activations "
        f"{fmt(g['activations'])}",
        f"host RAM per node: {fmt(result['host_ram_per_node_bytes'])} (rank 0's node "
        f"{fmt(result['host_ram_rank0_node_bytes'])})",
        f"checkpoint on disk: {fmt(result['checkpoint_bytes'])} (DCP, resumable); HF export "
        f"{fmt(result['export_bytes'])}",
    ]
