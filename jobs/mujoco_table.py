"""The MuJoCo experiment's table (jobs/README.md, "MPO on the MuJoCo benchmark") from a sweep's trials.

Per setting: each loss's mean return over its seeds with a 95% t interval, and the discovered loss minus DPO
and minus ORPO paired by seed (a seed is the same dataset, initialisation and evaluation episodes for every
loss): "better" or "worse" where the interval excludes 0, else "cannot tell at N seeds" with the seeds a 95%
interval would need to exclude 0 at the observed effect.
    python jobs/mujoco_table.py runs/mujoco_losses
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rayalign.pipelines.mujoco import t_interval
from rayalign.stats import prompts_needed

NAMES = {"dpo": "DPO", "orpo": "ORPO", "mpo": "discovered MPO"}


def load(sweep_dir: Path) -> dict:
    """{setting: {loss: {seed: return}}}, setting = (noise, mixed)."""
    table: dict = {}
    for path in sorted((sweep_dir / "trials").glob("*/summary.json")):
        summary = json.loads(path.read_text())
        setting = (summary["setting"]["noise"], summary["setting"]["mixed"])
        table.setdefault(setting, {})[summary["loss"]] = {s["seed"]: s["return"] for s in summary["seeds"]}
    return table


def cell(values: list[float]) -> str:
    low, high = t_interval(values)
    return f"{sum(values) / len(values):.0f} [{low:.0f}, {high:.0f}]"


def difference(ours: dict, theirs: dict) -> str:
    diffs = [ours[seed] - theirs[seed] for seed in sorted(ours)]
    needed = prompts_needed(diffs, 0.0)
    low, high = t_interval(diffs)
    if low > 0 or high < 0:
        verdict = "better" if low > 0 else "worse"
    else:
        verdict = f"cannot tell at {len(diffs)} seeds" + (f" (needs ~{needed})" if needed else ": no difference")
    return f"{sum(diffs) / len(diffs):+.0f} [{low:.0f}, {high:.0f}], {verdict}"


def main(sweep_dir: str) -> None:
    table = load(Path(sweep_dir))
    print("| setting | DPO | ORPO | discovered MPO | discovered − DPO | discovered − ORPO |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (noise, mixed), losses in sorted(table.items()):
        name = "clean" if noise == mixed == 0 else f"noisy ({noise:.0%} flipped)" if noise else f"mixed ({mixed:.0%})"
        if noise and mixed:
            name = f"noisy ({noise:.0%} flipped) and mixed ({mixed:.0%})"
        print(f"| {name} | " + " | ".join(cell(list(losses[loss].values())) for loss in NAMES)
              + f" | {difference(losses['mpo'], losses['dpo'])} | {difference(losses['mpo'], losses['orpo'])} |")


if __name__ == "__main__":
    main(sys.argv[1])
