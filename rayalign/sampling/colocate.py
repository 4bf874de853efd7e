"""Samplers and trainer on the same GPUs (`sampling.colocate=true`): the hybrid engine of OpenRLHF and verl.

One placement group of one-GPU bundles, one per GPU: in bundle i the trainer's rank i holds 1 - s of the GPU and a
vLLM engine s (`sampling.gpus_per_actor`), so Ray's fractional GPUs put both on the same device. vLLM runs in sleep
mode: while the trainer steps, the engines sleep (level 1: weights offloaded to CPU memory, KV cache freed) and they
wake before the weight sync and the next round's sampling. The weights cannot cross by NCCL, which refuses two ranks
on one GPU, so each trainer rank hands the engine on its GPU CUDA IPC handles of the bf16 buckets (`ipc_deliverer`):
the engine's worker maps the trainer's memory and loads from it, and no byte leaves the device.

GPU-only: written against vLLM's documented `LLM(enable_sleep_mode=True)`, `LLM.sleep(level=1)`, `LLM.wake_up()` and
torch's `torch.multiprocessing.reductions.reduce_tensor` (the handle OpenRLHF's colocated engines exchange); run
where a GPU is lent. On CPU the checks and the placement are tested with declared GPUs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rayalign.errors import ConfigError, RayAlignError


def check_colocate(cfg) -> None:
    """One line for a colocated run that cannot work: vLLM (sleep mode), GPU training, one GPU per engine, a share
    of it for the engine, and one trainer rank per engine."""
    s, t = cfg.sampling, cfg.train
    problems = []
    if s.engine != "vllm":
        problems.append("sampling.engine=vllm (its sleep mode frees the GPU for the trainer)")
    if not t.use_gpu:
        problems.append("train.use_gpu=true")
    if s.tensor_parallel_size != 1:
        problems.append("sampling.tensor_parallel_size=1")
    if not 0 < s.gpus_per_actor < 1:
        problems.append("sampling.gpus_per_actor between 0 and 1 (the engine's share of its GPU, e.g. 0.4)")
    if t.num_workers not in ("auto", s.num_actors):
        problems.append(f"train.num_workers={s.num_actors} (one trainer rank per engine's GPU)")
    if problems:
        raise ConfigError("sampling.colocate=true needs " + "; ".join(problems))


def colocated_trainer(cfg):
    """The run's TrainConfig when colocated: one Ray actor rank per sampler GPU (never local mode: Ray places it)."""
    import dataclasses

    return dataclasses.replace(cfg.train, num_workers=cfg.sampling.num_actors)


def colocated_groups(cfg) -> list:
    """The one placement group that trainer and engines share: a bundle per GPU with both's CPUs."""
    from rayalign.sampling.pool import engine_groups

    s, t = cfg.sampling, cfg.train
    return engine_groups(s.num_actors, s.cpus_per_actor + t.cpus_per_worker, 1.0, 1, "PACK", t.start_wait_s)


def gpu_id() -> str | None:
    """This process's GPU (its UUID: the same device has the same one in every process), None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)


def ipc_deliverer(samplers: list, plan, dtype: str) -> Callable[[torch.Tensor, list[int]], None]:
    """`weight_sync.send`'s delivery to the engines on this trainer rank's GPU: each bucket as a CUDA IPC handle,
    loaded before the next bucket is built (the bucket's memory is the trainer's until the engines return)."""
    import ray
    from torch.multiprocessing.reductions import reduce_tensor

    def deliver(flat: torch.Tensor, indices: list[int]) -> None:
        torch.cuda.synchronize()  # the bucket is written before another process reads it
        entries = [plan[i] for i in indices]
        ray.get([s.receive_ipc.remote(reduce_tensor(flat), entries, dtype) for s in samplers])

    return deliver


def open_ipc(handle) -> torch.Tensor:
    """An engine worker: the trainer's bucket, mapped from its CUDA IPC `handle` onto this process's device."""
    rebuild, args = handle
    args = list(args)
    args[6] = torch.cuda.current_device()  # the device index as this process numbers it (Ray sets its visible GPUs)
    tensor = rebuild(*args)
    if tensor.device.type != "cuda":
        raise RayAlignError("colocated weight sync: the IPC handle did not map a CUDA tensor")
    return tensor
