"""Faults a long job meets: the driver SIGKILLed in each phase of a pipeline, then rerun (slow: four real runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayalign.tracking import read_metrics
from tests.conftest import REPO

pytestmark = pytest.mark.slow

JOB = """name: killed
pipeline: inco
model: {name: tiny-llama}
inco: {num_prompts: 12, shard_size: 4, ratio: 0.5, include_off_policy: true}
sampling: {samples: 2, max_new_tokens: 8}
data: {max_length: 160}
train: {batch_size: 2, micro_batch_size: 2, max_steps: 40, save_every: 2, cpus_per_worker: 1}
eval: {num_prompts: 64, samples: 1, max_new_tokens: 24}
tracking: {wandb: disabled}
"""


def _start(tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "RAYALIGN_CACHE": str(tmp_path / "cache")}
    return subprocess.Popen([str(Path(sys.executable).parent / "rayalign"), "run", str(tmp_path / "job.yaml"),
                             f"output_dir={tmp_path}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _kill_when(process: subprocess.Popen, ready, settle_s: float = 0.0) -> None:
    deadline = time.monotonic() + 600
    while not ready():
        assert process.poll() is None, "the run ended before the moment to kill it"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(settle_s)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=120)


def _stamps(paths) -> dict:
    return {path: path.stat().st_mtime_ns for path in paths}


def test_a_killed_driver_resumes_each_phase_and_redoes_no_finished_work(tmp_path):
    (tmp_path / "job.yaml").write_text(JOB)
    run = tmp_path / "killed"
    shards = lambda: sorted((run / "data").glob("shard_*.parquet"))

    # 1. during synthesis, after the first of three shards
    _kill_when(_start(tmp_path), lambda: len(shards()) >= 1)
    synthesised = _stamps(shards())
    assert len(synthesised) < 3

    # 2. during training, past a checkpoint that Ray Train has taken (its controller polls every 2 s)
    _kill_when(_start(tmp_path), lambda: (run / "metrics.jsonl").is_file() and read_metrics(run)[-1]["step"] >= 6,
               settle_s=3)
    assert len(shards()) == 3 and _stamps(synthesised) == synthesised, "a finished shard was synthesised again"
    steps_before = read_metrics(run)[-1]["step"]
    assert steps_before < 40

    # 3. during evaluation, once one model's samples are cached
    samples = tmp_path / "cache" / "eval_samples"
    _kill_when(_start(tmp_path), lambda: samples.is_dir() and any(samples.glob("*.json")))
    state = json.loads((run / "train_state.json").read_text())
    assert state["status"] == "ok" and state["step"] == 40 and state["resumed_from"] >= 2, state
    cached = _stamps(samples.glob("*.json"))

    # 4. to the end
    final = _start(tmp_path)
    out, _ = final.communicate(timeout=900)
    assert final.returncode == 0, out
    assert _stamps(cached) == cached, "cached evaluation samples were made again"
    assert _stamps(synthesised) == synthesised
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 41))
    report = json.loads((run / "report.json").read_text())
    assert report["win_rate"]["prompts"] == 64
