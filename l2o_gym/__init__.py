"""l2o-gym: learning to optimize as batched, differentiable torch MDPs and gymnasium environments.

``import l2o_gym`` registers the environments (``l2o/Quadratic-v0``, …) with gymnasium by string entry
points: no env module, and no stable-baselines3, is imported until ``gymnasium.make``.

Layers (imports only go downward; ``tests/test_layers.py`` enforces it): the foundation (this package minus
:mod:`l2o_gym.experiments`) → :mod:`l2o_gym.envs` → :mod:`l2o_gym.agents` → :mod:`l2o_gym.experiments` and
``scripts/``.
"""

from l2o_gym import core
from l2o_gym.core import CoreConfig, State
from l2o_gym.policy import Policy, Trajectory, rollout, run_policy
from l2o_gym.problems import FAMILIES, ProblemBatch, ProblemFamily, make_family

from l2o_gym.registry import ENV_IDS, register_envs

__version__ = "0.1.0"

register_envs()

__all__ = [
    "ENV_IDS",
    "FAMILIES",
    "CoreConfig",
    "Policy",
    "ProblemBatch",
    "ProblemFamily",
    "State",
    "Trajectory",
    "core",
    "make_family",
    "register_envs",
    "rollout",
    "run_policy",
]
