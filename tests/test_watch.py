"""`rayalign watch`: the last figures of a finished run, each new row of a running one, one line for a missing run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def _rayalign(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "rayalign"), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_a_finished_run_prints_its_status_and_last_row(tmp_path):
    trained = _rayalign("train", "jobs/dpo_quickstart.yaml", "model.name=tiny-llama", "train.epochs=1",
                        "train.max_steps=3", "tracking.wandb=disabled", "name=finished", f"output_dir={tmp_path}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "finished" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    watched = _rayalign("watch", "finished", "--output-dir", str(tmp_path))
    assert watched.returncode == 0, watched.stderr
    first, second = watched.stdout.splitlines()
    assert first == f"run {tmp_path / 'finished'}: ok"
    last = rows[-1]
    assert second.startswith("  metrics.jsonl: step 3  loss ")
    assert f"loss {last['loss']:.4g}  acc {last['rewards/accuracies']:.4g}" in second
    assert f"tok/s {last['tokens_per_s']:.4g}" in second
    assert _rayalign("watch", "--output-dir", str(tmp_path)).stdout == watched.stdout  # no RUN: the newest run


def test_a_missing_run_is_one_line(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.yaml").write_text("name: other\n")
    watched = _rayalign("watch", "nope", "--output-dir", str(tmp_path))
    assert watched.returncode == 2 and watched.stdout == ""
    assert watched.stderr.splitlines() == [
        f"error: no run 'nope' (neither a directory nor {tmp_path / 'nope'}); runs in {tmp_path}/: other"]
    empty = _rayalign("watch", "--output-dir", str(tmp_path / "none"))
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1 and "no runs in" in empty.stderr


def test_follow_prints_each_new_row_and_ends_with_the_summary(tmp_path):
    """A D2PO-shaped run written as it goes: round rows in metrics.jsonl, a round's training beside them."""
    run = tmp_path / "online"
    (run / "rounds" / "round_001").mkdir(parents=True)
    (run / "config.yaml").write_text("name: online\n")
    watcher = subprocess.Popen([str(BIN / "rayalign"), "watch", str(run), "--follow", "--interval", "0.1"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # the watcher has printed the empty run and follows it
    with open(run / "metrics.jsonl", "a") as log:
        log.write(json.dumps({"step": 1, "gold/used": 4, "gold/budget": 32, "round_s": 28.25}) + "\n")
        log.flush()
        (run / "rounds" / "round_001" / "train_metrics.jsonl").write_text(
            json.dumps({"step": 1, "loss": 0.5, "rewards/accuracies": 0.75}) + "\n")
        log.write('{"step": 2, "gold/us')  # a row half written: not read until it is whole
        log.flush()
        time.sleep(1)
        log.write('ed": 8, "gold/budget": 32}\n')
    time.sleep(1)
    with open(run / "metrics.jsonl", "a") as log:  # the last row and the summary within one look
        log.write(json.dumps({"step": 3, "gold/used": 12, "gold/budget": 32}) + "\n")
    (run / "summary.json").write_text(json.dumps({"status": "failed", "reason": "non_finite_loss"}))
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    assert out.splitlines() == [
        f"run {run}: no summary.json yet (running, or ended before writing one)",
        "  no metrics yet",
        "  metrics.jsonl: step 1  gold 4/32  round_s 28.25",
        "  rounds/round_001/train_metrics.jsonl: step 1  loss 0.5  acc 0.75",
        "  metrics.jsonl: step 2  gold 8/32",
        "  metrics.jsonl: step 3  gold 12/32",
        f"run {run}: failed (non_finite_loss)",
    ]


def test_an_unreachable_prometheus_is_one_line():
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    watched = _rayalign("watch", "some_run", "--prometheus", url)
    assert watched.returncode == 2 and watched.stdout == ""
    (line,) = watched.stderr.splitlines()
    assert line.startswith(f"error: cannot reach Prometheus at {url} (")
