"""The trainer of an online run (D2PO): built once, alive for every round.

The worker processes, the policy, its AdamW and the frozen reference are built at the run's start (or its resume)
and stay; each round's pairs reach them by an actor call (`train_round`) and its weights leave by a collective
(`send_weights`, `rayalign.sampling.weight_sync`). Why actor calls, not a `TorchTrainer` fed from a queue: a round
is a synchronous exchange with the driver — train on these pairs, then join the samplers' group at the moment they
join it — and `TorchTrainer.fit` gives the driver no call into its workers. So, as OpenRLHF's and verl's trainers
are, the group is Ray actors in one placement group with one torch process group (gloo on CPU, NCCL on GPU); in local
mode (`train.num_workers: auto` on one machine) it is this process. Ray Train runs every offline training.

A round trains exactly as a new trainer started from the round's policy would (a test compares them bitwise): the
same seed, a fresh AdamW state (the moments reset, the object kept), the round's own schedule over its steps, the
reference's log-probs of the round's pairs from the live frozen reference (no disk cache: every round's pairs are
new). Each round ends with the policy's checkpoint (`save`: DCP shards written in the background while the weights
go to the samplers; the last round's also as the HF directory the evaluation reads), so resuming is per round, as
before; a worker lost mid-round costs that round's training, redone by a new group from
the last round's checkpoint (`TrainerLost`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from rayalign import config as config_lib
from rayalign.errors import RayAlignError
from rayalign.sampling import weight_sync
from rayalign.storage import download_model, is_uri
from rayalign.train import reference as ref_lib
from rayalign.train.checkpoint import save_checkpoint
from rayalign.train.loop import (
    build_model,
    make_optimizer,
    make_scheduler,
    take_step,
    total_steps,
    used_pairs,
    write_checkpoint,
)


class TrainerLost(RayAlignError):
    """A trainer process died (its node, OOM, a kill): the round's training is redone by a new group."""


class OnlineTrainer:
    """One rank of the online trainer (a Ray actor, or the driver itself in local mode)."""

    def free_address(self) -> str:
        """Rank 0: a `tcp://` address on this node for the group's rendezvous."""
        import ray

        from rayalign.serving import free_port

        return f"tcp://{ray.util.get_node_ip_address()}:{free_port('')}"

    def setup(self, config: dict, start: str, env: dict, rank: int, world: int, address: str | None) -> int:
        """Join the process group (`address` None: a one-process group, local mode), build the policy from `start`,
        its AdamW and the frozen reference; returns this process's id."""
        from rayalign.losses import needs_reference
        from rayalign.models import load_tokenizer
        from rayalign.train.loop import _local_device_and_group

        os.environ.update(env)
        self.cfg = cfg = config_lib.build(config)
        self._owns_group = address is None and not dist.is_initialized()  # local mode: closed with the trainer
        if address is None:
            self.device = _local_device_and_group(cfg.train.use_gpu)
        else:
            backend = "nccl" if cfg.train.use_gpu else "gloo"
            dist.init_process_group(backend, init_method=address, rank=rank, world_size=world)
            self.device = torch.device("cuda", 0) if cfg.train.use_gpu else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.threads = torch.get_num_threads()
        torch.set_num_threads(cfg.train.torch_threads)
        self.tokenizer = load_tokenizer(cfg.model.name, cfg.model.options)
        torch.manual_seed(cfg.train.seed)
        self._save_group = dist.new_group(backend="gloo")  # the background checkpoint writes' own collectives
        self._pending = self._partial = None
        self.steps = 0
        self._start_from(start)
        self.reference = None
        if needs_reference(cfg.loss):
            self.reference = build_model(cfg.model.reference or cfg.model.name, cfg, self.device, trainable=False)[1]
        return os.getpid()

    def _start_from(self, start: str) -> None:
        """The policy from `start` (a model, or a round's checkpoint: its training state on the base model), with a
        new AdamW and a constant schedule until the first round sets its own."""
        from rayalign.train.checkpoint import load_checkpoint, read_state, weights_in

        cfg = self.cfg
        local = download_model(start, with_state=True) if is_uri(start) else start
        resume = (Path(local) / "trainer" / "state.json").is_file() and weights_in(read_state(local)) == "dcp"
        self.lm, self.model = build_model(cfg.model.name if resume else start, cfg, device=self.device,
                                          trainable=True, fill=not resume)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        if resume:
            self.steps = load_checkpoint(Path(local), self.model, self.lm, self.optimizer, self.scheduler)

    def train_round(self, pairs: list, steps: int | None = None) -> dict:
        """Train on one round's pairs as a new trainer from the current policy would (`steps` steps; None: what the
        config gives for this many pairs); rank 0's figures: the steps' metric rows, the seconds of the reference
        pass and of the steps, and how it ended."""
        from rayalign.logprobs import takes_block_masks

        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)  # what a new trainer's worker does first: dropout draws the same
        self.optimizer.state.clear()  # a fresh AdamW per round, as the paper's rounds (and a new trainer) have
        total = steps or total_steps(cfg, len(pairs))
        self.scheduler = make_scheduler(self.optimizer, cfg, total)
        began = time.perf_counter()
        pad = self.tokenizer.pad_token_id
        shared = cfg.train.shared_prompt and takes_block_masks(self.lm)
        ref_model, ref_values = self._reference(pairs, total, pad, shared)
        reference_s = time.perf_counter() - began
        rows = []
        for step in range(total):
            metrics = take_step(self.model, self.optimizer, self.scheduler, ref_model, ref_values, pairs, step, total,
                                cfg, pad, self.device, shared)
            rows.append(metrics)
            if metrics["status"] != "ok":
                break
            self.steps += 1
        if dist.get_rank() == 0:
            from rayalign.monitoring import record_train_step

            for metrics in rows:
                record_train_step(metrics, run=cfg.name)
        return {"rows": rows, "reference_s": reference_s, "steps_s": time.perf_counter() - began - reference_s,
                "status": rows[-1]["status"] if rows else "ok"}

    def _reference(self, pairs: list, total: int, pad: int, shared: bool):
        """(live reference, None) or (None, its log-probs of the pairs the round's steps use)."""
        if self.reference is None or not self.cfg.train.reference_cache:
            return self.reference, None
        used = used_pairs(self.cfg, len(pairs), total)
        values = ref_lib.compute_reference(self.reference, pairs, used if used is not None else list(range(len(pairs))),
                                           pad, self.cfg.train.micro_batch_size, self.device, shared)
        return None, values

    def save(self, path: str, final: bool = False) -> None:
        """Collective: start the policy's checkpoint at `path` (`saved` finishes it): the training state (DCP), copied
        to memory now and written in the background while the round goes on; or, for the run's last round (`final`),
        the HF directory beside it, which the evaluation reads, written now."""
        from rayalign.train.loop import checkpoint_meta

        final_path = Path(path)
        self._partial = final_path.with_name(final_path.name + ".partial")
        if dist.get_rank() == 0:
            shutil.rmtree(self._partial, ignore_errors=True)
        dist.barrier()
        if final:
            write_checkpoint(self._partial, self.model, self.lm, self.tokenizer, self.optimizer, self.scheduler,
                             self.steps, self.cfg, export=True)
        else:
            self._pending = save_checkpoint(self._partial, self.model, self.lm, self.optimizer, self.scheduler,
                                            self.steps, False, checkpoint_meta(self.cfg), async_group=self._save_group)

    def saved(self, storage=None, relative: str | None = None) -> str:
        """Collective: wait for the checkpoint `save` started, then put it in place, whole (and, with `storage`, copy
        it to the run's URI as `relative`)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        dist.barrier()
        final = self._partial.with_name(self._partial.name.removesuffix(".partial"))
        if dist.get_rank() == 0:
            shutil.rmtree(final, ignore_errors=True)
            self._partial.rename(final)
            if storage is not None and relative is not None:
                storage.push(relative)
        return str(final)

    # ---- weights to the samplers ----------------------------------------------------------------
    def plan(self) -> weight_sync.Plan:
        return [(name, tuple(param.shape)) for name, param in self.lm.named_parameters()]

    def open_sync(self, world: int) -> tuple[str, int]:
        """Rank 0: open the next sync's store for `world` processes; (address, port)."""
        self._store, address, port = weight_sync.open_store(world)
        return address, port

    def send_weights(self, meet: weight_sync.Rendezvous, dtype: str) -> int:
        """Collective over the trainer's ranks (they gather), rank 0 broadcasting to the samplers; bytes sent."""
        rank0 = dist.get_rank() == 0
        deliver = weight_sync.broadcaster(weight_sync.join(meet, 0, self._store)) if rank0 else None
        with torch.no_grad():
            sent = weight_sync.send(iter(weight_sync.full_parameters(self.lm)), self.plan(), getattr(torch, dtype),
                                    weight_sync.transfer_device(meet, self.device), deliver)
        self._store = None
        return sent

    def send_ipc(self, samplers: list, gpus: list, dtype: str) -> int:
        """Collective over the trainer's ranks: each hands the engines on its own GPU every bucket (`colocate`)."""
        from rayalign.sampling.colocate import gpu_id, ipc_deliverer

        mine = [s for s, gpu in zip(samplers, gpus) if gpu == gpu_id()]
        deliver = ipc_deliverer(mine, self.plan(), dtype) if mine else None
        with torch.no_grad():
            return weight_sync.send(iter(weight_sync.full_parameters(self.lm)), self.plan(), getattr(torch, dtype),
                                    self.device, deliver)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        """Local mode: give the driver back its memory, its thread count and, if this trainer made it, its process
        group (a later training in the process starts its own)."""
        self.lm = self.model = self.reference = self.optimizer = None
        torch.set_num_threads(self.threads)
        if self._owns_group and self._pending is None:
            dist.destroy_process_group()


class TrainerGroup:
    """The online run's trainer: `OnlineTrainer` in this process (local mode) or on `train.num_workers` Ray actors
    in one placement group. `call` runs a method on every rank and returns rank 0's answer."""

    def __init__(self, cfg: config_lib.Config, start: str, colocated: list | None = None):
        """`colocated`: the placement groups the sampler engines run in (`rayalign.sampling.colocate`): rank i takes
        the rest of bundle i's GPU beside engine i."""
        from rayalign.cluster_fit import resolve_workers
        from rayalign.sampling.colocate import colocated_trainer
        from rayalign.train.driver import worker_env

        self.cfg = resolve_workers(cfg) if colocated is None else \
            dataclasses.replace(cfg, train=colocated_trainer(cfg))
        t = self.cfg.train
        payload = (config_lib.to_dict(self.cfg), start, worker_env())
        self.local, self.actors, self.placement, self.colocated, self._plan = None, [], None, colocated, None
        if t.local_mode:
            self.local = OnlineTrainer()
            self.local.setup(*payload, rank=0, world=1, address=None)
            return
        self._start_actors(payload)

    def _start_actors(self, payload: tuple) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from rayalign.sampling.pool import engine_groups

        t = self.cfg.train
        gpus = (1.0 - self.cfg.sampling.gpus_per_actor if self.colocated else 1.0) if t.use_gpu else 0.0
        if self.colocated:
            group = self.colocated[0]
        else:
            group = self.placement = engine_groups(t.num_workers, t.cpus_per_worker, 1.0 if t.use_gpu else 0.0, 1,
                                                   "PACK", t.start_wait_s, "online trainer",
                                                   "train.num_workers or train.cpus_per_worker")[0]
        remote = ray.remote(OnlineTrainer)
        self.actors = [remote.options(num_cpus=t.cpus_per_worker, num_gpus=gpus, max_restarts=0,
                                      scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)).remote()
                       for i in range(t.num_workers)]
        address = ray.get(self.actors[0].free_address.remote())
        self._all([actor.setup.remote(*payload, rank=i, world=t.num_workers, address=address)
                   for i, actor in enumerate(self.actors)])

    def _all(self, refs: list):
        import ray
        from ray.exceptions import RayActorError

        try:
            return ray.get(refs)
        except RayActorError as error:
            raise TrainerLost(f"a trainer worker died: {str(error).strip().splitlines()[0]}") from None
        except ray.exceptions.RayTaskError as error:
            raise error.as_instanceof_cause() from None

    def call(self, method: str, *args):
        if self.local is not None:
            return getattr(self.local, method)(*args)
        return self._all([getattr(actor, method).remote(*args) for actor in self.actors])[0]

    def train_round(self, pairs: list, steps: int | None = None) -> dict:
        import ray

        return self.call("train_round", pairs if self.local is not None else ray.put(pairs), steps)

    def pids(self) -> list[int]:
        return [os.getpid()] if self.local is not None else self._all([a.pid.remote() for a in self.actors])

    def send_weights(self, samplers: list, version: int) -> dict:
        """Every sampler actor in `samplers` gets the policy's weights over one collective (`weight_sync`), or, when
        colocated, by CUDA IPC on their shared GPUs (`colocate`), in the dtype the samplers compute in; returns
        {"seconds", "bytes"}."""
        import ray

        began = time.perf_counter()
        infos = ray.get([s.weights_info.remote() for s in samplers])  # (dtype, processes, device type) of each
        dtypes = {dtype for dtype, _, _ in infos}
        if len(dtypes) != 1:
            raise RayAlignError(f"weight sync: the samplers compute in different dtypes {sorted(dtypes)}")
        if self.colocated:
            gpus = ray.get([s.gpu.remote() for s in samplers])
            sent = self._all([a.send_ipc.remote(samplers, gpus, dtypes.pop()) for a in self.actors])[0]
            ray.get([s.finish_sync.remote(version) for s in samplers])
            return {"seconds": time.perf_counter() - began, "bytes": sent}
        world = 1 + sum(processes for _, processes, _ in infos)
        address, port = self.local.open_sync(world) if self.local is not None else \
            self._all([self.actors[0].open_sync.remote(world)])[0]
        on_gpus = self.cfg.train.use_gpu and all(device == "cuda" for _, _, device in infos)
        meet = weight_sync.Rendezvous(address, port, world, "nccl" if on_gpus else "gloo")
        firsts = [1 + sum(p for _, p, _ in infos[:i]) for i in range(len(infos))]
        dtype = dtypes.pop()
        receiving = [s.receive_weights.remote(meet, first, self.plan(), dtype, version)
                     for s, first in zip(samplers, firsts)]
        sent = self.call("send_weights", meet, dtype)
        ray.get(receiving)
        return {"seconds": time.perf_counter() - began, "bytes": sent}

    def plan(self) -> weight_sync.Plan:
        if self._plan is None:
            self._plan = self.call("plan")
        return self._plan

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        if self.local is not None:
            self.local.close()
            self.local = None
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self.placement is not None:
            remove_placement_group(self.placement)
            self.placement = None
