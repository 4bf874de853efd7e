"""The vLLM engine (GPU): the same `Sampler` contract as the transformers engine, much faster.

Written against vLLM's documented offline API (V1 engine), and run on one H100 with the main job
(docs/measurements.md, "On a GPU"); its tests skip with the reason where vLLM or CUDA is missing:
``vllm.LLM(model=..., worker_extension_cls=...)``, ``LLM.generate`` with
``vllm.inputs.TokensPrompt(prompt_token_ids=...)`` and ``vllm.SamplingParams(n, temperature, top_p,
max_tokens, seed, stop, logprobs=0)``, and, for weight updates, the pattern of vLLM's RLHF examples
(``examples/offline_inference/rlhf_utils.py``): a worker extension class whose methods run inside
every worker through ``LLM.collective_rpc`` and call ``self.model_runner.model.load_weights(weights=...)``.
(The older ``llm.llm_engine.model_executor.driver_worker.model_runner.model`` path only works with
the V0 engine, or V1 without multiprocessing; `collective_rpc` works with both and with tensor
parallelism.)

Log-probs: ``logprobs=0`` returns the chosen token's log-prob; with vLLM's default
``logprobs_mode="raw_logprobs"`` that is the raw model's (before temperature / top-p), the same
quantity `HFSampler` returns, so the engines are interchangeable for DPO.

Seeds: each prompt gets its own vLLM request seed, ``params.seed + prompt index``, so a prompt's
samples do not depend on what else is in the batch.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from rayalign.errors import MissingPackageError, RayAlignError
from rayalign.models import PLAIN, LoadOptions
from rayalign.sampling.base import Completion, SamplingParams, check_inputs

_EXTENSION = "rayalign.sampling.vllm_engine.WeightSyncExtension"


class WeightSyncExtension:
    """Mixed into each vLLM worker (``worker_extension_cls``); called through ``collective_rpc``.

    vLLM's model ``load_weights`` takes HF parameter names and does the renaming, fusing (qkv,
    gate/up) and tensor-parallel sharding itself, so we feed it the checkpoint's tensors as they are.
    """

    def rayalign_load_checkpoint(self, directory: str) -> int:
        from safetensors import safe_open

        files = sorted(Path(directory).glob("*.safetensors"))

        def tensors():
            for file in files:
                with safe_open(str(file), framework="pt", device="cpu") as handle:
                    for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                        yield name, handle.get_tensor(name)

        loaded = self.model_runner.model.load_weights(weights=tensors())
        return len(loaded) if loaded is not None else -1


    def rayalign_receive(self, meet, first_rank: int, plan, dtype: str) -> None:
        """Join a weight sync's group (this engine's workers take ranks `first_rank`, `first_rank` + 1, ... by their
        rank in the engine) and load each bucket as it arrives; vLLM shards it for tensor parallelism itself."""
        import torch
        from vllm.distributed.parallel_state import get_world_group

        from rayalign.sampling import weight_sync

        device = weight_sync.transfer_device(meet, torch.device("cuda", torch.cuda.current_device()))
        group = weight_sync.join(meet, first_rank + get_world_group().rank)
        weight_sync.receive(group, plan, getattr(torch, dtype), device,
                            lambda named: self.model_runner.model.load_weights(weights=named))

    def rayalign_receive_ipc(self, handle, entries, dtype: str) -> None:
        """Colocated with the trainer: load one bucket from the trainer's memory on this GPU (`colocate`)."""
        import torch

        from rayalign.sampling.colocate import open_ipc
        from rayalign.sampling.weight_sync import split

        self.model_runner.model.load_weights(weights=split(open_ipc(handle), entries))
        torch.cuda.synchronize()  # loaded before the trainer reuses the bucket's memory


def _require_vllm_and_cuda():
    if importlib.util.find_spec("vllm") is None:
        raise MissingPackageError("vllm", "the vllm sampling engine", "pip install 'rayalign[gpu]'")
    import torch

    if not torch.cuda.is_available():
        raise RayAlignError("the vllm sampling engine needs a CUDA GPU and none is visible; use engine='hf'")


class VLLMSampler:
    """A `Sampler` on ``vllm.LLM``. Extra keyword arguments go to ``vllm.LLM`` unchanged
    (gpu_memory_utilization, tensor_parallel_size, max_model_len, enforce_eager, ...)."""

    def __init__(self, model_name: str, dtype: str = "auto", seed: int = 0, options: LoadOptions = PLAIN,
                 **llm_kwargs):
        _require_vllm_and_cuda()
        import os

        # vLLM's workers must not fork a process that has touched CUDA (a Ray actor has): spawn them
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        from vllm import LLM

        from rayalign.models import load_tokenizer, resolve_model

        # options: model.revision and model.trust_remote_code; vLLM picks its own attention kernel
        self.model_name = model_name
        self.tokenizer = load_tokenizer(model_name, options)
        path = resolve_model(model_name)
        self.llm = LLM(model=path, tokenizer=path, dtype=dtype, seed=seed, revision=options.revision,
                       tokenizer_revision=options.revision, trust_remote_code=options.trust_remote_code,
                       worker_extension_cls=_EXTENSION, **llm_kwargs)
        self.processes = llm_kwargs.get("tensor_parallel_size", 1) * llm_kwargs.get("pipeline_parallel_size", 1)

    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 prefixes: list[list[int]] | None = None) -> list[list[Completion]]:
        """`params.n` completions per prompt, in input order (vLLM returns outputs in request order)."""
        from vllm import SamplingParams as VllmParams
        from vllm.inputs import TokensPrompt

        prefixes = check_inputs(prompts, prefixes)
        requests = [TokensPrompt(prompt_token_ids=list(p) + list(x)) for p, x in zip(prompts, prefixes)]
        per_prompt = [
            VllmParams(n=params.n, temperature=params.temperature, top_p=1.0 if params.greedy else params.top_p,
                       max_tokens=params.max_new_tokens, stop=list(params.stop) or None, logprobs=0,
                       seed=None if params.seed is None else params.seed + i)
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(requests, sampling_params=per_prompt, use_tqdm=False)
        return [[self._completion(prefix, sample) for sample in output.outputs]
                for prefix, output in zip(prefixes, outputs)]

    def _completion(self, prefix: list[int], sample) -> Completion:
        """vLLM's CompletionOutput -> Completion. vLLM keeps the tokens up to the one that completed a
        stop string and cuts only the text, which is what HFSampler does too."""
        if sample.finish_reason not in ("stop", "length"):
            raise RayAlignError(f"vLLM ended a request with finish_reason={sample.finish_reason!r}")
        token_ids = list(sample.token_ids)
        logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs or [], token_ids)]
        prefix_text = self.tokenizer.decode(prefix, skip_special_tokens=True)
        return Completion(token_ids=list(prefix) + token_ids, prefix_len=len(prefix), text=prefix_text + sample.text,
                          logprobs=logprobs, finish_reason=sample.finish_reason)

    def load_weights(self, source: str | dict) -> None:
        """Load an HF checkpoint directory into every worker; a state dict goes through a temporary
        safetensors file, so large tensors never pass through vLLM's RPC serialisation.
        The prefix cache is reset: its KV blocks were computed with the old weights."""
        if isinstance(source, dict):
            from safetensors.torch import save_file

            with tempfile.TemporaryDirectory(prefix="rayalign-weights-") as tmp:
                save_file({k: v.detach().contiguous().cpu().clone() for k, v in source.items()},
                          str(Path(tmp) / "model.safetensors"))
                self._load_directory(tmp)
            return
        self._load_directory(str(source))

    def weights_info(self) -> tuple[str, int, str]:
        """(the dtype the engine computes in, its worker processes: one per tensor-parallel rank, "cuda")."""
        return str(self.llm.llm_engine.model_config.dtype).removeprefix("torch."), self.processes, "cuda"

    def receive_weights(self, meet, rank: int, plan, dtype: str) -> None:
        """Every worker of the engine joins the weight sync's group and loads the buckets; then the prefix cache,
        computed with the old weights, is dropped."""
        self.llm.collective_rpc("rayalign_receive", args=(meet, rank, plan, dtype))
        self.llm.reset_prefix_cache()

    def receive_ipc(self, handle, entries, dtype: str) -> None:
        self.llm.collective_rpc("rayalign_receive_ipc", args=(handle, entries, dtype))

    def finish_sync(self) -> None:
        self.llm.reset_prefix_cache()  # its KV blocks were computed with the old weights

    def sleep(self) -> None:
        """Free the GPU for a colocated trainer: weights offloaded to CPU memory, KV cache dropped (level 1)."""
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        self.llm.wake_up()

    def _load_directory(self, directory: str) -> None:
        if not list(Path(directory).expanduser().glob("*.safetensors")):
            raise RayAlignError(f"load_weights: no *.safetensors files in '{directory}'; "
                                "give an HF checkpoint directory written by save_pretrained")
        self.llm.collective_rpc("rayalign_load_checkpoint", args=(str(Path(directory).expanduser()),))
        self.llm.reset_prefix_cache()
