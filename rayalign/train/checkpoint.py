"""Checkpoints: each rank writes its own shards (DCP) to resume; an HF directory is written for users, streamed.

Layout of one checkpoint directory::

    dcp/.metadata, dcp/__<rank>_0.distcp   # torch.distributed.checkpoint: the trainable weights ("model.<fqn>")
                                           # and AdamW's state ("optim.<fqn>..."), each rank its own shards
    trainer/state.json                     # step, scheduler, world size, each rank's RNG state, the base model
    config.json, model*.safetensors, tokenizer files, rayalign.json
                                           # the HF model (or peft adapter) directory: written for the run's final
                                           # step, and by `rayalign export` for any checkpoint

DCP's `.metadata` is the one pickle: DCP's own index of which tensor chunks are in which file (names, shapes,
dtypes, offsets), written and read by torch; every tensor is in the `.distcp` files as raw bytes. Because DCP
records each tensor's global shape and every chunk's offsets, a checkpoint saved at one world size loads at any
other. For LoRA runs only the adapters are in DCP (`ignore_frozen_params`): the frozen base comes from
`model.name`. A finished run's final checkpoint whose HF export is lossless (the training dtype, no LoRA) keeps its
weights there only (`"weights": "hf"` in state.json; DCP then holds AdamW's state, if saved).

The HF directory is written one parameter at a time: every rank gathers one parameter's shards (a collective),
and rank 0 appends its bytes, cast to the export dtype, to a safetensors file whose header it wrote first
(`HFWriter`). Rank 0 never holds more than one whole parameter. `rayalign.json` records an identity
made when the directory was written: the reference cache keys the directory by it instead of hashing its bytes.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import uuid
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions

from rayalign.errors import RayAlignError
from rayalign.train.sharding import SAFETENSORS_DTYPES

IDENTITY_FILE = "rayalign.json"
MAX_SHARD_BYTES = 5 << 30  # 5 GiB a safetensors file, as HF hub models are split
_TRAINABLE = StateDictOptions(ignore_frozen_params=True)


def existing_checkpoints(run_dir: Path) -> list[Path]:
    """A run's checkpoints, oldest first."""
    return sorted((run_dir / "checkpoints").glob("step_*"))


def _rng_states() -> list[str]:
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode())
    return states


def _trainable_state(lm) -> dict:
    """The trainable weights' state dict (sharded where the model is). `ignore_frozen_params` alone keeps a frozen
    weight tied to another name (a LoRA run's tied head): named by the parameters that train, it cannot."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    names = {name for name, p in lm.named_parameters(remove_duplicate=False) if p.requires_grad}
    return {k: v for k, v in get_model_state_dict(lm, options=_TRAINABLE).items() if k in names}


def save_checkpoint(path: Path, model, lm, optimizer, scheduler, step: int, with_optimizer: bool,
                    meta: dict, weights: bool = True, async_group=None):
    """Collective: every rank writes its shards of the trainable weights (unless `weights` is false: the HF files
    beside them hold them) and AdamW's state under `path`/dcp; rank 0 writes trainer/state.json with `meta`
    (what an export needs: base model, LoRA settings). `async_group` (a process group of its own): DCP copies the
    shards to memory and writes them in a background thread; returns its future (the checkpoint is whole once it
    is done), else None."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = {"model": _trainable_state(lm)} if weights else {}
    if with_optimizer:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    pending = None
    if state:  # no fsync per file: a checkpoint is whole once its directory is renamed or handed to Ray Train
        writer = dcp.FileSystemWriter(str(path / "dcp"), sync_files=False)
        if async_group is not None:
            pending = dcp.async_save(state, storage_writer=writer, process_group=async_group)
        else:
            dcp.save(state, storage_writer=writer)
    rng = _rng_states()
    if dist.get_rank() == 0:
        (path / "trainer").mkdir(parents=True, exist_ok=True)
        record = {"step": step, "optimizer": with_optimizer, "weights": "dcp" if weights else "hf",
                  "scheduler": scheduler.state_dict(), "world_size": dist.get_world_size(), "rng": rng, **meta}
        (path / "trainer" / "state.json").write_text(json.dumps(record, indent=1))
    return pending


def read_state(path: Path) -> dict:
    state = Path(path) / "trainer" / "state.json"
    meta = json.loads(state.read_text()) if state.is_file() else None
    if meta is None or (uses_dcp(meta) and not (Path(path) / "dcp" / ".metadata").is_file()):
        raise RayAlignError(f"{path} is not a rayalign checkpoint (no trainer/state.json and dcp/); checkpoints "
                            "written before sharded checkpoints cannot be resumed: start a new run from the model")
    return meta


def weights_in(meta: dict) -> str:
    """Where a checkpoint keeps its trainable weights: "dcp", or "hf" (its lossless export). A checkpoint written
    before the field existed kept them in DCP."""
    return meta.get("weights", "dcp")


def uses_dcp(meta: dict) -> bool:
    return weights_in(meta) == "dcp" or meta["optimizer"]


def load_checkpoint(path: Path, model, lm, optimizer, scheduler) -> int:
    """Collective: load this rank's shards of the trainable weights and AdamW's state from `path` (saved at any
    world size), the scheduler and this rank's RNG; returns the step reached."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    meta = read_state(path)
    state = {"model": _trainable_state(lm)} if weights_in(meta) == "dcp" else {}
    if meta["optimizer"]:  # saved without it (train.save_optimizer=false): a fresh AdamW
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    if state:
        dcp.load(state, checkpoint_id=str(Path(path) / "dcp"))
    if "model" in state:
        set_model_state_dict(lm, state["model"], options=StateDictOptions(strict=False))
    else:  # the weights are the HF files of a finished run's lossless export
        from rayalign.train.sharding import WeightFiles, fill_shards

        files = WeightFiles(path)
        try:
            fill_shards(lm, files)
        finally:
            files.close()
    if meta["optimizer"]:
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optim"])
    scheduler.load_state_dict(meta["scheduler"])
    if dist.get_rank() < len(meta["rng"]):
        saved = base64.b64decode(meta["rng"][dist.get_rank()])
        torch.set_rng_state(torch.frombuffer(bytearray(saved), dtype=torch.uint8))
    return int(meta["step"])


_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


class HFWriter:
    """Writes an HF model directory one tensor at a time, holding none but the one being written.

    The names and shapes are known before any value (`entries`, in the order `add` will be called), so each
    safetensors file's header (names, dtypes, shapes, byte offsets) is written first and every tensor's bytes are
    appended as it arrives. Files hold up to `max_shard_bytes`, named model-0000i-of-0000N as HF names them (one
    file: model.safetensors), with the index, config, tokenizer and identity file beside them.
    """

    def __init__(self, out: Path, dtype: torch.dtype, entries: list[tuple[str, list[int], torch.dtype]],
                 max_shard_bytes: int = MAX_SHARD_BYTES):
        self.out, self.dtype = Path(out), dtype
        self.out.mkdir(parents=True, exist_ok=True)
        self.files: list[dict] = []
        for name, shape, kept in entries:
            size = math.prod(shape) * (dtype if kept.is_floating_point else kept).itemsize
            if not self.files or (self.files[-1]["bytes"] and self.files[-1]["bytes"] + size > max_shard_bytes):
                self.files.append({"header": {}, "bytes": 0})
            last = self.files[-1]
            code = _CODES[dtype if kept.is_floating_point else kept]
            last["header"][name] = {"dtype": code, "shape": list(shape), "data_offsets": [last["bytes"],
                                                                                          last["bytes"] + size]}
            last["bytes"] += size
        count = len(self.files)
        for i, file in enumerate(self.files):
            file["name"] = "model.safetensors" if count == 1 else f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        self.where = {name: i for i, file in enumerate(self.files) for name in file["header"]}
        self.handle, self.current, self.data_start = None, -1, 0

    def _open(self, index: int) -> None:
        if self.handle is not None:
            self.handle.close()
        file = self.files[index]
        header = json.dumps({"__metadata__": {"format": "pt"}, **file["header"]}).encode()
        header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self.handle = open(self.out / file["name"], "wb")
        self.handle.write(len(header).to_bytes(8, "little") + header)
        self.current, self.data_start = index, 8 + len(header)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        index = self.where[name]
        if index != self.current:
            self._open(index)
        spec = self.files[index]["header"][name]
        tensor = tensor.detach().to("cpu", self.dtype if tensor.is_floating_point() else tensor.dtype).contiguous()
        if list(tensor.shape) != spec["shape"] or self.handle.tell() != self.data_start + spec["data_offsets"][0]:
            raise RuntimeError(f"HFWriter: {name} out of order or of another shape than announced")
        self.handle.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))  # no copy of the bytes

    def close(self, config, tokenizer=None) -> None:
        if self.handle is not None:
            self.handle.close()
        if len(self.files) > 1:
            weight_map = {name: file["name"] for file in self.files for name in file["header"]}
            total = sum(file["bytes"] for file in self.files)
            (self.out / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
        config.dtype = self.dtype
        config.save_pretrained(self.out)
        if getattr(config, "auto_map", None):  # a model with code of its own (trust_remote_code): the code goes along
            for code in Path(config.name_or_path).glob("*.py"):
                shutil.copy2(code, self.out / code.name)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.out)
        write_identity(self.out)


def write_identity(out: Path) -> None:
    """Record that rayalign wrote this model directory, with a new identity (the reference cache's key)."""
    (Path(out) / IDENTITY_FILE).write_text(json.dumps({"identity": uuid.uuid4().hex}))


def recorded_identity(directory: Path) -> str | None:
    path = Path(directory) / IDENTITY_FILE
    return json.loads(path.read_text())["identity"] if path.is_file() else None


def export_model(out: Path, lm, tokenizer, dtype: torch.dtype, lora: bool) -> None:
    """Collective: write the HF directory of the sharded model `lm` to `out` on rank 0, streamed (module doc).
    LoRA: the peft adapter directory (the adapters are small: gathered whole)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.tensor import DTensor

    if lora:
        adapters = get_model_state_dict(lm, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                     ignore_frozen_params=True))
        if dist.get_rank() == 0:
            lm.save_pretrained(out, state_dict=adapters)
            tokenizer.save_pretrained(out)
            write_identity(out)
        return
    state, seen = {}, set()
    for name, value in get_model_state_dict(lm).items():
        param = lm.get_parameter(name) if name.endswith(("weight", "bias")) else value
        if id(param) not in seen:  # a tied weight (the head is the embeddings) is saved once, as HF does
            seen.add(id(param))
            state[name] = value
    writer = HFWriter(out, dtype, [(k, list(v.shape), v.dtype) for k, v in state.items()]) \
        if dist.get_rank() == 0 else None
    for name, value in state.items():
        full = value.full_tensor() if isinstance(value, DTensor) else value
        if writer is not None:
            writer.add(name, full)
        del full
    if writer is not None:
        writer.close(lm.config, tokenizer)


def layer_of(key: str) -> int | None:
    """The decoder layer a weight's name belongs to (`....layers.<i>....`), or None."""
    found = re.search(r"\.layers\.(\d+)\.", key)
    return int(found.group(1)) if found else None


def dcp_groups(keys: list[str]) -> list[list[str]]:
    """Weight names grouped by decoder layer (one group per layer, in order; the rest one group each)."""
    groups: dict[object, list[str]] = {}
    for key in keys:
        layer = layer_of(key)
        groups.setdefault(key if layer is None else layer, []).append(key)
    return list(groups.values())
