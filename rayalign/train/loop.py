"""The training loop: one function each Ray Train worker runs, readable top to bottom.

`train_fn_per_worker` builds the FSDP2-sharded policy, gets reference log-probs (cached or live),
then for each optimizer step: takes the step's slice of a seeded permutation of the pairs, runs
the micro-batches (gradient accumulation), clips, steps AdamW and the warm-up + cosine schedule,
logs TRL-named metrics from rank 0, and checkpoints. A resumed run recomputes the same
permutation, so the data position is just the step number.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from rayalign import config as config_lib
from rayalign.files import atomic_write_text
from rayalign.logprobs import ResponseLogps, takes_block_masks
from rayalign.losses import compute_loss, metric_sums, needs_reference
from rayalign.models import load_causal_lm, load_tokenizer, resolve_model, with_lora
from rayalign.train import reference as ref_lib
from rayalign.train.checkpoint import existing_checkpoints, export_model, load_checkpoint, save_checkpoint
from rayalign.train.step import clip_gradients, loss_inputs, micro_step, optimizer_step, pair_batch

METRIC_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected")


def steps_per_epoch(num_pairs: int, batch_size: int) -> int:
    return num_pairs // batch_size  # the last incomplete batch is dropped, as in TRL


def total_steps(cfg: config_lib.Config, num_pairs: int) -> int:
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * steps_per_epoch(num_pairs, cfg.train.batch_size)))


def step_indices(step: int, num_pairs: int, batch_size: int, seed: int) -> list[int]:
    """The pairs of optimizer step `step`: a slice of the permutation of its epoch."""
    per_epoch = steps_per_epoch(num_pairs, batch_size)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(seed + epoch))
    return order[position * batch_size:(position + 1) * batch_size].tolist()


def warmup_cosine(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """LR multiplier: linear warm-up from 0, then cosine decay to 0 (or constant)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def numerics(cfg: config_lib.Config) -> tuple[str, bool]:
    """(parameter dtype, bf16 mixed precision) of the trainable model a run builds. Mixed precision keeps fp32
    master weights and AdamW moments and computes in bf16; only `pure_bfloat16` stores bf16 weights and moments."""
    dtype = cfg.model.dtype
    if dtype == "pure_bfloat16":
        return "bfloat16", False
    return "float32", dtype == "bfloat16" or (dtype == "auto" and cfg.train.use_gpu)


def _mesh(device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("fsdp",))


def _plain(path: str, cfg, device, dtype: str, trainable: bool):
    """One process, full precision: the model loaded whole, no FSDP (it would only copy every parameter and
    gradient in and out of its buffers at each step: a fifth of a CPU step)."""
    t = cfg.train
    lm = load_causal_lm(path, dtype, cfg.model.options)
    if trainable and t.lora_r > 0:
        lm = with_lora(lm, t.lora_r, t.lora_alpha, t.lora_dropout, t.lora_target_modules)
    _set_mode(lm, cfg, trainable)
    lm.to(device)
    if trainable and t.compile:
        for layer in lm.get_decoder().layers:
            layer.compile()
    return lm, ResponseLogps(lm, cfg.model.chunk_size)


def _set_mode(lm, cfg, trainable: bool) -> None:
    if not trainable:
        lm.requires_grad_(False)
        lm.eval()
        return
    if cfg.train.activation_checkpointing_on:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.train()


def build_model(name: str, cfg: config_lib.Config, device, trainable: bool, fill: bool = True):
    """(the HF model, its `ResponseLogps` wrapper) on `device`. Over several workers, or with mixed precision, the
    model is sharded from the start (`rayalign.train.sharding`: meta device, FSDP2 units, each rank reads its rows);
    a lone full-precision worker loads it whole. A trainable one gets the run's LoRA adapters (new), activation
    checkpointing and compilation switches; `fill=False` leaves its trainable parameters for a checkpoint to fill.

    A frozen model under mixed precision is stored in bf16: it needs no fp32 master copy.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from rayalign.train import sharding

    dtype, mixed = numerics(cfg)
    if not trainable and mixed:
        dtype, mixed = "bfloat16", False
    path = sharding.local_files(resolve_model(name), cfg.model.options)
    if dist.get_world_size() == 1 and not mixed:
        return _plain(path, cfg, device, dtype, trainable)
    t = cfg.train
    lm = sharding.meta_model(path, getattr(torch, dtype), cfg.model.options)
    if trainable and t.lora_r > 0:
        lm = with_lora(lm, t.lora_r, t.lora_alpha, t.lora_dropout, t.lora_target_modules)
    _set_mode(lm, cfg, trainable)
    model = ResponseLogps(lm, cfg.model.chunk_size)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed else None
    sharding.apply_fsdp(model, _mesh(device), policy, trainable and t.compile)
    sharding.materialise(model, device)
    weights = sharding.WeightFiles(path)
    try:
        sharding.fill_shards(lm, weights, seed=t.seed, skip_trainable=not fill)
    finally:
        weights.close()
    return lm, model


def make_optimizer(model, cfg: config_lib.Config):
    """AdamW over the trainable parameters (LoRA: the adapters only)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                             fused=True if cfg.train.fused_adamw else None)


def make_scheduler(optimizer, cfg: config_lib.Config, total: int):
    """The run's LR schedule over `total` steps: warm-up for `train.warmup_ratio` of them, then cosine or constant."""
    warmup = int(cfg.train.warmup_ratio * total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             lambda s: warmup_cosine(s, total, warmup, cfg.train.lr_schedule))


def train_step(model, ref_model, ref_values, pairs, indices, cfg, pad_id, device, progress, shared_prompt) -> dict:
    """Forward/backward over this rank's micro-batches of one optimizer step; returns metric sums."""
    world, rank = dist.get_world_size(), dist.get_rank()
    per_rank = cfg.train.batch_size // world
    mine = indices[rank * per_rank:(rank + 1) * per_rank]
    sums: dict[str, torch.Tensor] = {}
    tokens = 0
    for start in range(0, per_rank, cfg.train.micro_batch_size):
        chunk = mine[start:start + cfg.train.micro_batch_size]
        batch = pair_batch([pairs[i] for i in chunk], pad_id, device, shared_prompt)
        tokens += sum(2 * len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids)
                      for i in chunk)  # both sequences' tokens, whatever the layout (as TRL counts them)
        reference = None
        if ref_values is not None:
            reference = ref_lib.batch_reference(ref_values, chunk, batch["response_mask"])
        elif ref_model is not None:
            with torch.no_grad():
                reference = ref_model(batch)
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter once, after the last micro-batch
            model.set_requires_gradient_sync(start + cfg.train.micro_batch_size >= per_rank)
        # Each rank's gradient is the mean over its share; FSDP averages the shares.
        inputs, out = micro_step(model, batch, reference, cfg.loss, progress, scale=1 / per_rank)
        for key, value in metric_sums(inputs, out).items():
            sums[key] = sums.get(key, 0.0) + value.float()
    sums["tokens"] = torch.tensor(float(tokens))
    return sums


@torch.no_grad()
def evaluate(model, ref_model, ref_values, pairs, cfg, pad_id, device, progress, shared_prompt) -> dict[str, float]:
    """TRL's eval_* metrics (eval_loss, eval_rewards/accuracies, ...) over all held-out `pairs`, each rank scoring
    every world-th pair. Every rank runs as many forwards as the others (FSDP gathers in each): a rank short of
    pairs scores pair 0 and drops it. Dropout is off while it runs."""
    world, rank = dist.get_world_size(), dist.get_rank()
    mine = list(range(rank, len(pairs), world))
    mine += [None] * (-(-len(pairs) // world) - len(mine))
    sums: dict[str, torch.Tensor] = {}
    model.eval()
    for start in range(0, len(mine), cfg.train.micro_batch_size):
        chunk = [i for i in mine[start:start + cfg.train.micro_batch_size] if i is not None]
        batch = pair_batch([pairs[i] for i in chunk or [0]], pad_id, device, shared_prompt)
        if ref_values is not None:
            reference = ref_lib.batch_reference(ref_values, chunk or [0], batch["response_mask"])
        else:
            reference = None if ref_model is None else ref_model(batch)
        inputs = loss_inputs(model(batch), reference, batch, progress)
        weight = 1.0 if chunk else 0.0  # a stand-in counts for nothing
        for key, value in metric_sums(inputs, compute_loss(inputs, cfg.loss)).items():
            sums[key] = sums.get(key, 0.0) + weight * value.float()
    model.train()
    _reshard(model)
    sums["tokens"] = torch.tensor(0.0)
    metrics = _reduce(sums, len(pairs), device)
    metrics.pop("num_tokens")
    return {f"eval_{key}": value for key, value in metrics.items()}


def _reshard(model) -> None:
    """Free what forwards without a backward left gathered (the head keeps its weights after forward, for the
    backward that here does not come): a checkpoint's optimizer state needs every parameter sharded."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def take_step(model, optimizer, scheduler, ref_model, ref_values, pairs, step: int, total: int, cfg, pad_id: int,
              device, shared_prompt: bool, probe=None) -> dict:
    """Optimizer step `step` of `total` on `pairs` (every rank): its TRL-named metrics, with "status" ok, or
    non_finite_loss when the loss or gradient norm is NaN/inf (then no update is made)."""
    began = time.perf_counter()
    indices = step_indices(step, len(pairs), cfg.train.batch_size, cfg.train.seed)
    sums = train_step(model, ref_model, ref_values, pairs, indices, cfg, pad_id, device, progress=step / total,
                      shared_prompt=shared_prompt)
    if probe is not None:
        probe.mark("forward_backward")
    grad_norm = clip_gradients(model, cfg.train.max_grad_norm)
    metrics = _reduce(sums, cfg.train.batch_size, device)
    if not (math.isfinite(metrics["loss"]) and math.isfinite(grad_norm)):
        return {**metrics, "step": step + 1, "status": "non_finite_loss"}
    metrics.update({"grad_norm": grad_norm, "learning_rate": scheduler.get_last_lr()[0]})
    optimizer_step(optimizer, scheduler)
    if probe is not None:
        probe.mark("optimizer")
    elapsed = time.perf_counter() - began
    return {**metrics, "tokens_per_s": metrics["num_tokens"] / elapsed, "step_time_s": elapsed,
            "epoch": (step + 1) / max(1, steps_per_epoch(len(pairs), cfg.train.batch_size)), "step": step + 1,
            "status": "ok"}


def _reduce(sums: dict, batch_size: int, device) -> dict[str, float]:
    keys = sorted(sums)
    stacked = torch.stack([torch.as_tensor(sums[k], dtype=torch.float32).to(device) for k in keys])
    dist.all_reduce(stacked)
    totals = dict(zip(keys, stacked.tolist()))
    tokens = totals.pop("tokens")
    return {**{k: v / batch_size for k, v in totals.items()}, "num_tokens": tokens}


def _broadcast(value):
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def used_pairs(cfg: config_lib.Config, num_pairs: int, total: int) -> list[int] | None:
    """The pairs the run's `total` steps train on, sorted; None when that is all of them. The whole run's, not
    only the steps left, so that a resumed run finds the cache its first part wrote."""
    used = sorted({i for step in range(total) for i in step_indices(step, num_pairs, cfg.train.batch_size,
                                                                     cfg.train.seed)})
    return None if len(used) == num_pairs else used


def prepare_reference(cfg, pairs, indices: list[int] | None, pad_id: int, device, cache_dir: Path,
                      shared_prompt: bool, policy=None):
    """(live reference model, cached values of the pairs `indices` (None: all)): one of them, or neither for
    reference-free losses. `policy`: the policy before its first step, which scores the pairs itself when the
    reference is the starting policy (one model in memory, one load)."""
    if not needs_reference(cfg.loss):
        return None, None
    name = cfg.model.reference or cfg.model.name
    if not cfg.train.reference_cache:
        return build_model(name, cfg, device, trainable=False)[1], None
    path = None
    if dist.get_rank() == 0:
        from rayalign.data import fingerprint

        model_fp = ref_lib.model_fingerprint(resolve_model(name), cfg.model.revision)
        path = ref_lib.cache_path(cache_dir, model_fp, fingerprint(pairs), *numerics(cfg), indices)
    path = _broadcast(path)
    if not _broadcast(path.is_file() if dist.get_rank() == 0 else None):
        scored = list(range(len(pairs))) if indices is None else indices
        if dist.get_rank() == 0:
            print(f"rayalign: computing reference log-probs of {len(scored)} pairs (cached at {path})", flush=True)
        own = policy is None or cfg.model.reference is not None
        model = build_model(name, cfg, device, trainable=False)[1] if own else policy
        model.eval()  # no dropout in a reference
        values = ref_lib.compute_reference(model, pairs, scored, pad_id, cfg.train.micro_batch_size, device,
                                           shared_prompt)
        if not own:
            policy.train()
        if dist.get_rank() == 0:
            ref_lib.save_reference(path, values)
        return None, values
    return None, _broadcast(ref_lib.load_reference(path) if dist.get_rank() == 0 else None)


def checkpoint_meta(cfg: config_lib.Config) -> dict:
    """What a checkpoint records beside its shards, for an export: the base model, LoRA settings, export dtype."""
    t = cfg.train
    lora = {"r": t.lora_r, "alpha": t.lora_alpha, "targets": "all-linear" if t.lora_target_modules == ["all-linear"]
            else list(t.lora_target_modules)} if t.lora_r > 0 else None
    return {"model": cfg.model.name, "revision": cfg.model.revision, "trust_remote_code": cfg.model.trust_remote_code,
            "lora": lora, "export_dtype": cfg.train.export_dtype_resolved}


def write_checkpoint(path: Path, model, lm, tokenizer, optimizer, scheduler, step: int, cfg, export: bool) -> None:
    """Collective: the step's DCP shards and trainer state under `path`, and with `export` the HF directory. A
    lossless export (the training dtype, no LoRA) holds the weights already: then DCP gets no second copy."""
    in_export = export and cfg.train.lora_r == 0 and cfg.train.export_dtype_resolved == numerics(cfg)[0]
    save_checkpoint(path, model, lm, optimizer, scheduler, step, cfg.train.save_optimizer, checkpoint_meta(cfg),
                    weights=not in_export)
    if export:
        export_model(path, lm, tokenizer, getattr(torch, cfg.train.export_dtype_resolved), cfg.train.lora_r > 0)


def _save_and_report(metrics, model, lm, tokenizer, optimizer, scheduler, step: int, save: bool, export: bool,
                     cfg, local_run_dir: Path | None, storage) -> None:
    """Report `metrics` to Ray Train, with a checkpoint when `save`: every rank hands Ray Train the files it wrote
    (its own DCP shards; rank 0 also the trainer state and the HF files), which Ray Train merges into one
    directory in the run's storage, in the background with `train.async_upload`. In local mode (`local_run_dir`)
    Ray Train keeps no checkpoint, so it is written into the run directory here, where Ray Train would put it."""
    import tempfile

    import ray.train

    if not save:
        ray.train.report(metrics)
        return
    if dist.get_rank() == 0:
        storage.push("metrics.jsonl")  # with a URI: the curve up to the checkpoint a resumed run starts from
    if local_run_dir is not None:
        from rayalign.files import atomic_write_dir

        atomic_write_dir(local_run_dir / "checkpoints" / f"step_{step:06d}", lambda tmp: write_checkpoint(
            tmp, model, lm, tokenizer, optimizer, scheduler, step, cfg, export))
        storage.push(f"checkpoints/step_{step:06d}")
        for old in existing_checkpoints(local_run_dir)[:-cfg.train.keep_checkpoints]:
            shutil.rmtree(old)
            storage.remove(f"checkpoints/{old.name}")
        ray.train.report(metrics)
    else:
        background = storage.uri is not None if cfg.train.async_upload is None else cfg.train.async_upload
        tmp = tempfile.mkdtemp(prefix="rayalign-checkpoint-")  # Ray Train deletes it once uploaded
        try:
            write_checkpoint(Path(tmp), model, lm, tokenizer, optimizer, scheduler, step, cfg, export)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"step_{step:06d}", delete_local_checkpoint_after_upload=True,
                             checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC if background
                             else ray.train.CheckpointUploadMode.SYNC)
        except BaseException:  # a checkpoint's worth of disk that was never uploaded (a full disk): not left behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _resume_directory(local_run_dir: Path | None):
    """A context giving the checkpoint directory to resume from, or None: Ray Train's checkpoint, or in local mode
    (where Ray Train keeps none) the run directory's newest."""
    import contextlib

    import ray.train

    if local_run_dir is not None:
        found = existing_checkpoints(local_run_dir)
        return contextlib.nullcontext(str(found[-1]) if found else None)
    checkpoint = ray.train.get_checkpoint()
    return checkpoint.as_directory() if checkpoint else contextlib.nullcontext()


def _local_device_and_group(use_gpu: bool):
    """Local mode: the device, and a one-process group (Ray Train starts none) so FSDP2 and the collectives run
    as they do on workers."""
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_gpu else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    return device


def train_fn_per_worker(loop_config: dict) -> None:
    """What each Ray Train worker runs (in local mode: the driver). `loop_config`: config (dict), pairs (an
    ObjectRef; in local mode the pairs), run_dir, env."""
    import logging
    import os

    import ray
    import ray.train
    import ray.train.torch
    from ray.experimental.tqdm_ray import tqdm

    from rayalign.memory import RiseProbe, return_freed_blocks
    from rayalign.monitoring import record_train_step
    from rayalign.tracking import PhaseClock, Tracker

    clock = PhaseClock()
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per report
    os.environ.update(loop_config["env"])
    cfg = config_lib.build(loop_config["config"])
    run_dir, local = Path(loop_config["run_dir"]), cfg.train.local_mode
    pairs, eval_pairs = (loop_config["pairs"], loop_config["eval_pairs"]) if local else \
        ray.get([loop_config["pairs"], loop_config["eval_pairs"]])
    device = _local_device_and_group(cfg.train.use_gpu) if local else ray.train.torch.get_device()
    rank, local_run_dir = dist.get_rank(), run_dir if local else None
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and FSDP allocate on the current device
    elif dist.get_world_size() > 1 or numerics(cfg)[1]:
        return_freed_blocks()  # a sharded CPU rank frees gathered units each step: give them back to the OS
    torch.manual_seed(cfg.train.seed)
    torch.set_num_threads(cfg.train.torch_threads)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.options)
    total = total_steps(cfg, len(pairs))

    probe = RiseProbe()  # before anything of the model exists: `rayalign bench memory` reads the rise
    with _resume_directory(local_run_dir) as resume_dir:
        lm, model = build_model(cfg.model.name, cfg, device, trainable=True, fill=resume_dir is None)
        optimizer = make_optimizer(model, cfg)
        scheduler = make_scheduler(optimizer, cfg, total)
        start = load_checkpoint(Path(resume_dir), model, lm, optimizer, scheduler) if resume_dir else 0
    clock.lap("model_load_s")
    probe.mark("load")
    stop = min(total, cfg.train.stop_at_step or total)
    shared_prompt = cfg.train.shared_prompt and takes_block_masks(lm)
    reference_cache = Path(loop_config["env"]["RAYALIGN_CACHE"]) / "reference"
    ref_model, ref_values = prepare_reference(cfg, pairs, used_pairs(cfg, len(pairs), total), tokenizer.pad_token_id,
                                              device, reference_cache, shared_prompt, policy=None if start else model)
    eval_ref_model, eval_ref_values = ref_model, None  # a live reference serves both
    if eval_pairs and ref_model is None:
        eval_ref_model, eval_ref_values = prepare_reference(cfg, eval_pairs, None, tokenizer.pad_token_id, device,
                                                            reference_cache, shared_prompt,
                                                            policy=None if start else model)
    clock.lap("reference_s")
    probe.mark("reference")

    tracker = bar = None
    storage = loop_config["storage"]
    if rank == 0:
        if not local:
            storage.pull()  # this node's copy of the metrics so far (a URI run resumed on another node)
        tracker = Tracker(run_dir, cfg.tracking, cfg.name, config_lib.flatten(loop_config["config"]), "train")
        tracker.truncate_after(start)
        if tracker.where:
            print(f"rayalign: wandb run {tracker.where}", flush=True)
        bar = tqdm(total=total, desc=f"train {cfg.name}", position=0)
        bar.update(start)
        if start:
            print(f"rayalign: resumed from the checkpoint of step {start}", flush=True)
    clock.lap("tracking_setup_s")
    status, done = "ok", start
    for step in range(start, stop):
        metrics = take_step(model, optimizer, scheduler, ref_model, ref_values, pairs, step, total, cfg,
                            tokenizer.pad_token_id, device, shared_prompt, probe)
        done = step + 1
        if metrics["status"] != "ok":
            status = metrics["status"]
            ray.train.report(metrics)
            break
        if eval_pairs and (done == stop or (cfg.train.eval_every and done % cfg.train.eval_every == 0)):
            metrics.update(evaluate(model, eval_ref_model, eval_ref_values, eval_pairs, cfg, tokenizer.pad_token_id,
                                    device, done / total, shared_prompt))
        save = done == stop or bool(cfg.train.save_every and done % cfg.train.save_every == 0)
        if save or done % cfg.train.report_every == 0:
            clock.lap("steps_s")
            _save_and_report(metrics, model, lm, tokenizer, optimizer, scheduler, done, save, done == total, cfg,
                             local_run_dir, storage)
            probe.mark("checkpoint")
            clock.lap("report_and_checkpoint_s")
        if rank == 0:
            tracker.log({k: v for k, v in metrics.items() if k not in ("status", "step")}, step=done)
            record_train_step(metrics, run=cfg.name)  # Ray metrics: dashboard / Prometheus
            bar.update(1)
    clock.lap("steps_s")
    probe.finish(rank, step=done)
    if rank == 0:
        bar.close()
        tracker.finish()
        # The driver reads how training ended from here (Ray's result holds the last checkpoint's metrics).
        atomic_write_text(run_dir / "train_state.json", json.dumps({
            "status": status, "step": done, "total": total, "resumed_from": start,
            "started_at": clock.started_at, "finished_at": clock.last, "phases_s": clock.seconds,
            "cuda_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}))
        storage.push()  # with a URI output_dir, the driver reads these from there
