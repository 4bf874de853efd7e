"""The transformers engine: batched `generate` with left padding and a KV cache, on CPU or GPU.

Log-probs: `Completion.logprobs` are the *raw model's* log-probs of the chosen tokens
(log_softmax of the unprocessed logits: temperature 1, no top-p), not those of the processed
distribution the token was drawn from. That is what DPO and a reference model need, and what a
teacher-forced forward pass over prompt + completion recomputes (the tests check it to 1e-4).
vLLM's default (`logprobs_mode="raw_logprobs"`) means the same, so the engines agree.

They are recorded by a logits processor that sees each step's raw logits and keeps only one
step's log-softmax at a time, instead of `output_logits=True`, which would hold a float32
[batch, new_tokens, vocab] tensor (3 GB at batch 32 x 512 tokens x 49k vocabulary).

Why a clean `GenerationConfig`: `generate` fills every unset field from the checkpoint's
generation config and then from global defaults, which include top_k=50. A sampler whose
distribution silently depends on the checkpoint cannot be compared across engines, so we pass
every sampling field explicitly (top_k=0: off) and reset the model's generation config.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria

from rayalign.errors import RayAlignError
from rayalign.models import PLAIN, LoadOptions
from rayalign.sampling.base import Completion, SamplingParams, check_inputs


class _ChosenTokenLogps(LogitsProcessor):
    """Records log π(chosen token) per step from the raw logits; passes the scores on unchanged.

    At step t it sees the logits of step t and the token chosen at step t−1 (the last column of
    `input_ids`), so it keeps one step of log-softmax and gathers it one step late; `finish`
    gathers the last step from the final sequences.
    """

    def __init__(self):
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.steps.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = scores.float().log_softmax(-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """[batch, new_tokens] float32 log-probs of the generated tokens."""
        if self.previous is not None:
            self.steps.append(self.previous.gather(-1, sequences[:, -1:]).squeeze(-1))
            self.previous = None
        return torch.stack(self.steps, dim=1) if self.steps else torch.zeros(sequences.shape[0], 0)


class _StopOnStrings(StoppingCriteria):
    """Ends a row once a stop string appears in its *generated* text.

    transformers' own `stop_strings` also matches across the prompt boundary, so a prefix that
    ends in "\\n" would stop a "\\n"-stopped continuation at once; here only new text counts.
    """

    def __init__(self, stop: tuple[str, ...], start: int, tokenizer, prefixes: list[list[int]]):
        self.stop, self.start, self.tokenizer, self.prefixes = stop, start, tokenizer, prefixes

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row, ids in enumerate(input_ids[:, self.start:].tolist()):
            done[row] = _find_stop(_new_text(self.tokenizer, self.prefixes[row], ids), self.stop) is not None
        return done


def _new_text(tokenizer, prefix: list[int], new_ids: list[int]) -> str:
    """The text the new tokens add after the prefix (decoded together, so word joins are right)."""
    prefix_text = tokenizer.decode(prefix, skip_special_tokens=True)
    return tokenizer.decode(prefix + new_ids, skip_special_tokens=True)[len(prefix_text):]


def _find_stop(text: str, stop: tuple[str, ...]) -> int | None:
    """Character offset of the earliest stop string in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def _eos_ids(tokenizer, generation_config) -> list[int]:
    """The tokenizer's EOS plus any the checkpoint's generation config lists (Llama-3 style chat
    models end a turn with a token other than the tokenizer's EOS)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    extra = getattr(generation_config, "eos_token_id", None)
    for token in [extra] if isinstance(extra, int) else list(extra or []):
        if token not in ids:
            ids.append(int(token))
    return ids


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise RayAlignError(f"dtype '{dtype}' is not a torch dtype; use float32, bfloat16 or float16")
    return getattr(torch, dtype)


class HFSampler:
    """A `Sampler` on transformers. `batch_size` rows (prompt copies) go through `generate` at once."""

    def __init__(self, model_name: str, device: str = "cpu", dtype: str | torch.dtype = "float32",
                 batch_size: int = 16, options: LoadOptions = PLAIN):
        from rayalign.models import load_causal_lm, load_tokenizer

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RayAlignError(f"HFSampler: device '{device}' asked for but CUDA is not available; use device='cpu'")
        self.model_name, self.device, self.batch_size = model_name, torch.device(device), batch_size
        self.tokenizer = load_tokenizer(model_name, options)
        self.model = load_causal_lm(model_name, str(_as_dtype(dtype)).removeprefix("torch."), options)
        self.model.to(self.device).eval()
        self.eos_ids = _eos_ids(self.tokenizer, self.model.generation_config)
        self.model.generation_config = GenerationConfig(
            bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id)

    # ---- generation -------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 prefixes: list[list[int]] | None = None) -> list[list[Completion]]:
        """`params.n` completions per prompt, in input order. Seeded calls are reproducible:
        the RNG is seeded once per call and the rows are batched in a fixed order."""
        prefixes = check_inputs(prompts, prefixes)
        rows = [(i, prompts[i], prefixes[i]) for i in range(len(prompts)) for _ in range(params.n)]
        # longest first: rows of similar length share a batch, so less padding is computed
        order = sorted(range(len(rows)), key=lambda r: -(len(rows[r][1]) + len(rows[r][2])))
        results: list[list[Completion]] = [[] for _ in prompts]
        done: dict[int, Completion] = {}
        with self._rng(params.seed), torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                outs = self._generate_batch([rows[r][1] for r in batch], [rows[r][2] for r in batch], params)
                done.update(zip(batch, outs))
        for r in range(len(rows)):
            results[rows[r][0]].append(done[r])
        return results

    @contextlib.contextmanager
    def _rng(self, seed: int | None):
        """Seed torch's RNG for this call only, so the caller's global RNG state is left as it was."""
        if seed is None:
            yield
            return
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def _generate_batch(self, prompts, prefixes, params: SamplingParams) -> list[Completion]:
        inputs = [list(p) + list(x) for p, x in zip(prompts, prefixes)]
        width = max(len(ids) for ids in inputs)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in inputs], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in inputs],
                                      device=self.device)
        recorder = _ChosenTokenLogps()
        stopping = [_StopOnStrings(params.stop, width, self.tokenizer, prefixes)] if params.stop else []
        sequences = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=self._config(params),
            logits_processor=LogitsProcessorList([recorder]), stopping_criteria=stopping or None)
        logps = recorder.finish(sequences).tolist()
        new_ids = sequences[:, width:].tolist()
        return [self._completion(x, ids, lp, params.stop) for x, ids, lp in zip(prefixes, new_ids, logps)]

    def _config(self, params: SamplingParams) -> GenerationConfig:
        tok = self.tokenizer
        return GenerationConfig(
            do_sample=not params.greedy, temperature=1.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p, top_k=None if params.greedy else 0,
            max_new_tokens=params.max_new_tokens,
            bos_token_id=tok.bos_token_id, eos_token_id=self.eos_ids, pad_token_id=tok.pad_token_id,
            use_cache=True, num_return_sequences=1)

    def _completion(self, prefix: list[int], new_ids: list[int], logps: list[float],
                    stop: tuple[str, ...]) -> Completion:
        """Cut a generated row at EOS or the first stop string (whichever comes first)."""
        end = next((i + 1 for i, token in enumerate(new_ids) if token in self.eos_ids), None)
        finish = "length" if end is None else "stop"
        end = len(new_ids) if end is None else end
        new_ids, logps = new_ids[:end], logps[:end]
        text = self.tokenizer.decode(prefix + new_ids, skip_special_tokens=True)
        if stop:
            cut = self._stop_cut(prefix, new_ids, stop)
            if cut is not None:
                keep, text = cut
                new_ids, logps, finish = new_ids[:keep], logps[:keep], "stop"
        return Completion(token_ids=prefix + new_ids, prefix_len=len(prefix), text=text,
                          logprobs=[float(v) for v in logps], finish_reason=finish)

    def _stop_cut(self, prefix, new_ids, stop) -> tuple[int, str] | None:
        """(tokens to keep, text before the stop string) if a stop string is in the generated text.

        We keep generated tokens up to the one that completes the stop string (as vLLM does), so
        token_ids and logprobs stay aligned with what the model actually produced.
        """
        prefix_text = self.tokenizer.decode(prefix, skip_special_tokens=True)
        new_text = _new_text(self.tokenizer, prefix, new_ids)
        at = _find_stop(new_text, stop)
        if at is None:
            return None
        keep = next((k for k in range(1, len(new_ids) + 1)
                     if _find_stop(_new_text(self.tokenizer, prefix, new_ids[:k]), stop) is not None), len(new_ids))
        return keep, prefix_text + new_text[:at]

    # ---- weights ------------------------------------------------------------------------------
    def load_weights(self, source: str | dict) -> None:
        """Load an HF checkpoint directory's safetensors, or a state dict, into the live model."""
        state = read_checkpoint(source) if isinstance(source, (str, Path)) else source
        load_state_checked(self.model, state)


    def weights_info(self) -> tuple[str, int, str]:
        """(the dtype this sampler computes in, its processes, its device type): what a weight sync sends it, to how
        many ranks, over which backend."""
        return str(next(self.model.parameters()).dtype).removeprefix("torch."), 1, self.device.type

    def receive_weights(self, meet, rank: int, plan, dtype: str) -> None:
        """Join a weight sync's group as `rank` and load every bucket as it arrives (`weight_sync`)."""
        from rayalign.sampling import weight_sync

        group = weight_sync.join(meet, rank)
        with torch.no_grad():
            weight_sync.receive(group, plan, getattr(torch, dtype), weight_sync.transfer_device(meet, self.device),
                                weight_sync.load_into(self.model))


def read_checkpoint(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint directory (single file or sharded) as one state dict."""
    from safetensors.torch import load_file

    directory = Path(directory).expanduser()
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise RayAlignError(f"load_weights: no *.safetensors files in '{directory}'; "
                            "give an HF checkpoint directory written by save_pretrained")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def load_state_checked(model: torch.nn.Module, state: dict) -> None:
    """`load_state_dict` that tolerates only missing *tied* weights (e.g. lm_head tied to the
    embeddings is not saved) and names any other mismatch, instead of silently keeping old weights."""
    result = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    missing = [k for k in result.missing_keys if k in params and params[k].data_ptr() not in loaded_ptrs]
    missing += [k for k in result.missing_keys if k not in params and "rotary" not in k]
    if missing or result.unexpected_keys:
        raise RayAlignError(f"load_weights: the weights do not fit the model: missing {missing[:5]}, "
                            f"unexpected {list(result.unexpected_keys)[:5]}; is it a checkpoint of the same model?")
