"""`rayalign bench online`: where a D2PO round's seconds go, on the D2PO job's own settings.

It runs the first `rounds` rounds of `jobs/d2po.yaml` (the embedded SmolLM2 and minilm, the word-collector task;
`key=value` overrides apply, e.g. ``train.num_workers=1``) in a new run directory, with wandb off, and reads each
round's clock from its metrics.jsonl (`rayalign.pipelines.d2po.run_round`): sampling, scoring, gold labels, the
discriminator's update, training (`train_steps_s` the steps alone, `train_reference_s` the reference's pass) and the
weight sync (and its bytes). The fixed overhead of a
round is its wall time less its sampling, scoring and train steps: what the online loop spends on anything but
generating, judging and learning. Medians over the rounds; round 1 is reported but left out of them (it loads what
later rounds reuse).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

JOB = Path("jobs") / "d2po.yaml"
PHASES = ("sample_s", "score_s", "gold_s", "disc_update_s", "train_s", "train_steps_s", "train_reference_s",
          "weight_sync_s", "checkpoint_wait_s", "overhead_s")


def run_online_bench(rounds: int, out: str | None = None, overrides: list[str] | None = None) -> dict:
    """The round clock of the first `rounds` rounds; the run stays in `out`, else in a temporary directory removed
    at the end."""
    from rayalign.errors import RayAlignError

    if rounds < 2:
        raise RayAlignError(f"bench online needs --rounds >= 2 (round 1 is left out of the medians); got {rounds}")
    if not JOB.is_file():
        raise RayAlignError(f"bench online runs {JOB}: run it from the project's root directory")
    if out is not None:
        return _measure(rounds, Path(out), overrides)
    with tempfile.TemporaryDirectory(prefix="rayalign-online-") as tmp:
        return _measure(rounds, Path(tmp), overrides)


def _measure(rounds: int, root: Path, overrides: list[str] | None) -> dict:
    from rayalign import config as config_lib
    from rayalign.pipelines import run_pipeline
    from rayalign.tracking import read_metrics

    cfg = config_lib.load(JOB, [f"d2po.stop_after_round={rounds}", f"output_dir={root}", "name=online",
                                "tracking.wandb=disabled", *(overrides or [])])
    summary = run_pipeline(cfg)
    rows = [{"round": row["step"], "round_s": row["round_s"], "sync_bytes": row.get("weight_sync/bytes", 0.0),
             **{phase: row.get(f"time/{phase}", 0.0) for phase in PHASES}} for row in read_metrics(cfg.run_dir)]
    later = rows[1:]
    return {"job": str(JOB), "overrides": overrides or [], "rounds": rows, "mode": summary["train"]["mode"],
            "medians_after_round_1": {key: statistics.median(r[key] for r in later)
                                      for key in ("round_s", "sync_bytes", *PHASES)}}


def summary_lines(result: dict) -> list[str]:
    m, n = result["medians_after_round_1"], len(result["rounds"])
    head = (f"{result['job']} {' '.join(result['overrides'])}, trainer in {result['mode']}, {n} rounds; medians of "
            f"rounds 2-{n}:")
    split = (f"  round {m['round_s']:.1f} s = sampling {m['sample_s']:.1f} + scoring {m['score_s']:.1f} + train "
             f"steps {m['train_steps_s']:.1f} + fixed overhead {m['overhead_s']:.1f} s")
    overhead = (f"  of which: gold labels {m['gold_s']:.1f}, discriminator update {m['disc_update_s']:.1f}, training "
                f"beyond its steps {m['train_s'] - m['train_steps_s']:.1f} (reference pass "
                f"{m['train_reference_s']:.1f}), "
                f"weight sync {m['weight_sync_s']:.1f}, checkpoint wait {m['checkpoint_wait_s']:.1f} s")
    sync = (f"  weight sync: {m['sync_bytes'] / 1e6:.0f} MB in {m['weight_sync_s']:.2f} s, "
            f"{m['sync_bytes'] / 1e9 / m['weight_sync_s']:.2f} GB/s" if m["weight_sync_s"] else "  no weight sync")
    return [head, split, overhead, sync]
