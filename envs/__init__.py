"""gymnasium adapters over the functional core (installed as ``l2o_gym.envs``).

* :class:`L2OEnv` — one optimizee, numpy, ``gymnasium.make("l2o/Quadratic-v0")``;
* :class:`L2OVectorEnv` — ``N`` optimizees as torch tensors, ``gymnasium.make_vec("l2o/Quadratic-v0", N)``;
* :class:`TorchToNumpy` — numpy out of the vector env, for gymnasium's numpy-based vector wrappers;
* :class:`SB3VecEnv` — the vector env as a stable-baselines3 ``VecEnv`` (stable-baselines3 is imported only
  when this name is first used).
"""

from typing import Any

from l2o_gym.envs.env import L2OEnv
from l2o_gym.envs.vector import L2OVectorEnv, TorchToNumpy
from l2o_gym.registry import ENV_IDS, ENV_TABLE, VARIANTS, register_envs

__all__ = ["ENV_IDS", "ENV_TABLE", "VARIANTS", "L2OEnv", "L2OVectorEnv", "SB3VecEnv", "TorchToNumpy", "register_envs"]


def __getattr__(name: str) -> Any:
    if name == "SB3VecEnv":
        from l2o_gym.envs.sb3 import SB3VecEnv

        return SB3VecEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
