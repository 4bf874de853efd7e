"""Weights from the trainer to the samplers over a collective: no file, no driver copy, no object-store copy.

One sync is one broadcast group: the trainer's rank 0 opens a `TCPStore` (port 0: the OS picks a free one, so two
syncs never race for a port), every sampler process joins it with ranks 1..n, and the weights travel in buckets of
up to `BUCKET_BYTES`, each one flat tensor of whole parameters in the samplers' dtype, in the order of the trainer's
plan (names and shapes, sent beside the call: small); two are in flight, one packed or loaded while the other
travels. Every trainer rank takes part in gathering a parameter from its FSDP2 shards (`full_parameters`); only
rank 0 is in the group. NCCL when trainer and samplers are all on GPUs, else gloo.

The group is built from `torch.distributed`'s process-group classes directly, not with `init_process_group`:
a trainer rank already has its default group (FSDP's), and a sampler must not get one. It lives for one sync, so a
sampler that restarted simply joins the next one (`SamplerPool.catch_up`): the same code path as every sync.
A receiver applies each bucket as it arrives (`load(named_tensors)`), so it never holds a second copy of the model.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

BUCKET_BYTES = 64 << 20
TIMEOUT = datetime.timedelta(minutes=10)

Plan = list[tuple[str, tuple[int, ...]]]
"""The trainer's parameters, in the order they are sent: (HF name, shape). Tied weights appear once."""


@dataclass(frozen=True)
class Rendezvous:
    """Where a sync's group meets, and its size (the trainer's rank 0 plus every sampler process)."""

    address: str
    port: int
    world: int
    backend: str  # gloo | nccl


def transfer_device(meet: Rendezvous, device: torch.device) -> torch.device:
    """Where a process packs or receives buckets: its GPU under NCCL, the CPU under gloo (a GPU trainer sending to
    CPU samplers, or the other way round, goes through gloo)."""
    return device if meet.backend == "nccl" else torch.device("cpu")


def buckets(plan: Plan, dtype: torch.dtype, bucket_bytes: int = BUCKET_BYTES) -> list[list[int]]:
    """The plan's parameter indices cut into buckets of at most `bucket_bytes` (a larger parameter alone)."""
    size = torch.empty((), dtype=dtype).element_size()
    cut: list[list[int]] = [[]]
    used = 0
    for index, (_, shape) in enumerate(plan):
        nbytes = size * math.prod(shape)
        if cut[-1] and used + nbytes > bucket_bytes:
            cut.append([])
            used = 0
        cut[-1].append(index)
        used += nbytes
    return [b for b in cut if b]


def open_store(world: int):
    """On the trainer's rank 0: (the store, this node's address, its port) for a group of `world` processes."""
    import ray
    import torch.distributed as dist

    store = dist.TCPStore("0.0.0.0", 0, world, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    return store, ray.util.get_node_ip_address(), store.port


def join(meet: Rendezvous, rank: int, store=None):
    """This process's handle on the sync's group (`store`: rank 0's own, else a client of it)."""
    import torch.distributed as dist

    if store is None:
        store = dist.TCPStore(meet.address, meet.port, meet.world, is_master=False, timeout=TIMEOUT)
    if meet.backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, meet.world)
    return dist.ProcessGroupGloo(store, rank, meet.world, TIMEOUT)


def send(named: Iterator[tuple[str, torch.Tensor]], plan: Plan, dtype: torch.dtype, device: torch.device,
         deliver: Callable[[torch.Tensor, list[int]], object] | None) -> int:
    """Pack the parameters `named` yields (in plan order) bucket by bucket and `deliver(flat, indices)` each one
    (a broadcast, or CUDA IPC handles); returns the bytes delivered. `deliver` may return a pending transfer (with
    `wait`): the next bucket is packed while it runs, and at most two are held. `deliver` None: a trainer rank that
    only takes part in gathering each parameter (`full_parameters` is a collective)."""
    sent, in_flight = 0, None
    for bucket in buckets(plan, dtype):
        parts = []
        for index in bucket:
            name, tensor = next(named)
            if name != plan[index][0]:
                raise RuntimeError(f"weight sync: parameter {name} out of the plan's order (a bug)")
            if deliver is not None:
                parts.append(tensor.detach().to(device=device, dtype=dtype).reshape(-1))
        if deliver is not None:
            flat = torch.cat(parts)
            _wait(in_flight)
            in_flight = deliver(flat, bucket)
            sent += flat.numel() * flat.element_size()
    _wait(in_flight)
    return sent


def _wait(pending) -> None:
    if pending is not None:
        pending.wait()


def broadcaster(group) -> Callable[[torch.Tensor, list[int]], object]:
    """`send`'s delivery over a sync group, from rank 0: the broadcast, pending."""
    return lambda flat, _: group.broadcast(flat, 0)


def receive(group, plan: Plan, dtype: torch.dtype, device: torch.device,
            load: Callable[[list[tuple[str, torch.Tensor]]], None]) -> None:
    """A sampler process: take every bucket from rank 0 and hand its parameters to `load`, bucket by bucket; the
    next bucket's receive is posted before this one is loaded."""
    cut = buckets(plan, dtype)

    def post(bucket: list[int]):
        entries = [plan[i] for i in bucket]
        flat = torch.empty(sum(math.prod(shape) for _, shape in entries), dtype=dtype, device=device)
        return flat, entries, group.broadcast(flat, 0)

    pending = post(cut[0]) if cut else None
    for k in range(len(cut)):
        flat, entries, work = pending
        pending = post(cut[k + 1]) if k + 1 < len(cut) else None
        work.wait()
        load(split(flat, entries))


def split(flat: torch.Tensor, entries: Plan) -> list[tuple[str, torch.Tensor]]:
    """A bucket's flat tensor as its named parameters (views, no copy)."""
    named, offset = [], 0
    for name, shape in entries:
        count = math.prod(shape)
        named.append((name, flat[offset:offset + count].view(shape)))
        offset += count
    return named


def full_parameters(lm: torch.nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    """Collective on every trainer rank: each parameter of `lm` whole (an FSDP2 shard all-gathered), one at a time,
    under its HF name; a tied parameter once."""
    from torch.distributed.tensor import DTensor

    for name, param in lm.named_parameters():
        yield name, param.full_tensor() if isinstance(param, DTensor) else param.detach()


def load_into(model: torch.nn.Module) -> Callable[[list[tuple[str, torch.Tensor]]], None]:
    """A receiver's `load` for a transformers model: copy each tensor into the parameter of that name."""
    from rayalign.errors import RayAlignError

    params = dict(model.named_parameters(remove_duplicate=False))

    def load(named: list[tuple[str, torch.Tensor]]) -> None:
        for name, tensor in named:
            if name not in params or params[name].shape != tensor.shape:
                raise RayAlignError(f"weight sync: the trainer sent {name} {tuple(tensor.shape)}, which this sampler's "
                                    "model does not have; do trainer and samplers hold the same model?")
            params[name].data.copy_(tensor)

    return load

