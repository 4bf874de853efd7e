"""model.revision, model.trust_remote_code and model.attn_implementation reach the processes that load the model:
the driver, the trainer (whole and sharded), the samplers and the exporter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rayalign.errors import RayAlignError
from rayalign.models import TINY, LoadOptions, load_causal_lm, resolve_model
from tests.conftest import QUICKSTART_DATA, REPO

HUB_ID = "rayalign-test/tiny"
COMMITS = {"main": "a" * 40, "v2": "b" * 40}


def hub_cache(root: Path) -> Path:
    """An HF hub cache holding HUB_ID at two commits (refs main and v2; v2's weights are main's + 1), as a download
    leaves it: the hub is then read offline, with revisions resolved through refs/."""
    repo = root / ("models--" + HUB_ID.replace("/", "--"))
    for ref, commit in COMMITS.items():
        snapshot = repo / "snapshots" / commit
        shutil.copytree(resolve_model(TINY), snapshot)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    weights = repo / "snapshots" / COMMITS["v2"] / "model.safetensors"
    save_file({k: v + 1 for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    return root


def custom_code_model(out: Path) -> Path:
    """tiny-llama as a model whose architecture is its own Python code (config auto_map), as many hub models are."""
    shutil.copytree(resolve_model(TINY), out)
    (out / "configuration_tinyx.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass TinyXConfig(LlamaConfig):\n    model_type = 'tinyx'\n")
    (out / "modeling_tinyx.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_tinyx import TinyXConfig\n\n\n"
        "class TinyXForCausalLM(LlamaForCausalLM):\n    config_class = TinyXConfig\n")
    config = json.loads((out / "config.json").read_text())
    config.update(model_type="tinyx", architectures=["TinyXForCausalLM"],
                  auto_map={"AutoConfig": "configuration_tinyx.TinyXConfig",
                            "AutoModelForCausalLM": "modeling_tinyx.TinyXForCausalLM"})
    (out / "config.json").write_text(json.dumps(config))
    return out


def train(tmp_path: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`rayalign train` with no YAML, 8 pairs, one step at lr 0 (the trained weights are the start's)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(QUICKSTART_DATA.read_text().splitlines(keepends=True)[:8]))
    return subprocess.run(
        [sys.executable, "-m", "rayalign.cli", "train", f"data.path={data}", "train.batch_size=4",
         "train.micro_batch_size=4", "train.max_steps=1", "train.lr=0", "tracking.wandb=disabled",
         f"output_dir={tmp_path / 'runs'}", *overrides],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def trained(tmp_path: Path) -> Path:
    (summary,) = (tmp_path / "runs").glob("*/summary.json")
    return Path(json.loads(summary.read_text())["checkpoint"])


def one_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


def test_revision_picks_the_commit_for_the_trainer_the_files_and_the_cache_keys(tmp_path):
    cache = hub_cache(tmp_path / "hub")
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    snapshots = cache / ("models--" + HUB_ID.replace("/", "--")) / "snapshots"
    result = train(tmp_path, f"model.name={HUB_ID}", "model.revision=v2", env=env)
    assert result.returncode == 0, result.stderr
    weights = load_file(trained(tmp_path) / "model.safetensors")
    v2, main = (load_file(snapshots / COMMITS[ref] / "model.safetensors") for ref in ("v2", "main"))
    assert torch.equal(weights["model.norm.weight"], v2["model.norm.weight"])  # lr 0: the start, v2's
    assert not torch.equal(weights["model.norm.weight"], main["model.norm.weight"])
    # a revision the cache does not hold fails in one line before any training, naming the model
    missing = train(tmp_path / "missing", f"model.name={HUB_ID}", "model.revision=v3", env=env)
    assert f"model '{HUB_ID}' could not be loaded" in one_line(missing)
    # the sharded trainer's file lookup, and the cache keys (reference log-probs, evaluation samples) of a hub id
    script = ("from rayalign.models import LoadOptions; from rayalign.train.sharding import local_files; "
              "from rayalign.train.reference import model_fingerprint as f; "
              f"print(local_files('{HUB_ID}', LoadOptions('v2'))); "
              f"print(f('{HUB_ID}', 'v2') != f('{HUB_ID}', None) == f('{HUB_ID}', 'main'))")
    lines = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={**os.environ, **env}).stdout.split()
    assert lines == [str(snapshots / COMMITS["v2"]), "True"]


def test_remote_code_is_refused_in_one_line_until_trusted_and_travels_with_the_trained_model(tmp_path):
    model = custom_code_model(tmp_path / "tinyx")
    line = one_line(train(tmp_path / "refused", f"model.name={model}"))
    assert f"model '{model}'" in line and "model.trust_remote_code=true" in line
    assert not (tmp_path / "refused" / "runs").exists()  # refused before a run directory was written

    result = train(tmp_path, f"model.name={model}", "model.trust_remote_code=true")
    assert result.returncode == 0, result.stderr
    checkpoint = trained(tmp_path)
    assert {"modeling_tinyx.py", "configuration_tinyx.py"} <= {p.name for p in checkpoint.glob("*.py")}
    again = load_causal_lm(str(checkpoint), options=LoadOptions(trust_remote_code=True))
    assert type(again).__name__ == "TinyXForCausalLM"  # the model's own class, from the code beside its weights
    with pytest.raises(RayAlignError, match="model.trust_remote_code=true"):
        load_causal_lm(str(checkpoint))


def test_remote_code_builds_the_sharded_trainers_meta_model(tmp_path):
    from rayalign.train.sharding import meta_model

    model = custom_code_model(tmp_path / "tinyx")
    lm = meta_model(str(model), torch.float32, LoadOptions(trust_remote_code=True, attn_implementation="eager"))
    assert type(lm).__name__ == "TinyXForCausalLM" and lm.config._attn_implementation == "eager"
    with pytest.raises(RayAlignError, match="model.trust_remote_code=true"):
        meta_model(str(model), torch.float32)


def test_attention_kernel_reaches_the_sampler_and_a_missing_one_names_the_key(tmp_path):
    from rayalign.sampling.hf import HFSampler

    assert load_causal_lm(TINY).config._attn_implementation == "sdpa"  # transformers' default, for contrast
    sampler = HFSampler(TINY, options=LoadOptions(attn_implementation="eager"))
    assert sampler.model.config._attn_implementation == "eager"
    # flash-attn is a CUDA package, absent here: the trainer's load fails in one line that names the key
    line = one_line(train(tmp_path, f"model.name={TINY}", "model.attn_implementation=flash_attention_2"))
    assert "FlashAttention2" in line and line.endswith("(model.attn_implementation)")
