"""A stable-baselines3 ``VecEnv`` over the native torch vector env (SB3 does not take gymnasium VectorEnvs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from l2o_gym.envs.vector import L2OVectorEnv


class SB3VecEnv(VecEnv):
    """Adapts :class:`~l2o_gym.envs.vector.L2OVectorEnv` to SB3's ``VecEnv`` API.

    Observations, rewards and dones come out as numpy arrays (float32 observations, float32 rewards,
    bool dones; values of a float64 env beyond the float32 range saturate at ±3.4e38); for every finished sub-environment ``infos[i]`` holds ``"terminal_observation"`` (numpy
    ``[F]``) and ``"TimeLimit.truncated"`` (ended by the horizon, not by divergence), which SB3 uses to
    bootstrap values correctly. ``infos[i]["objective"]`` is the optimizee's current objective.

    Args:
        venv: the native vector env (bare: a gymnasium wrapper around it is refused, as the adapter would bypass
            it), or an env id / kwargs to build one with ``gymnasium.make_vec``. ``set_options(dict)`` before
            ``reset()`` passes the options to the batched reset (e.g. ``{"problems": batch}``).

    Example:
        >>> venv = SB3VecEnv(gymnasium.make_vec("l2o/LogisticRegression-v0", num_envs=8))
        >>> model = stable_baselines3.PPO("MlpPolicy", venv)
    """

    def __init__(self, venv: L2OVectorEnv | str, **make_kwargs: Any) -> None:
        if isinstance(venv, str):
            venv = gym.make_vec(venv, **make_kwargs)
        base = venv.unwrapped if hasattr(venv, "unwrapped") else venv
        if not isinstance(base, L2OVectorEnv):
            raise TypeError(f"SB3VecEnv wraps an L2OVectorEnv, got {type(base).__name__}")
        if base is not venv:
            # The adapter steps the native env itself: a gymnasium wrapper around it would be silently bypassed.
            raise TypeError(f"SB3VecEnv needs the bare L2OVectorEnv, got it inside {type(venv).__name__}, which "
                            "SB3VecEnv would bypass; pass the unwrapped env and wrap the SB3 side instead "
                            "(stable_baselines3.common.vec_env.VecEnvWrapper, e.g. VecNormalize)")
        if base.autoreset_mode != AutoresetMode.SAME_STEP:
            # SB3's VecEnv contract: a finished sub-env restarts in the same step, its last observation in
            # ``terminal_observation`` (built from ``info["final_obs"]``, which only SAME_STEP provides).
            raise ValueError(f"SB3VecEnv needs a vector env with autoreset_mode=SAME_STEP (SB3's convention), "
                             f"got autoreset_mode={base.autoreset_mode.name}")
        self.venv = base
        obs_space = gym.spaces.Box(-np.inf, np.inf, shape=base.single_observation_space.shape, dtype=np.float32)
        super().__init__(base.num_envs, obs_space, base.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> VecEnvObs:
        """Restart every instance: with the seed of :meth:`seed` (``seed[0]`` seeds the whole batch's stream) and
        the options of :meth:`set_options` (one dict for the batch: e.g. ``{"problems": batch}``), if set."""
        seed = self._seeds[0]
        obs, _ = self.venv.reset(seed=seed, options=self._batch_options())
        self._reset_seeds()
        self._reset_options()
        return self._np(obs)

    def _batch_options(self) -> dict[str, Any] | None:
        """The one options dict of the batched reset (``set_options`` stores one per sub-env)."""
        first = self._options[0]
        for i, other in enumerate(self._options[1:], 1):
            if other is first:
                continue
            try:
                same = other.keys() == first.keys() and all(
                    other[k] is first[k] or bool(other[k] == first[k]) for k in first)
            except (TypeError, ValueError, RuntimeError):  # e.g. tensors inside the options
                same = False
            if not same:
                raise ValueError(f"SB3VecEnv resets its {self.num_envs} instances in one batch and needs one options "
                                 f"dict for all of them (set_options(dict)); sub-env 0 has options {sorted(first)}, "
                                 f"sub-env {i} has other ones ({sorted(other)})")
        return dict(first) if first else None

    @staticmethod
    def _np(x: Any) -> np.ndarray:
        x = x.detach().to("cpu")
        if x.dtype == torch.float64:  # a float64 env's finite values saturate instead of becoming inf
            big = float(np.finfo(np.float32).max)
            x = x.clamp(-big, big)
        return x.numpy().astype(np.float32, copy=False)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        dones = (terminated | truncated).cpu().numpy()
        term_np = terminated.cpu().numpy()
        objective = info["objective"].detach().cpu().numpy()
        diverged = info["diverged"].detach().cpu().numpy()
        infos: list[dict[str, Any]] = [{"objective": float(objective[i]), "diverged": bool(diverged[i])}
                                       for i in range(self.num_envs)]
        if dones.any():
            final = self._np(info["final_obs"])
            for i in np.flatnonzero(dones):
                infos[i]["terminal_observation"] = final[i]
                infos[i]["TimeLimit.truncated"] = bool(not term_np[i])
        return self._np(obs), self._np(reward), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.venv.render() if self.venv.render_mode == "rgb_array" else None
        return [frames[0] if frames else None] + [None] * (self.num_envs - 1)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.venv, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
