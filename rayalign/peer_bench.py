"""`rayalign bench --peer trl`: the same DPO job through TRL's DPOTrainer and through `rayalign train`, each a
fresh process, measured from spawn to exit.

The job: SmolLM2-135M-Instruct, `pairs` word-collector preference pairs in the conversational format (both tools
apply the model's chat template), `steps` optimizer steps of `batch` pairs, DPO β 0.1, lr 1e-5 without warm-up,
at most 256 tokens a sequence, and the trained model written at the end. CPU: float32, the machine's cores;
GPU: bf16. TRL runs with its defaults otherwise (its reference model forward at every step) but without gradient
checkpointing, which its DPOConfig turns on by default and rayalign does not use: each side does the same
work apart from its own design. rayalign runs with an empty reference cache (it computes its reference pass inside
the run), wandb disabled as TRL's `report_to="none"`, and no optimizer state in the final checkpoint (TRL's
`save_model` writes none).

Reported per tool: whole-process seconds; the median step's tokens/s (the tokens of both sequences of every pair,
over the step's wall time); peak memory: on CPU the largest sum of proportional set sizes (PSS: shared pages
split between the processes that map them) over the process and all its descendants, sampled every 0.2 s (with
`workers=1` rayalign's figure includes Ray's own processes: GCS, raylet, dashboard, the Train controller and
worker); on GPU the peak CUDA memory the training process allocated. Medians over `repeats` runs, and
rayalign-over-TRL ratios.

`workers` is rayalign's `train.num_workers`: auto (the default, as in the shipped jobs) resolves to local mode on one
machine; 0 is Ray Train's local mode, the training loop in the `rayalign train` process as TRL's is in its own; 1 is
one Ray Train worker on a local Ray cluster, what a job that will grow to more workers or a cluster runs. The result
says which mode ran (the run summary's `mode`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rayalign.errors import MissingPackageError, RayAlignError

BETA, LR, MAX_LENGTH, MAX_PROMPT_LENGTH = 0.1, 1e-5, 256, 128
RESULT_PREFIX = "peer-bench-result: "


def write_conversational_pairs(path: Path, n: int) -> Path:
    from rayalign.tasks.word_collector import make_pairs

    rows = [{"prompt": [{"role": "user", "content": row["prompt"]}],
             "chosen": [{"role": "assistant", "content": row["chosen"]}],
             "rejected": [{"role": "assistant", "content": row["rejected"]}]} for row in make_pairs(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _tree_memory_mib(root) -> tuple[float, float, int]:
    """(Σ PSS of `root` and its descendants, the largest one's PSS, in MiB (RSS where PSS is unreadable),
    process count)."""
    import psutil

    sizes = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            try:
                sizes.append(proc.memory_full_info().pss)
            except (psutil.AccessDenied, AttributeError):
                sizes.append(proc.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    return sum(sizes) / 2**20, max(sizes, default=0) / 2**20, len(sizes)


def run_measured(command: list[str], env: dict, log: Path) -> dict:
    """Run `command` to its end; wall seconds, peak tree memory and its process count, the largest process's peak,
    exit code, output."""
    import psutil

    began = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak, largest, processes, done = 0.0, 0.0, 0, threading.Event()

        def sample():
            nonlocal peak, largest, processes
            root = psutil.Process(proc.pid)
            while not done.wait(0.2):
                try:
                    mib, one, count = _tree_memory_mib(root)
                except psutil.NoSuchProcess:
                    return
                largest = max(largest, one)
                if mib > peak:
                    peak, processes = mib, count

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "peak_pss_mib": peak, "largest_process_peak_mib": largest,
            "processes_at_peak": processes, "exit_code": code, "output": log.read_text()}


def _result_line(output: str) -> dict:
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RayAlignError(f"the TRL run printed no result; its output ends with: {output[-2000:]}")


def trl_main(spec: dict) -> None:
    """The TRL side, run as `python -m rayalign.peer_bench '<spec json>'` in its own process."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    gpu = spec["gpu"]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    args = DPOConfig(
        output_dir=spec["output_dir"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch"],
        learning_rate=LR, beta=BETA, max_length=MAX_LENGTH, warmup_steps=0, logging_steps=1, save_strategy="no",
        report_to="none", seed=0, bf16=gpu, use_cpu=not gpu, gradient_checkpointing=False, dataloader_num_workers=0,
    )
    trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=load_dataset("json", data_files=spec["data"], split="train"))
    tokens, times = [], []
    collate = trainer.data_collator

    def counting(examples):
        batch = collate(examples)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.began = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.began)

    trainer.add_callback(StepClock())
    trainer.train()
    trainer.save_model(spec["output_dir"])
    # The dataloader may collate one batch ahead; step k trained on the k-th collated batch.
    speeds = [t / s for t, s in zip(tokens, times)]
    print(RESULT_PREFIX + json.dumps({
        "steps": len(times), "tokens_per_s_median": statistics.median(speeds),
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if gpu else None}), flush=True)


def _run_tool(tool: str, args: list[str], env: dict, work: Path) -> dict:
    """`python -m <args>` measured by `run_measured`; a failed run is an error with its output's end."""
    run = run_measured([sys.executable, "-m", *args], env, work / f"{tool}.log")
    if run["exit_code"] != 0:
        raise RayAlignError(f"the {tool} run failed (exit {run['exit_code']}): {run['output'][-2000:]}")
    return run


def _figures(run: dict, tokens_per_s: float, steps: int, cuda_peak_mib: float | None, gpu: bool) -> dict:
    """One run's figures; peak memory is CUDA's on GPU, the process tree's (and its largest process's) on CPU."""
    return {"seconds": run["seconds"], "tokens_per_s_median": tokens_per_s, "steps": steps,
            "peak_mib": cuda_peak_mib if gpu else run["peak_pss_mib"],
            "training_process_peak_mib": cuda_peak_mib if gpu else run["largest_process_peak_mib"],
            "processes_at_peak": run["processes_at_peak"]}


def _trl_run(model_path: str, data: Path, steps: int, batch: int, gpu: bool, work: Path, env: dict) -> dict:
    spec = {"model": model_path, "data": str(data), "steps": steps, "batch": batch, "gpu": gpu,
            "output_dir": str(work / "trl")}
    run = _run_tool("trl", ["rayalign.peer_bench", json.dumps(spec)], env, work)
    result = _result_line(run["output"])
    return _figures(run, result["tokens_per_s_median"], result["steps"], result["cuda_peak_mib"], gpu)


def _rayalign_run(model: str, data: Path, steps: int, batch: int, gpu: bool, workers: int | str, work: Path,
                  env: dict) -> dict:
    cores = os.cpu_count() or 1
    overrides = [f"train.num_workers={workers}", f"model.name={model}", f"data.path={data}",
                 f"data.max_length={MAX_LENGTH}",
                 f"data.max_prompt_length={MAX_PROMPT_LENGTH}", "loss.name=dpo", f"loss.beta={BETA}",
                 f"train.max_steps={steps}", f"train.batch_size={batch}", f"train.micro_batch_size={batch}",
                 f"train.lr={LR}", "train.warmup_ratio=0", f"train.use_gpu={str(gpu).lower()}",
                 f"train.cpus_per_worker={1 if gpu else cores}", "train.save_optimizer=false",
                 "tracking.wandb=disabled", f"output_dir={work}", "name=rayalign"]
    import yaml

    from rayalign import config as config_lib
    from rayalign.summary import read_summary

    job = work / "job.yaml"
    job.write_text(yaml.safe_dump(config_lib.to_dict(config_lib.load(None, overrides))))
    run = _run_tool("rayalign", ["rayalign.cli", "train", str(job)], env, work)
    summary = read_summary(work / "rayalign")
    return {**_figures(run, summary["tokens_per_s_median"], summary["steps"], summary.get("cuda_peak_mib"), gpu),
            "phases_s": summary["phases_s"], "mode": summary["mode"]}


def _fresh_cache(root: Path, model: str) -> Path:
    """A cache root holding only the provisioned model (a link, for an embedded one): the reference pass runs inside
    the measured run."""
    from rayalign.models import EMBEDDED, resolve_model

    (root / "models").mkdir(parents=True)
    if model in EMBEDDED:
        (root / "models" / model).symlink_to(Path(resolve_model(model)))
    return root


def run_peer_bench(peer: str, model: str, pairs: int, steps: int, batch: int, repeats: int, gpu: bool,
                   workers: int | str = "auto") -> dict:
    """Both tools `repeats` times, alternating, each run a fresh process; medians and rayalign/TRL ratios."""
    if peer != "trl":
        raise RayAlignError(f"unknown peer '{peer}': the one peer is trl")
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        raise MissingPackageError("trl", "rayalign bench --peer trl", "pip install 'rayalign[bench]'")
    workers = int(workers) if str(workers).isdigit() else workers
    if min(pairs, steps, batch, repeats) < 1 or batch > pairs or workers not in ("auto", 0, 1):
        raise RayAlignError(f"bench --peer needs 1 <= batch <= pairs, steps and repeats >= 1 and --workers auto, 0 or 1 (one "
                            f"process or one Ray worker, as TRL's one process); got batch {batch}, pairs {pairs}, "
                            f"steps {steps}, repeats {repeats}, workers {workers}")
    from rayalign.models import resolve_model

    model_path = resolve_model(model)
    runs: dict[str, list[dict]] = {"trl": [], "rayalign": []}
    with tempfile.TemporaryDirectory(prefix="rayalign-peer-") as tmp:
        data = write_conversational_pairs(Path(tmp) / "pairs.jsonl", pairs)
        for r in range(repeats):
            for tool in ("trl", "rayalign"):
                work = Path(tmp) / f"{tool}{r}"
                work.mkdir()
                env = {**os.environ, "RAYALIGN_CACHE": str(_fresh_cache(work / "cache", model))}
                print(f"bench --peer trl: {tool}, run {r + 1} of {repeats}...", file=sys.stderr, flush=True)
                run = (_trl_run(model_path, data, steps, batch, gpu, work, env) if tool == "trl"
                       else _rayalign_run(model, data, steps, batch, gpu, workers, work, env))
                print(f"  {tool}: {run['seconds']:.1f} s, {run['tokens_per_s_median']:.0f} tokens/s, "
                      f"peak {run['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
                runs[tool].append(run)
    medians = {tool: {key: statistics.median(run[key] for run in tool_runs)
                      for key in ("seconds", "tokens_per_s_median", "peak_mib", "training_process_peak_mib")} for tool, tool_runs in runs.items()}
    ours, theirs = medians["rayalign"], medians["trl"]
    return {
        "model": model, "pairs": pairs, "steps": steps, "batch": batch, "repeats": repeats, "workers": workers,
        "mode": sorted({run["mode"] for run in runs["rayalign"]}),
        "device": "gpu" if gpu else f"cpu ({os.cpu_count()} cores)", "medians": medians, "runs": runs,
        "ratios": {"whole_process_speedup": theirs["seconds"] / ours["seconds"],
                   "step_tokens_per_s_rayalign_over_trl": ours["tokens_per_s_median"] / theirs["tokens_per_s_median"],
                   "peak_memory_rayalign_over_trl": ours["peak_mib"] / theirs["peak_mib"],
                   "training_process_peak_memory_rayalign_over_trl":
                       ours["training_process_peak_mib"] / theirs["training_process_peak_mib"]},
    }


def summary_lines(result: dict) -> list[str]:
    mode = " / ".join(result["mode"]) + f" (train.num_workers={result['workers']})"
    lines = [(f"{result['model']}, {result['device']}, {result['steps']} steps x {result['batch']} pairs "
              f"({result['pairs']} pairs), medians of {result['repeats']} runs each; rayalign in {mode}")]
    for tool in ("trl", "rayalign"):
        m = result["medians"][tool]
        lines.append(f"{tool:>9}: whole process {m['seconds']:.1f} s, median step {m['tokens_per_s_median']:.0f} "
                     f"tokens/s, peak memory {m['peak_mib']:.0f} MiB (its largest process "
                     f"{m['training_process_peak_mib']:.0f} MiB)")
    r = result["ratios"]
    lines.append(f"   ratios: rayalign {r['whole_process_speedup']:.2f}x as fast end to end, step tokens/s "
                 f"{r['step_tokens_per_s_rayalign_over_trl']:.2f}x, peak memory "
                 f"{r['peak_memory_rayalign_over_trl']:.2f}x (largest process "
                 f"{r['training_process_peak_memory_rayalign_over_trl']:.2f}x)")
    return lines


if __name__ == "__main__":
    trl_main(json.loads(sys.argv[1]))
