"""Plot a D2PO sweep: the policy's gold reward per round against the gold labels used, one line per mode.

    python jobs/d2po_plot.py runs/d2po_modes [--out runs/d2po_modes/d2po_budget.png]

Reads every trial's `config.yaml` and `metrics.jsonl` (one row per round: `gold/used`, `policy/gold_reward`,
the mean gold reward of that round's samples from the policy trained so far) and averages the seeds of a mode
round by round. Prints the table the plot shows, and per mode the discriminator's accuracy on the gold pairs
it had not yet trained on (`disc/accuracy_new_gold` from round 2 on, weighted by that round's pairs in
`gold_pairs.jsonl`; `frozen` gets all its gold pairs in round 1, so it has none).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml

from rayalign.files import read_jsonl


def trials_by_mode(sweep_dir: Path) -> dict[str, list[Path]]:
    """mode -> the directories of its trials that logged rounds, each config read once."""
    trials: dict[str, list[Path]] = {}
    for trial in sorted((sweep_dir / "trials").iterdir()):
        if (trial / "metrics.jsonl").is_file():
            mode = yaml.safe_load((trial / "config.yaml").read_text())["d2po"]["mode"]
            trials.setdefault(mode, []).append(trial)
    return trials


def accuracy_on_new_gold(rounds: list[dict], gold_pairs: list[dict]) -> tuple[int, int]:
    """(pairs the discriminator ranked right, gold pairs it was asked about), each before it trained on them;
    `rounds` are a trial's metrics rows, `gold_pairs` its gold_pairs.jsonl."""
    per_round: dict[int, int] = {}
    for pair in gold_pairs:
        per_round[pair["round"]] = per_round.get(pair["round"], 0) + 1
    right = total = 0
    for row in rounds:
        if "disc/accuracy_new_gold" in row and row["step"] > 1:  # in round 1 it has learnt nothing yet
            right += round(row["disc/accuracy_new_gold"] * per_round[row["step"]])
            total += per_round[row["step"]]
    return right, total


def mean_curve(trials: list[list[dict]]) -> list[tuple[float, float, float]]:
    """Per round: mean gold labels used before it, mean and sd over seeds of the policy's gold reward."""
    rounds = min(len(t) for t in trials)
    rows = []
    for r in range(rounds):
        used_before = [t[r - 1]["gold/used"] if r else 0 for t in trials]
        rewards = [t[r]["policy/gold_reward"] for t in trials]
        rows.append((statistics.mean(used_before), statistics.mean(rewards),
                     statistics.stdev(rewards) if len(rewards) > 1 else 0.0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_labels, by_round) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for mode, dirs in sorted(trials_by_mode(args.sweep_dir).items()):
        trials = [read_jsonl(d / "metrics.jsonl") for d in dirs]
        counts = [accuracy_on_new_gold(t, read_jsonl(d / "gold_pairs.jsonl")) for t, d in zip(trials, dirs)]
        right, total = sum(r for r, _ in counts), sum(n for _, n in counts)
        if total:
            print(f"{mode}: discriminator right on {right}/{total} new gold pairs ({right / total:.3f}), "
                  "each measured before it trained on them")
        rows = mean_curve(trials)
        print(f"{mode} ({len(trials)} seeds): " + "; ".join(f"round {i + 1}: {u:.0f} labels, reward {m:.2f} ± {s:.2f}"
                                                           for i, (u, m, s) in enumerate(rows)))
        label = f"{mode} ({len(trials)} seeds)"
        means, sds = [m for _, m, _ in rows], [s for _, _, s in rows]
        by_labels.errorbar([u for u, _, _ in rows], means, yerr=sds, marker="o", capsize=3, label=label)
        by_round.errorbar(range(1, len(rows) + 1), means, yerr=sds, marker="o", capsize=3, label=label)
    by_labels.set_xlabel("gold labels used before the round")
    by_labels.set_ylabel("gold reward of the round's samples (± sd, seeds)")
    by_round.set_xlabel("round (frozen spends its whole budget before round 2)")
    by_round.legend()
    fig.tight_layout()
    out = args.out or args.sweep_dir / "d2po_budget.png"
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
