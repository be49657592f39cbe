"""Baseline tuning on a batch of training problems, for the agents' own use (the initial GPS controller, the
sample-efficiency reference of every training run).

Runs through :func:`l2o_gym.policy.run_policy` (the one rollout loop) on a :class:`ProblemBatch` the agent
already holds; the report's tuned file is produced by :mod:`l2o_gym.experiments.tuning`.
"""

from __future__ import annotations

import math

from l2o_gym.agents.baselines import make_baseline
from l2o_gym.core import CoreConfig
from l2o_gym.policy import Policy, run_policy
from l2o_gym.problems import ProblemBatch

#: learning rates tried for the initial gradient-step controller and the first-order baselines.
LR_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def final_objective(policy: Policy, problems: ProblemBatch, horizon: int, config: CoreConfig | None = None) -> float:
    """Mean objective after ``horizon`` steps of ``policy`` (a diverged instance counts its last finite objective)."""
    traj = run_policy(policy, problems, horizon, config)
    return float(traj.objectives[-1].mean())


def tune_baselines(names: tuple[str, ...], problems: ProblemBatch, horizon: int) -> dict[str, tuple[dict[str, float], float]]:
    """Each baseline tuned on ``problems``: ``{name: (hparams, mean objective at horizon)}``.

    First-order methods are tuned over :data:`LR_GRID` (momentum 0.9); CG and L-BFGS have no step size.
    A baseline that diverges for every setting gets ``({}, inf)``.
    """
    out: dict[str, tuple[dict[str, float], float]] = {}
    for name in names:
        best: tuple[dict[str, float], float] = ({}, math.inf)
        grid: list[dict[str, float]] = [{}] if name in ("cg", "lbfgs") else [{"lr": lr} for lr in LR_GRID]
        for hp in grid:
            value = final_objective(make_baseline(name, **hp), problems, horizon)
            if math.isfinite(value) and value < best[1]:
                best = (hp, value)
        out[name] = best
    return out


def tuned_gd_step(problems: ProblemBatch, horizon: int) -> tuple[float, float]:
    """Gradient descent tuned on ``problems`` (:func:`tune_baselines`): ``(lr, mean objective at horizon)``;
    ``lr`` is the smallest of :data:`LR_GRID` (objective ``inf``) if every step size diverges."""
    hp, value = tune_baselines(("sgd",), problems, horizon)["sgd"]
    return float(hp.get("lr", LR_GRID[0])), value


def _best_of(tuned: dict[str, tuple[dict[str, float], float]], names: tuple[str, ...]) -> tuple[str, dict[str, float], float]:
    best: tuple[str, dict[str, float], float] = ("", {}, math.inf)
    for name in names:
        hp, value = tuned[name]
        if value < best[2]:
            best = (name, hp, value)
    return best


def best_baseline(names: tuple[str, ...], problems: ProblemBatch, horizon: int) -> tuple[str, dict[str, float], float]:
    """Best tuned baseline on ``problems``: ``(name, hparams, mean objective at horizon)`` (:func:`tune_baselines`)."""
    return _best_of(tune_baselines(names, problems, horizon), names)


#: the first-order baselines of the ``first_order_baseline`` sample-efficiency figure.
FIRST_ORDER: tuple[str, ...] = ("sgd", "momentum")
