"""gymnasium adapters over the functional core (installed as ``l2o_gym.envs``).

* :class:`L2OEnv` — one optimizee, numpy, ``gymnasium.make("l2o/Quadratic-v0")``;
* :class:`L2OVectorEnv` — ``N`` optimizees as torch tensors, ``gymnasium.make_vec("l2o/Quadratic-v0", N)``;
* :class:`SB3VecEnv` — the vector env as a stable-baselines3 ``VecEnv``.
"""

from l2o_gym.envs.env import L2OEnv
from l2o_gym.envs.registration import ENV_IDS, ENV_TABLE, VARIANTS, register_envs
from l2o_gym.envs.sb3 import SB3VecEnv
from l2o_gym.envs.vector import L2OVectorEnv

__all__ = ["ENV_IDS", "ENV_TABLE", "VARIANTS", "L2OEnv", "L2OVectorEnv", "SB3VecEnv", "register_envs"]
