"""Graded controllers: an LQR expert on the environment's own linearisation, and worse policies made from it.

The expert is u = −K·[qpos; qvel] with K from the discrete algebraic Riccati equation of MuJoCo's
finite-difference linearisation of one simulation step about the upright rest state (``mujoco.mjd_transitionFD``;
RK4 models are linearised with the Euler integrator, which differs only in the integration scheme). It reads the
simulator's state, not the observation: it is privileged, as a data-generating expert may be. Quality is graded by
the gain: a level acts −g·K x + N(0, σ²) in normalised action units, clipped, with g = 1 for the expert and less
for the mediocre and bad policies (per environment: both far below the expert).
A weaker gain is a *biased* policy, not noise around the expert: mediocre preferred data pull behaviour cloning
away from the expert, while the contrast (mediocre ≻ bad) still points toward it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GAINS = {"InvertedPendulum-v5": {"expert": 1.0, "mediocre": 0.2, "bad": 0.0},
         "InvertedDoublePendulum-v5": {"expert": 1.0, "mediocre": 0.15, "bad": 0.0}}
"""Gain g of each quality level. With the action noise, on 4 seeded episodes: InvertedPendulum returns 1000 at
g = 1, 774 at 0.8, 522 at 0.6, 64 at 0.5, 22 at 0.2; InvertedDoublePendulum ~9350 at g ≥ 0.5, 1109 at 0.4, 136
at 0.3, ~90 at 0.1: the return falls steeply as the gain weakens, which is what mediocre cloned data do."""
ACTION_NOISE = 0.1
"""σ of the Gaussian action noise, in normalised action units ([-1, 1])."""


def make_env(name: str):
    try:
        import gymnasium
    except ImportError:
        from rayalign.errors import ConfigError

        raise ConfigError("the MuJoCo benchmark needs gymnasium[mujoco]: pip install -e '.[mujoco]'") from None
    return gymnasium.make(name)


def state(env) -> np.ndarray:
    data = env.unwrapped.data
    return np.concatenate([data.qpos, data.qvel])


def lqr_gain(env, control_cost: float = 10.0) -> np.ndarray:
    """K [nu, 2·nv] of the LQR controller u = −K x about the model's rest state (Q = I, R = control_cost·I)."""
    import mujoco
    from scipy.linalg import solve_discrete_are

    model, data = env.unwrapped.model, env.unwrapped.data
    mujoco.mj_resetData(model, data)
    mujoco.mj_forward(model, data)
    nx, nu = 2 * model.nv, model.nu
    a, b = np.zeros((nx, nx)), np.zeros((nx, nu))
    integrator = model.opt.integrator
    model.opt.integrator = mujoco.mjtIntegrator.mjINT_EULER  # mjd_transitionFD does not support RK4
    try:
        mujoco.mjd_transitionFD(model, data, 1e-6, True, a, b, None, None)
    finally:
        model.opt.integrator = integrator
    r = control_cost * np.eye(nu)
    p = solve_discrete_are(a, b, np.eye(nx), r)
    return np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)


def environments() -> str:
    return ", ".join(GAINS)


@dataclass
class Controllers:
    """The expert gain of one environment, in normalised action units, and its quality levels."""

    gain: np.ndarray           # [nu, nx]: expert action −gain·x
    levels: dict[str, float]   # quality level -> gain factor

    @classmethod
    def build(cls, env) -> Controllers:
        scale = env.action_space.high.astype(np.float64)
        return cls(lqr_gain(env) / scale[:, None], GAINS[env.spec.id])

    def mean_action(self, x: np.ndarray, level: str) -> np.ndarray:
        return -self.levels[level] * (self.gain @ x)

    def act(self, x: np.ndarray, level: str, rng: np.random.Generator) -> np.ndarray:
        """A normalised action of `level` at state x, with the action noise."""
        return noisy(self.mean_action(x, level), rng)


def noisy(mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`mean` + N(0, ACTION_NOISE²), clipped to [-1, 1]: how every policy here acts, in the data and when scored."""
    return np.clip(mean + ACTION_NOISE * rng.standard_normal(mean.shape), -1.0, 1.0)


def episode_returns(mean_action, env_name: str, episodes: int, seed: int) -> list[float]:
    """Undiscounted return of one seeded episode each (reset seed and noise seed `seed + k`), acting
    noisy(mean_action(obs, env)) in normalised units. The same episodes and noise for every policy scored."""
    env = make_env(env_name)
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        rng = np.random.default_rng(seed + k)
        total, done = 0.0, False
        while not done:
            action = noisy(mean_action(obs, env), rng) * env.action_space.high
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return returns
