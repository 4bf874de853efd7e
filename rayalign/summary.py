"""summary.json: how a run ended, and the one place that says whether it finished.

A training run (`rayalign train`, a pipeline's training, an sDPO stage, a D2PO round) has a `status`:
``ok`` (every step ran), ``stopped`` (it ended early on purpose, e.g. ``train.stop_at_step``: rerun to resume) or
``failed`` (with a ``reason``). A pipeline's summary nests its training's under ``train``. The file is written
atomically and last, so a crash leaves the previous summary or none, never a torn one; everything that reads a
summary reads it through `read_summary`, and "finished" has one rule, `finished`.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Literal, TypedDict

FILE = "summary.json"


class TrainSummary(TypedDict, total=False):
    """How a training ended: `rayalign train`'s summary.json, a pipeline's ``train``, an sDPO stage, D2PO's rounds.

    Built by `train_summary` alone; ``reason`` only when failed; more keys may follow (a stage's margins, the data's
    counts, the phases' seconds)."""

    status: Literal["ok", "stopped", "failed"]
    reason: str
    steps: int
    total_steps: int | None
    checkpoint: str | None
    final_metrics: dict
    tokens_per_s_median: float | None
    wall_time_s: float


def train_summary(*, steps: int, total_steps: int | None, checkpoint: str | None, final_metrics: dict,
                  speeds: list[float], wall_time_s: float, failure: str | None = None, **more) -> TrainSummary:
    """The one way a training summary is made. `total_steps` None: how many steps remain is not known yet (D2PO
    before its last round), so the run is not finished; `failure`: what the workers recorded when they stopped."""
    if failure is not None:
        status: dict = {"status": "failed", "reason": failure}
    else:
        status = {"status": "ok" if total_steps is not None and steps >= total_steps else "stopped"}
    return TrainSummary(**status, steps=steps, total_steps=total_steps, checkpoint=checkpoint,
                        final_metrics=final_metrics, tokens_per_s_median=statistics.median(speeds) if speeds else None,
                        wall_time_s=round(wall_time_s, 1), **more)


def write_summary(run_dir: str | Path, summary: dict) -> Path:
    from rayalign.files import atomic_write_text

    return atomic_write_text(Path(run_dir) / FILE, json.dumps(summary, indent=2, default=str))


def read_summary(run_dir: str | Path) -> dict | None:
    """The run's summary, or None where the run has not written one."""
    path = Path(run_dir) / FILE
    return json.loads(path.read_text()) if path.is_file() else None


def finished(summary: dict | None) -> bool:
    """Whether the run (a pipeline: its training) ran every step."""
    return summary is not None and summary.get("train", summary).get("status") == "ok"
