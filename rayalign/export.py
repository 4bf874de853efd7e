"""`rayalign export RUN_OR_CHECKPOINT OUT`: the HF directory of a checkpoint, streamed from its DCP shards.

Runs in one process with no process group: the checkpoint's tensors are read one decoder layer at a time
(`dcp.load(..., no_dist=True)` of that layer's keys), cast to the dtype asked and appended to safetensors files
(`HFWriter`, which writes each file's header first), so memory holds one layer, whatever the model's size. The
directory appears whole or not at all (built beside OUT, then renamed). Trainer state is left out.
A LoRA run exports its peft adapter directory, or with `merge_lora` the base model with W + (α/r)·B·A in every
adapted weight (the base read layer by layer from its own files).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rayalign.errors import RayAlignError
from rayalign.files import atomic_write_dir
from rayalign.train.checkpoint import (
    HFWriter,
    dcp_groups,
    existing_checkpoints,
    layer_of,
    read_state,
    weights_in,
    write_identity,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def find_checkpoint(source: str) -> Path:
    """A checkpoint directory, or a run directory's newest checkpoint (a URI's: downloaded first)."""
    from rayalign.storage import RunStorage, download_model, is_uri

    if is_uri(source):
        parent, name = source.rstrip("/").rsplit("/", 1)
        found = [source] if name.startswith("step_") else RunStorage(parent, name).checkpoints()
        if not found:
            raise RayAlignError(f"{source}: no checkpoints there")
        return Path(download_model(found[-1], with_state=True))
    path = Path(source)
    if (path / "trainer" / "state.json").is_file():
        return path
    found = existing_checkpoints(path)
    if not found:
        raise RayAlignError(f"{source}: neither a checkpoint (with dcp/) nor a run directory with checkpoints/")
    return found[-1]


def _load(checkpoint: Path, keys: list[str], shapes: dict) -> dict[str, torch.Tensor]:
    import torch.distributed.checkpoint as dcp

    if not keys:
        return {}
    state = {key: torch.empty(shapes[key].size, dtype=shapes[key].properties.dtype) for key in keys}
    dcp.load(state, checkpoint_id=str(checkpoint / "dcp"), no_dist=True)
    return state


def export_checkpoint(source: str, out: str, dtype: str | None = None, merge_lora: bool = False) -> Path:
    """Write the HF directory (or peft adapter directory) of `source` to `out`; returns the checkpoint read."""
    from torch.distributed.checkpoint import FileSystemReader

    from rayalign.models import LoadOptions, load_config, load_tokenizer, resolve_model
    from rayalign.train.sharding import local_files

    checkpoint = find_checkpoint(source)
    meta = read_state(checkpoint)
    dtype = dtype or meta.get("export_dtype", "float32")
    if dtype not in DTYPES:
        raise RayAlignError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    shapes = FileSystemReader(str(checkpoint / "dcp")).read_metadata().state_dict_metadata \
        if (checkpoint / "dcp").is_dir() else {}
    keys = [k for k in shapes if k.startswith("model.")]
    options = LoadOptions(meta.get("revision"), meta.get("trust_remote_code", False))
    base = local_files(resolve_model(meta["model"]), options)
    config, tokenizer, lora = load_config(base, options), load_tokenizer(meta["model"], options), meta.get("lora")
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RayAlignError(f"{out} exists and is not empty; export into a new directory")
    if out_dir.exists():
        out_dir.rmdir()  # an empty one: the export is renamed into its place

    def build(tmp: Path) -> None:
        if lora and not merge_lora:
            _write_adapters(tmp, _load(checkpoint, keys, shapes), lora, meta["model"], DTYPES[dtype])
        elif lora:
            _merge(tmp, DTYPES[dtype], checkpoint, keys, shapes, base, lora, config)
        elif weights_in(meta) == "hf":  # a finished run's lossless export holds the weights
            _merge(tmp, DTYPES[dtype], checkpoint, [], {}, str(checkpoint), None, config)
        else:
            _write_model(tmp, DTYPES[dtype], checkpoint, keys, shapes, config)
        tokenizer.save_pretrained(tmp)

    atomic_write_dir(out_dir, build)
    return checkpoint


def _write_model(out: Path, dtype: torch.dtype, checkpoint: Path, keys: list[str], shapes: dict, config) -> None:
    """The trained weights, one decoder layer's keys at a time."""
    if getattr(config, "tie_word_embeddings", False):
        keys = [k for k in keys if k != "model.lm_head.weight"]  # the embeddings, saved once as HF does
    groups = dcp_groups(keys)
    writer = HFWriter(out, dtype, [(k.removeprefix("model."), list(shapes[k].size), shapes[k].properties.dtype)
                                   for g in groups for k in g])
    for group in groups:
        for key, value in _load(checkpoint, group, shapes).items():
            writer.add(key.removeprefix("model."), value)
    writer.close(config)


def _write_adapters(out: Path, tensors: dict, lora: dict, base_name: str, dtype: torch.dtype) -> None:
    from peft import LoraConfig
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    adapters = {k.removeprefix("model.").replace(".default.", "."): v.to(dtype).contiguous()
                for k, v in tensors.items()}
    save_file(adapters, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], target_modules=lora["targets"], task_type="CAUSAL_LM",
               base_model_name_or_path=base_name).save_pretrained(out)
    write_identity(out)


def _merge(out: Path, dtype: torch.dtype, checkpoint: Path, keys: list[str], shapes: dict, base: str,
           lora: dict | None, config) -> None:
    """The weights of the HF directory `base` in file order, layer by layer, each adapted one (`lora`: its adapters
    in the checkpoint's DCP `keys`) with its update added."""
    from rayalign.train.sharding import WeightFiles

    files = WeightFiles(base)
    groups = dcp_groups(files.keys())
    writer = HFWriter(out, dtype, [(key, files.shape(key), files.dtype(key)) for group in groups for key in group])
    scale = lora["alpha"] / lora["r"] if lora else 0.0
    by_layer: dict[int | None, list[str]] = {}
    for key in keys:
        by_layer.setdefault(layer_of(key), []).append(key)
    loaded: dict[int | None, dict] = {}
    try:
        for group in groups:
            layer = layer_of(group[0])
            if layer not in loaded:  # one layer's adapters at a time (the rest, outside layers, once)
                loaded = {layer: _load(checkpoint, by_layer.get(layer, []), shapes)}
            adapters = loaded[layer]
            for key in group:
                weight = files.rows(key, 0, files.shape(key)[0]).float()
                stem = "model.base_model.model." + key.removesuffix(".weight")
                a, b = adapters.get(f"{stem}.lora_A.default.weight"), adapters.get(f"{stem}.lora_B.default.weight")
                writer.add(key, weight if a is None else weight + scale * (b.float() @ a.float()))
    finally:
        files.close()
    writer.close(config)
