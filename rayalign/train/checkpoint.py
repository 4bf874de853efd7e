"""Checkpoints: an HF model directory plus the state to resume training, and no pickles.

Layout of one checkpoint directory::

    config.json, model.safetensors, tokenizer files   # AutoModelForCausalLM.from_pretrained loads it
    trainer/state.json           # step, optimizer param groups, LR scheduler state
    trainer/optimizer.safetensors  # AdamW moments, keyed "<param fqn>/<name>"
    trainer/rng.safetensors      # each rank's torch RNG state

Every rank takes part in gathering the full (unsharded) state; rank 0 writes the files.
Loading reads safetensors and JSON only, never ``torch.load`` of a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors = {}
    for fqn, entries in state["state"].items():
        for name, value in entries.items():
            tensors[f"{fqn}/{name}"] = torch.as_tensor(value).contiguous()
    return tensors, state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> dict:
    state: dict = {}
    for key, value in tensors.items():
        fqn, name = key.rsplit("/", 1)
        state.setdefault(fqn, {})[name] = value
    for group in param_groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": param_groups}


def existing_checkpoints(run_dir: Path) -> list[Path]:
    """A run's checkpoints, oldest first."""
    return sorted((run_dir / "checkpoints").glob("step_*"))


def save_checkpoint(path: Path, model, lm, tokenizer, optimizer, scheduler, step: int,
                    with_optimizer: bool = True) -> None:
    """Collective: every rank calls it; rank 0 writes `path`. Without the optimizer state (AdamW's moments,
    twice the weights) the checkpoint is a model to load, and a resume from it starts a fresh AdamW."""
    weights = get_model_state_dict(lm, options=_FULL)
    optim = get_optimizer_state_dict(model, optimizer, options=_FULL) if with_optimizer else None
    rng = [None] * dist.get_world_size()
    dist.all_gather_object(rng, torch.get_rng_state())
    if dist.get_rank() != 0:
        return
    path.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(path, state_dict=weights, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "trainer").mkdir(exist_ok=True)
    groups = None
    if optim is not None:
        tensors, groups = _flatten_optimizer(optim)
        save_file(tensors, path / "trainer" / "optimizer.safetensors")
    save_file({f"rank{r}": state for r, state in enumerate(rng)}, path / "trainer" / "rng.safetensors")
    meta = {"step": step, "param_groups": groups, "scheduler": scheduler.state_dict()}
    (path / "trainer" / "state.json").write_text(json.dumps(meta, indent=1))


def load_training_state(path: Path, model, optimizer, scheduler) -> int:
    """Restore optimizer, scheduler and this rank's RNG from `path`; returns the step reached.

    The weights themselves were loaded by building the model from `path` (an HF directory).
    """
    meta = json.loads((path / "trainer" / "state.json").read_text())
    if meta["param_groups"] is not None:  # saved without it (train.save_optimizer=false): a fresh AdamW
        tensors = load_file(path / "trainer" / "optimizer.safetensors")
        optim = _unflatten_optimizer(tensors, meta["param_groups"])
        set_optimizer_state_dict(model, optimizer, optim_state_dict=optim, options=_FULL)
    scheduler.load_state_dict(meta["scheduler"])
    rng = load_file(path / "trainer" / "rng.safetensors")
    mine = rng.get(f"rank{dist.get_rank()}")
    if mine is not None:
        torch.set_rng_state(mine)
    return int(meta["step"])
