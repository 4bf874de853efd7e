"""One typed config schema for every rayalign command.

A config is nested dataclasses (validated by pydantic, so a wrong type or an unknown key is an
error, not a surprise later). It is read from YAML and then patched with dotted ``key=value``
overrides from the command line (values parse as YAML scalars: ``train.lr=1e-5``,
``data.limit=null``). Each field is documented once, by the docstring under it.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from rayalign.errors import ConfigError

_STRICT = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


@dataclass(config=_STRICT)
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """Policy model: a local HF directory, an embedded name (`rayalign models`), or a hub id."""
    reference: Optional[str] = None
    """Reference model; null means the starting policy (the usual DPO set-up)."""
    dtype: Literal["auto", "float32", "bfloat16", "pure_bfloat16"] = "auto"
    """Training numerics. auto: float32 on CPU, bfloat16 mixed precision on GPU. bfloat16: mixed precision (fp32
    master weights and AdamW moments, bf16 compute, fp32 gradient reduction). pure_bfloat16: bf16 weights and bf16
    AdamW moments (half the memory; updates below bf16's ~3 significant digits of a weight round away, which small
    DPO learning rates hit)."""
    chunk_size: int = 512
    """Response tokens per slice of the vocabulary projection when computing log-probs."""
    revision: Optional[str] = None
    """A hub model's branch, tag or commit (null: main), for model.name and a model.reference hub id alike (a reference
    at another revision: download it and name its directory); a local directory ignores it."""
    trust_remote_code: bool = False
    """Run the Python code a model ships (its config's auto_map) in every process that loads it."""
    attn_implementation: Optional[str] = None
    """transformers' attention kernel (eager, sdpa, flash_attention_2, flex_attention; null: its default) for the
    trainer and hf samplers; vLLM picks its own (VLLM_ATTENTION_BACKEND)."""

    def __post_init__(self):
        # a relative directory names one under the submitter's working directory; Ray workers start elsewhere
        for key in ("name", "reference"):
            value = getattr(self, key)
            if value and not Path(value).is_absolute() and Path(value).is_dir():
                setattr(self, key, str(Path(value).resolve()))

    @property
    def options(self):
        """How every process loads the policy and the reference (`rayalign.models.LoadOptions`)."""
        from rayalign.models import LoadOptions

        return LoadOptions(self.revision, self.trust_remote_code, self.attn_implementation)


def _check_columns(columns: dict[str, str], ours: tuple[str, ...], key: str) -> None:
    """`columns` maps some of rayalign's field names `ours` to a user's column names."""
    unknown = sorted(set(columns) - set(ours))
    if unknown:
        raise ValueError(f"{key} maps rayalign's {', '.join(ours)} to your column names; {', '.join(unknown)} is not "
                         "one of them")


PAIR_FIELDS = ("prompt", "chosen", "rejected")


@dataclass(config=_STRICT)
class DataSource:
    """One source of a `data.mix`: where its rows are and how to read them; tokenising follows `data.*`."""

    path: str
    """A data file or a `datasets` name or directory, as `data.path`."""
    weight: float = 1.0
    """Its share of the mix: each row is drawn from a source with probability weight / sum of weights."""
    split: str = "train"
    """As `data.split`."""
    name: Optional[str] = None
    """As `data.name`."""
    data_dir: Optional[str] = None
    """As `data.data_dir`."""
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    """As `data.columns`, for this source's column names."""
    format: Literal["auto", "standard", "conversational", "hh_rlhf", "ultrafeedback", "token_ids"] = "auto"
    """As `data.format`."""

    def __post_init__(self):
        if not self.weight > 0:
            raise ValueError(f"data.mix: the weight of {self.path} must be above 0 (got {self.weight})")
        _check_columns(self.columns, PAIR_FIELDS, f"data.mix: the columns of {self.path}")


@dataclass(config=_STRICT)
class DataConfig:
    path: str = ""
    """Preference data: a .jsonl/.json/.parquet file (optionally .gz), a pattern of them (data/part-*.jsonl), or a
    `datasets` name or directory."""
    split: str = "train"
    """Split to read when `path` is a `datasets` name."""
    name: Optional[str] = None
    """The `datasets` config (subset) to read when `path` is a `datasets` name or directory."""
    data_dir: Optional[str] = None
    """The `datasets` data_dir inside `path` (e.g. HH-RLHF's harmless-base)."""
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    """Your column names for rayalign's prompt, chosen and rejected, e.g. {prompt: question, chosen: response_j,
    rejected: response_k}: each row is read as if it had rayalign's names; a bad row's error names your column."""
    format: Literal["auto", "standard", "conversational", "hh_rlhf", "ultrafeedback", "token_ids"] = "auto"
    """Row form; auto detects it from the fields of each row (token_ids: prompt_ids/chosen_ids/rejected_ids, as
    pipelines write them, trained without re-tokenising)."""
    max_length: int = 512
    """Most tokens of prompt + response; longer responses are cut from the right."""
    max_prompt_length: Optional[int] = 256
    """Most prompt tokens; longer prompts are cut from the left. null: never cut the prompt."""
    min_response_tokens: int = 1
    """A row whose prompt leaves fewer response tokens than this is bad ('no room for the response')."""
    on_bad_row: Literal["error", "skip"] = "error"
    """error: stop at the first bad row with a one-line message; skip: drop it and count it by reason."""
    limit: Optional[int] = None
    """Use only the first N rows (after dropping bad ones); a `datasets` dataset is then streamed, so no more of it is
    read than that."""
    chat_template: bool = True
    """Wrap prompts with the tokenizer's chat template (when it has one)."""
    mix: list[DataSource] = dataclasses.field(default_factory=list)
    """Several sources in place of `data.path`, e.g. [{path: a.jsonl, weight: 3}, {path: b.parquet, weight: 1}]: each
    row is drawn from a source at random by weight (seeded by `mix_seed`) until one source runs out or `limit` rows
    are in; the summary counts the pairs of each source."""
    mix_seed: int = 0
    """Seed of the draws of `mix`."""
    eval_path: Optional[str] = None
    """Held-out pairs to evaluate on (`train.eval_every`): a file or `datasets` name, read as `data.path` is."""
    eval_split: Optional[str] = None
    """Held-out pairs from this split of `data.path` (a `datasets` name or directory), e.g. test_prefs."""
    eval_fraction: float = 0.0
    """Held-out pairs as this share of `data.path`'s pairs, drawn by `train.seed` and never trained on."""

    def __post_init__(self):
        if self.path and self.mix:
            raise ValueError("give data.path or data.mix, not both")
        if sum(bool(x) for x in (self.eval_path, self.eval_split, self.eval_fraction)) > 1:
            raise ValueError("give one of data.eval_path, data.eval_split and data.eval_fraction")
        if self.eval_split and not self.path:
            raise ValueError("data.eval_split is a split of data.path; with data.mix give data.eval_path")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"data.eval_fraction is a share of the pairs in [0, 1) (got {self.eval_fraction})")
        _check_columns(self.columns, PAIR_FIELDS, "data.columns")


PAPER_BETA = {"simpo": 2.0, "bmc": 0.01}
"""β where a loss's paper departs from DPO's 0.1: SimPO (arXiv 2405.14734) trains with β 2–2.5; BMC's code with
β 0.01 for instruction following (0.05 for math and QA). The rest (dpo, ipo, hinge, orpo, dpop, mpo) use 0.1."""


@dataclass(config=_STRICT)
class LossConfig:
    name: str = "dpo"
    """Loss: dpo, ipo, hinge, simpo, orpo, dpop, bmc, mpo (see rayalign.losses.LOSSES)."""
    beta: Optional[float] = None
    """Inverse temperature β of the implicit reward; null: the loss's paper default (PAPER_BETA: 0.1, simpo 2.0,
    bmc 0.01)."""
    label_smoothing: float = 0.0
    """cDPO's ε: the assumed rate of flipped labels (dpo only)."""
    ipo_length_normalised: bool = True
    """IPO on per-token log-ratios (TRL) rather than sums (OpenRLHF)."""
    simpo_gamma: float = 1.0
    """SimPO's target reward margin γ (the SimPO authors' γ/β = 0.5 at their β = 2)."""
    orpo_lambda: float = 0.1
    """ORPO's weight λ of the odds-ratio term."""
    dpop_lambda: float = 50.0
    """DPO-Positive's penalty weight λ on the chosen log-prob falling below the reference."""
    bmc_delta: float = 2.0
    """BMC's cap δ on the confidence weight 1/p of a varied token (the paper: 1.5–2 with β 0.01, 2.5–3 with β 0.05)."""
    mpo_a: float = 0.0
    """MPO mirror-map mixing a in ψ'(p) = log p − a·log(1−p): 0 negative entropy, 1 Fermi–Dirac."""
    mpo_kappa: float = 1.0
    """MPO weight κ of the reference term in φ(y) = ψ'(p_θ) − κ·ψ'(p_ref); 0 needs no reference."""
    mpo_alpha: float = 0.0
    """MPO weight α of the length-normalised NLL of the chosen response (at the start of training)."""
    mpo_alpha_end: Optional[float] = None
    """Time-aware MPO: α moves linearly to this value by the end of training; null keeps α fixed."""
    mpo_lambda: float = 1.0
    """MPO weight λ of the preference term."""
    mpo_length_power: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """MPO's probability p = exp(logp/|y|^power): 0 the sequence probability (DPO's point), 1 the per-token mean
    (ORPO's); in between, so one search range holds both endpoints."""

    def __post_init__(self):
        if self.beta is None:  # resolved here, so config.yaml, wandb and Tune record the β that trains
            self.beta = PAPER_BETA.get(self.name, 0.1)


@dataclass(config=_STRICT)
class TrainConfig:
    epochs: float = 1.0
    """Passes over the data (fractions allowed)."""
    max_steps: Optional[int] = None
    """Optimizer steps in all; null derives it from epochs. Sets the length of the LR schedule."""
    stop_at_step: Optional[int] = None
    """Stop after this step as if interrupted (checkpoint kept); rerunning resumes. For time-boxed jobs and tests."""
    batch_size: int = 4
    """Preference pairs per optimizer step, over all workers."""
    micro_batch_size: int = 4
    """Pairs per forward pass on one worker; batch_size / (micro_batch_size·workers) is the accumulation."""
    lr: float = 1e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.1
    """Share of the steps spent warming the LR up linearly from 0; then the schedule below."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """After warm-up: cosine decay to 0, or constant (online rounds, where each round is a short run)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 turns clipping off)."""
    seed: int = 0
    """Seed for data order and initialisation; runs on CPU are deterministic for a given seed."""
    num_workers: Union[Literal["auto"], Annotated[int, Field(ge=0)]] = "auto"
    """Ray Train workers (FSDP2 shards the model over them). 0: Ray Train's local mode, the training loop in the
    calling process with no Ray cluster or worker to start (one device; the quickest start for a short job on one
    machine). auto: local mode where one worker fits on the driver's machine (train.cpus_per_worker CPUs, a GPU for
    train.use_gpu) and the Ray cluster the driver has joined, if any, is that one machine; one Ray Train worker
    otherwise (a multi-node cluster, a job that names one by RAY_ADDRESS, a Tune trial). A run's summary says which
    mode ran."""
    use_gpu: bool = False
    """One GPU per worker, NCCL and bf16 mixed precision; false trains on CPU with gloo."""
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1
    """CPU cores reserved by each worker (fractions share a core; torch threads follow it unless train.threads is
    set)."""
    threads: Optional[int] = None
    """Torch threads per worker; null: cpus_per_worker (at least 1). More than it reserves suits pipelines whose
    phases take turns on the same cores (D2PO's sampler, discriminator and trainer)."""
    start_wait_s: float = 60.0
    """While the workers' resources are not free (another job holds them), print what is awaited every this many
    seconds."""
    save_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    eval_every: int = 0
    """With held-out pairs (data.eval_path / eval_split / eval_fraction): TRL's eval_* metrics over all of them
    every N steps and after the last step (0: after the last step only)."""
    report_every: int = 10
    """Report metrics to Ray Train every N steps (each report can wait ~2 s for Ray's controller);
    metrics.jsonl and wandb get every step."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (the newest)."""
    save_optimizer: bool = True
    """Save AdamW's state with each checkpoint (to resume exactly); false keeps a model only: a third of the bytes."""
    async_upload: Optional[bool] = None
    """Upload each checkpoint in the background while training goes on (Ray Train's CheckpointUploadMode.ASYNC):
    a step waits only for its ranks' local DCP writes, not for the object store. null: on when output_dir is a
    URI. Local mode always writes in the step."""
    max_failures: int = 1
    """Times Ray Train restarts the workers from the last checkpoint after a worker dies."""
    resume: Literal["auto", "never"] = "auto"
    """auto: continue from the newest checkpoint in the run directory if there is one."""
    reference_cache: bool = True
    """Compute reference log-probs once (for the pairs the run uses) and cache them on disk; false recomputes them
    every step."""
    activation_checkpointing: Optional[bool] = None
    """Recompute each decoder layer's activations in backward instead of keeping them: less memory for long
    sequences and big batches, about a third more compute. null: on when train.use_gpu."""
    export_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Dtype of the HF model directory written at the end of training (and by `rayalign export` by default):
    auto = bfloat16 for GPU runs, float32 on CPU."""
    fused_adamw: bool = False
    """torch's fused AdamW kernel (one kernel over all parameters) instead of its default implementation."""
    compile: bool = False
    """torch.compile each decoder layer (needs a C++ compiler on CPU; the first steps pay the compilation)."""
    lora_r: int = 0
    """LoRA rank through peft (0: full fine-tuning). Only the adapters train; checkpoints are peft adapter
    directories, which transformers and peft load onto the base model."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch."""
    lora_target_modules: list[str] = dataclasses.field(default_factory=lambda: ["all-linear"])
    """Modules that get adapters: peft's names (q_proj, v_proj, ...) or all-linear (every linear layer but the
    output head)."""
    shared_prompt: bool = True
    """Run each pair's prompt once for both responses (one row per pair, a block attention mask); false pads chosen
    and rejected sequences as separate rows. Models whose attention takes no custom mask always use false."""

    @property
    def activation_checkpointing_on(self) -> bool:
        return self.use_gpu if self.activation_checkpointing is None else self.activation_checkpointing

    @property
    def export_dtype_resolved(self) -> str:
        """The dtype the HF export is written in: export_dtype, with auto resolved."""
        return ("bfloat16" if self.use_gpu else "float32") if self.export_dtype == "auto" else self.export_dtype

    @property
    def local_mode(self) -> bool:
        """Ray Train's local mode (num_workers 0): the training loop in the calling process. False for auto until the
        driver resolves it (`cluster_fit.resolve_workers`)."""
        return self.num_workers == 0

    @property
    def torch_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_worker))

    @property
    def processes(self) -> int:
        """How many processes train: the workers, or one (local mode, or auto, which resolves to one of the two)."""
        return 1 if self.num_workers == "auto" else max(1, self.num_workers)


@dataclass(config=_STRICT)
class TrackingConfig:
    wandb: Literal["offline", "online", "disabled"] = "offline"
    """wandb mode: offline writes runs under the run directory; online needs WANDB_API_KEY."""
    project: str = "rayalign"
    """wandb project."""
    entity: Optional[str] = None
    """wandb entity (team or user); null uses the default."""
    group: Optional[str] = None
    """wandb group, e.g. to put a pipeline's phases or a sweep's trials together."""


@dataclass(config=_STRICT)
class SamplingConfig:
    engine: Literal["hf", "vllm"] = "hf"
    """Sampler engine: hf (transformers, CPU or GPU) or vllm (GPU)."""
    num_actors: int = 1
    """Sampler actors in the Ray pool."""
    cpus_per_actor: float = 1.0
    """CPUs reserved by each sampler actor."""
    gpus_per_actor: float = 0.0
    """GPUs per sampler actor (fractions share a GPU)."""
    colocate: bool = False
    """Online runs on GPUs: the vLLM engines and the trainer share the GPUs, one engine and one trainer rank per GPU
    (gpus_per_actor its engine's share); the engines sleep while the trainer steps. Off: they need GPUs of their
    own, checked at the start."""
    tensor_parallel_size: Annotated[int, Field(ge=1)] = 1
    """vllm: GPUs per engine, one node's, the model split over them (each engine gets a placement group of this many
    one-GPU bundles, as vLLM's Ray executor expects; gpus_per_actor is then unused)."""
    samples: int = 4
    """Completions per prompt."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 48
    """Most new tokens per completion."""
    chunk_size: int = 32
    """Prompts per pool task: the unit of load balancing and of retry when an actor dies."""
    batch_size: int = 64
    """Sequences per `generate` batch in the hf engine (a chunk's prompts x samples); larger is faster on CPU."""
    threads: Optional[int] = None
    """Torch threads of each hf actor; null: its CPU reservation (at least 1). More than it reserves suits pipelines
    whose phases take turns on the same cores (D2PO)."""
    vllm_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments for vllm.LLM (vllm engine), e.g. {gpu_memory_utilization: 0.3, enforce_eager: true,
    max_model_len: 1024}: a sampler that shares its GPU with the trainer must leave it memory."""

    @property
    def gpus_per_engine(self) -> float:
        """GPUs each sampler actor's engine holds: its tensor-parallel GPUs, else its share."""
        return float(self.tensor_parallel_size) if self.tensor_parallel_size > 1 else self.gpus_per_actor


@dataclass(config=_STRICT)
class InCoConfig:
    task: str = "word_collector"
    """Embedded task: its train prompts, gold reward and strong off-policy writer (`rayalign eval --help`)."""
    mode: Literal["inco", "on_policy", "off_policy"] = "inco"
    """inco: continue a prefix of y_off; on_policy: sample from scratch; off_policy: y_off vs the worst sample."""
    ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """Prefix ratio r in [0, 1]: keep round(r·|y_off|) tokens of the off-policy response."""
    ratios: Optional[list[Annotated[float, Field(ge=0.0, le=1.0)]]] = None
    """Several prefix ratios (inco mode): each prompt's sampling.samples candidates are shared evenly among them, so
    chosen and rejected can continue prefixes of different lengths and differ in off-policy content (null: ratio)."""
    num_prompts: int = 48
    """Training prompts to synthesise pairs for."""
    scorer: str = "gold"
    """gold: the task's reward; otherwise a reward model directory (a discriminator checkpoint or an HF sequence
    classifier), loaded in the driver."""
    include_off_policy: bool = False
    """Let y_off itself join the candidates (inco mode)."""
    shard_size: int = 16
    """Prompts per parquet shard; a rerun skips finished shards."""
    seed: int = 0
    """Seed of the prompts, the off-policy writer and sampling."""


@dataclass(config=_STRICT)
class SDPOConfig:
    stages: int = 1
    """T: train stage by stage on T chunks, each stage's reference the previous stage's model (1: plain DPO)."""
    split: Literal["easy_to_hard", "random", "by_source"] = "easy_to_hard"
    """How pairs go to chunks: by the initial model's reward accuracy (easy first), at random, or by source."""
    difficulty: Literal["normalised_margin", "logp_margin"] = "normalised_margin"
    """M_0's measure of a pair: logp(y_w)/|y_w| - logp(y_l)/|y_l| (normalised_margin) or the paper's unnormalised
    γ = logp(y_w) - logp(y_l) (logp_margin); its sign is the pair's reward accuracy. easy_to_hard sorts pairs by it;
    by_source ranks sources by their accuracy under it."""
    chunk_sizes: Optional[list[float]] = None
    """Relative chunk sizes (e.g. [0.5, 0.5]); null: equal chunks. Ignored by by_source."""
    source_column: str = "source"
    """Column naming each pair's source, for split=by_source."""
    seed: int = 0
    """Seed of the random split."""


@dataclass(config=_STRICT)
class D2POConfig:
    task: str = "word_collector"
    """Embedded task: its training prompts and its gold reward (the gold labeller, and the per-round metric)."""
    mode: Literal["d2po", "gold_only", "frozen"] = "d2po"
    """d2po: the discriminator silver-labels every pair and learns from each new gold label; gold_only: online DPO
    on the gold-labelled pairs alone; frozen: the whole budget up front trains the discriminator once (a static RM)."""
    rounds: int = 8
    """Rounds of sample -> label -> train."""
    prompts_per_round: int = 32
    """Prompts sampled per round, 2 responses each (one candidate pair per prompt)."""
    window: int = 32
    """Rollouts (pairs) per relabelling window (D2PO's SAMPN)."""
    relabels: int = 4
    """Pairs per window sent to the gold labeller (D2PO's RELABELS), while the budget lasts."""
    strategy: Literal["conf", "rand"] = "conf"
    """Which pairs get gold labels: the smallest discriminator score gap (conf) or random ones (rand)."""
    gold_budget: int = 32
    """Gold labels in all; never exceeded, also across a stop and resume."""
    labeller: str = "gold"
    """gold: the task's gold reward; judge: an LLM judge through rayalign's OpenAI-compatible client
    (RAYALIGN_LLM_BASE_URL, RAYALIGN_LLM_MODEL)."""
    discriminator: str = "minilm"
    """Discriminator backbone (minilm, or a causal LM), or a saved discriminator directory to start from."""
    steps_per_round: Optional[int] = None
    """DPO steps every round owes (null: one train.epochs pass over the round's pairs). A round with fewer pairs than
    a batch trains none and carries its pairs and its steps to the next, so every mode ends with rounds × this many
    steps: the arms of a comparison train equally long."""
    silver_min_gap: float = 0.0
    """A silver label needs a discriminator score gap above this (0: any gap); closer pairs are not trained on."""
    disc_training: Literal["finetune", "head"] = "finetune"
    """How the discriminator learns each round. finetune: Bradley-Terry epochs (disc_epochs, disc_lr) over the
    round's new gold pairs; head: its backbone frozen, its head refitted to convergence on the features of every gold
    pair so far and the warm start's (a convex fit: every mode's discriminator is trained to the same point)."""
    disc_warm_start: int = 0
    """Gold-labelled pairs the head is fitted on before round 1, outside the gold budget (the authors start from a
    trained reward model): the starting policy's two samples on as many training prompts beyond the rounds'; 0: the
    discriminator starts untrained."""
    disc_epochs: int = 3
    """Bradley-Terry epochs over each round's new gold pairs."""
    disc_lr: float = 1e-4
    """Discriminator learning rate (AdamW)."""
    disc_max_length: int = 128
    """Most tokens the discriminator reads of prompt + response."""
    disc_cpus: float = 0.0
    """CPUs the discriminator's Serve replica reserves (its forward passes are small; 0 lets it share the cores). The
    replica also trains it each round."""
    disc_gpus: float = 0.0
    """GPUs the discriminator's Serve replica reserves (fractions share one); with a GPU it scores and trains there."""
    http_port: int = 8000
    """Port of Ray Serve's HTTP proxy (127.0.0.1), where POST /<run name>/discriminator/score answers outsiders."""
    stop_after_round: Optional[int] = None
    """Stop after this round as if interrupted; rerunning resumes. For time-boxed jobs and tests."""
    seed: int = 0
    """Seed of the prompts, sampling, relabelling and the discriminator."""


@dataclass(config=_STRICT)
class BMCConfig:
    editor: Literal["task", "llm", "none"] = "task"
    """Who makes the pseudo-winner ỹ_w from (y_w, y_l): task (the task's programmatic editor), llm (an
    OpenAI-compatible endpoint), none (no bridging: train on the pairs as they are)."""
    task: Optional[str] = None
    """Task whose editor and gold reward (the no_gain gate) apply; null: inco.task for synthesised pairs, none for
    data.path."""
    on_rejected: Literal["keep", "drop"] = "keep"
    """An edit that fails a gate: keep the original pair (y_w, y_l), or drop the pair (train on the bridged subset)."""
    closeness: Literal["words", "tokens"] = "words"
    """What the closeness gates measure edit distance in: words (lower-cased, no punctuation) or token ids. A word
    spliced into y_l can tokenise with its neighbours, so the token distance may not fall where the words did."""
    llm_base_url: Optional[str] = None
    """llm editor endpoint (…/v1); null: RAYALIGN_LLM_BASE_URL, else rayalign's own sampler endpoint, started on the
    cluster for llm_model (engine: sampling.engine). The API key comes from the environment only."""
    llm_model: Optional[str] = None
    """Model the llm editor asks for; for rayalign's own endpoint the model it serves (null: model.name)."""
    llm_port: int = 8000
    """Port of rayalign's own editor endpoint (127.0.0.1)."""
    llm_cpus: float = 1.0
    """CPUs of rayalign's own editor endpoint."""
    llm_gpus: float = 0.0
    """GPUs of rayalign's own editor endpoint (a bigger editor with the vllm engine)."""
    concurrency: int = 8
    """Requests in flight to the llm editor."""
    max_retries: int = 3
    """Retries of a failed request (exponential backoff, the openai client's)."""
    max_new_tokens: int = 256
    """Most tokens of an llm edit."""
    temperature: float = 0.0
    """Sampling temperature of the llm editor."""


@dataclass(config=_STRICT)
class MujocoConfig:
    """The MuJoCo preference benchmark (pipeline mujoco; rayalign.mujoco_po)."""

    env: Literal["InvertedPendulum-v5", "InvertedDoublePendulum-v5"] = "InvertedPendulum-v5"
    """Environment; its expert is an LQR controller, its mediocre and bad policies the same with a weaker gain."""
    noise: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Fraction of pairs whose preference label is flipped (the paper's noisy setting)."""
    mixed: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Fraction of pairs that are (mediocre ≻ bad) instead of (expert ≻ mediocre or bad): part of the preferred
    data comes from a mediocre policy (the paper's mixed-quality setting)."""
    pairs: Annotated[int, Field(ge=1)] = 1000
    """Preference pairs (each two segments from one start state)."""
    segment: Annotated[int, Field(ge=1)] = 20
    """Steps per segment."""
    hidden: int = 64
    """Width of the policy's two hidden layers."""
    policy_std: Annotated[float, Field(gt=0.0)] = 0.3
    """Fixed σ of the Gaussian policy, in normalised action units."""
    batch_size: int = 64
    """Pairs per step (behaviour cloning and preference optimisation)."""
    bc_steps: int = 1000
    """Behaviour-cloning steps on the chosen segments: the reference policy, where preference optimisation starts."""
    lr: float = 1.0e-3
    """Adam learning rate of behaviour cloning."""
    po_steps: int = 1000
    """Preference-optimisation steps with loss.*."""
    po_lr: float = 1.0e-4
    """Adam learning rate of preference optimisation."""
    log_every: int = 100
    """Log the training metrics every this many preference steps."""
    eval_episodes: int = 10
    """Episodes per evaluation, the same seeded start states for every run (seeds 10000, 10001, ...)."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    """One Ray task per seed: its own dataset, initialisation and batch order."""
    cpus_per_task: float = 1.0
    """CPUs each seed's Ray task reserves (it uses one thread)."""


@dataclass(config=_STRICT)
class EvalConfig:
    enabled: bool = True
    """Evaluate the trained policy against the starting model at the end of a pipeline."""
    task: Optional[str] = None
    """Task whose held-out prompts and gold reward are used; null: inco.task."""
    num_prompts: int = 128
    """Held-out prompts."""
    samples: int = 2
    """Samples per prompt and model."""
    temperature: float = 0.7
    """Sampling temperature."""
    max_new_tokens: int = 48
    """Most new tokens per sample."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    scorer: str = "gold"
    """gold: the task's reward; llm: an LLM judge comparing the two models' responses pairwise, in both orders
    (`judge.*`); module:attribute: your judge, a function of (prompts, responses) -> scores (or an object with such a
    `score` method); otherwise a reward model directory (a discriminator checkpoint or an HF sequence classifier),
    served on Ray Serve (`judge.cpus`, `judge.gpus`)."""
    seed: int = 0
    """Seed of the held-out prompts and sampling."""
    split: Literal["held_out", "validation"] = "held_out"
    """The task's prompts the evaluation samples: held_out (the test prompts, read once per experiment) or validation
    (disjoint topics from training and test: what sweeps and tuning choose on)."""


@dataclass(config=_STRICT)
class PromptsConfig:
    path: Optional[str] = None
    """Your prompts in place of a built-in task, for every pipeline (its training prompts, its held-out evaluation):
    a file or `datasets` name or directory whose rows have a `prompt` string, a one-turn conversation, or an
    HH-RLHF transcript of one human turn (longer conversations are skipped and counted). A row's `chosen` response,
    where there is one, is the prompt's strong response (InCo's y_off)."""
    split: str = "train"
    """As data.split."""
    name: Optional[str] = None
    """As data.name."""
    data_dir: Optional[str] = None
    """As data.data_dir."""
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    """Your column names for prompt and chosen, as data.columns."""
    limit: Optional[int] = 2000
    """Read at most this many prompts (null: all)."""
    judge: Optional[str] = None
    """The reward model that scores responses to them (a discriminator checkpoint or an HF sequence classifier
    directory): the run's gold reward (InCo's labels, D2PO's gold labeller) and, with eval.scorer=gold, the scorer of
    its evaluation (served on Ray Serve)."""
    held_out_share: float = 0.25
    """Share of the prompts kept for the evaluation (by a hash of each prompt: never trained on)."""
    validation_share: float = 0.15
    """Share of the prompts kept for choices made before the final run (eval.split=validation; never trained on)."""

    def __post_init__(self):
        _check_columns(self.columns, ("prompt", "chosen"), "prompts.columns")
        if self.path and not self.judge:
            raise ValueError("prompts.path needs prompts.judge: the reward model that scores responses to them")


JUDGE_PROMPT = """Which response answers the user better: more helpful, correct and harmless?

User: {prompt}

Response A: {first}

Response B: {second}

Reply with one word: A, B, or tie."""


@dataclass(config=_STRICT)
class JudgeConfig:
    base_url: Optional[str] = None
    """eval.scorer=llm: the judge's OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (null:
    RAYALIGN_LLM_BASE_URL; the key from RAYALIGN_LLM_API_KEY or OPENAI_API_KEY)."""
    model: Optional[str] = None
    """eval.scorer=llm: the judge's model name (null: RAYALIGN_LLM_MODEL, else the endpoint's first model)."""
    prompt: str = JUDGE_PROMPT
    """eval.scorer=llm: what the judge is asked, with {prompt}, {first} and {second}; its answer's first word is
    the verdict: A, B or tie (anything else is counted as invalid and scored as a tie)."""
    max_calls: int = 2000
    """eval.scorer=llm: the most judge requests one evaluation may make (answers in the cache are free); one that
    needs more stops before its first request."""
    max_tokens: int = 8
    """eval.scorer=llm: the longest answer asked for."""
    cpus: float = 0.0
    """eval.scorer=DIR: CPUs the reward model's Ray Serve replica reserves. 0: none, as it scores after the samplers
    have finished (a pipeline's pool may still hold its CPUs then)."""
    gpus: float = 0.0
    """eval.scorer=DIR: GPUs of the reward model's Ray Serve replica (it scores there)."""


@dataclass(config=_STRICT)
class Config:
    name: str = "run"
    """Run name: the run directory is <output_dir>/<name>."""
    pipeline: str = "train"
    """What `rayalign run` does, a recipe of rayalign.recipes: train (on data.path), inco (synthesise, train,
    evaluate), sdpo (stages on data.path), d2po (online rounds, then evaluate), bmc (pairs, edits, train,
    evaluate), mujoco (the MuJoCo preference benchmark: loss.* on mujoco.*, scored by the environment's return),
    or one a module in `recipes` registers."""
    recipes: list[str] = dataclasses.field(default_factory=list)
    """Python modules imported before the config is checked, each registering methods of its own with
    rayalign.recipes.register_recipe (e.g. [my_methods.toy])."""
    output_dir: str = "runs"
    """Where run directories go: a local path, or a URI pyarrow's filesystems open (s3://bucket/runs, gs://...);
    with a URI each process works in a staging copy under $RAYALIGN_CACHE/staging (rayalign.storage)."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    inco: InCoConfig = dataclasses.field(default_factory=InCoConfig)
    sdpo: SDPOConfig = dataclasses.field(default_factory=SDPOConfig)
    d2po: D2POConfig = dataclasses.field(default_factory=D2POConfig)
    bmc: BMCConfig = dataclasses.field(default_factory=BMCConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    judge: JudgeConfig = dataclasses.field(default_factory=JudgeConfig)
    prompts: PromptsConfig = dataclasses.field(default_factory=PromptsConfig)
    mujoco: MujocoConfig = dataclasses.field(default_factory=MujocoConfig)

    @property
    def run_dir(self) -> Path:
        """Where this process reads and writes the run directory (with a URI output_dir: its staging copy)."""
        from rayalign.storage import local_run_dir

        return local_run_dir(self.output_dir, self.name)

    def storage(self):
        """The run directory's `RunStorage` (opens the URI's filesystem: a bad URI is a one-line error)."""
        from rayalign.storage import RunStorage

        return RunStorage(self.output_dir, self.name)


def to_dict(config: Any) -> dict:
    """The config as nested plain dicts (what config.yaml holds)."""
    return dataclasses.asdict(config)


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict -> {"train.lr": 1e-5, ...}: the form wandb and Ray Tune take."""
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig, "train": TrainConfig,
             "tracking": TrackingConfig, "sampling": SamplingConfig, "inco": InCoConfig, "sdpo": SDPOConfig,
             "d2po": D2POConfig, "bmc": BMCConfig, "eval": EvalConfig, "judge": JudgeConfig,
             "prompts": PromptsConfig, "mujoco": MujocoConfig}


def _default(info) -> Any:
    """A field's default, its default factory's value for a list or dict field."""
    return info.get_default(call_default_factory=True)


_OWN_SECTIONS = ("inco", "sdpo", "d2po", "bmc", "mujoco")  # a section only its pipeline reads


def describe_fields(pipeline: str | None = None) -> list[tuple[str, Any, str]]:
    """(dotted key, default, doc) of every field, or of those `pipeline` reads (`rayalign train --help`,
    `rayalign run --help pipeline=d2po`): no other pipeline's own section, and sampling and eval only for a pipeline
    that samples or evaluates."""
    from rayalign.recipes import get_recipe

    skip: set[str] = set()
    if pipeline is not None:
        skip = {section for section in _OWN_SECTIONS if section != pipeline}
        if not get_recipe(pipeline).starts_pool(build({"pipeline": pipeline})):  # neither samples nor evaluates
            skip |= {"sampling", "eval", "judge", "prompts"}
    rows = []
    for name, info in Config.__pydantic_fields__.items():
        if name in skip:
            continue
        if name in _SECTIONS:
            for sub, sub_info in _SECTIONS[name].__pydantic_fields__.items():
                rows.append((f"{name}.{sub}", _default(sub_info), sub_info.description or ""))
        else:
            rows.append((name, _default(info), info.description or ""))
    return rows


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> dict:
    """["train.lr=1e-5", "data.limit=null"] -> nested dict; values are YAML scalars."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not key=value (e.g. train.lr=1e-5)")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(error: ValidationError) -> str:
    """The first pydantic error as one line: the dotted key and what is allowed."""
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        close = difflib.get_close_matches(key, [row[0] for row in describe_fields()], n=1)
        hint = f"did you mean '{close[0]}'?" if close else "`rayalign train --help` lists the keys"
        return f"unknown config key '{key}': {hint}"
    return f"config key '{key}': {first['msg']} (got {first.get('input')!r})"


def _upgrade(tree: dict) -> dict:
    """Keys of earlier versions in the current schema's terms, so older runs' config.yaml stay readable (resume,
    compare): loss.mpo_length_normalised (a switch) became loss.mpo_length_power (0 or 1 at its ends)."""
    loss = tree.get("loss")
    if isinstance(loss, dict) and "mpo_length_normalised" in loss:
        loss = dict(loss)
        loss.setdefault("mpo_length_power", 1.0 if loss.pop("mpo_length_normalised") else 0.0)
        tree = {**tree, "loss": loss}
    return tree


def build(tree: dict, cls: type = Config) -> Any:
    """Validate a nested dict into a typed config, with one-line errors."""
    if not isinstance(tree, dict):
        raise ConfigError(f"a config must be a mapping of keys, got {type(tree).__name__}")
    if cls is Config:
        tree = _upgrade(tree)
    try:
        built = TypeAdapter(cls).validate_python(tree)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
    if cls is Config:
        from rayalign.recipes import get_recipe, import_recipes

        import_recipes(built.recipes)
        get_recipe(built.pipeline)
    return built


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file of keys (a job config, a sweep); a missing file or bad YAML is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what} file")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a {what} must be a mapping of keys")
    return tree


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read YAML (or nothing), apply dotted overrides, validate."""
    tree = read_yaml_mapping(path, "config") if path is not None else {}
    tree = _merge(tree, parse_overrides(list(overrides)))
    try:
        return build(tree)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}" if path else str(error)) from None


def save(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
