"""``N`` optimizees as a native torch gymnasium ``VectorEnv`` (tensors stay on ``device``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper
from gymnasium.vector.utils import batch_space
from torch import Tensor

from l2o_gym import core
from l2o_gym.envs.common import BatchedOptimizee
from l2o_gym.envs.rendering import render_ansi, render_rgb
from l2o_gym.problems import ProblemFamily


class L2OVectorEnv(VectorEnv):
    """``num_envs`` optimizees of one family stepped together by the batched core.

    The same MDP as :class:`~l2o_gym.envs.env.L2OEnv` (spaces, rewards, episode end: see its docstring),
    but observations, rewards, terminations and truncations are **torch tensors on** ``device``
    (``[N, F]``, ``[N]``, ``[N]`` bool, ``[N]`` bool); actions may be tensors or arrays ``[N, d]``.

    Autoreset (``autoreset_mode``, also the attribute and ``metadata["autoreset_mode"]``; see
    https://farama.org/Vector-Autoreset-Mode):

    * ``SAME_STEP`` (default): when instance ``i`` ends, the returned observation is already the first one
      of a fresh instance from the ``split`` stream, and ``info["final_obs"]`` (``[N, F]`` tensor; rows valid
      where ``info["_final_obs"]``) holds the last observation of the finished episode.
      ``info["objective"]`` is ``f(θ)`` ``[N]`` of the step's (pre-reset) states (the true objective the reward
      uses, for families that have one; ``info["observed_objective"]`` the minibatch value the observation sees).
    * ``NEXT_STEP`` (gymnasium's ``SyncVectorEnv`` default; needed by gymnasium's vector observation
      wrappers such as ``NormalizeObservation``): the step after instance ``i`` ended ignores its action and
      returns the first observation of a fresh instance, reward 0, ``terminated = truncated = False``.
    * ``DISABLED``: no autoreset; ``reset(options={"reset_mask": mask})`` (``[N]`` bool) restarts the
      chosen instances only.

    The same instance stream is drawn in every mode. Actions are detached (the env is not differentiable:
    backpropagate through :mod:`l2o_gym.core` instead); rewards never carry a graph.

    gymnasium's numpy-based vector wrappers (``RecordEpisodeStatistics``, ``NormalizeObservation``,
    ``NormalizeReward``) need numpy arrays: put :class:`TorchToNumpy` between (``NormalizeObservation`` also
    needs ``autoreset_mode="next_step"``; docs/environments.md).

    Arguments: ``gymnasium.make_vec("l2o/Quadratic-v0", num_envs=64, device="cpu", autoreset_mode=...,
    ...)`` with the same keyword arguments as the single environment, including ``threads`` (default ``"auto"``:
    ``reset``/``step`` run on one torch thread while ``N·F`` is below :data:`l2o_gym.threads.SMALL_WORK`, the
    caller's setting restored after each call; see :mod:`l2o_gym.threads`).
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
        autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP,
        **family_kwargs: Any,
    ) -> None:
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
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
        self._needs_reset = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Tensor, dict]:
        """Start ``num_envs`` new episodes; ``options={"problems": batch}`` runs given instances;
        ``options={"reset_mask": mask}`` (``[N]`` bool, after a first reset) restarts only those instances
        with the next ones of the stream."""
        options = options or {}
        if "reset_mask" in options:
            return self._reset_masked(options["reset_mask"], seed)
        super().reset(seed=seed)
        if seed is None and self.driver.sampler is None:
            seed = int(self.np_random.integers(2**31 - 1))
        obs = self.driver.reset(seed, options.get("problems"))
        self._losses = [self.driver.state.objective[0]] if self.render_mode else []
        self._needs_reset.zero_()
        return obs, self._info()

    def _reset_masked(self, mask: Any, seed: int | None) -> tuple[Tensor, dict]:
        if seed is not None:
            raise ValueError("reset(seed=...) restarts every instance's stream; it cannot be combined with reset_mask")
        if self.driver.state is None:
            raise RuntimeError("reset_mask restarts some instances of running episodes: call reset() once first")
        m = torch.as_tensor(mask.detach() if isinstance(mask, Tensor) else mask, device=self.device)
        if m.dtype != torch.bool or m.shape != (self.num_envs,):
            raise ValueError(f"reset_mask must be a bool array of shape ({self.num_envs},), got {m.dtype} {tuple(m.shape)}")
        obs = self.driver.reset_done(m) if bool(m.any()) else core_features(self)
        self._needs_reset &= ~m
        if self.render_mode and bool(m[0]):
            self._losses = [self.driver.state.objective[0]]
        return obs, self._info()

    def step(self, actions: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
        """One step of every instance: ``(obs[N, F], reward[N], terminated[N], truncated[N], info)`` as torch
        tensors on ``device``, with autoreset as set by ``autoreset_mode`` (class docstring)."""
        obs, reward, terminated, truncated = self.driver.step(actions)
        mode = self.autoreset_mode
        if mode == AutoresetMode.NEXT_STEP and bool(self._needs_reset.any()):
            # The instances that ended at the previous step start over; their action is ignored.
            restart = self._needs_reset
            obs = self.driver.reset_done(restart)
            zero = torch.zeros((), dtype=reward.dtype, device=reward.device)
            reward = torch.where(restart, zero, reward)
            terminated, truncated = terminated & ~restart, truncated & ~restart
            if self.render_mode and bool(restart[0]):
                self._losses = []
        info: dict[str, Any] = self._info(terminated)
        done = terminated | truncated
        if self.render_mode:
            self._losses.append(self.driver.state.objective[0])
        if mode == AutoresetMode.SAME_STEP and bool(done.any()):
            info["final_obs"] = obs
            info["_final_obs"] = done
            info["final_info"] = self._info(terminated)
            info["_final_info"] = done
            if self.render_mode and bool(done[0]):
                self._losses = []
            obs = self.driver.reset_done(done)
            if self.render_mode and bool(done[0]):
                self._losses = [self.driver.state.objective[0]]
        elif mode == AutoresetMode.NEXT_STEP:
            self._needs_reset = done
        # ``obs`` is the caller's: :func:`l2o_gym.core.features` assembles a new tensor from the state's histories at
        # every call, so editing it in place cannot change the env's dynamics (and no second copy is made).
        return obs, reward, terminated, truncated, info

    def _info(self, diverged: Tensor | None = None) -> dict[str, Any]:
        """``objective``, ``observed_objective`` (``[N]``) and ``diverged`` (``[N]`` bool: the step ended the
        episode by divergence, as the single env's ``info["diverged"]``; all False after a reset)."""
        if diverged is None:
            diverged = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return {**self.driver.objectives(), "diverged": diverged.clone()}

    def render(self) -> tuple[Any, ...] | None:
        """The first sub-environment's loss curve (``ansi`` text or ``rgb_array`` image), as a 1-tuple."""
        if self.render_mode is None:
            return None
        losses = [float(x) for x in self._losses]
        title = f"{self.driver.family.name} ({self.driver.split}), env 0 of {self.num_envs}"
        frame = render_ansi(losses, title) if self.render_mode == "ansi" else render_rgb(losses, title)
        return (frame,)


def core_features(venv: L2OVectorEnv) -> Tensor:
    """The current observation ``[N, F]`` of a started vector env."""
    return core.features(venv.driver.state)


def _autoreset_mode(mode: AutoresetMode | str) -> AutoresetMode:
    """``AutoresetMode`` from the enum, its value (``"SameStep"``) or its name (``"same_step"``)."""
    if isinstance(mode, AutoresetMode):
        return mode
    if isinstance(mode, str):
        for m in AutoresetMode:
            if mode in (m.value, m.name, m.name.lower()):
                return m
    raise ValueError(f"unknown autoreset_mode {mode!r}: expected one of {', '.join(m.name for m in AutoresetMode)}")


def _to_numpy(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    return x


class TorchToNumpy(VectorWrapper):
    """Numpy arrays out of an :class:`L2OVectorEnv` (observations, rewards, dones and every tensor in
    ``info``), for gymnasium's numpy-based vector wrappers, e.g.
    ``RecordEpisodeStatistics(TorchToNumpy(gymnasium.make_vec("l2o/Quadratic-v0", 8)))``. Actions may be
    numpy arrays or tensors. The inverse of gymnasium's ``NumpyToTorch``; gymnasium's generic
    ``ArrayConversion`` does the same but needs the optional ``array_api_compat`` package."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(seed=seed, options=_torch_options(options, self.env))
        return _to_numpy(obs), _to_numpy(info)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        return _to_numpy(obs), _to_numpy(reward), _to_numpy(terminated), _to_numpy(truncated), _to_numpy(info)


def _torch_options(options: dict[str, Any] | None, env: Any) -> dict[str, Any] | None:
    if options and "reset_mask" in options and isinstance(options["reset_mask"], np.ndarray):
        return {**options, "reset_mask": torch.as_tensor(options["reset_mask"])}
    return options
