"""summary.json: how a run ended, and the one place that says whether it finished.

A training run (`rayalign train`, a pipeline's training, an sDPO stage, a D2PO round) has a `status`:
``ok`` (every step ran), ``stopped`` (it ended early on purpose, e.g. ``train.stop_at_step``: rerun to resume) or
``failed`` (with a ``reason``). A pipeline's summary nests its training's under ``train``. The file is written
atomically and last, so a crash leaves the previous summary or none, never a torn one; everything that reads a
summary reads it through `read_summary`, and "finished" has one rule, `finished`.
"""

from __future__ import annotations

import json
from pathlib import Path

FILE = "summary.json"


def training_status(worker_status: str, steps: int, total: int) -> dict:
    """The status fields of a training summary from what its workers recorded (ok, or the reason they stopped)."""
    if worker_status != "ok":
        return {"status": "failed", "reason": worker_status}
    return {"status": "ok" if steps >= total else "stopped"}


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
