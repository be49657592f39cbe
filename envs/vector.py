"""``N`` optimizees as a native torch gymnasium ``VectorEnv`` (tensors stay on ``device``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from l2o_gym.envs.common import BatchedOptimizee
from l2o_gym.envs.rendering import render_ansi, render_rgb
from l2o_gym.problems import ProblemFamily


class L2OVectorEnv(VectorEnv):
    """``num_envs`` optimizees of one family stepped together by the batched core.

    The same MDP as :class:`~l2o_gym.envs.env.L2OEnv` (spaces, rewards, episode end: see its docstring),
    but observations, rewards, terminations and truncations are **torch tensors on** ``device``
    (``[N, F]``, ``[N]``, ``[N]`` bool, ``[N]`` bool); actions may be tensors or arrays ``[N, d]``.

    Autoreset is ``SAME_STEP``: when instance ``i`` ends, the returned observation is already the first
    one of a fresh instance from the ``split`` stream, and ``info["final_obs"]`` (``[N, F]`` tensor; rows
    valid where ``info["_final_obs"]``) holds the last observation of the finished episode.
    ``info["objective"]`` is ``f(θ)`` ``[N]`` of the step's (pre-reset) states.

    Arguments: ``gymnasium.make_vec("l2o/Quadratic-v0", num_envs=64, device="cpu", ...)`` with the same
    keyword arguments as the single environment, including ``threads`` (default ``"auto"``: ``reset``/``step``
    run on one torch thread while ``N·F`` is below :data:`l2o_gym.threads.SMALL_WORK`, the caller's setting
    restored after each call; see :mod:`l2o_gym.threads`).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        family: str | ProblemFamily = "quadratic",
        num_envs: int = 1,
        split: str = "train",
        horizon: int = 100,
        history: int = 25,
        action_scale: float = 1.0,
        reward_mode: str = "objective",
        include_steps: bool = False,
        blowup: float = 1e4,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        render_mode: str | None = None,
        threads: int | str | None = "auto",
        **family_kwargs: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}: expected one of {self.metadata['render_modes']}")
        self.num_envs = int(num_envs)
        self.render_mode = render_mode
        self.driver = BatchedOptimizee(
            family, self.num_envs, split, horizon, history, action_scale, reward_mode, include_steps, blowup,
            device, dtype, threads=threads, **family_kwargs,
        )
        np_dtype = np.float64 if self.driver.dtype == torch.float64 else np.float32
        self.single_observation_space = self.driver.single_observation_space(np_dtype)
        self.single_action_space = self.driver.single_action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.device = self.driver.device
        self._losses: list[Tensor] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Tensor, dict]:
        """Start ``num_envs`` new episodes; ``options={"problems": batch}`` runs given instances."""
        super().reset(seed=seed)
        if seed is None and self.driver.sampler is None:
            seed = int(self.np_random.integers(2**31 - 1))
        obs = self.driver.reset(seed, (options or {}).get("problems"))
        self._losses = [self.driver.state.loss[0]] if self.render_mode else []
        return obs, {"objective": self.driver.state.loss}

    def step(self, actions: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
        obs, reward, terminated, truncated = self.driver.step(actions)
        info: dict[str, Any] = {"objective": self.driver.state.loss}
        done = terminated | truncated
        if self.render_mode:
            self._losses.append(self.driver.state.loss[0])
        if bool(done.any()):
            info["final_obs"] = obs
            info["_final_obs"] = done
            info["final_info"] = {"objective": self.driver.state.loss}
            info["_final_info"] = done
            if self.render_mode and bool(done[0]):
                self._losses = []
            obs = self.driver.reset_done(done)
            if self.render_mode and bool(done[0]):
                self._losses = [self.driver.state.loss[0]]
        return obs, reward, terminated, truncated, info

    def render(self) -> tuple[Any, ...] | None:
        """The first sub-environment's loss curve (``ansi`` text or ``rgb_array`` image), as a 1-tuple."""
        if self.render_mode is None:
            return None
        losses = [float(x) for x in self._losses]
        title = f"{self.driver.family.name} ({self.driver.split}), env 0 of {self.num_envs}"
        frame = render_ansi(losses, title) if self.render_mode == "ansi" else render_rgb(losses, title)
        return (frame,)
