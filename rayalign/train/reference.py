"""Reference-model log-probs, computed once per dataset and cached on disk.

The reference is frozen, so its per-token log-probs of every response are a constant of the
dataset: computing them once (sharded over the workers) instead of at every step halves the
forward passes of DPO training. The cache file is keyed by a hash of the reference weights,
the tokenised data (which covers the tokenisation settings), the numerics (parameter dtype,
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

from rayalign.data import collate_pairs
from rayalign.files import atomic_write, cache_key

CACHE_VERSION = "1"


def model_fingerprint(resolved: str) -> str:
    """sha256 of a model directory's weight files, or of the hub id when it is not a directory."""
    digest = hashlib.sha256(CACHE_VERSION.encode())
    path = Path(resolved)
    if not path.is_dir():
        digest.update(resolved.encode())
        return digest.hexdigest()
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        with open(weights, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def cache_path(cache_dir: Path, model_fp: str, data_fp: str, dtype: str, mixed_precision: bool) -> Path:
    """The cache file of these weights, data and numerics: bf16 (or bf16-autocast) log-probs differ from fp32 ones
    by more than training tolerates, so a run never reads values computed at another precision."""
    return cache_dir / f"{cache_key(f'{model_fp}:{data_fp}:{dtype}:{mixed_precision}')}.safetensors"


def _pack(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([0] + [len(r) for r in rows])
    return torch.cat(rows).float(), lengths.cumsum(0)


def _unpack(flat: torch.Tensor, offsets: torch.Tensor) -> list[torch.Tensor]:
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


@torch.no_grad()
def compute_reference(model, pairs, pad_id: int, micro_batch: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(chosen, rejected) per-token reference log-probs of every pair; collective over ranks.

    Rank r scores pairs r, r+W, ...; every rank runs the same number of forwards (FSDP needs
    them in step), the last ones padded with repeats that are then dropped.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = list(range(rank, len(pairs), world))
    per_rank = -(-len(pairs) // world)
    steps = -(-per_rank // micro_batch)
    scored: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for s in range(steps):
        chunk = mine[s * micro_batch:(s + 1) * micro_batch] or mine[:1] or [0]
        batch = {k: v.to(device) for k, v in collate_pairs([pairs[i] for i in chunk], pad_id).items()}
        logps = model(batch["input_ids"], batch["attention_mask"], batch["response_mask"]).cpu()
        mask = batch["response_mask"].cpu()
        for j, index in enumerate(chunk):
            if index in mine:
                k = len(chunk) + j
                scored[index] = (logps[j][mask[j]], logps[k][mask[k]])
    gathered: list = [None] * world
    dist.all_gather_object(gathered, scored)
    merged = {index: value for part in gathered for index, value in part.items()}
    return [merged[i] for i in range(len(pairs))]


def save_reference(path: Path, values: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    chosen, chosen_offsets = _pack([c for c, _ in values])
    rejected, rejected_offsets = _pack([r for _, r in values])
    tensors = {"chosen": chosen, "chosen_offsets": chosen_offsets, "rejected": rejected,
               "rejected_offsets": rejected_offsets}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))  # never a half cache, even with concurrent runs


def load_reference(path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    t = load_file(path)
    return list(zip(_unpack(t["chosen"], t["chosen_offsets"]), _unpack(t["rejected"], t["rejected_offsets"])))


def batch_reference(values, indices: list[int], response_mask: torch.Tensor) -> torch.Tensor:
    """Place cached per-token values of `indices` into a collated [2B, L] layout (chosen rows first)."""
    rows = [values[i][0] for i in indices] + [values[i][1] for i in indices]
    out = torch.zeros(response_mask.shape, dtype=torch.float32)
    return out.masked_scatter(response_mask.cpu(), torch.cat(rows)).to(response_mask.device)
