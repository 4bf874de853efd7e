"""Preference pairs of trajectory segments, branched from the same state (the benchmark's "prompt").

Start states come from behaviour episodes of the expert and the mediocre policy (alternating), one every
``segment`` steps. From each, two policies of different quality levels act for ``segment`` steps (fewer when the
episode terminates; a mask marks the real steps), and the better level's segment is preferred, as a stronger
model's response is in an LLM preference set. The paper's two problem settings are the knobs:

- ``mixed``: the fraction of pairs that are (mediocre ≻ bad) instead of (expert ≻ mediocre or bad), so part of
  the preferred data comes from a mediocre policy (labels still right);
- ``noise``: the fraction of pairs whose label is flipped (after ``mixed`` is applied).

A dataset is a dict of numpy arrays, cached on disk under its settings (``files.cache_key``).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np

from rayalign.mujoco_po.experts import Controllers, make_env, state

FORMAT = 1
"""Bump when the generated data change for the same settings (the cache key holds it)."""


@dataclass(frozen=True)
class PairSettings:
    env: str
    pairs: int
    segment: int
    noise: float
    mixed: float
    seed: int


def start_states(env, controllers: Controllers, count: int, segment: int, rng) -> list[np.ndarray]:
    """`count` simulator states [qpos; qvel], one every `segment` steps of expert and mediocre episodes."""
    starts, episode = [], 0
    while len(starts) < count:
        env.reset(seed=int(rng.integers(2**31)))
        level = "expert" if episode % 2 == 0 else "mediocre"
        for t in range(env.spec.max_episode_steps or 1000):
            x = state(env)
            if t % segment == 0:
                starts.append(x)
                if len(starts) == count:
                    break
            _, _, terminated, truncated, _ = env.step(controllers.act(x, level, rng) * env.action_space.high)
            if terminated or truncated:
                break
        episode += 1
    return starts


def branch(env, controllers: Controllers, start: np.ndarray, level: str, segment: int, rng):
    """(observations [L, O], actions [L, A], mask [L]) of `level` acting from `start` for `segment` steps.

    Runs on the unwrapped environment: a branch is not an episode, so the time limit does not count it.
    """
    raw = env.unwrapped
    nq = raw.model.nq
    raw.set_state(start[:nq], start[nq:])
    obs = raw._get_obs()  # gymnasium's MuJoCo environments expose no public observation getter
    observations = np.zeros((segment, obs.shape[0]), np.float32)
    actions = np.zeros((segment, env.action_space.shape[0]), np.float32)
    mask = np.zeros(segment, bool)
    for t in range(segment):
        action = controllers.act(state(env), level, rng)
        observations[t], actions[t], mask[t] = obs, action, True
        obs, _, terminated, _, _ = raw.step(action * env.action_space.high)
        if terminated:
            break
    return observations, actions, mask


def generate(settings: PairSettings) -> dict[str, np.ndarray]:
    env = make_env(settings.env)
    controllers = Controllers.build(env)
    rng = np.random.default_rng(settings.seed)
    starts = start_states(env, controllers, settings.pairs, settings.segment, rng)
    columns: dict[str, list] = {key: [] for key in (
        "chosen_obs", "chosen_act", "chosen_mask", "rejected_obs", "rejected_act", "rejected_mask",
        "mixed", "flipped")}
    for start in starts:
        mixed = rng.random() < settings.mixed
        better, worse = ("mediocre", "bad") if mixed else ("expert", ("mediocre", "bad")[rng.integers(2)])
        good = branch(env, controllers, start, better, settings.segment, rng)
        poor = branch(env, controllers, start, worse, settings.segment, rng)
        flipped = rng.random() < settings.noise
        chosen, rejected = (poor, good) if flipped else (good, poor)
        for side, (obs, act, mask) in (("chosen", chosen), ("rejected", rejected)):
            columns[f"{side}_obs"].append(obs)
            columns[f"{side}_act"].append(act)
            columns[f"{side}_mask"].append(mask)
        columns["mixed"].append(mixed)
        columns["flipped"].append(flipped)
    env.close()
    return {key: np.stack(values) for key, values in columns.items()}


def load_pairs(settings: PairSettings) -> dict[str, np.ndarray]:
    """The dataset of `settings`, from the cache when it was made before."""
    from rayalign.files import atomic_write, cache_key, cache_root

    path = cache_root() / "mujoco_pairs" / f"{cache_key({'format': FORMAT, **asdict(settings)})}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return dict(stored)
    arrays = generate(settings)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return arrays
