"""FSDP2 from the first byte: a model built on the meta device, sharded, then filled slice by slice.

No process ever holds the whole model. The trainer's `build_model` builds the LM's structure on the meta device
(`meta_model`: its buffers, such as rotary frequencies, real: they are small and computed, not loaded), applies
FSDP2 to each decoder layer, to the embeddings and to the output head (one unit when they share their weight), then
to the root (the final norm) (`apply_fsdp`), allocates each rank's shards only (`materialise`), and copies into
every shard its rows of the weights, read from the model's safetensors files with positioned reads (`WeightFiles`,
`fill_shards`). The largest tensor a rank ever materialises is one parameter's shard. This is torchtitan's and NeMo-RL's
shape (meta-device init, per-rank slices of the checkpoint files).

FSDP2 shards dim 0 as `torch.chunk` does: rank r of W holds rows [r·c, min((r+1)·c, n)) with c = ceil(n / W).

The weights come from an HF directory (`model.safetensors` or a sharded index) by parameter name (a peft-wrapped
model's base names mapped back); new LoRA adapters get their initial values from `lora_init` (B zeros, A from a
generator seeded by the run's seed and the parameter's name, so they are the same at any world size); a resumed
run's trainable parameters come from its DCP checkpoint instead (`rayalign.train.checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import nn

from rayalign.errors import RayAlignError
from rayalign.models import PLAIN, LoadOptions, load_config, loading

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


class WeightFiles:
    """The tensors of a directory's safetensors files by name, read as row ranges with plain positioned reads.

    Not through a memory map: the pages of a mapped file count in the process's resident memory, and a mapped
    read of some rows brings in much of the file (measured: a rank reading half of each tensor rose by the whole
    file). The format is an 8-byte header length, a JSON header (dtype, shape, byte offsets), then the bytes.
    """

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (directory / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise RayAlignError(f"{directory}: no model.safetensors (or its index) to load weights from; a sharded "
                                "run loads safetensors files (save the model with save_pretrained)")
        self._stack = ExitStack()
        self._where: dict[str, tuple] = {}
        for name in files:
            handle = self._stack.enter_context(open(directory / name, "rb"))
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
            header.pop("__metadata__", None)
            for key, entry in header.items():
                dtype = SAFETENSORS_DTYPES[entry["dtype"]]
                self._where[key] = (handle, 8 + length + entry["data_offsets"][0], dtype, entry["shape"])

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> list[int]:
        return self._where[key][3]

    def dtype(self, key: str) -> torch.dtype:
        return self._where[key][2]

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of tensor `key` (a 0-d tensor whole)."""
        handle, offset, dtype, shape = self._where[key]
        row = math.prod(shape[1:]) * dtype.itemsize
        stop = min(stop, shape[0]) if shape else 1
        count = max(0, stop - start) if shape else 1
        data = bytearray(count * row)
        handle.seek(offset + start * row)
        handle.readinto(data)
        out = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        return out.reshape([count, *shape[1:]] if shape else [])

    def close(self) -> None:
        self._stack.close()


def shard_rows(param) -> tuple[torch.Tensor, int]:
    """(this rank's local tensor of `param`, the first global row it holds): FSDP2's dim-0 shard, or the whole
    tensor when `param` is not sharded."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(param, DTensor):
        return param.data, 0
    local = param.to_local()
    if tuple(param.placements) != (Shard(0),):
        raise RayAlignError(f"unsupported sharding {param.placements} of a parameter (FSDP2 shards dim 0)")
    rows = math.ceil(param.shape[0] / param.device_mesh.size()) if param.dim() else 0
    return local, param.device_mesh.get_local_rank() * rows


def _file_key(name: str) -> str:
    """The key in an HF directory's files of a parameter of the (possibly peft-wrapped) model."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def lora_init(name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """A new LoRA adapter's initial value, the same on every rank: A as peft's kaiming-uniform, B zeros."""
    if ".lora_B." in name:
        return torch.zeros(shape)
    digest = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")
    value = torch.empty(shape)
    bound = 1 / math.sqrt(shape[1])  # kaiming_uniform_(a=√5) of a [r, in] weight
    return value.uniform_(-bound, bound, generator=torch.Generator().manual_seed(digest))


@torch.no_grad()
def fill_shards(lm: nn.Module, weights: WeightFiles, seed: int = 0, skip_trainable: bool = False) -> None:
    """Copy into each parameter's local shard its rows of `weights`; new LoRA adapters get `lora_init`.
    `skip_trainable`: leave the trainable parameters to a checkpoint. A parameter the files lack is an error."""
    for name, param in lm.named_parameters():
        if skip_trainable and param.requires_grad:
            continue
        local, start = shard_rows(param)
        if ".lora_" in name:
            local.copy_(lora_init(name, param.shape, seed)[start:start + local.shape[0]])
            continue
        key = _file_key(name)
        if key not in weights:
            raise RayAlignError(f"the model's files have no weight '{key}' (parameter {name}): a sharded load "
                                "needs the architecture's own parameter names; train with train.num_workers=1")
        local.copy_(weights.rows(key, start, start + local.shape[0]) if local.dim() else weights.rows(key, 0, 0))


def local_files(resolved: str, options: LoadOptions = PLAIN) -> str:
    """A directory holding the model's files: `resolved` itself, or a hub id's snapshot at `options.revision`
    (downloaded once into the HF cache, shared by the ranks of a node; with its code when that is trusted)."""
    if Path(resolved).is_dir():
        return resolved
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"] + (["*.py"] if options.trust_remote_code else [])
    return loading(resolved, lambda: snapshot_download(resolved, revision=options.revision,
                                                       allow_patterns=patterns))


def meta_model(path: str, dtype: torch.dtype, options: LoadOptions = PLAIN) -> nn.Module:
    """The causal LM of the HF directory `path` with its parameters on the meta device and its buffers real."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = load_config(path, options)
    with init_empty_weights(include_buffers=False):
        lm = loading(path, lambda: AutoModelForCausalLM.from_config(config, dtype=dtype, **options.built()))
    lm.tie_weights()  # from_pretrained ties a tied head to the embeddings; from_config leaves that to the loader
    return lm


def shard_units(model) -> list[list[nn.Module]]:
    """FSDP2's units of a `ResponseLogps`, innermost first: each decoder layer, the embeddings, the head (one unit
    with the embeddings when they share a weight); the root takes what is left (the final norm)."""
    lm = model.lm
    units = [[layer] for layer in lm.get_decoder().layers]
    embed = lm.get_input_embeddings()
    if embed.weight is model.head.projection.weight:
        return units + [[embed, model.head]]
    return units + [[embed], [model.head]]


def apply_fsdp(model, mesh, mp_policy=None, compile_layers: bool = False):
    """Shard `model` (a `ResponseLogps`) unit by unit over `mesh`; returns it."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    kwargs = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    for unit in shard_units(model):
        if compile_layers and len(unit) == 1 and unit[0] in model.lm.get_decoder().layers:
            unit[0].compile()
        # The head runs last in forward and first in backward: keeping it gathered in between saves a gather.
        last = unit[-1] is model.head
        fully_shard(unit if len(unit) > 1 else unit[0], reshard_after_forward=not last, **kwargs)
    # The head is also reachable as the LM's own output module, which is no FSDP unit: the root must not shard
    # its (already sharded) weight a second time.
    fully_shard(model, ignored_params=set(model.head.parameters()), **kwargs)
    if mesh.device_type == "cpu":
        comm = _all_reduce_scatter()
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_custom_reduce_scatter(comm)
    return model


def _all_reduce_scatter():
    """A reduce-scatter for gloo ranks that keeps no copy of its input: gloo's own copies the whole (unsharded)
    gradient buffer it is given, which at the 0.5B benchmark's embeddings is 290 MB above FSDP's buffer; an in-place
    all-reduce of FSDP's buffer, then this rank's slice of it, is the same sum (measured: 4 ranks' backward peak
    190 MiB lower). NCCL ranks keep FSDP's default."""
    import torch.distributed as dist
    from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter  # what set_custom_reduce_scatter takes

    class AllReduceScatter(ReduceScatter):
        def allocate(self, size, *, dtype, device):
            return torch.empty(*size, dtype=dtype, device=device)

        def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
            dist.all_reduce(input_tensor, op=op, group=group)
            mine = input_tensor.view(dist.get_world_size(group), -1)[dist.get_rank(group)]
            output_tensor.copy_(mine.view_as(output_tensor))

    return AllReduceScatter()


def materialise(model, device) -> None:
    """Allocate each rank's shards on `device` and restore the buffers that the meta build computed."""
    buffers = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            buf.copy_(buffers[name])
