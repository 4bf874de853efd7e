"""Training on a real local Ray cluster with a tiny model: invariants that must hold exactly-ish.

Runs are shared between tests (module-scoped) because each costs a Ray Train start-up. The base run, 1 vs 2 workers,
the stopped-and-resumed and the killed-worker runs use Ray Train workers; switches whose invariant is the arithmetic,
not the workers, run in Ray Train's local mode (`LOCAL`), which trains as a worker does (tested below) in a fraction of
the time.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rayalign import config
from rayalign.models import cache_root, load_causal_lm
from rayalign.tracking import read_metrics
from rayalign.train.driver import run_training
from tests.conftest import QUICKSTART_DATA, hh_sample

THREADS_AT_IMPORT = torch.get_num_threads()
LOCAL = "train.num_workers=0"
BASE = [
    "model.name=tiny-llama", f"data.path={QUICKSTART_DATA}", "data.limit=24", "data.max_length=128",
    "train.batch_size=4", "train.micro_batch_size=4", "train.max_steps=6", "train.lr=1e-3",
    "train.warmup_ratio=0.0", "train.num_workers=1", "train.cpus_per_worker=1", "train.seed=3", "tracking.wandb=offline",
]


def _train(tmp_root, name, *overrides):
    cfg = config.load(None, BASE + [f"output_dir={tmp_root}", f"name={name}", *overrides])
    summary = run_training(cfg)
    return summary, read_metrics(cfg.run_dir)


def _losses(rows):
    return [r["loss"] for r in rows]


def _weights(summary):
    return load_file(f"{summary['checkpoint']}/model.safetensors")


EVAL_ROWS = [json.loads(line) for line in QUICKSTART_DATA.read_text().splitlines()[30:33]]  # never trained on


def _evaluated(root) -> list[str]:
    """Three held-out pairs (uneven over two workers), evaluated every 3 steps."""
    path = root / "eval.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in EVAL_ROWS))
    return [f"data.eval_path={path}", "train.eval_every=3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("runs")
    return root, {"base": _train(root, "base", "train.save_every=3", *_evaluated(root))}


def test_run_directory_is_complete_and_loadable(runs):
    root, done = runs
    summary, rows = done["base"]
    run_dir = root / "base"
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert summary["steps"] == 6 and len(rows) == 6
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_000003", "step_000006"]
    model = AutoModelForCausalLM.from_pretrained(summary["checkpoint"])
    assert model.config.num_hidden_layers == 2
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline run missing"
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected", "grad_norm", "learning_rate", "tokens_per_s"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert json.loads((run_dir / "summary.json").read_text())["checkpoint"] == summary["checkpoint"]


def test_the_summary_accounts_for_the_whole_process(runs):
    """summary.json's phases, in order, tile the run's wall time; the steps phase holds every step's own time."""
    summary, rows = runs[1]["base"]
    phases = summary["phases_s"]
    assert list(phases) == ["prepare_s", "ray_start_s", "worker_group_start_s", "model_load_s", "reference_s",
                            "tracking_setup_s", "steps_s", "report_and_checkpoint_s", "teardown_s"]
    assert all(seconds >= 0 for seconds in phases.values()), phases
    assert phases["steps_s"] >= 0.95 * sum(r["step_time_s"] for r in rows)
    assert sum(phases.values()) == pytest.approx(summary["wall_time_s"], abs=1.0)


def _assert_every_parameter_changed(summary) -> None:
    before = load_causal_lm("tiny-llama").state_dict()
    for name, value in _weights(summary).items():
        assert not torch.equal(value, before[name]), f"{name} did not change"


def _assert_same_curve_as_base(runs, name: str, *overrides) -> dict:
    """Train `name` with `overrides` on the base run's data and seed; its losses equal the base run's. Its summary."""
    root, done = runs
    summary, rows = _train(root, name, *overrides)
    assert _losses(rows) == pytest.approx(_losses(done["base"][1]), rel=1e-4, abs=1e-5)
    return summary


def test_every_trainable_parameter_changes(runs):
    _assert_every_parameter_changed(runs[1]["base"][0])


def test_two_sharded_workers_accumulating_with_one_sync_a_step_give_the_same_loss_curve(runs):
    """Two Ray Train workers load the model sharded (meta device, each its rows of the files) and reduce-scatter
    once per optimizer step over two micro-batches each: the one unsharded worker's losses and weights."""
    summary = _assert_same_curve_as_base(runs, "two_workers", "train.num_workers=2", "train.micro_batch_size=1",
                                         *_evaluated(runs[0]))
    for name, value in _weights(runs[1]["base"][0]).items():
        torch.testing.assert_close(_weights(summary)[name], value, atol=1e-5, rtol=1e-4)
    two = [r for r in read_metrics(runs[0] / "two_workers") if "eval_loss" in r]
    one = [r for r in runs[1]["base"][1] if "eval_loss" in r]
    assert [r["step"] for r in two] == [3, 6]  # each worker scored its share of 3 pairs, one a stand-in
    for a, b in zip(one, two):
        assert {k: v for k, v in b.items() if k.startswith("eval_")} == pytest.approx(
            {k: v for k, v in a.items() if k.startswith("eval_")}, rel=1e-4, abs=1e-5)


def _response_logp(model, prompt: list[int], response: list[int]) -> float:
    logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1]
    return torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(response)[:, None]).sum().item()


def test_eval_metrics_at_the_configured_steps_equal_a_hand_computation(runs):
    """eval_* at steps 3 and 6 of 6; at step 6, DPO on the held-out pairs by hand from the exported policy and the
    starting model, with transformers' own forward and tokenizer."""
    from transformers import AutoTokenizer

    from rayalign.models import resolve_model

    summary, rows = runs[1]["base"]
    assert [r["step"] for r in rows if "eval_loss" in r] == [3, 6]
    last = rows[-1]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-llama"))
    policy = AutoModelForCausalLM.from_pretrained(summary["checkpoint"], dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-llama"), dtype=torch.float32).eval()
    beta, losses, margins, chosen_logps = 0.1, [], [], []
    with torch.no_grad():
        for row in EVAL_ROWS:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}],
                                                   add_generation_prompt=True, tokenize=False)
            prompt = tokenizer.encode(prompt, add_special_tokens=False)
            chosen, rejected = (tokenizer.encode(row[k], add_special_tokens=False) + [tokenizer.eos_token_id]
                                for k in ("chosen", "rejected"))
            assert len(prompt) + max(len(chosen), len(rejected)) <= 128  # nothing truncated
            pc, pr = _response_logp(policy, prompt, chosen), _response_logp(policy, prompt, rejected)
            rc, rr = _response_logp(reference, prompt, chosen), _response_logp(reference, prompt, rejected)
            margin = beta * ((pc - rc) - (pr - rr))
            losses.append(math.log1p(math.exp(-margin)))
            margins.append(margin)
            chosen_logps.append(pc)
    assert last["eval_loss"] == pytest.approx(sum(losses) / 3, abs=2e-5)
    assert last["eval_rewards/margins"] == pytest.approx(sum(margins) / 3, abs=2e-5)
    assert last["eval_rewards/accuracies"] == pytest.approx(sum(m > 0 for m in margins) / 3)
    assert last["eval_logps/chosen"] == pytest.approx(sum(chosen_logps) / 3, rel=1e-5)
    assert summary["final_metrics"]["eval_loss"] == last["eval_loss"] and summary["data"]["eval_pairs"] == 3


@pytest.mark.slow  # 52 s (two Ray Train worker groups): keeps the default suite under 15 min on 2 cores
def test_dcp_checkpoint_saved_at_two_workers_resumes_at_one_and_at_two(runs):
    """Each of two workers writes its own shards (DCP) at step 3; the run resumes from them at two workers (Ray
    Train's checkpoint) and, copied, at one (local mode): both end on the uninterrupted run's losses."""
    import shutil

    root, done = runs
    two = ("train.num_workers=2", "train.micro_batch_size=2")
    first, _ = _train(root, "dcp", *two, "train.stop_at_step=3")
    checkpoint = root / "dcp" / "checkpoints" / "step_000003"
    assert sorted(p.name for p in (checkpoint / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (checkpoint / "model.safetensors").exists()  # a stopped run's checkpoint: shards only
    shutil.copytree(root / "dcp", root / "dcp_at_one")
    for name, overrides in (("dcp", two), ("dcp_at_one", (LOCAL,))):
        final, rows = _train(root, name, *overrides)
        assert final["resumed_from_step"] == 3 and [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
        assert _losses(rows) == pytest.approx(_losses(done["base"][1]), rel=1e-4, abs=1e-5), name


def test_a_finished_runs_lossless_export_holds_its_weights_once_and_a_rerun_resumes_from_it(runs, tmp_path):
    """fp32, no optimizer state: the final checkpoint's HF files are its weights (no DCP copy); a rerun loads them
    and ends where it was, and `rayalign export` of it gives them back."""
    from rayalign.cli import main

    root, _ = runs
    done, _ = _train(root, "hf_only", LOCAL, "train.save_optimizer=false", "train.max_steps=2")
    final = root / "hf_only" / "checkpoints" / "step_000002"
    assert not (final / "dcp").exists() and json.loads((final / "trainer" / "state.json").read_text())["weights"] == "hf"
    again, rows = _train(root, "hf_only", LOCAL, "train.save_optimizer=false", "train.max_steps=2")
    assert again["resumed_from_step"] == 2 and again["steps"] == 2 and len(rows) == 2
    assert main(["export", str(root / "hf_only"), str(tmp_path / "out")]) == 0
    exported, trained = load_file(tmp_path / "out" / "model.safetensors"), _weights(done)
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], v) for k, v in trained.items())


def test_export_writes_the_trained_model_as_an_hf_directory(runs, tmp_path):
    """`rayalign export` of a finished run's checkpoint (streamed from its DCP shards) is the model the trainer
    wrote: fp32 bit for bit, bf16 its rounding; both load with AutoModelForCausalLM, trainer state left out."""
    from rayalign.cli import main

    root, done = runs
    trained = _weights(done["base"][0])
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert main(["export", str(root / "base"), str(out), "--dtype", dtype]) == 0
        exported = load_file(out / "model.safetensors")
        assert exported.keys() == trained.keys()
        for name, value in trained.items():
            assert torch.equal(exported[name], value.to(getattr(torch, dtype))), name
        assert not (out / "dcp").exists() and not (out / "trainer").exists()
    assert main(["export", str(root / "base"), str(tmp_path / "float32")]) == 2  # never over an earlier export
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356]])
    with torch.no_grad():
        logits = [AutoModelForCausalLM.from_pretrained(d)(input_ids=ids).logits
                  for d in (tmp_path / "float32", done["base"][0]["checkpoint"])]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)


def test_local_mode_trains_as_a_ray_worker_does_and_resumes_from_its_own_checkpoints(runs):
    """Ray Train's local mode (num_workers=0: the loop in this process, no worker): the base run's losses and weights,
    stopped and resumed; checkpoints land where Ray Train puts them and only the newest `keep_checkpoints` stay."""
    root, done = runs
    local = [LOCAL, "train.save_every=2"]
    first, rows = _train(root, "local", *local, "train.stop_at_step=3")
    assert first["steps"] == 3 and len(rows) == 3
    final, rows = _train(root, "local", *local)
    assert final["resumed_from_step"] == 3 and [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert _losses(rows) == pytest.approx(_losses(done["base"][1]), rel=1e-4, abs=1e-5)
    assert sorted(p.name for p in (root / "local" / "checkpoints").iterdir()) == ["step_000004", "step_000006"]
    assert final["checkpoint"] == str(root / "local" / "checkpoints" / "step_000006")
    for name, value in _weights(done["base"][0]).items():
        torch.testing.assert_close(_weights(final)[name], value, atol=1e-5, rtol=1e-4)
    assert "ray_start_s" not in final["phases_s"] and "worker_group_start_s" not in final["phases_s"]
    assert torch.get_num_threads() == THREADS_AT_IMPORT  # the loop's thread count stays in the run


def test_gradient_accumulation_gives_the_same_loss_curve(runs):
    _assert_same_curve_as_base(runs, "accumulated", "train.micro_batch_size=2", LOCAL)


def test_activation_checkpointing_and_fused_adamw_give_the_same_loss_curve(runs):
    """Speed and memory switches that must not change the arithmetic beyond float rounding."""
    summary = _assert_same_curve_as_base(runs, "switches", "train.activation_checkpointing=true",
                                         "train.fused_adamw=true", LOCAL)
    _assert_every_parameter_changed(summary)


@pytest.mark.slow  # compiling the layers takes about a minute on 2 cores
def test_compiled_layers_give_the_same_loss_curve(runs):
    _assert_same_curve_as_base(runs, "compiled", "train.compile=true")


@pytest.mark.slow  # 30 s: keeps the default suite under 15 min on 2 cores
def test_lora_trains_every_adapter_and_nothing_else_and_its_checkpoint_loads(runs):
    from peft import PeftModel

    root, _ = runs
    _, rows = _train(root, "lora", "train.lora_r=4", "train.lora_alpha=8", "train.max_steps=3",
                     "train.save_every=1", "train.keep_checkpoints=3", "train.num_workers=2",
                     "train.micro_batch_size=2")  # sharded: the base read by rows, the adapters new
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # LoRA's B starts at 0: policy == reference
    assert rows[-1]["loss"] < rows[0]["loss"]
    first, last = (root / "lora" / "checkpoints" / f"step_00000{k}" for k in (1, 3))
    assert (last / "adapter_config.json").is_file() and not (last / "model.safetensors").exists()
    from rayalign.export import export_checkpoint

    export_checkpoint(str(first), str(root / "lora_step1"))  # a checkpoint before the end holds shards only
    adapters = [load_file(f"{d}/adapter_model.safetensors") for d in (root / "lora_step1", last)]
    assert adapters[0].keys() == adapters[1].keys() and any("lora_A" in k for k in adapters[0])
    for name in adapters[0]:
        assert not torch.equal(adapters[0][name], adapters[1][name]), f"{name} did not change"

    base = load_causal_lm("tiny-llama")
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, str(last))
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356]])
    with torch.no_grad():
        through_peft = peft_model(input_ids=ids).logits
        through_transformers = AutoModelForCausalLM.from_pretrained(str(last))(input_ids=ids).logits
        untrained = load_causal_lm("tiny-llama")(input_ids=ids).logits
    torch.testing.assert_close(through_transformers, through_peft)
    assert not torch.allclose(through_peft, untrained)
    merged = peft_model.merge_and_unload().state_dict()
    changed = {k for k in frozen if not torch.equal(merged[k], frozen[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only where adapters sit

    export_checkpoint(str(last), str(root / "lora_merged"), merge_lora=True)  # W + (α/r)·B·A, layer by layer
    with torch.no_grad():
        through_merged = AutoModelForCausalLM.from_pretrained(str(root / "lora_merged"))(input_ids=ids).logits
    torch.testing.assert_close(through_merged, through_peft, rtol=1e-5, atol=1e-5)


def test_cached_reference_equals_live_reference(runs):
    root, done = runs
    _, live = _train(root, "live_ref", "train.reference_cache=false", LOCAL)
    base = done["base"][1]
    for key in ("loss", "rewards/chosen", "rewards/margins"):
        assert [r[key] for r in live] == pytest.approx([r[key] for r in base], rel=1e-4, abs=1e-5), key


def test_a_bf16_run_never_reads_the_fp32_reference_cache(runs):
    """Same weights and data as the fp32 base run, so a cache keyed without the dtype would hand this run fp32
    reference log-probs; its first loss would then miss log 2 (policy = reference) by the bf16 rounding
    (measured: 4e-4 off with the stale cache, 3e-6 with its own)."""
    root, _ = runs
    _, rows = _train(root, "bf16", "model.dtype=bfloat16", "train.max_steps=1", LOCAL)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=5e-5)


def _saved_dtypes(checkpoint) -> dict[str, set]:
    """The dtypes of the weights (DCP's, or the HF files' where a lossless export holds them) and of AdamW's moments
    that a checkpoint saved."""
    from torch.distributed.checkpoint import FileSystemReader

    saved = FileSystemReader(str(checkpoint / "dcp")).read_metadata().state_dict_metadata
    weights = {m.properties.dtype for k, m in saved.items() if k.startswith("model.")}
    if not weights:
        weights = {t.dtype for t in load_file(checkpoint / "model.safetensors").values()}
    return {"weights": weights,
            "moments": {m.properties.dtype for k, m in saved.items() if k.startswith("optim.state.") and "exp_avg" in k}}


def test_bf16_mixed_precision_keeps_fp32_master_weights_and_moments_and_pure_bf16_does_not(runs):
    """model.dtype=bfloat16 computes in bf16 (its loss above) on fp32 weights and AdamW moments, as saved in its
    checkpoint; only model.dtype=pure_bfloat16 stores them in bf16."""
    root, _ = runs
    assert _saved_dtypes(root / "bf16" / "checkpoints" / "step_000001") == {
        "weights": {torch.float32}, "moments": {torch.float32}}
    _train(root, "pure_bf16", "model.dtype=pure_bfloat16", "train.max_steps=1", LOCAL)
    assert _saved_dtypes(root / "pure_bf16" / "checkpoints" / "step_000001") == {
        "weights": {torch.bfloat16}, "moments": {torch.bfloat16}}


def test_stopped_and_resumed_run_ends_where_an_uninterrupted_one_does(runs):
    root, done = runs
    first, rows = _train(root, "resumed", "train.stop_at_step=3")
    assert first["steps"] == 3 and len(rows) == 3
    final, rows = _train(root, "resumed")
    assert final["steps"] == 6 and [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    uninterrupted = _weights(done["base"][0])
    resumed = _weights(final)
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-5, rtol=1e-4)
    assert _losses(rows) == pytest.approx(_losses(done["base"][1]), rel=1e-5)


def _kill_the_worker_after(run_dir, step: int) -> int:
    """Wait until training is past the checkpoint of `step`, then SIGKILL the Ray Train worker mid-run; its pid.

    The worker is found in this cluster's GCS actor table (Ray's state API would ask a dashboard, which the
    test cluster does not run, and another cluster's may answer on its port)."""
    import os
    import signal
    import time

    from ray._private.state import actors

    deadline = time.monotonic() + 300
    while not (read_metrics(run_dir) and read_metrics(run_dir)[-1]["step"] >= step + 1):
        assert time.monotonic() < deadline, "training did not get past the checkpoint"
        time.sleep(0.05)
    # Ray Train's controller takes a reported checkpoint when it next polls the workers (every 2 s): a worker killed
    # before that restarts from the checkpoint before (here: from scratch).
    time.sleep(3)
    [pid] = [a["Pid"] for a in actors().values() if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"]
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.slow  # two 60-step runs: about 2 minutes on 2 cores
def test_a_killed_worker_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_does(runs):
    """A worker SIGKILLed mid-run: Ray Train restarts the group (train.max_failures=1), the loop resumes from the
    last checkpoint, and the run ends with the uninterrupted run's parameters and one metrics row per step."""
    from concurrent.futures import ThreadPoolExecutor

    root, _ = runs
    long = ("train.max_steps=60", "train.save_every=4")
    uninterrupted, rows = _train(root, "long", *long)
    with ThreadPoolExecutor(1) as pool:
        killed = pool.submit(_train, root, "killed", *long)
        _kill_the_worker_after(root / "killed", 4)
        resumed, resumed_rows = killed.result()
    assert uninterrupted["resumed_from_step"] == 0
    assert resumed["resumed_from_step"] >= 4, "the worker was not restarted from a checkpoint"
    assert resumed["status"] == "ok" and [r["step"] for r in resumed_rows] == list(range(1, 61))
    assert _losses(resumed_rows) == pytest.approx(_losses(rows), rel=1e-5)
    done, again = _weights(uninterrupted), _weights(resumed)
    for name, value in done.items():
        torch.testing.assert_close(again[name], value, atol=1e-5, rtol=1e-4)


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, ray_local):
    from rayalign.errors import TrainingError

    with pytest.raises(TrainingError, match="NaN/inf at step"):
        _train(tmp_path, "nan", "train.lr=1e30", "train.max_grad_norm=0", "train.max_steps=4",
               "train.save_every=1", LOCAL)
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"] == "non_finite_loss"
    assert summary["checkpoint"] and summary["checkpoint"].endswith(f"step_{summary['steps'] - 1:06d}")


def test_hh_rlhf_sample_trains_reference_free_without_computing_a_reference(tmp_path, ray_local, monkeypatch):
    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path / "cache"))  # its own cache: other runs may share the default
    summary, rows = _train(tmp_path, "hh", f"data.path={hh_sample()}", "data.on_bad_row=skip", "data.limit=16",
                           "data.max_length=256", "train.max_steps=2", "loss.name=simpo", LOCAL)
    assert summary["steps"] == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert summary["data"]["rows_used"] == 16
    references = cache_root() / "reference"
    assert not references.is_dir() or not any(references.iterdir()), "a reference-free loss computed reference log-probs"


def test_lora_in_a_pipeline_is_a_one_line_config_error():
    from rayalign.errors import ConfigError
    from rayalign.pipelines import run_pipeline

    with pytest.raises(ConfigError, match="train.lora_r works with `rayalign train`"):
        run_pipeline(config.load(None, ["pipeline=inco", "train.lora_r=4"]))


def test_a_pipelines_wandb_run_stays_open_while_its_training_logs_in_the_same_process(tmp_path):
    """A pipeline (D2PO's rounds) holds a wandb run open while local-mode training opens and finishes its own in the
    same process: the pipeline's run can still log afterwards."""
    from rayalign.tracking import Tracker

    cfg = config.load(None, BASE + [LOCAL, f"output_dir={tmp_path}", "name=inner", "train.max_steps=1"])
    outer = Tracker(tmp_path / "outer", cfg.tracking, "outer", {}, "pipeline")
    run_training(cfg)
    outer.log({"x": 1.0}, step=1)
    outer.finish()
    assert read_metrics(tmp_path / "outer") == [{"step": 1, "x": 1.0}]
    assert len(list((tmp_path / "outer" / "wandb").glob("offline-run-*"))) == 1
