"""How accuracy on the HH-RLHF sample grows with training pairs: a learning curve of the discriminator's features.

    python jobs/discriminator_curve.py [--backbone smollm2-135m-instruct] [--layers 15 22] [--out DIR]

The backbone stays frozen: each response's pooled hidden states (the discriminator's own pooling, at
`--layers`) are computed once, and a linear Bradley–Terry head, −log σ(w·(f(y⁺) − f(y⁻))) + λ‖w‖², is fitted
on n training pairs for growing n (λ picked by 5-fold cross-validation on those n pairs alone, three random
subsets per n below the full set). Held-out pairs and split are `discriminator_hh.py`'s (seed 0, 320 pairs).
A least-squares line through (log2 n, accuracy) says how many pairs the target accuracy would need if the
curve went on as measured: an extrapolation, printed as one. Writes `curve.json` into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from discriminator_hh import DEFAULT_DATA, load_pairs

from rayalign.scoring.discriminator import Discriminator, fit_bradley_terry_head

LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 3.0, 10.0, 30.0)


def accuracy(diffs: torch.Tensor, w: torch.Tensor) -> float:
    return ((diffs @ w) > 0).float().mean().item()


def cross_validated_lambda(diffs: torch.Tensor, folds: int = 5) -> float:
    def score(lam: float) -> float:
        right = 0.0
        for fold in range(folds):
            held = torch.arange(len(diffs)) % folds == fold
            right += accuracy(diffs[held], fit_bradley_terry_head(diffs[~held], lam)) * int(held.sum())
        return right / len(diffs)
    return max(LAMBDAS, key=score)


def pairs_needed(sizes: list[int], accuracies: list[float], target: float) -> float | None:
    """n where the least-squares line through (log2 n, accuracy) reaches `target`; None if it does not rise."""
    xs = [math.log2(n) for n in sizes]
    mx, my = sum(xs) / len(xs), sum(accuracies) / len(accuracies)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, accuracies)) / sum((x - mx) ** 2 for x in xs)
    return 2 ** (mx + (target - my) / slope) if slope > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--backbone", default="smollm2-135m-instruct")
    parser.add_argument("--pooling", default="response_mean", choices=["auto", "last", "response_mean"])
    parser.add_argument("--layers", type=int, nargs="+", default=[15, 22],
                        help="hidden-state indices pooled side by side (0 = embeddings; SmolLM2-135M has 30 blocks)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--held-out", type=int, default=320)
    parser.add_argument("--target", type=float, default=0.68)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/discriminator_curve")
    args = parser.parse_args()

    began = time.time()
    pairs, _ = load_pairs(args.data)
    random.Random(args.seed).shuffle(pairs)
    model = Discriminator(backbone=args.backbone, max_length=args.max_length, pooling=args.pooling,
                          pool_layers=args.layers)
    prompts = [p["prompt"] for p in pairs]
    print(f"features of {len(pairs)} pairs ...", flush=True)
    diffs = model.features(prompts, [p["chosen"] for p in pairs]) - model.features(prompts, [p["rejected"] for p in pairs])
    held_out, train = diffs[:args.held_out], diffs[args.held_out:]
    scale = train.std(0) + 1e-6  # standardised, so one λ grid suits every backbone
    held_out, train = held_out / scale, train / scale
    print(f"features in {time.time() - began:.0f} s", flush=True)

    sizes = [n for n in (80, 160, 320, 640) if n < len(train)] + [len(train)]
    curve = []
    for n in sizes:
        subsets = [random.Random(rep).sample(range(len(train)), n) for rep in range(3)] if n < len(train) \
            else [list(range(n))]
        scores = [accuracy(held_out, fit_bradley_terry_head(train[s], cross_validated_lambda(train[s]))) for s in subsets]
        curve.append({"train_pairs": n, "held_out_accuracy": sum(scores) / len(scores), "subsets": scores})
        print(f"{n:5d} training pairs: held-out accuracy {curve[-1]['held_out_accuracy']:.3f}", flush=True)
    needed = pairs_needed(sizes, [c["held_out_accuracy"] for c in curve], args.target)
    print(f"extrapolated: {args.target} would need ~{needed:.0f} training pairs (the sample has {len(train)})"
          if needed else f"extrapolated: accuracy does not rise with pairs; {args.target} is out of reach")
    summary = {"backbone": args.backbone, "pooling": model.pooling, "layers": args.layers, "max_length": args.max_length,
               "held_out_pairs": len(held_out), "curve": curve, "target": args.target,
               "pairs_needed_extrapolated": needed, "wall_s": round(time.time() - began, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
