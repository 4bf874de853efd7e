"""Driver side of training: check and tokenise the data, then hand it to a Ray Train TorchTrainer.

Everything a user can get wrong (config, data rows, batch arithmetic) is checked here, before
any worker starts, so mistakes surface as one line and not as a worker traceback.
"""

from __future__ import annotations

import json
import time

from rayalign import config as config_lib
from rayalign import monitoring
from rayalign.cluster_fit import check_local, resolve_workers, trainer_demand, watch_waiting
from rayalign.data import PreparedData, attach_marks, prepare_data
from rayalign.data.prepare import hold_out
from rayalign.errors import ConfigError, TrainingError
from rayalign.losses import get_loss
from rayalign.models import cache_root, load_config, load_tokenizer
from rayalign.preflight import check_job
from rayalign.ray_setup import init_ray
from rayalign.summary import TrainSummary, train_summary, write_summary
from rayalign.tracking import PhaseClock, read_metrics


def worker_env() -> dict[str, str]:
    """The variables the training processes need from the driver's environment."""
    import os

    from rayalign.memory import PROBE_ENV

    env = {"RAYALIGN_CACHE": str(cache_root())}
    if os.environ.get(PROBE_ENV):
        env[PROBE_ENV] = os.environ[PROBE_ENV]
    return env


def mark_varied_tokens(cfg: config_lib.Config, tokenizer, prepared: PreparedData) -> None:
    """Give every pair BMC's varied-token marks when the loss needs them, whatever made the pairs.

    The one place marks are made: every pipeline trains through `run_training`, so none can drop them.
    """
    if not get_loss(cfg.loss.name).needs_token_logps:
        return
    from rayalign.losses.bmc import varied_marker

    attach_marks(prepared.pairs + prepared.eval_pairs, varied_marker(tokenizer))


def phase_seconds(driver: PhaseClock, fit_ended: float, state: dict, local: bool) -> dict[str, float]:
    """Where the whole process's seconds went, in order: the driver's phases up to `fit`, then rank 0's last
    worker (from train_state.json: the worker group's start is from the driver's last lap to the worker's start,
    none in local mode; the teardown from the worker's end to `fit`'s return)."""
    seconds = dict(driver.seconds)
    if "phases_s" in state:
        if not local:
            seconds["worker_group_start_s"] = state["started_at"] - driver.last
        seconds.update(state["phases_s"])
        seconds["teardown_s"] = fit_ended - state["finished_at"]
    return {k: round(v, 2) for k, v in seconds.items()}


def _summary(cfg, storage, prepared, clock: PhaseClock, fit_ended: float) -> TrainSummary:
    rows = read_metrics(cfg.run_dir)
    checkpoints = storage.checkpoints()
    state = json.loads((cfg.run_dir / "train_state.json").read_text())
    return train_summary(
        steps=state["step"], total_steps=state["total"], checkpoint=checkpoints[-1] if checkpoints else None,
        final_metrics={k: v for k, v in (rows[-1] if rows else {}).items() if k != "step"},
        speeds=[r["tokens_per_s"] for r in rows if "tokens_per_s" in r], wall_time_s=time.time() - clock.started_at,
        failure=None if state["status"] == "ok" else state["status"],
        resumed_from_step=state.get("resumed_from", 0), data=prepared.stats, pairs=len(prepared.pairs),
        mode="local mode" if cfg.train.local_mode else f"{cfg.train.num_workers} Ray Train worker(s)",
        phases_s=phase_seconds(clock, fit_ended, state, cfg.train.local_mode), cuda_peak_mib=state.get("cuda_peak_mib"))


def prepare_pairs(cfg: config_lib.Config, prepared: PreparedData | None = None, tokenizer=None) -> PreparedData:
    """Provision the models, read and tokenise the data (unless given), mark BMC's tokens, check the count.
    `tokenizer`: the model's, already loaded (an online run's rounds)."""
    tokenizer = tokenizer or load_tokenizer(cfg.model.name, cfg.model.options)
    # Provision once, before workers race; a model that cannot load as configured fails here, in one line.
    load_config(cfg.model.reference or cfg.model.name, cfg.model.options)
    if prepared is None:
        prepared = prepare_data(cfg.data, tokenizer)
        hold_out(cfg.data, tokenizer, prepared, cfg.train.seed)
    mark_varied_tokens(cfg, tokenizer, prepared)
    if len(prepared.pairs) < cfg.train.batch_size:
        raise ConfigError(f"{cfg.data.path or 'data.mix'}: {len(prepared.pairs)} usable pairs, fewer than "
                          f"train.batch_size ({cfg.train.batch_size}); lower it or add data")
    return prepared


def run_training(cfg: config_lib.Config, prepared: PreparedData | None = None) -> dict:
    """Train `cfg` on Ray Train; writes the run directory and returns the summary.

    `prepared` (already tokenised pairs, e.g. one sDPO chunk) replaces reading `cfg.data.path`.
    """
    import ray
    import torch
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayalign.train.loop import total_steps, train_fn_per_worker

    clock = PhaseClock()
    run_dir = cfg.run_dir.resolve()
    check_job(cfg)
    cfg = resolve_workers(cfg)
    storage = cfg.storage()
    if cfg.train.resume == "never" and storage.checkpoints():
        raise ConfigError(f"{storage.uri or run_dir} already has checkpoints: use a new name= or train.resume=auto")
    storage.pull(checkpoints=cfg.train.local_mode, fresh=True)  # a URI run's files (local mode: checkpoints too)
    # Before Ray's start, not beside it: in a submitted job, data read while `ray.init` connected missed its relative
    # path (tests/test_submit.py), as `ray.init` sets up the job's working directory.
    prepared = prepare_pairs(cfg, prepared)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.save(cfg, run_dir / "config.yaml")
    steps = total_steps(cfg, len(prepared.pairs))
    print(f"rayalign: {len(prepared.pairs)} pairs, {steps} steps, run directory {run_dir}", flush=True)
    clock.lap("prepare_s")
    local = cfg.train.local_mode  # the loop runs here, nothing of Ray's starts
    if not local:
        context = init_ray()
        if context is not None:
            monitoring.announce(context)
        clock.lap("ray_start_s")
        demand = trainer_demand(cfg.train)
        check_local(demand)
    pairs, eval_pairs = (prepared.pairs, prepared.eval_pairs) if local else (ray.put(prepared.pairs),
                                                                            ray.put(prepared.eval_pairs))
    storage_path, storage_filesystem = storage.checkpoint_root()
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"config": config_lib.to_dict(cfg), "pairs": pairs, "eval_pairs": eval_pairs,
                           "run_dir": str(run_dir),
                           "storage": storage, "env": worker_env()},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(
            name="checkpoints", storage_path=storage_path, storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
    )
    stop_watch = (lambda: None) if local else watch_waiting(cfg.train.start_wait_s, demand.keys)
    threads = torch.get_num_threads()  # local mode sets this process's, as a worker sets its own
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as error:
        raise TrainingError(f"training failed: {str(error).strip().splitlines()[0]} (worker logs above)") from None
    finally:
        stop_watch()
        torch.set_num_threads(threads)
    storage.pull(checkpoints=False)  # what rank 0 wrote (metrics, training state), wherever it ran
    summary = _summary(cfg, storage, prepared, clock, time.time())
    write_summary(run_dir, summary)
    storage.push()
    if summary.get("reason") == "non_finite_loss":
        raise TrainingError(
            f"the loss became NaN/inf at step {summary['steps']}; training stopped. Last good checkpoint: "
            f"{summary['checkpoint'] or 'none (set train.save_every)'}. Lower train.lr or check the data")
    return summary
