"""summary.json: one status rule (a stopped run is not finished) and an atomic write (a kill leaves a whole file)."""

from __future__ import annotations

import json
import subprocess
import sys

from rayalign import config
from rayalign.cli import main
from rayalign.summary import finished, read_summary
from rayalign.train.driver import run_training
from tests.conftest import QUICKSTART_DATA

BASE = ["model.name=tiny-llama", f"data.path={QUICKSTART_DATA}", "data.limit=8", "data.max_length=128",
        "train.batch_size=4", "train.micro_batch_size=4", "train.num_workers=0", "train.warmup_ratio=0",
        "tracking.wandb=disabled"]


def test_a_run_stopped_at_a_step_is_stopped_and_nothing_reads_it_as_finished(tmp_path, capsys):
    cfg = config.load(None, BASE + [f"output_dir={tmp_path}", "name=stopped", "train.stop_at_step=1"])
    summary = run_training(cfg)
    assert summary["status"] == "stopped" and summary["steps"] == 1 < summary["total_steps"] == 2
    assert read_summary(cfg.run_dir) == summary and not finished(summary)
    assert not finished({"pipeline": "inco", "train": summary})
    capsys.readouterr()
    assert main(["compare", str(cfg.run_dir), "--out", str(tmp_path / "cmp")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has not finished" in err

    done = run_training(config.load(None, BASE + [f"output_dir={tmp_path}", "name=stopped"]))
    assert done["status"] == "ok" and finished(done) and done["resumed_from_step"] == 1


WRITER = """
import resource, signal, sys
from rayalign.summary import write_summary
write_summary(sys.argv[1], {"status": "ok", "round": 0})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))
write_summary(sys.argv[1], {"status": "ok", "round": 1, "padding": "x" * 2_000_000})
"""


def test_a_write_that_fails_half_way_leaves_the_previous_summary(tmp_path):
    """The second summary cannot be written whole (the process may write at most 1 MB to a file: a full disk's
    stand-in): the first one is still there, whole, and no partial file is left beside it."""
    run = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path)], capture_output=True, text=True)
    assert run.returncode != 0 and "File too large" in run.stderr
    assert json.loads((tmp_path / "summary.json").read_text()) == {"status": "ok", "round": 0}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
