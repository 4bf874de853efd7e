"""Reference-model log-probs, computed once per dataset and cached on disk.

The reference is frozen, so its per-token log-probs of every response are a constant of the
dataset: computing them once (sharded over the workers) instead of at every step halves the
forward passes of DPO training. Only the pairs the run's steps will use are scored (a run of
8 steps × 4 pairs on 64 pairs scores 32). The cache file is keyed by the reference's identity (recorded when rayalign wrote it, else a hash of its weights),
the tokenised data (which covers the tokenisation settings), the pairs scored, the numerics (parameter dtype,
mixed precision) and the log-prob code's version,
so a changed model or setting can never read a stale cache. Values are stored per token, flat
with offsets, in safetensors: token-level losses (BMC) need them, sums are derived.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from rayalign.files import atomic_write, cache_key
from rayalign.train.step import pair_batch

CACHE_VERSION = "2"  # 2: the shared-prompt layout


def model_fingerprint(resolved: str, revision: str | None = None) -> str:
    """The identity a model directory that rayalign wrote recorded (`rayalign.json`: no byte of the weights is
    read), else the sha256 of its weight files, or of the hub id and `revision` when it is not a directory."""
    from rayalign.train.checkpoint import recorded_identity

    digest = hashlib.sha256(CACHE_VERSION.encode())
    path = Path(resolved)
    identity = recorded_identity(path) if path.is_dir() else None
    if identity or not path.is_dir():
        digest.update((identity or f"{resolved}@{revision or 'main'}").encode())
        return digest.hexdigest()
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        with open(weights, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def cache_path(cache_dir: Path, model_fp: str, data_fp: str, dtype: str, mixed_precision: bool,
               indices: list[int] | None = None) -> Path:
    """The cache file of these weights, data, pairs (`indices`; None: all) and numerics: bf16 (or bf16-autocast)
    log-probs differ from fp32 ones by more than training tolerates, so a run never reads values computed at
    another precision."""
    subset = "" if indices is None else ":" + ",".join(map(str, sorted(indices)))
    return cache_dir / f"{cache_key(f'{model_fp}:{data_fp}:{dtype}:{mixed_precision}{subset}')}.safetensors"


def _pack(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([0] + [len(r) for r in rows])
    return torch.cat(rows).float(), lengths.cumsum(0)


def _unpack(flat: torch.Tensor, offsets: torch.Tensor) -> list[torch.Tensor]:
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


@torch.no_grad()
def compute_reference(model, pairs, indices: list[int], pad_id: int, micro_batch: int, device,
                      shared_prompt: bool = True) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{index: (chosen, rejected) per-token reference log-probs} of the pairs `indices`; collective over ranks.

    Rank r scores the r-th, (r+W)-th, ... of them; every rank runs the same number of forwards (FSDP needs
    them in step), the last ones padded with repeats that are then dropped.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = indices[rank::world]
    per_rank = -(-len(indices) // world)
    steps = -(-per_rank // micro_batch)
    scored: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for s in range(steps):
        chunk = mine[s * micro_batch:(s + 1) * micro_batch] or mine[:1] or indices[:1]
        batch = pair_batch([pairs[i] for i in chunk], pad_id, device, shared_prompt)
        logps, mask = model(batch).cpu(), batch["response_mask"].cpu()
        for j, index in enumerate(chunk):
            k = len(chunk) + j
            scored[index] = (logps[j][mask[j]], logps[k][mask[k]])
    gathered: list = [None] * world
    dist.all_gather_object(gathered, scored)
    return {index: value for part in gathered for index, value in part.items()}


def save_reference(path: Path, values: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
    order = sorted(values)
    chosen, chosen_offsets = _pack([values[i][0] for i in order])
    rejected, rejected_offsets = _pack([values[i][1] for i in order])
    tensors = {"indices": torch.tensor(order, dtype=torch.long), "chosen": chosen, "chosen_offsets": chosen_offsets,
               "rejected": rejected, "rejected_offsets": rejected_offsets}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))  # never a half cache, even with concurrent runs


def load_reference(path: Path) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    t = load_file(path)
    pairs = zip(_unpack(t["chosen"], t["chosen_offsets"]), _unpack(t["rejected"], t["rejected_offsets"]))
    return dict(zip(t["indices"].tolist(), pairs))


def batch_reference(values, indices: list[int], response_mask: torch.Tensor) -> torch.Tensor:
    """Place cached per-token values of `indices` into the response layout [2B, R] (chosen rows first)."""
    rows = [values[i][0] for i in indices] + [values[i][1] for i in indices]
    out = torch.zeros(response_mask.shape, dtype=torch.float32)
    return out.masked_scatter(response_mask.cpu(), torch.cat(rows)).to(response_mask.device)
