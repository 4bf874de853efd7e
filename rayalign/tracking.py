"""Experiment tracking: metrics.jsonl in the run directory, and wandb (offline by default).

Only rank 0 of a training run creates a tracker. wandb is imported here, lazily, so that
`import rayalign` stays cheap.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from rayalign.config import TrackingConfig


def _jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN; keep the fact visible
    return value


class Tracker:
    """Appends one JSON object per step to metrics.jsonl and mirrors it to wandb."""

    def __init__(self, run_dir: Path, cfg: TrackingConfig, run_name: str, flat_config: dict, job_type: str):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.wandb_run = None
        if cfg.wandb != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb_run = wandb.init(
                mode=cfg.wandb, project=cfg.project, entity=cfg.entity, group=cfg.group,
                name=run_name, job_type=job_type, dir=str(run_dir), config=flat_config,
                resume="allow", id=_run_id(run_dir, job_type),
                reinit="create_new",  # a pipeline's run stays open while its training (local mode: this process) logs
            )

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step`: a resumed run redoes those steps and logs them again."""
        from rayalign.files import truncate_jsonl

        truncate_jsonl(self.path, "step", step)

    def log(self, metrics: dict, step: int) -> None:
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    @property
    def where(self) -> str | None:
        """Where to watch the run: the wandb URL online, the offline directory otherwise."""
        if self.wandb_run is None:
            return None
        return self.wandb_run.url or self.wandb_run.dir

    def finish(self, summary: dict | None = None) -> None:
        if self.wandb_run is not None:
            if summary:
                self.wandb_run.summary.update({k: _jsonable(v) for k, v in summary.items()})
            self.wandb_run.finish()


def _run_id(run_dir: Path, job_type: str) -> str:
    """A stable wandb id per run directory and phase, so a resumed run continues its wandb run."""
    import hashlib

    return hashlib.sha1(f"{Path(run_dir).resolve()}:{job_type}".encode()).hexdigest()[:12]


def read_metrics(run_dir: Path) -> list[dict]:
    from rayalign.files import read_jsonl

    return read_jsonl(Path(run_dir) / "metrics.jsonl")


class PhaseClock:
    """Wall-clock seconds per phase of a process, each phase running from the end of the one before, so the phases
    add up to the time since the clock started (a phase lapped more than once accumulates)."""

    def __init__(self):
        self.started_at = self.last = time.time()
        self.seconds: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.time()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now
