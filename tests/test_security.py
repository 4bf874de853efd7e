"""Security defaults: nothing in rayalign unpickles or runs a model's own code, and secrets stay out of runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from rayalign import config
from rayalign.train.driver import run_training
from tests.conftest import QUICKSTART_DATA, REPO

UNSAFE_CALLS = {("torch", "load"), ("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"),
                ("cloudpickle", "loads"), ("joblib", "load"), ("dill", "load"), ("dill", "loads")}


def _from_the_config(value: ast.expr) -> bool:
    """False, or the user's own switch: an attribute named trust_remote_code (`LoadOptions`, from model.*)."""
    return (isinstance(value, ast.Constant) and value.value is False) or (
        isinstance(value, ast.Attribute) and value.attr == "trust_remote_code")


def unsafe_calls(source: str, where: str) -> list[str]:
    """Calls in `source` that unpickle (UNSAFE_CALLS), and trust_remote_code given (as a keyword or a dict key)
    anything but False or the config's own switch."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            found += [f"{where}:{node.lineno} trust_remote_code" for key, value in zip(node.keys, node.values)
                      if isinstance(key, ast.Constant) and key.value == "trust_remote_code"
                      and not _from_the_config(value)]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        named = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
        if named and (func.value.id, func.attr) in UNSAFE_CALLS:
            found.append(f"{where}:{node.lineno} {func.value.id}.{func.attr}")
        found += [f"{where}:{node.lineno} trust_remote_code" for keyword in node.keywords
                  if keyword.arg == "trust_remote_code" and not _from_the_config(keyword.value)]
    return found


def test_no_module_unpickles_or_trusts_remote_code():
    """Checkpoints, caches and models are read as safetensors and JSON only, and a model directory's own Python runs
    only when the user's model.trust_remote_code says so (off by default; tests/test_model_options.py): a call that
    unpickles, or trusts code on any other say, anywhere in rayalign/ fails this."""
    found = [hit for path in sorted((REPO / "rayalign").rglob("*.py"))
             for hit in unsafe_calls(path.read_text(), str(path.relative_to(REPO)))]
    assert found == []


def test_the_scan_sees_unsafe_calls_and_passes_safe_ones():
    bad = ("import torch\nstate = torch.load(path)\nm = f(x, trust_remote_code=True)\nn = g(trust_remote_code=flag)\n"
           "kwargs = {'trust_remote_code': True}\n")
    assert unsafe_calls(bad, "bad.py") == ["bad.py:2 torch.load", "bad.py:3 trust_remote_code",
                                           "bad.py:4 trust_remote_code", "bad.py:5 trust_remote_code"]
    safe = ("from safetensors.torch import load_file\nstate = load_file(path)\nm = f(x, trust_remote_code=False)\n"
            "n = g(trust_remote_code=options.trust_remote_code)\nkw = {'trust_remote_code': self.trust_remote_code}\n")
    assert unsafe_calls(safe, "safe.py") == []


def test_secrets_in_the_environment_stay_out_of_the_run_directory(tmp_path, ray_local, monkeypatch):
    """API keys the process can see (wandb's, the LLM client's) reach no file of a run: config, metrics, summary,
    checkpoints, wandb's offline run."""
    secret = "sk-rayalign-test-5f1c0e9a7b"
    for name in ("WANDB_API_KEY", "RAYALIGN_LLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.setenv(name, secret)
    cfg = config.load(None, ["model.name=tiny-llama", f"data.path={QUICKSTART_DATA}", "data.limit=4",
                             "train.max_steps=1", "train.cpus_per_worker=1", "tracking.wandb=offline",
                             f"output_dir={tmp_path}", "name=secret"])
    run_training(cfg)
    files = [p for p in Path(tmp_path / "secret").rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files), "no wandb offline run was written"
    leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert leaks == []


def test_no_config_field_holds_a_key():
    """Keys come from the environment only: the schema has no field a key could be saved in (config.yaml, wandb's
    config and Tune's all come from it)."""
    names = [key.split(".")[-1] for key, _, _ in config.describe_fields()]
    assert "llm_base_url" in names and "labeller" in names  # the fields beside which a key might have gone
    assert [name for name in names if re.search(r"api_key|secret|password|passwd|(^|_)token$", name)] == []
