"""Train a discriminator on the HH-RLHF harmless sample and report held-out pairwise accuracy.

    python jobs/discriminator_hh.py [--data PATH] [--train 1280] [--held-out 320] [--out DIR]
    python jobs/discriminator_hh.py --fit finetune --backbone minilm --pooling auto --max-length 128

Default (`--fit head`): SmolLM2-135M-Instruct stays frozen, each response's hidden states at layers 15
and 22 are mean-pooled, and the linear Bradley–Terry head is fitted to convergence on them
(`Discriminator.fit_head`): one forward pass per response. `--fit finetune` trains backbone and head with
AdamW for `--epochs` (the D2PO pipeline's online update). The 1,600 pairs are shuffled with `--seed` and
split into train / held-out; rows the data layer rejects (e.g. identical responses) are dropped and
counted. Writes `summary.json` and the checkpoint (servable with `rayalign serve discriminator
--checkpoint OUT/checkpoint`) into --out.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from rayalign.config import DataConfig
from rayalign.data.formats import normalise
from rayalign.data.readers import iter_rows
from rayalign.errors import DataError
from rayalign.scoring.discriminator import Discriminator, prompt_text

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base.jsonl.gz"


def load_pairs(path: str) -> tuple[list[dict], int]:
    """HH transcripts as {prompt (transcript text), chosen, rejected}, and how many rows were dropped."""
    pairs, dropped = [], 0
    for number, raw in iter_rows(DataConfig(path=path)):
        try:
            if isinstance(raw, DataError):
                raise raw
            example = normalise(raw, number, path, "hh_rlhf")
        except DataError:
            dropped += 1
            continue
        pairs.append({"prompt": prompt_text(example.prompt), "chosen": example.chosen, "rejected": example.rejected})
    return pairs, dropped


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--train", type=int, default=1280)
    parser.add_argument("--held-out", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--fit", default="head", choices=["head", "finetune"])
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="smollm2-135m-instruct")
    parser.add_argument("--pooling", default="response_mean", choices=["auto", "last", "response_mean"])
    parser.add_argument("--pool-layers", type=int, nargs="*", default=[15, 22],
                        help="hidden-state indices pooled side by side (none given: the last layer)")
    parser.add_argument("--train-layers", type=int, default=-1,
                        help="train only the top k layers (-1: all; 2 is ~30%% faster and ~2 points less accurate)")
    parser.add_argument("--out", default="runs/discriminator_hh")
    args = parser.parse_args()

    began = time.time()
    pairs, dropped = load_pairs(args.data)
    random.Random(args.seed).shuffle(pairs)
    held_out, train = pairs[:args.held_out], pairs[args.held_out:args.held_out + args.train]
    model = Discriminator(backbone=args.backbone, max_length=args.max_length, lr=args.lr, epochs=args.epochs,
                          batch_size=args.batch_size, seed=args.seed, pooling=args.pooling,
                          pool_layers=args.pool_layers or None,
                          train_layers=None if args.train_layers < 0 else args.train_layers)
    summary = {"backbone": args.backbone, "fit": args.fit, "pooling": model.pooling, "pool_layers": list(model.layers),
               "train_pairs": len(train), "held_out_pairs": len(held_out), "dropped_rows": dropped,
               "max_length": args.max_length}
    trained = time.time()
    if args.fit == "head":
        print(f"features of {len(train)} training pairs (one forward pass per response) ...", flush=True)
        summary.update(model.fit_head(train))
    else:
        summary["held_out_accuracy_before"] = model.accuracy(held_out)
        result = model.update(train, on_step=lambda step, loss: step % 10 == 0 and print(
            f"step {step}: loss {loss:.4f} ({time.time() - trained:.0f} s)", flush=True))
        summary.update({"epochs": args.epochs, "lr": args.lr, "train_layers": args.train_layers,
                        "loss_first_epoch": result["loss_first_epoch"], "loss_last_epoch": result["loss_last_epoch"],
                        "loss_first_20_steps": _mean(result["losses"][:20]),
                        "loss_last_20_steps": _mean(result["losses"][-20:]), "train_steps": result["steps"]})
    summary["train_s"] = round(time.time() - trained, 1)
    summary["held_out_accuracy"] = model.accuracy(held_out)
    summary["wall_s"] = round(time.time() - began, 1)
    out = Path(args.out)
    model.save(out / "checkpoint")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
