"""The table of registered environment ids and their default keyword arguments."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

#: id -> default kwargs of :class:`l2o_gym.envs.L2OEnv` / :class:`l2o_gym.envs.L2OVectorEnv`.
#: ``action_scale`` maps the policy's action in [-1, 1]^d to the raw step Δθ; chosen per family so that a
#: saturated action is a large but not absurd step at the scale of the family's typical iterates.
ENV_TABLE: dict[str, dict[str, Any]] = {
    "l2o/Quadratic-v0": {"family": "quadratic", "action_scale": 0.5},
    "l2o/LogisticRegression-v0": {"family": "logistic_regression", "action_scale": 1.0},
    "l2o/RobustLinearRegression-v0": {"family": "robust_linear_regression", "action_scale": 1.0},
    "l2o/NeuralNet-v0": {"family": "neural_net", "action_scale": 1.0},
    "l2o/MLP-v0": {"family": "mlp", "action_scale": 0.1},
    "l2o/Rosenbrock-v0": {"family": "rosenbrock", "action_scale": 0.1},
    "l2o/Rastrigin-v0": {"family": "rastrigin", "action_scale": 0.5},
}

ENV_IDS: tuple[str, ...] = tuple(ENV_TABLE)

#: Named problem variants of an env (family keyword overrides), for transfer studies: the MLP runs of
#: Andrychowicz et al. §3.2 (a network trained on the 20-unit sigmoid MLP applied to wider, deeper and ReLU
#: nets). ``gymnasium.make("l2o/MLP-v0", **VARIANTS["l2o/MLP-v0"]["relu"])`` builds one as an env.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "l2o/MLP-v0": {
        "hidden40": {"hidden": (40,)},
        "2layers": {"hidden": (20, 20)},
        "relu": {"activation": "relu"},
    },
}


def register_envs() -> None:
    """Register every id of :data:`ENV_TABLE` with gymnasium (idempotent)."""
    for env_id, kwargs in ENV_TABLE.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="l2o_gym.envs.env:L2OEnv",
            vector_entry_point="l2o_gym.envs.vector:L2OVectorEnv",
            kwargs=dict(kwargs),
        )
