"""l2o-gym: learning to optimize as batched, differentiable torch MDPs and gymnasium environments.

``import l2o_gym`` registers the environments (``l2o/Quadratic-v0``, …) with gymnasium.
"""

from l2o_gym import core
from l2o_gym.core import CoreConfig, State
from l2o_gym.policy import Policy, Trajectory, rollout, run_policy
from l2o_gym.problems import FAMILIES, ProblemBatch, ProblemFamily, make_family

__version__ = "0.1.0"

from l2o_gym.envs.registration import ENV_IDS, register_envs  # noqa: E402

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
