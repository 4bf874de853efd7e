"""SamplerPool: samplers in Ray actors, fed from a work queue, that survive an actor dying.

Prompts are cut into small chunks; each actor holds at most `max_in_flight` chunks (so it never
idles between chunks) and `ray.wait` hands the next chunk to whichever actor frees up first.

Why results do not depend on which actor ran what: chunk boundaries are fixed by the call, and a
chunk's seed is `params.seed + its first prompt's index` (`chunk_seed`), so re-running a chunk on
another actor, or after a restart, gives the same completions.

An actor that dies mid-run (OOM, node loss, `ray.kill`) fails its in-flight tasks with
`RayActorError` (tasks are never retried by Ray: `max_task_retries=0`, because the pool re-dispatches
them itself and must know which chunks are unanswered). The pool puts those chunks back on the queue
and revives the actor *without blocking the others*: a probe task waits for Ray's restart
(`max_restarts`), or, when restarts are used up or the restart takes longer than
`restart_timeout_s`, the pool recreates the actor in the same placement-group bundle. The probe also
reloads the last weights given to `update_weights`, since a restarted actor starts from the
constructor's checkpoint (and every task carries the weights' version, so an actor restarted
between calls catches up before it answers). Results are stored by chunk index, so a chunk is answered once even if
it ran twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rayalign.cluster_fit import check_local, live_nodes, sampler_demand, trainer_fits_beside
from rayalign.errors import ConfigError, RayAlignError
from rayalign.models import PLAIN, LoadOptions
from rayalign.ray_setup import init_ray
from rayalign.sampling.base import Completion, SamplingParams, check_inputs, make_sampler

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def chunk_seed(seed: int | None, start: int) -> int | None:
    """The seed of the chunk whose first prompt has index `start` in the call."""
    return None if seed is None else seed + start


class StaleWeights(RayAlignError):
    """An actor that restarted since the last collective sync: the pool brings it up to date (`catch_up`)."""


class SamplerWorker:
    """The actor body: one sampler, built in the actor's process.

    Every call carries the pool's current weights as `(version, source)`; a worker on an older
    version (a fresh or restarted actor starts at version 0, the constructor's checkpoint) loads
    them first. So an actor that Ray restarted between calls cannot answer with stale weights.
    """

    def __init__(self, engine: str, model: str, engine_kwargs: dict, num_threads: int | None):
        if num_threads:  # torch would otherwise size its pool by the node's cores, not the actor's share
            import torch

            torch.set_num_threads(num_threads)
        self.sampler = make_sampler(engine, model, **engine_kwargs)
        self.weights_version = 0

    def sync(self, weights: tuple) -> int:
        """Load `weights` = (version, path | ObjectRef of a state dict | None) unless already on that version;
        None: a trainer sends them over a collective (`receive_weights`), so only the pool can bring this actor up
        to date. Returns the version this actor is on."""
        version, source = weights
        if version != self.weights_version and source is not None:
            self.sampler.load_weights(ray.get(source) if isinstance(source, ray.ObjectRef) else source)
            self.weights_version = version
        return self.weights_version

    def weights_info(self) -> tuple[str, int, str]:
        return self.sampler.weights_info()

    def receive_weights(self, meet, rank: int, plan, dtype: str, version: int) -> int:
        self.sampler.receive_weights(meet, rank, plan, dtype)
        self.weights_version = version
        return version

    def pid(self) -> int:
        return os.getpid()

    def gpu(self) -> str | None:
        from rayalign.sampling.colocate import gpu_id

        return gpu_id()

    def receive_ipc(self, handle, entries, dtype: str) -> None:
        self.sampler.receive_ipc(handle, entries, dtype)

    def finish_sync(self, version: int) -> int:
        """After the last bucket of a colocated sync: this actor is on `version`."""
        self.sampler.finish_sync()
        self.weights_version = version
        return version

    def sleep(self) -> None:
        self.sampler.sleep()

    def wake_up(self) -> None:
        self.sampler.wake_up()

    def parameters(self) -> dict:
        """The hf engine's weights (tests compare them with the trainer's)."""
        return {name: p.detach().clone() for name, p in self.sampler.model.named_parameters()}

    def generate(self, index: int, prompts, params, prefixes, weights: tuple):
        import time

        from rayalign.monitoring import record_samples

        if self.sync(weights) != weights[0]:  # restarted since the last sync: never answer with old weights
            raise StaleWeights(f"sampler on weights version {self.weights_version}, the pool's is {weights[0]}")
        began = time.perf_counter()
        outputs = self.sampler.generate(prompts, params, prefixes)
        completions = [c for row in outputs for c in row]
        record_samples(len(completions), sum(len(c.generated_ids) for c in completions), time.perf_counter() - began)
        return index, outputs


class SamplerPool:
    """`num_actors` samplers, each with `num_cpus` / `num_gpus` (fractions allowed), in one placement
    group (`strategy` PACK or SPREAD). Extra keyword arguments go to the engine's constructor."""

    def __init__(self, engine: str = "hf", model: str = "tiny-llama", num_actors: int = 2, num_cpus: float = 1,
                 num_gpus: float = 0, max_restarts: int = 1, strategy: str = "PACK", chunk_size: int = 4,
                 max_in_flight: int = 2, restart_timeout_s: float = 300, max_chunk_attempts: int = 3,
                 ready_timeout_s: float = 600, num_threads: int | None = None, tensor_parallel_size: int = 1,
                 placement_groups: list | None = None, **engine_kwargs):
        if strategy not in STRATEGIES:
            raise ConfigError(f"sampler pool: strategy '{strategy}' is not one of {', '.join(STRATEGIES)}")
        if num_actors < 1 or chunk_size < 1 or max_in_flight < 1:
            raise ConfigError("sampler pool: num_actors, chunk_size and max_in_flight must be >= 1")
        init_ray()
        self.tensor_parallel_size = tensor_parallel_size
        if tensor_parallel_size > 1:
            check_tensor_parallel(engine, tensor_parallel_size, live_nodes())
            engine_kwargs.update(tensor_parallel_size=tensor_parallel_size, distributed_executor_backend="ray")
        check_local(sampler_demand(num_actors, num_cpus, num_gpus if tensor_parallel_size == 1 else
                                   tensor_parallel_size))
        if engine == "hf" and num_gpus and "device" not in engine_kwargs:
            engine_kwargs["device"] = "cuda"  # a GPU share is pointless if the model stays on the CPU
        self.engine, self.model, self.engine_kwargs = engine, model, engine_kwargs
        self.num_cpus, self.num_gpus, self.max_restarts = num_cpus, num_gpus, max_restarts
        self.num_threads = num_threads
        self.chunk_size, self.max_in_flight = chunk_size, max_in_flight
        self.restart_timeout_s, self.max_chunk_attempts = restart_timeout_s, max_chunk_attempts
        self.owns_groups = placement_groups is None  # given: a colocated trainer's too (`colocate`)
        self.placement_groups = placement_groups or engine_groups(num_actors, num_cpus, num_gpus, tensor_parallel_size,
                                                                  strategy, ready_timeout_s)
        self.actors = [self._new_actor(i) for i in range(num_actors)]
        self.incarnation = [0] * num_actors
        self.weights = (0, None)  # (version, path | ObjectRef of a state dict | None: the sender's); 0: initial
        self.sender: Callable[[list, int], dict] | None = None
        self.last_stats: dict[str, int] = {}
        try:
            ray.get([actor.sync.remote(self.weights) for actor in self.actors])
        except RayActorError as error:  # the engine's constructor raised: say why in one line
            self.shutdown()
            raise RayAlignError(f"sampler pool: the '{engine}' sampler for '{model}' did not start: "
                                f"{_last_error_line(str(error))}") from None

    def _new_actor(self, i: int):
        threads = (self.num_threads or max(1, int(self.num_cpus))) if self.engine == "hf" else None
        remote = ray.remote(SamplerWorker).options(
            max_restarts=self.max_restarts, max_task_retries=0,
            **actor_placement(self.placement_groups, i, self.num_cpus, self.num_gpus, self.tensor_parallel_size))
        return remote.remote(self.engine, self.model, self.engine_kwargs, threads)

    def _remove_groups(self) -> None:
        if self.owns_groups:
            _remove(self.placement_groups)
        self.placement_groups = []

    def sleep(self) -> None:
        """Every engine frees its GPU for a colocated trainer (vLLM's sleep mode)."""
        ray.get([actor.sleep.remote() for actor in self.actors])

    def wake_up(self) -> None:
        ray.get([actor.wake_up.remote() for actor in self.actors])

    # ---- generation -------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams, prefixes: list[list[int]] | None = None,
                 on_chunk: Callable[[int, int], None] | None = None) -> list[list[Completion]]:
        """`params.n` completions per prompt, in input order. `on_chunk(chunk_index, actor_index)` is
        called as each chunk's result arrives (progress bars, tests). Counters in `last_stats`."""
        prefixes = check_inputs(prompts, prefixes)
        starts = list(range(0, len(prompts), self.chunk_size))
        run = _Run(self, starts, prompts, prefixes, params, on_chunk)
        run.loop()
        self.last_stats = dict(run.stats)
        return [completions for index in range(len(starts)) for completions in run.results[index]]

    # ---- weights ------------------------------------------------------------------------------
    def update_weights(self, source: str | dict) -> None:
        """Every actor loads the weights (an HF checkpoint directory or a state dict, put in Ray's
        object store once). They are remembered, so a restarted actor reloads them."""
        previous = self.weights
        self.weights = (previous[0] + 1, ray.put(source) if isinstance(source, dict) else str(source))
        refs = {actor.sync.remote(self.weights): i for i, actor in enumerate(self.actors)}
        try:
            for ref, i in refs.items():
                try:
                    ray.get(ref)
                except RayActorError:  # it died meanwhile: revive it, which reloads the weights
                    self._revive_blocking(i)
        except ray.exceptions.RayTaskError as error:  # e.g. not a checkpoint: keep the previous weights
            self.weights = previous  # actors that did load go back on their next task (version mismatch)
            raise error.as_instanceof_cause() from None

    def receive_weights(self, sender: Callable[[list, int], dict]) -> dict:
        """Every actor gets the next version of the weights from `sender(actors, version)` (a trainer's
        collective: `TrainerGroup.send_weights`), which is remembered: an actor restarted later catches up from it
        (`catch_up`). Returns the sender's figures."""
        self.weights, self.sender = (self.weights[0] + 1, None), sender
        return self.sender(self.actors, self.weights[0])

    def catch_up(self, i: int) -> bool:
        """Bring actor `i`, restarted on older weights, to the current version; whether the sender had to send."""
        if ray.get(self.actors[i].sync.remote(self.weights)) == self.weights[0]:
            return False
        self.sender([self.actors[i]], self.weights[0])
        return True

    def _revive_blocking(self, i: int) -> None:
        try:
            ray.get(self.actors[i].sync.remote(self.weights), timeout=self.restart_timeout_s)
        except (RayActorError, ray.exceptions.GetTimeoutError):
            self.replace_actor(i)
            ray.get(self.actors[i].sync.remote(self.weights))
        self.catch_up(i)
        self.incarnation[i] += 1

    def replace_actor(self, i: int) -> None:
        """Recreate actor `i` in its bundle (its restarts are used up, or it hangs)."""
        ray.kill(self.actors[i], no_restart=True)
        self.actors[i] = self._new_actor(i)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        self._remove_groups()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


def engine_bundles(num_actors: int, cpus: float, gpus: float, tensor_parallel_size: int) -> list[list[dict]]:
    """The placement groups' bundles: one group of one bundle per actor; a tensor-parallel vLLM engine gets a group
    of its own, one one-GPU bundle per worker (vLLM's Ray executor places its workers on the bundles of the actor's
    placement group and refuses a bundle of several GPUs), the actor's CPUs in the first."""
    if tensor_parallel_size == 1:
        return [[{"CPU": cpus, **({"GPU": gpus} if gpus else {})} for _ in range(num_actors)]]
    return [[{"CPU": cpus, "GPU": 1.0}] + [{"GPU": 1.0} for _ in range(tensor_parallel_size - 1)]
            for _ in range(num_actors)]


def engine_groups(num_actors: int, cpus: float, gpus: float, tensor_parallel_size: int, strategy: str,
                  timeout_s: float, what: str = "sampler pool", keys: str = "num_actors or the per-actor resources"
                  ) -> list:
    """The placement groups of `num_actors` actors (`engine_bundles`; a tensor-parallel engine's on one node), once
    placed; else one line naming `what` and the `keys` to lower."""
    groups = [placement_group(bundles, strategy=strategy if tensor_parallel_size == 1 else "STRICT_PACK")
              for bundles in engine_bundles(num_actors, cpus, gpus, tensor_parallel_size)]
    ready, _ = ray.wait([group.ready() for group in groups], num_returns=len(groups), timeout=timeout_s)
    if len(ready) < len(groups):
        _remove(groups)
        raise RayAlignError(f"{what}: the cluster cannot place {num_actors} actors of "
                            f"{engine_bundles(1, cpus, gpus, tensor_parallel_size)[0]} within {timeout_s:.0f} s; "
                            f"lower {keys}")
    return groups


def _remove(groups: list) -> None:
    for group in groups:
        remove_placement_group(group)


def actor_placement(groups: list, i: int, cpus: float, gpus: float, tensor_parallel_size: int) -> dict:
    """Ray options placing actor `i`: its bundle in the pool's one group; or, for a tensor-parallel engine, bundle 0
    of its own group with no GPU of its own, and that group captured for the engine's workers."""
    if tensor_parallel_size == 1:
        return {"num_cpus": cpus, "num_gpus": gpus,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(groups[0], placement_group_bundle_index=i)}
    return {"num_cpus": cpus, "num_gpus": 0, "scheduling_strategy": PlacementGroupSchedulingStrategy(
        groups[i], placement_group_bundle_index=0, placement_group_capture_child_tasks=True)}


def check_tensor_parallel(engine: str, size: int, nodes: list[dict[str, float]]) -> None:
    """One line unless a `size`-way tensor-parallel engine can exist: vLLM, and a node with `size` GPUs."""
    if engine != "vllm":
        raise ConfigError(f"sampling.tensor_parallel_size={size} needs sampling.engine=vllm (the hf engine runs on "
                          "one device)")
    most = max((node.get("GPU", 0) for node in nodes), default=0)
    if size > most and not os.environ.get("RAYALIGN_NO_FIT_CHECK"):
        raise ConfigError(f"sampling.tensor_parallel_size={size} needs {size} GPUs on one node, and the largest node "
                          f"of the cluster has {most:g}; lower sampling.tensor_parallel_size or add larger nodes")


def _last_error_line(text: str) -> str:
    """The innermost 'SomeError: message' line of a remote traceback."""
    lines = [line.strip() for line in text.splitlines() if "Error" in line and ":" in line]
    return lines[-1] if lines else text.strip().splitlines()[0]


class _Run:
    """The state of one `generate` call: queue, in-flight tasks, probes, results."""

    def __init__(self, pool: SamplerPool, starts, prompts, prefixes, params: SamplingParams, on_chunk):
        self.pool, self.starts, self.params, self.on_chunk = pool, starts, params, on_chunk
        size = pool.chunk_size
        self.inputs = [(prompts[s:s + size], prefixes[s:s + size]) for s in starts]
        self.pending = deque(range(len(starts)))
        self.in_flight: dict = {}  # ref -> ("chunk" | "probe", actor, chunk, actor incarnation, submit time)
        self.load = [0] * len(pool.actors)
        self.reviving = [False] * len(pool.actors)
        self.attempts = Counter()
        self.results: dict[int, list[list[Completion]]] = {}
        self.stats = Counter(chunks=len(starts))

    def loop(self) -> None:
        while len(self.results) < len(self.starts):
            self._dispatch()
            if not self.in_flight:  # every unanswered chunk must be queued, running or behind a probe
                raise RuntimeError(f"sampler pool: {len(self.starts) - len(self.results)} chunks lost track of (a bug)")
            ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                kind, actor, chunk, incarnation, _ = self.in_flight.pop(ref)
                if kind == "chunk":
                    self._chunk_done(ref, actor, chunk, incarnation)
                else:
                    self._probe_done(ref, actor)
            self._check_probe_deadlines()

    def _dispatch(self) -> None:
        """Hand queued chunks to the least-loaded live actors, up to `max_in_flight` each."""
        while self.pending:
            live = [i for i in range(len(self.load)) if not self.reviving[i] and self.load[i] < self.pool.max_in_flight]
            if not live:
                return
            actor = min(live, key=lambda i: self.load[i])
            chunk = self.pending.popleft()
            prompts, prefixes = self.inputs[chunk]
            params = dataclasses.replace(self.params, seed=chunk_seed(self.params.seed, self.starts[chunk]))
            ref = self.pool.actors[actor].generate.remote(chunk, prompts, params, prefixes, self.pool.weights)
            self.in_flight[ref] = ("chunk", actor, chunk, self.pool.incarnation[actor], time.monotonic())
            self.load[actor] += 1

    def _chunk_done(self, ref, actor: int, chunk: int, incarnation: int) -> None:
        self.load[actor] -= 1
        try:
            index, completions = ray.get(ref)
        except RayActorError:
            self._actor_failed(actor, chunk, stale=incarnation != self.pool.incarnation[actor])
            return
        except ray.exceptions.RayTaskError as error:  # the sampler itself raised: a real error, not a crash
            if not isinstance(error.cause, StaleWeights):
                raise error.as_instanceof_cause() from None
            # restarted between calls: the current weights first (once), then the chunk again
            self.stats["actors_caught_up"] += self.pool.catch_up(actor)
            self.pending.appendleft(chunk)
            return
        if index in self.results:
            self.stats["duplicates_dropped"] += 1
            return
        self.results[index] = completions
        if self.on_chunk is not None:
            self.on_chunk(index, actor)

    def _actor_failed(self, actor: int, chunk: int, stale: bool) -> None:
        """Requeue the chunk; revive the actor unless already reviving or revived since (`stale`)."""
        self.stats["chunks_redispatched"] += 1
        self.attempts[chunk] += 1
        if self.attempts[chunk] >= self.pool.max_chunk_attempts:
            start = self.starts[chunk]
            raise RayAlignError(f"sampler pool: prompts {start}..{start + len(self.inputs[chunk][0]) - 1} killed "
                                f"their actor {self.attempts[chunk]} times (out of memory?); lower max_new_tokens "
                                "or the engine's batch size")
        self.pending.appendleft(chunk)
        if not self.reviving[actor] and not stale:
            self.stats["actor_failures"] += 1
            self.reviving[actor] = True
            self._probe(actor)

    def _probe(self, actor: int) -> None:
        ref = self.pool.actors[actor].sync.remote(self.pool.weights)
        self.in_flight[ref] = ("probe", actor, None, None, time.monotonic())

    def _probe_done(self, ref, actor: int) -> None:
        try:
            ray.get(ref)
        except RayActorError:  # restarts used up: a new actor in the same bundle
            self.stats["actors_recreated"] += 1
            self.pool.replace_actor(actor)
            self._probe(actor)
            return
        except ray.exceptions.RayTaskError as error:  # alive, but the weights would not load
            raise error.as_instanceof_cause() from None
        self.pool.catch_up(actor)
        self.reviving[actor] = False
        self.pool.incarnation[actor] += 1

    def _check_probe_deadlines(self) -> None:
        now = time.monotonic()
        for ref, (kind, actor, _, _, submitted) in list(self.in_flight.items()):
            if kind == "probe" and now - submitted > self.pool.restart_timeout_s:
                del self.in_flight[ref]
                self.stats["actors_recreated"] += 1
                self.pool.replace_actor(actor)
                self._probe(actor)


def engine_options(sampling) -> dict:
    """The engine's own keyword arguments from a `SamplingConfig`: hf's batch size, or `vllm_options` for vllm.LLM."""
    if sampling.engine == "hf":
        return {"batch_size": sampling.batch_size}
    return {**sampling.vllm_options, **({"enable_sleep_mode": True} if sampling.colocate else {})}


def pool_from_config(model: str, sampling, placement_groups: list | None = None,
                     options: LoadOptions = PLAIN) -> SamplerPool:
    """The pool a `SamplingConfig` describes, serving `model` (synthesis and evaluation both use it) loaded with
    `options` (`rayalign.models.LoadOptions`); in `placement_groups` when it shares them with a colocated trainer."""
    return SamplerPool(engine=sampling.engine, model=model, num_actors=sampling.num_actors,
                       num_cpus=sampling.cpus_per_actor, num_gpus=sampling.gpus_per_actor,
                       chunk_size=sampling.chunk_size, num_threads=sampling.threads,
                       tensor_parallel_size=sampling.tensor_parallel_size, placement_groups=placement_groups,
                       options=options, **engine_options(sampling))


_NOT_ARCHITECTURE = {"_name_or_path", "name_or_path", "transformers_version", "torch_dtype", "dtype"}


def interchangeable(a: str, b: str) -> bool:
    """Whether a sampler serving model `a` samples model `b` once given `b`'s weights: both full checkpoints (not
    adapters) with the same config apart from names and versions, and the same tokenizer."""
    from rayalign.models import resolve_model

    dirs = [Path(resolve_model(m)) for m in (a, b)]
    if not all((d / "config.json").is_file() and any(d.glob("*.safetensors")) and
               not (d / "adapter_config.json").exists() for d in dirs):
        return False
    configs = [{k: v for k, v in json.loads((d / "config.json").read_text()).items() if k not in _NOT_ARCHITECTURE}
               for d in dirs]
    tokenizers = [(d / "tokenizer.json").read_bytes() if (d / "tokenizer.json").is_file() else None for d in dirs]
    return configs[0] == configs[1] and tokenizers[0] == tokenizers[1]


class PhasePool:
    """One `SamplerPool` for all of a pipeline's phases (synthesis, online rounds, evaluation), not one per phase
    or model: started at first use, given the next model's weights when that model is interchangeable with the one
    it serves (a vLLM engine's start is 30-60 s, a weight load a few), and kept through training where the trainer
    fits beside it (`make_room`). `starts` counts the pools it started (a pipeline's summary reports it)."""

    def __init__(self, sampling, options: LoadOptions = PLAIN):
        self.sampling, self.options, self.pool, self.model, self.starts = sampling, options, None, None, 0
        self.placement_groups: list | None = None  # a colocated online run's, shared with its trainer

    def serving(self, model: str, weights: dict | None = None) -> SamplerPool:
        """The pool, serving `model` (its directory's weights, or `weights`, a state dict of it)."""
        if self.pool is not None and model != self.model and not interchangeable(self.model, model):
            self.close()
        if self.pool is None:
            self.pool = pool_from_config(model, self.sampling, self.placement_groups, self.options)
            self.starts += 1
        elif model != self.model or weights is not None:
            from rayalign.models import resolve_model

            self.pool.update_weights(weights if weights is not None else resolve_model(model))
        self.model = model
        return self.pool

    def receive(self, model: str, sender: Callable[[list, int], dict]) -> dict:
        """The running pool takes `model`'s weights from `sender`, a trainer's collective
        (`SamplerPool.receive_weights`), not from `model`'s directory; returns the sender's figures."""
        figures = self.pool.receive_weights(sender)
        self.model = model
        return figures

    def make_room(self, train) -> None:
        """Before training with `train` (a TrainConfig): stop the pool unless the trainer fits beside it."""
        if self.pool is not None and not trainer_fits_beside(train, self.sampling.gpus_per_engine):
            self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        self.pool = self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def given_or_own(pools: PhasePool | None, sampling, options: LoadOptions = PLAIN):
    """`pools` when a pipeline passes its own (left running for its next phase), else a `PhasePool` of this call's
    (loading models with `options`), closed when the call is done."""
    if pools is not None:
        yield pools
        return
    with PhasePool(sampling, options) as own:
        yield own
