"""The MuJoCo preference benchmark as a pipeline: one loss on one setting, a Ray task per seed.

Each seed's task builds (or reads from the cache) its dataset, clones the reference from the chosen segments,
optimises the policy with ``loss.*`` from there, and returns both policies' returns on the same seeded episodes.
The run directory gets config.yaml, metrics.jsonl (the training metrics of every seed per logged step),
checkpoints/seed_<k>.pt (the trained policy) and summary.json: per seed and over seeds, the policy's, the
reference's and the expert's return, with t intervals over seeds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayalign import config as config_lib

if TYPE_CHECKING:
    from rayalign.pipelines.run import Run

EVAL_SEED = 10_000
"""Evaluation episodes use reset seeds 10000, 10001, ...: the same start states for every run and seed."""


def run_seed(cfg: config_lib.Config, seed: int) -> dict:
    """One seed's dataset, reference, trained policy and returns (a Ray task of `run_mujoco`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a small MLP: more threads only add overhead, and seeds run side by side
    try:
        return _train_and_score(cfg, seed)
    finally:
        torch.set_num_threads(before)  # a caller in this process (a test, local use) keeps its own


def _train_and_score(cfg: config_lib.Config, seed: int) -> dict:
    import copy

    from rayalign.mujoco_po.data import PairSettings, load_pairs
    from rayalign.mujoco_po.policy import behaviour_clone, new_policy, policy_returns, preference_optimise, tensors

    m = cfg.mujoco
    data = load_pairs(PairSettings(m.env, m.pairs, m.segment, m.noise, m.mixed, seed))
    batch = tensors(data)
    reference = new_policy(data, m, seed)
    bc_losses = behaviour_clone(reference, batch, m, seed)
    reference.requires_grad_(False)
    policy = copy.deepcopy(reference).requires_grad_(True)
    rows: list[dict] = []
    final = preference_optimise(policy, reference, batch, cfg.loss, m, seed,
                                log=lambda metrics, step: rows.append({"step": step, **metrics}))
    returns = policy_returns(policy, m.env, m.eval_episodes, EVAL_SEED)
    reference_returns = policy_returns(reference, m.env, m.eval_episodes, EVAL_SEED)
    return {"seed": seed, "return": _mean(returns), "reference_return": _mean(reference_returns),
            "returns": returns, "reference_returns": reference_returns, "bc_final_loss": bc_losses[-1],
            "final_metrics": final, "rows": rows, "flipped": float(data["flipped"].mean()),
            "mixed": float(data["mixed"].mean()), "state_dict": policy.state_dict()}


def expert_returns(env_name: str, episodes: int) -> list[float]:
    """The expert controller's return on the evaluation episodes: the scale a policy's return is read on."""
    from rayalign.mujoco_po.experts import Controllers, episode_returns, make_env, state

    controllers = Controllers.build(make_env(env_name))
    return episode_returns(lambda obs, env: controllers.mean_action(state(env), "expert"), env_name, episodes,
                           EVAL_SEED)


def _mean(values) -> float:
    return sum(values) / len(values)


def t_interval(values: list[float], level: float = 0.95) -> list[float] | None:
    """Student-t interval of the mean over seeds; None for fewer than 2."""
    from scipy import stats

    from rayalign.stats import mean_stderr

    n = len(values)
    if n < 2:
        return None
    mean, stderr = mean_stderr(values)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * stderr
    return [mean - half, mean + half]


def _gather(refs: list, what: str) -> list:
    """ray.get of `refs` with a progress bar as each finishes."""
    import ray
    from tqdm import tqdm

    pending, done = list(refs), {}
    with tqdm(total=len(refs), desc=what, unit="task") as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done[ready[0]] = ray.get(ready[0])
            bar.update(1)
    return [done[ref] for ref in refs]


def summarise(cfg: config_lib.Config, results: list[dict], expert: list[float]) -> dict:
    returns = [r["return"] for r in results]
    gains = [r["return"] - r["reference_return"] for r in results]
    return {
        "pipeline": "mujoco", "status": "ok", "env": cfg.mujoco.env, "loss": cfg.loss.name,
        "setting": {"noise": cfg.mujoco.noise, "mixed": cfg.mujoco.mixed},
        "mean_return": _mean(returns), "return_interval": t_interval(returns),
        "reference_return": _mean([r["reference_return"] for r in results]),
        "gain_over_reference": _mean(gains), "gain_interval": t_interval(gains),
        "expert_return": _mean(expert),
        "seeds": [{key: r[key] for key in ("seed", "return", "reference_return", "returns", "bc_final_loss",
                                           "final_metrics", "flipped", "mixed")} for r in results],
    }


def _interval(bounds: list[float] | None) -> str:
    return f"[{bounds[0]:.1f}, {bounds[1]:.1f}]" if bounds else "(one seed: no interval)"


def run_mujoco(run: Run) -> dict:
    import ray
    import torch
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from rayalign.files import atomic_write
    from rayalign.losses import get_loss
    from rayalign.ray_setup import init_ray
    from rayalign.tracking import Tracker

    cfg, run_dir = run.cfg, run.dir
    if get_loss(cfg.loss.name).needs_token_logps:
        from rayalign.errors import ConfigError

        raise ConfigError(f"loss.name={cfg.loss.name} weighs tokens; the MuJoCo benchmark has segments of "
                          f"actions: choose a sequence-level loss (dpo, ipo, hinge, simpo, orpo, dpop, mpo)")
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # an unfinished run starts over: its rows would repeat
    init_ray()
    m = cfg.mujoco
    # Outside any placement group: a sweep's trial holds a sliver of a CPU, its seeds reserve their own.
    options = {"num_cpus": m.cpus_per_task, "scheduling_strategy": PlacementGroupSchedulingStrategy(None)}
    task = ray.remote(run_seed).options(**options)
    expert_ref = ray.remote(expert_returns).options(**options).remote(m.env, m.eval_episodes)
    results = _gather([task.remote(cfg, seed) for seed in m.seeds], f"{m.env} {cfg.loss.name} seeds")
    expert = ray.get(expert_ref)
    for result in results:
        path = run_dir / "checkpoints" / f"seed_{result['seed']}.pt"
        atomic_write(path, lambda tmp, state=result["state_dict"]: torch.save(state, tmp))
    tracker = Tracker(run_dir, cfg.tracking, cfg.name, config_lib.flatten(config_lib.to_dict(cfg)), "mujoco")
    for i, row in enumerate(results[0]["rows"]):  # one row per logged step, every seed's metrics in it
        tracker.log({f"seed{r['seed']}/{k}": v for r in results for k, v in r["rows"][i].items() if k != "step"},
                    step=row["step"])
    summary = summarise(cfg, results, expert)
    tracker.finish({"mean_return": summary["mean_return"], "reference_return": summary["reference_return"]})
    _print(cfg, summary)
    return summary


def _print(cfg: config_lib.Config, summary: dict) -> None:
    m = cfg.mujoco
    print(f"{cfg.loss.name} on {m.env} (noise {m.noise}, mixed {m.mixed}), {len(summary['seeds'])} seeds: return "
          f"{summary['mean_return']:.1f} {_interval(summary['return_interval'])}; reference (behaviour cloning) "
          f"{summary['reference_return']:.1f}; gain {summary['gain_over_reference']:+.1f} "
          f"{_interval(summary['gain_interval'])}; expert {summary['expert_return']:.1f}")
