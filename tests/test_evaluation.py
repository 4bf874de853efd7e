"""rayalign.evaluation: `rayalign eval` end to end on a tiny model through a real SamplerPool, and the sample cache."""

from __future__ import annotations

import json
import sys

import pytest

from rayalign import cli
from rayalign.config import EvalConfig
from rayalign.evaluation import evaluate
from rayalign.stats import compare_models
from rayalign.tasks.registry import get_task


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_eval_cli_end_to_end_with_tiny_llama(tmp_path, capsys, ray_local):
    out = tmp_path / "eval"
    code = cli.main(["eval", "--policy", "tiny-llama", "--reference", "tiny-llama", "--task", "word_collector",
                     "--num-prompts", "3", "--samples", "2", "--max-new-tokens", "6", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["num_prompts"] == 3 and report["win_rate"]["prompts"] == 3
    for role in ("policy", "reference"):
        stats = report[f"{role}_stats"]
        assert stats["responses"] == 6 and 1 <= stats["mean_length_tokens"] <= 6
    rows = _rows(out)
    assert len(rows) == 12 and {row["model"] for row in rows} == {"policy", "reference"}
    # the report's figures are those of the responses it lists, rescored with the gold reward
    task = get_task("word_collector")
    prompts = list(dict.fromkeys(row["prompt"] for row in rows))
    table = {role: [[task.gold_reward(p, r["response"]) for r in rows if r["model"] == role and r["prompt"] == p]
                    for p in prompts] for role in ("policy", "reference")}
    recomputed = compare_models(table["policy"], table["reference"],
                                [topic for topic, _ in task.draw("held_out", 3, 0)])
    assert report["win_rate"]["win_rate"] == recomputed["win_rate"]
    assert report["win_rate"]["ci_low"] == recomputed["ci_low"]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "win rate" in capsys.readouterr().out


def test_eval_on_the_validation_split_samples_its_prompts(tmp_path, ray_local):
    out = tmp_path / "validation"
    assert cli.main(["eval", "--policy", "tiny-llama", "--reference", "tiny-llama", "--split", "validation",
                     "--num-prompts", "3", "--samples", "1", "--max-new-tokens", "2", "--out", str(out)]) == 0
    task = get_task("word_collector")
    asked = list(dict.fromkeys(row["prompt"] for row in _rows(out)))
    assert asked == [prompt for _, prompt in task.draw("validation", 3, 0)]
    assert {task.split_of(topic) for topic, _ in task.draw("validation", 3, 0)} == {"validation"}
    assert json.loads((out / "report.json").read_text())["settings"]["split"] == "validation"


def test_eval_cli_unknown_task_is_one_line(tmp_path, capsys):
    code = cli.main(["eval", "--policy", "tiny-llama", "--reference", "tiny-llama", "--task", "nope",
                     "--out", str(tmp_path)])
    assert code == 2 and "unknown task 'nope'" in capsys.readouterr().err


def test_samples_are_cached_and_equal_live_ones(tmp_path, monkeypatch, ray_local):
    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path / "cache"))
    e = EvalConfig(task="word_collector", num_prompts=3, samples=2, max_new_tokens=6)
    live = evaluate("tiny-llama", "tiny-llama", e, tmp_path / "live")
    cached = evaluate("tiny-llama", "tiny-llama", e, tmp_path / "cached")
    assert live["samples_from_cache"] == {"reference": False, "policy": False}
    assert cached["samples_from_cache"] == {"reference": True, "policy": True}
    assert cached["reference_stats"] == live["reference_stats"] and cached["win_rate"] == live["win_rate"]
    assert _rows(tmp_path / "cached") == _rows(tmp_path / "live")
    reseeded = evaluate("tiny-llama", "tiny-llama", EvalConfig(**{**e.__dict__, "seed": 1}), tmp_path / "seed1")
    assert reseeded["samples_from_cache"]["reference"] is False  # another setting is another cache entry


def _perturbed_tiny_llama(path):
    """tiny-llama with noise on every weight, saved with its tokenizer at `path`: a 'trained' model of its shape."""
    import torch

    from rayalign.models import load_causal_lm, load_tokenizer

    lm = load_causal_lm("tiny-llama")
    torch.manual_seed(0)
    with torch.no_grad():
        for param in lm.parameters():
            param.add_(0.5 * torch.randn_like(param))
    lm.save_pretrained(path)
    load_tokenizer("tiny-llama").save_pretrained(path)
    return path


def test_a_pipeline_pool_stays_through_training_only_where_the_trainer_fits_beside_it(tmp_path, ray_local):
    """PhasePool keeps its pool (the same actor processes) through `make_room` while the trainer can start beside
    it: in local mode (auto for a 2-CPU worker on the one-node cluster is local mode), or a 1-CPU worker with a CPU
    free on the 2-CPU cluster; a 2-CPU Ray Train worker could never be placed while it runs, so there it stops. Serving an interchangeable model loads its weights into the same actors."""
    from rayalign.cluster_fit import trainer_fits_beside
    from rayalign.config import SamplingConfig, TrainConfig
    from rayalign.sampling.pool import PhasePool

    def pids(pool):
        return ray_local.get([actor.pid.remote() for actor in pool.actors])

    with PhasePool(SamplingConfig(num_actors=1, cpus_per_actor=1)) as pools:
        pool = pools.serving("tiny-llama")
        first = pids(pool)
        pools.make_room(TrainConfig(num_workers=0, cpus_per_worker=2))
        pools.make_room(TrainConfig(num_workers="auto", cpus_per_worker=2))
        pools.make_room(TrainConfig(num_workers=1, cpus_per_worker=1))
        assert pools.pool is pool and pids(pool) == first
        assert pools.serving(str(_perturbed_tiny_llama(tmp_path / "trained"))) is pool
        assert pids(pool) == first and pool.weights[0] == 1
        pools.make_room(TrainConfig(num_workers=1, cpus_per_worker=2))
        assert pools.pool is None and pools.starts == 1
        pools.serving("tiny-llama")
        assert pools.starts == 2
    assert not trainer_fits_beside(TrainConfig(num_workers=0, use_gpu=True), pool_gpus=1.0)  # one GPU, two users


@pytest.mark.slow  # 29 s: keeps the default suite under 15 min on 2 cores
def test_one_pool_samples_a_second_model_exactly_as_its_own_pool_would(tmp_path, monkeypatch, ray_local):
    """sample_models loads the second model's weights into the running pool; what it samples equals a pool
    started on that model. A model of another shape gets its own pool."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    from rayalign.config import SamplingConfig
    from rayalign.evaluation import sample_models
    from rayalign.models import load_causal_lm, load_tokenizer
    from rayalign.sampling.base import SamplingParams
    from rayalign.sampling.pool import interchangeable

    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path / "cache"))
    trained, other = _perturbed_tiny_llama(tmp_path / "trained"), tmp_path / "other"
    lm = load_causal_lm("tiny-llama")
    config = LlamaConfig(**{**lm.config.to_dict(), "num_hidden_layers": 1})
    LlamaForCausalLM(config).save_pretrained(other)
    tokenizer = load_tokenizer("tiny-llama")
    tokenizer.save_pretrained(other)
    assert interchangeable("tiny-llama", str(trained)) and not interchangeable("tiny-llama", str(other))

    prompts = [tokenizer.encode(text) for text in ("Name a colour.", "Count to three.", "Say hello.")]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=3)
    entries = [("start", "tiny-llama", params), ("trained", str(trained), params), ("other", str(other), params)]
    together = sample_models(entries, prompts, SamplingConfig())
    shutil.rmtree(tmp_path / "cache" / "eval_samples")
    alone = {label: sample_models([(label, model, p)], prompts, SamplingConfig())[label]
             for label, model, p in entries[1:]}
    for label in ("trained", "other"):
        assert together[label] == alone[label] and together[label][1] is False
    assert together["trained"][0] != together["start"][0]  # the new weights did change what was sampled


PLUGIN = '''
from rayalign.tasks.registry import make_task

def reward(prompt, response):
    return float(len(response.split()))

polite = make_task("polite", [f"Ask politely for item {i}." for i in range(40)], reward)

def judge(prompts, responses):
    return [float(len(r)) + 0.5 for r in responses]
'''


def test_a_users_task_module_named_on_the_command_line_is_used_by_eval(tmp_path, capsys, monkeypatch, ray_local):
    """`rayalign eval --task my_polite_tasks:polite` with my_polite_tasks.py in the current directory: its prompts,
    its reward; `--scorer my_polite_tasks:judge`: its judge."""
    (tmp_path / "my_polite_tasks.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the plugin's directory is added for this test only
    out = tmp_path / "eval"
    code = cli.main(["eval", "--policy", "tiny-llama", "--reference", "tiny-llama", "--task", "my_polite_tasks:polite",
                     "--num-prompts", "3", "--samples", "1", "--max-new-tokens", "5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["task"] == "polite"
    rows = _rows(out)
    assert len(rows) == 6
    for row in rows:
        assert row["prompt"].startswith("Ask politely for item ")
        assert row["reward"] == float(len(row["response"].split()))
    judged = tmp_path / "judged"
    code = cli.main(["eval", "--policy", "tiny-llama", "--reference", "tiny-llama", "--task", "my_polite_tasks:polite",
                     "--scorer", "my_polite_tasks:judge", "--num-prompts", "3", "--samples", "1",
                     "--max-new-tokens", "5", "--out", str(judged)])
    assert code == 0, capsys.readouterr().err
    assert all(row["reward"] == len(row["response"]) + 0.5 for row in _rows(judged))  # your judge scored them
    capsys.readouterr()  # the earlier calls' progress bars: the bad task's stderr is its one line alone
    code = cli.main(["eval", "--policy", "tiny-llama", "--reference", "tiny-llama", "--task", "my_polite_tasks:rude",
                     "--out", str(out)])
    assert code == 2 and capsys.readouterr().err.strip() == (
        "error: task 'my_polite_tasks:rude': module 'my_polite_tasks' has no 'rude'")
