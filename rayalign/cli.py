"""`rayalign` command line: train | run | sweep | eval | compare | watch | serve | submit | jobs | models | bench.

User mistakes (bad config, bad data, missing package) print one line, `error: ...`, and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys

from rayalign.errors import RayAlignError


def _config_help(pipeline: str | None) -> str:
    from rayalign.config import describe_fields

    return "\n".join(f"  {key} = {default!r}\n      {doc.replace(chr(10), chr(10) + '      ')}"
                     for key, default, doc in describe_fields(pipeline))


def _job(args) -> tuple[str | None, list[str]]:
    """(YAML file or None, overrides): a first argument that is key=value and no file is an override, so
    `rayalign train data.path=prefs.jsonl` needs no YAML."""
    from pathlib import Path

    if args.config and "=" in args.config and not Path(args.config).exists():
        return None, [args.config, *args.overrides]
    return args.config, args.overrides


def _help_pipeline(argv: list[str]) -> str | None:
    """For `train --help` / `run --help`: the pipeline whose keys to list: `pipeline=NAME`, else the named YAML's
    `pipeline`, else train's (for `train`) or every key (None, for `run`)."""
    from pathlib import Path

    from rayalign.config import read_yaml_mapping

    for token in argv[1:]:
        if token.startswith("pipeline="):
            return token.partition("=")[2]
    for token in argv[1:]:
        if not token.startswith("-") and "=" not in token and Path(token).is_file():
            return str(read_yaml_mapping(token, "config").get("pipeline", "train"))
    return "train" if argv[0] == "train" else None


def cmd_train(args) -> int:
    from rayalign import config
    from rayalign.train.driver import run_training

    cfg = config.load(*_job(args))
    _print_train(run_training(cfg), cfg.run_dir)
    print(f"summary: {cfg.run_dir / 'summary.json'}")
    return 0


def cmd_watch(args) -> int:
    from rayalign import watch

    try:
        if args.prometheus:
            if not args.run:
                raise RayAlignError("watch --prometheus needs the run's name (its `name`, the metrics' run tag)")
            watch.watch_prometheus(args.prometheus, args.run, args.follow, args.interval)
        else:
            watch.watch_directory(watch.find_run(args.run, args.output_dir), args.follow, args.interval)
    except KeyboardInterrupt:  # the way to stop following: the run goes on
        return 0
    return 0


def _print_train(summary: dict, run_dir) -> None:
    final = summary["final_metrics"]
    mode = f" ({summary['mode']})" if summary.get("mode") else ""
    print(f"\ntrained: {summary['steps']} steps in {summary['wall_time_s']} s{mode}, "
          f"median {summary['tokens_per_s_median'] or 0:.0f} tokens/s")
    for label, prefix in (("final", ""), ("held out", "eval_")):
        shown = [f"{prefix}{k} {final[prefix + k]:.4g}" for k in ("loss", "rewards/accuracies", "rewards/margins")
                 if prefix + k in final]
        if shown:
            print(f"{label}: " + ", ".join(shown))
    print(f"checkpoint: {summary['checkpoint']}")
    if summary.get("phases_s"):
        print("seconds: " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:g}"
                                      for k, v in summary["phases_s"].items()))


def cmd_run(args) -> int:
    from rayalign import config
    from rayalign.pipelines import run_pipeline

    cfg = config.load(*_job(args))
    summary = run_pipeline(cfg)
    if "train" in summary:  # the mujoco pipeline prints its own line
        _print_train(summary["train"], cfg.run_dir)
    if "synthesis" in summary:
        s = summary["synthesis"]
        print(f"synthesis: {s['pairs']} pairs from {s['prompts']} prompts ({s.get('ties_skipped', 0)} ties skipped)")
    if "eval" in summary:
        from rayalign.stats import describe

        e = summary["eval"]
        print(f"eval: gold reward {e['policy']['mean_reward']:.3f} ± {e['policy']['reward_stderr']:.3f} (policy) vs "
              f"{e['reference']['mean_reward']:.3f} ± {e['reference']['reward_stderr']:.3f} (starting model)")
        print(f"eval: {describe(e['win_rate'])}")
        print(f"report: {cfg.run_dir / 'report.json'} and report.png")
    print(f"summary: {cfg.run_dir / 'summary.json'}")
    return 0


def cmd_sweep(args) -> int:
    from rayalign.tune import load_sweep, run_sweep

    summary = run_sweep(load_sweep(args.sweep, args.overrides))
    print(f"best: {summary['best']}\nbest config: {summary['best_config']}\ntable: {summary['table']}")
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
    if args.what == "memory":
        from rayalign.memory_bench import run_memory_bench

        print(json.dumps(run_memory_bench(args.params, int(args.workers or 2), args.out, args.overrides)))
        return 0
    if args.what == "online":
        from rayalign.online_bench import run_online_bench, summary_lines

        result = run_online_bench(args.rounds, args.out, args.overrides)
        print(json.dumps(result, indent=2))
        print("\n".join(summary_lines(result)))
        return 0
    if args.what == "data":
        from rayalign.data_bench import run_data_bench, summary_lines

        result = run_data_bench(args.model, args.rows, args.repeats, args.data)
        print(json.dumps(result, indent=2))
        print("\n".join(summary_lines(result)))
        return 0
    if args.what == "serve":
        from rayalign.serve_bench import bench_serve, summary_lines

        result = bench_serve(args.model, args.requests, args.concurrency, args.max_tokens, args.port)
        print(json.dumps(result, indent=2))
        print("\n".join(summary_lines(result)))
        return 0
    if args.peer:
        from rayalign.peer_bench import run_peer_bench, summary_lines

        result = run_peer_bench(args.peer, args.model, args.pairs, args.peer_steps, args.batch, args.repeats, args.gpu,
                                args.workers or "auto")
        print(json.dumps(result, indent=2))
        print("\n".join(summary_lines(result)))
        return 0
    from rayalign.bench import run_bench

    result = {"train_step": run_bench(args.model, args.steps, args.batch, args.seq_len)}
    if not args.skip_sampler:
        from rayalign.sampling.bench import bench_sampler

        result["sampler"] = bench_sampler(args.model)
    print(json.dumps(result, indent=2))
    return 0


def cmd_eval(args) -> int:
    import dataclasses

    from rayalign import config
    from rayalign.config import EvalConfig, SamplingConfig
    from rayalign.evaluation import evaluate

    e = EvalConfig(task=args.task, num_prompts=args.num_prompts, samples=args.samples, temperature=args.temperature,
                   top_p=args.top_p, max_new_tokens=args.max_new_tokens, scorer=args.scorer, seed=args.seed,
                   split=args.split)
    stray = [o for o in args.overrides if not o.startswith(("judge.", "prompts.", "model."))]
    if stray:
        raise RayAlignError(f"eval takes judge.*, prompts.* and model.* settings after its options; '{stray[0]}' is "
                            "not one")
    cfg = config.load(None, args.overrides)
    task = None
    if cfg.prompts.path:  # your prompts and reward model in place of --task
        from rayalign.pipelines.run import eval_config, task_of

        task, e = task_of(cfg), eval_config(dataclasses.replace(cfg, eval=e))
    report = evaluate(args.policy, args.reference, e, args.out, SamplingConfig(engine=args.engine), task=task,
                      judge=cfg.judge, options=cfg.model.options)
    for role in ("policy", "reference"):
        stats = report[f"{role}_stats"]
        print(f"{role:9s} mean reward {stats['mean_reward']:.3f} ± {stats['reward_stderr']:.3f} (s.e.), "
              f"mean length {stats['mean_length_tokens']:.1f} tokens, truncated {stats['truncated_share']:.0%}")
    print(report["summary"])
    if "judge" in report:
        counts = report["judge"]
        print(f"judge {counts['model']}: {counts['requests']} requests, {counts['cached']} answers from the cache, "
              f"{counts['invalid']} invalid answers (scored as ties), {counts['ties']} ties")
    print(f"report: {args.out}/report.json, {args.out}/report.png")
    return 0


def cmd_compare(args) -> int:
    from rayalign.compare import compare, reported_pairs
    from rayalign.stats import describe

    result = compare(args.runs, args.out, args.label or None)
    for label, group in result["groups"].items():
        print(f"{label}: runs {', '.join(group['runs'])}")
    for pair in reported_pairs(result):
        print(f"{pair['row']} vs {pair['column']}: {describe(pair)}")
    print(f"compare: {args.out}/compare.json, compare.md and compare.png")
    return 0


def cmd_plan(args) -> int:
    from rayalign import config as config_lib
    from rayalign.plan import lines, plan

    if args.gpus < 1 or args.nodes < 1 or args.nodes > args.gpus:
        raise RayAlignError(f"--gpus {args.gpus} --nodes {args.nodes}: need 1 <= nodes <= gpus")
    cfg = config_lib.load(args.config, ["train.use_gpu=true", *args.overrides])
    result = plan(args.model, args.gpus, args.nodes, cfg)
    print("\n".join(lines(result)) if not args.json else json.dumps(result))
    return 0


def cmd_export(args) -> int:
    from rayalign.export import export_checkpoint

    checkpoint = export_checkpoint(args.source, args.out, args.dtype, args.merge_lora)
    print(f"exported {checkpoint} to {args.out}")
    return 0


def cmd_serve(args) -> int:
    if args.what == "discriminator":
        if not args.checkpoint:
            raise RayAlignError("serve discriminator needs --checkpoint DIR (a directory written by Discriminator.save)")
        from rayalign.scoring.serve import serve_forever

        return serve_forever(args.checkpoint, args.host, args.port)
    from rayalign.sampling.serve import serve_forever as serve_sampler

    return serve_sampler(args.model, args.host, args.port, args.engine)


def build_parser(keys_of: str | None = None) -> argparse.ArgumentParser:
    """The CLI; `keys_of`: the pipeline whose config keys `train --help` / `run --help` list (None: training's for
    train, a pointer to `run --help pipeline=NAME` for run)."""
    parser = argparse.ArgumentParser(prog="rayalign", description="Preference optimisation of LLMs on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a policy with DPO or another preference loss",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="config keys (override any as key=value):\n" + _config_help(keys_of or "train"))
    train.add_argument("config", nargs="?", help="YAML config (see jobs/); or leave it out and give key=value only")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-5 loss.name=ipo")
    train.set_defaults(func=cmd_train)

    from rayalign.recipes import RECIPES

    keys = (f"config keys of the {keys_of} pipeline (override any as key=value):\n" + _config_help(keys_of)
            if keys_of else "every pipeline's keys: `rayalign run --help pipeline=NAME` (or JOB.yaml) lists one's")
    run = sub.add_parser("run", help="run a pipeline job (the config's `pipeline`: " + ", ".join(RECIPES) + ")",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="pipelines:\n" + "\n".join(f"  {r.name:8s} {r.help}" for r in RECIPES.values()) +
                         "\n\n" + keys)
    run.add_argument("config", nargs="?", help="YAML job (see jobs/); or leave it out and give key=value only")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. inco.ratio=0.25")
    run.set_defaults(func=cmd_run)

    sweep = sub.add_parser("sweep", help="Ray Tune sweep over a pipeline's config (see jobs/sweeps/)")
    sweep.add_argument("sweep", help="sweep YAML")
    sweep.add_argument("overrides", nargs="*", help="overrides of the sweep file, e.g. num_samples=2")
    sweep.set_defaults(func=cmd_sweep)

    models = sub.add_parser("models", help="list embedded models, or provision them for offline use")
    models.add_argument("--provision", nargs="+", metavar="NAME", help="build and cache these models now")
    models.set_defaults(func=cmd_models)

    bench = sub.add_parser("bench", help=(
        "train: tokens/s and peak memory of the trainer's step vs the naive one, or with --peer trl whole DPO runs "
        "against TRL; and of the sampler (batched vs one prompt at a time); serve: the discriminator's and the "
        "sampler's HTTP endpoints under load (errors, p50/p99, req/s) and bad requests; memory: each rank's peak RSS "
        "rise while a model built from a config loads, trains, saves and resumes; online: where the seconds of "
        "jobs/d2po.yaml's rounds go, and each round's fixed overhead; data: pairs/s of reading and tokenising "
        "preference data, against row by row, cold and cached"))
    bench.add_argument("what", nargs="?", default="train", choices=["train", "serve", "memory", "online", "data"])
    bench.add_argument("--model", default="smollm2-135m-instruct")
    bench.add_argument("--steps", type=int, default=5)
    bench.add_argument("--batch", type=int, default=4, help="preference pairs per step")
    bench.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    bench.add_argument("--peer", choices=["trl"], help="train: the same DPO job through TRL's DPOTrainer and "
                       "`rayalign train`, whole processes (needs `pip install 'rayalign[bench]'`)")
    bench.add_argument("--pairs", type=int, default=64, help="--peer: preference pairs in the data")
    bench.add_argument("--peer-steps", type=int, default=8, help="--peer: optimizer steps")
    bench.add_argument("--repeats", type=int, default=3, help="--peer, data: runs of each (medians)")
    bench.add_argument("--rows", type=int, default=10000, help="data: rows of the file tokenised")
    bench.add_argument("--data", help="data: the preference file its rows are cycled from (default: the HH-RLHF "
                       "sample of ../shared/data when present, else the quickstart's pairs)")
    bench.add_argument("--gpu", action="store_true", help="--peer: train on the GPU (bf16) instead of the CPU")
    bench.add_argument("--workers", help="--peer: rayalign's train.num_workers (default auto, as the shipped jobs: "
                       "local mode on one machine; 0: local mode, the loop in the rayalign process; 1: one Ray Train "
                       "worker on a local Ray cluster); memory: Ray Train workers (default 2)")
    bench.add_argument("--skip-sampler", action="store_true", help="skip the sampler's batched vs one-at-a-time run")
    bench.add_argument("--params", type=float, default=5e8, help="memory: parameters of the Llama built from a config")
    bench.add_argument("overrides", nargs="*", help="memory, online: config overrides of its runs, e.g. "
                       "train.fused_adamw=true")
    bench.add_argument("--out", help="memory, online: directory for the runs, kept (default: a temporary one, removed)")
    bench.add_argument("--rounds", type=int, default=4, help="online: D2PO rounds to run (round 1 is left out of "
                       "the medians)")
    bench.add_argument("--requests", type=int, default=1000, help="serve: requests per endpoint")
    bench.add_argument("--concurrency", type=int, default=32, help="serve: requests in flight")
    bench.add_argument("--max-tokens", type=int, default=8, help="serve: new tokens per completion")
    bench.add_argument("--port", type=int, default=8000, help="serve: Serve's HTTP port on 127.0.0.1")
    bench.set_defaults(func=cmd_bench)

    evaluate = sub.add_parser("eval", help="policy vs reference on a task's held-out prompts: rewards, win rate, "
                              "report.json + report.png")
    evaluate.add_argument("--policy", required=True, help="model name or checkpoint directory")
    evaluate.add_argument("--reference", required=True, help="the starting model")
    evaluate.add_argument("--task", default="word_collector", help="word_collector, math, bullets, or a registered task")
    evaluate.add_argument("--num-prompts", type=int, default=128)
    evaluate.add_argument("--samples", type=int, default=2, help="responses per prompt and model")
    evaluate.add_argument("--temperature", type=float, default=0.7)
    evaluate.add_argument("--top-p", type=float, default=1.0)
    evaluate.add_argument("--max-new-tokens", type=int, default=48)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--split", default="held_out", choices=["held_out", "validation"],
                          help="the task's test prompts (held_out) or its validation prompts, for choices made before "
                          "a final run (topics disjoint from both training and test)")
    evaluate.add_argument("--scorer", default="gold", help="'gold' (the task's reward), 'llm' (an LLM judge, "
                          "pairwise: judge.* settings), module:attribute (your scoring function) or a reward model "
                          "directory (a discriminator checkpoint or an HF sequence classifier, served on Ray Serve)")
    evaluate.add_argument("overrides", nargs="*", help="judge.* and prompts.* settings, e.g. "
                          "prompts.path=my_prompts.jsonl prompts.judge=RM_DIR (your prompts in place of --task, scored "
                          "by your reward model), judge.base_url=http://127.0.0.1:8000/v1 (`rayalign run --help` lists "
                          "them)")
    evaluate.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="sampling engine of the SamplerPool")
    evaluate.add_argument("--out", default="runs/eval", help="output directory")
    evaluate.set_defaults(func=cmd_eval)

    comp = sub.add_parser("compare", help="trained runs and their starting model on the same held-out samples: "
                          "pairwise win rates with intervals, compare.json + compare.png")
    comp.add_argument("runs", nargs="+", help="run directories (written by `rayalign run`)")
    comp.add_argument("--label", action="append", help="a label per run, in order; runs sharing one are pooled "
                      "(e.g. the seeds of a method)")
    comp.add_argument("--out", default="runs/compare", help="output directory")
    comp.set_defaults(func=cmd_compare)

    plan_cmd = sub.add_parser("plan", help="memory per GPU and per node, checkpoint sizes, from the real FSDP2 shard "
                              "sizes (meta device, a fake process group of N ranks)")
    plan_cmd.add_argument("model", help="llama-3.2-1b, llama-3-8b, llama-3-70b, or any model name rayalign loads")
    plan_cmd.add_argument("--gpus", type=int, required=True, help="training GPUs (one Ray Train worker each)")
    plan_cmd.add_argument("--nodes", type=int, default=1, help="nodes they are spread over")
    plan_cmd.add_argument("--config", help="the job's YAML (its micro-batch, length, dtype, LoRA)")
    plan_cmd.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    plan_cmd.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.micro_batch_size=2")
    plan_cmd.set_defaults(func=cmd_plan)

    export = sub.add_parser("export", help="write the HF model directory of a checkpoint (streamed layer by layer "
                            "from its DCP shards, no trainer state)")
    export.add_argument("source", help="a checkpoint directory, or a run directory (its newest checkpoint)")
    export.add_argument("out", help="the HF directory to write")
    export.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="weights' dtype (default: the run's train.export_dtype)")
    export.add_argument("--merge-lora", action="store_true", help="LoRA runs: the base model with the adapters "
                        "merged in, instead of the adapter directory")
    export.set_defaults(func=cmd_export)

    watch = sub.add_parser("watch", help="a run's live figures in the terminal: the last of its metrics logs, then "
                           "each new row (--follow); or its Ray metrics through Prometheus (--prometheus)")
    watch.add_argument("run", nargs="?", help="a run directory or a run name in --output-dir (default: the newest run)")
    watch.add_argument("--output-dir", default="runs", help="where run names are looked for")
    watch.add_argument("-f", "--follow", action="store_true", help="keep printing until the run writes its summary "
                       "(with --prometheus: until Ctrl-C)")
    watch.add_argument("--prometheus", metavar="URL", help="read the run's metrics from this Prometheus (a job on a "
                       "cluster), e.g. http://127.0.0.1:9090; RUN is then the run's name")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between looks")
    watch.set_defaults(func=cmd_watch)

    serve = sub.add_parser("serve", help="serve a model on Ray Serve until Ctrl-C")
    serve.add_argument("what", choices=["discriminator", "sampler"])
    serve.add_argument("--checkpoint", help="discriminator: a directory written by Discriminator.save")
    serve.add_argument("--model", default="smollm2-135m-instruct",
                       help="sampler: an embedded name, a checkpoint directory or a hub id (OpenAI-compatible /v1)")
    serve.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="sampler: the sampling engine")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (the endpoint has no authentication)")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=cmd_serve)

    from rayalign.submit import add_parsers  # `submit` and `jobs`: the Ray Jobs API

    add_parsers(sub)
    return parser


# Storage a user must fix (full, read-only, not a directory), as against a bug: one line, not a traceback.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    asks_keys = argv[:1] in (["train"], ["run"]) and ("-h" in argv or "--help" in argv)
    try:
        parser = build_parser(_help_pipeline(argv) if asks_keys else None)
    except RayAlignError as error:  # an unknown pipeline= or a bad YAML named beside --help
        print(f"error: {error}", file=sys.stderr)
        return 2
    args, stray = parser.parse_known_args(argv)
    if stray:  # key=value overrides after an option (`plan MODEL --gpus 8 train.micro_batch_size=2`) are overrides
        if not hasattr(args, "overrides") or not all("=" in token and not token.startswith("-") for token in stray):
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        args.overrides = [*(args.overrides or []), *stray]
    try:
        return args.func(args)
    except RayAlignError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in _STORAGE_ERRORS:
            raise
        print(f"error: cannot write {error.filename or 'a file'}: {error.strerror}; free some space or point "
              "output_dir= (or RAYALIGN_CACHE) at a writable directory. Finished files are whole: rerun to resume",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
