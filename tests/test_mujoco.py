"""The MuJoCo preference benchmark: the expert, the data knobs, behaviour cloning, preference optimisation and the
pipeline on a real local Ray cluster (CMA-ES through Ray Tune: tests/test_sweep.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from rayalign import config as config_lib
from rayalign.errors import ConfigError

from rayalign.mujoco_po.data import PairSettings, branch, generate, load_pairs
from rayalign.mujoco_po.experts import ACTION_NOISE, Controllers, make_env, state
from rayalign.mujoco_po.policy import (
    GaussianPolicy,
    behaviour_clone,
    new_policy,
    policy_returns,
    preference_optimise,
    segment_logps,
    tensors,
)
from rayalign.pipelines.mujoco import EVAL_SEED, expert_returns, run_seed

ENV = "InvertedPendulum-v5"
SMALL = [f"mujoco.env={ENV}", "mujoco.pairs=200", "mujoco.segment=20", "mujoco.bc_steps=300", "mujoco.po_steps=300",
         "mujoco.eval_episodes=3", "loss.name=dpo", "loss.beta=0.1", "tracking.wandb=disabled"]


def small(*overrides: str) -> config_lib.Config:
    return config_lib.load(None, [*SMALL, *overrides])


def random_policy_return(episodes: int = 3) -> float:
    env = make_env(ENV)
    env.action_space.seed(0)
    total = 0.0
    for k in range(episodes):
        env.reset(seed=EVAL_SEED + k)
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + reward, terminated or truncated
    return total / episodes


def test_the_lqr_expert_balances_for_the_whole_episode_and_the_bad_policy_falls():
    # InvertedPendulum pays 1 per step upright and ends at 1000 steps: the expert must reach exactly 1000.
    assert expert_returns(ENV, 2) == [1000.0, 1000.0]
    env = make_env(ENV)
    controllers, rng = Controllers.build(env), np.random.default_rng(0)
    env.reset(seed=EVAL_SEED)
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(controllers.act(state(env), "bad", rng) * env.action_space.high)
        steps, done = steps + 1, terminated or truncated
    assert steps < 100


def test_the_double_pendulum_expert_stays_up_for_the_whole_episode():
    # InvertedDoublePendulum pays at most 10 per step (alive bonus, less distance and velocity penalties) for 1000
    # steps; falling ends the episode, so over 9000 means upright to the end and close to the top.
    assert expert_returns("InvertedDoublePendulum-v5", 1)[0] > 9000


def test_a_branch_starts_at_its_state_and_is_reproducible():
    env = make_env(ENV)
    controllers = Controllers.build(env)
    env.reset(seed=3)
    for _ in range(5):
        env.step(np.array([0.3]))
    start = state(env)
    expected_obs = env.unwrapped._get_obs()
    first = branch(env, controllers, start, "expert", 10, np.random.default_rng(1))
    env.reset(seed=99)  # elsewhere: the branch must restore the start state itself
    second = branch(env, controllers, start, "expert", 10, np.random.default_rng(1))
    np.testing.assert_allclose(first[0][0], expected_obs, rtol=0, atol=1e-6)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert first[2].all(), "the expert does not fall within 10 steps"


def test_the_knobs_set_the_fractions_and_a_flip_swaps_the_sides():
    clean = generate(PairSettings(ENV, 300, 10, noise=0.0, mixed=0.0, seed=4))
    noisy = generate(PairSettings(ENV, 300, 10, noise=0.3, mixed=0.0, seed=4))
    mixed = generate(PairSettings(ENV, 300, 10, noise=0.0, mixed=0.6, seed=4))
    assert not clean["flipped"].any() and not clean["mixed"].any()
    assert abs(noisy["flipped"].mean() - 0.3) < 0.08 and abs(mixed["mixed"].mean() - 0.6) < 0.08
    # Expert segments never fall within 10 steps; the worse policies' segments often do. Flipped pairs move the
    # short segments to the chosen side.
    assert clean["chosen_mask"].all() and not clean["rejected_mask"].all()
    flipped = noisy["flipped"]
    assert noisy["rejected_mask"][flipped].all()
    assert noisy["chosen_mask"][flipped].mean() < noisy["rejected_mask"][flipped].mean()


def test_the_cached_dataset_equals_a_fresh_one(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path))
    settings = PairSettings(ENV, 50, 10, noise=0.2, mixed=0.2, seed=7)
    made, cached, fresh = load_pairs(settings), load_pairs(settings), generate(settings)
    assert len(list(tmp_path.rglob("*.npz"))) == 1
    for key in fresh:
        np.testing.assert_array_equal(made[key], fresh[key])
        np.testing.assert_array_equal(cached[key], fresh[key])


def test_segment_logps_by_hand():
    policy = GaussianPolicy(np.zeros(2), np.ones(2), act_dim=1, hidden=4, std=0.5)
    for layer in policy.net:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    policy.net[-1].bias.data.fill_(0.2)  # μ(s) = 0.2 everywhere
    obs = torch.zeros(1, 3, 2)
    act = torch.tensor([[[0.2], [1.2], [-0.8]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # steps: 0, −1²/(2·0.25) = −2, and a masked step
    assert segment_logps(policy, obs, act, mask).item() == pytest.approx(-2.0)


def test_behaviour_cloning_on_expert_data_far_outscores_a_random_policy():
    cfg = small()
    data = load_pairs(PairSettings(ENV, 200, 20, noise=0.0, mixed=0.0, seed=0))
    policy = new_policy(data, cfg.mujoco, seed=0)
    losses = behaviour_clone(policy, tensors(data), cfg.mujoco, seed=0)
    # The expert's actions carry N(0, 0.1²) noise: a perfect clone's per-step loss is 0.1² / (2·0.3²) = 0.0556.
    floor = ACTION_NOISE ** 2 / (2 * cfg.mujoco.policy_std ** 2)
    assert floor == pytest.approx(0.0556, abs=1e-4)
    assert abs(sum(losses[-50:]) / 50 - floor) < 0.01 < losses[0] - floor
    cloned = np.mean(policy_returns(policy, ENV, 3, EVAL_SEED))
    assert cloned > 10 * random_policy_return(), (cloned, random_policy_return())


def test_flipping_every_label_makes_preference_optimisation_worse():
    threads = torch.get_num_threads()
    clean = run_seed(small("mujoco.mixed=0.75"), seed=0)
    assert torch.get_num_threads() == threads, "run_seed's one thread must not leak into its caller"
    flipped = run_seed(small("mujoco.mixed=0.75", "mujoco.noise=1.0"), seed=0)
    assert flipped["flipped"] == 1.0 and clean["flipped"] == 0.0
    assert flipped["return"] < clean["return"] / 2, (flipped["return"], clean["return"])


def test_ta_mpo_preference_optimisation_logs_its_schedule():
    cfg = small("loss.name=mpo", "loss.mpo_alpha=1.0", "loss.mpo_alpha_end=0.0", "mujoco.po_steps=4",
                "mujoco.log_every=1")
    arrays = load_pairs(PairSettings(ENV, 64, 10, noise=0.0, mixed=0.0, seed=0))
    policy = new_policy(arrays, cfg.mujoco, seed=0)
    reference = new_policy(arrays, cfg.mujoco, seed=0).requires_grad_(False)
    rows = []
    preference_optimise(policy, reference, tensors(arrays), cfg.loss, cfg.mujoco, seed=0, log=lambda m, s: rows.append((s, m)))
    # progress = step / po_steps at steps 0..3: α = 1, 0.75, 0.5, 0.25
    assert [s for s, _ in rows] == [1, 2, 3, 4]
    assert [m["alpha"] for _, m in rows] == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_bad_benchmark_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="mujoco.env"):
        config_lib.load(None, ["pipeline=mujoco", "mujoco.env=Hopper-v5"])
    with pytest.raises(ConfigError, match="mujoco.noise"):
        config_lib.load(None, ["pipeline=mujoco", "mujoco.noise=1.5"])
    from rayalign.pipelines import run_pipeline

    with pytest.raises(ConfigError, match="loss.name=bmc weighs tokens"):
        run_pipeline(small("pipeline=mujoco", "loss.name=bmc"))


def test_the_pipeline_runs_a_ray_task_per_seed_and_writes_its_run(tmp_path, ray_local):
    from rayalign.pipelines import run_pipeline

    cfg = small("pipeline=mujoco", "name=po", f"output_dir={tmp_path}", "mujoco.seeds=[0, 1]",
                "mujoco.bc_steps=100", "mujoco.po_steps=40", "mujoco.log_every=20", "mujoco.eval_episodes=1",
                "tracking.wandb=offline")
    summary = run_pipeline(cfg)
    run = tmp_path / "po"
    assert json.loads((run / "summary.json").read_text()) == summary
    assert [s["seed"] for s in summary["seeds"]] == [0, 1]
    returns = [s["return"] for s in summary["seeds"]]
    assert summary["mean_return"] == pytest.approx(sum(returns) / 2)
    # t interval over two seeds: mean ± t(0.975, 1)·sd/√2, t = 12.706
    sd = abs(returns[0] - returns[1]) / math.sqrt(2)
    low, high = summary["return_interval"]
    assert (high - low) / 2 == pytest.approx(12.7062 * sd / math.sqrt(2), rel=1e-4)
    assert summary["expert_return"] == 1000.0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["seed_0.pt", "seed_1.pt"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40] and {"seed0/loss", "seed1/rewards/accuracies"} <= set(rows[0])
    assert yaml.safe_load((run / "config.yaml").read_text())["pipeline"] == "mujoco"
    assert list((run / "wandb").glob("offline-run-*"))
    # The checkpoint is the trained policy: it scores what the summary says on the same episode.
    policy = new_policy(load_pairs(PairSettings(ENV, 200, 20, 0.0, 0.0, 0)), cfg.mujoco, seed=0)
    policy.load_state_dict(torch.load(run / "checkpoints" / "seed_0.pt"))
    assert policy_returns(policy, ENV, 1, EVAL_SEED) == summary["seeds"][0]["returns"]
    # A rerun of the finished run with the same config reuses it: nothing is rewritten.
    written = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert run_pipeline(cfg) == summary
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == written
