"""`rayalign` command line: train | models | bench.

User mistakes (bad config, bad data, missing package) print one line, `error: ...`, and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from rayalign.errors import RayAlignError


def _config_help() -> str:
    from rayalign.config import describe_fields

    return "\n".join(f"  {key} = {default!r}\n      {doc}" for key, default, doc in describe_fields())


def cmd_train(args) -> int:
    from rayalign import config
    from rayalign.train.driver import run_training

    cfg = config.load(args.config, args.overrides)
    summary = run_training(cfg)
    final = summary["final_metrics"]
    print(f"\ndone: {summary['steps']} steps in {summary['wall_time_s']} s, "
          f"median {summary['tokens_per_s_median'] or 0:.0f} tokens/s")
    print("final: " + ", ".join(f"{k} {final[k]:.4g}" for k in ("loss", "rewards/accuracies", "rewards/margins")
                                if k in final))
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"summary: {cfg.run_dir / 'summary.json'}")
    return 0


def cmd_models(args) -> int:
    from rayalign.models import EMBEDDED, resolve_model

    if args.provision:
        for name in args.provision:
            print(f"{name}: {resolve_model(name)}")
        return 0
    for name, what in EMBEDDED.items():
        print(f"{name:24s} {what}")
    return 0


def cmd_bench(args) -> int:
    from rayalign.bench import run_bench

    print(json.dumps(run_bench(args.model, args.steps, args.batch, args.seq_len), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayalign", description="Preference optimisation of LLMs on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a policy with DPO or another preference loss",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="config keys (override any as key=value):\n" + _config_help())
    train.add_argument("config", nargs="?", help="YAML config (see jobs/)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-5 loss.name=ipo")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="list embedded models, or provision them for offline use")
    models.add_argument("--provision", nargs="+", metavar="NAME", help="build and cache these models now")
    models.set_defaults(func=cmd_models)

    bench = sub.add_parser("bench", help="training-step tokens/s and peak memory, chunked vs naive log-probs")
    bench.add_argument("--model", default="smollm2-135m-instruct")
    bench.add_argument("--steps", type=int, default=5)
    bench.add_argument("--batch", type=int, default=4, help="preference pairs per step")
    bench.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RayAlignError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
