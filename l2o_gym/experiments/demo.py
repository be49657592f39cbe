"""A minimal demo (``scripts/demo.py``): gradient descent as the agent of a registered vector env."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
from tqdm.auto import trange

import l2o_gym  # noqa: F401  (registers the environments)
from l2o_gym.plotting import plot_curves

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    """Mean objective per iteration (``[T+1]``) for each learning rate, and the written plot."""

    env_id: str
    curves: dict[str, list[float]]
    plot: Path


def gradient_descent_demo(
    env_id: str = "l2o/Quadratic-v0",
    num_envs: int = 128,
    horizon: int = 100,
    lrs: tuple[float, ...] = (0.003, 0.01, 0.03),
    seed: int = 0,
    out: str | Path = "runs/demo",
    device: str = "cpu",
    progress: bool = True,
) -> DemoResult:
    """Run gradient descent as an agent of ``gymnasium.make_vec(env_id)`` on ``test`` problems.

    The agent reads the newest gradient from the observation (its last ``d`` entries) and acts
    ``a = clip(−lr · ∇f / action_scale, −1, 1)``. Writes ``out/gd_<env>.png`` and returns the curves; ``progress``:
    a tqdm bar per step size.
    """
    curves: dict[str, list[float]] = {}
    for lr in lrs:
        venv = gym.make_vec(env_id, num_envs, split="test", horizon=horizon, device=device)
        base = venv.unwrapped
        d, scale = base.single_action_space.shape[0], base.driver.action_scale
        obs, info = venv.reset(seed=seed)
        means = [float(info["objective"].mean())]
        for _ in trange(horizon, desc=f"GD lr={lr:g}", leave=False, disable=not progress):
            grad = obs[:, -d:]
            action = (-lr * grad / scale).clamp(-1.0, 1.0)
            obs, _, term, trunc, info = venv.step(action)
            # After the last step the env has auto-reset; the step's objective is in info either way.
            means.append(float(info["objective"].mean()))
        curves[f"GD lr={lr:g}"] = means
        log.info("%s GD lr=%g: mean f %.4g -> %.4g", env_id, lr, means[0], means[-1])
    name = env_id.split("/")[-1]
    plot = plot_curves(curves, Path(out) / f"gd_{name}.png", f"{env_id}: gradient descent on {num_envs} test problems")
    return DemoResult(env_id, curves, plot)
