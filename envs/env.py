"""A single optimizee as a gymnasium ``Env`` (numpy in, numpy out)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from l2o_gym.envs.common import BatchedOptimizee
from l2o_gym.envs.rendering import render_ansi, render_rgb
from l2o_gym.problems import ProblemFamily


class L2OEnv(gym.Env):
    """Optimizing one objective function drawn from a problem family, as an MDP (Li & Malik, 2016).

    ## Description
    Each episode draws an objective ``f`` from a problem family (``l2o/Quadratic-v0``: random
    ``‖Wx − y‖²``; see :mod:`l2o_gym.problems` for every family's math and sampling) and starts at its
    initial point θ₀. The agent is the optimizer: at every iteration it sees the recent history of the
    objective and its gradients and chooses the step added to θ.

    ## Action Space
    ``Box(-1, 1, (d,), float32)``; the step is ``Δθ = action_scale · clip(action, -1, 1)``. A numpy array or a
    torch tensor (one that requires grad is detached); NaN or inf is a ``ValueError``.

    ## Observation Space
    ``Box(-inf, inf, (F,), float32)`` (``float64`` when ``dtype="float64"``, so a large but finite float64
    gradient is never turned into ``inf``) with ``F = H + H·d`` (``+ H·d`` with ``include_steps``): the relative
    objective changes over the last ``H`` iterates and the last ``H`` gradients, zero-padded at the start
    (exact layout and normalization: :mod:`l2o_gym.core`). θ itself is not observed.

    ## Rewards
    ``reward_mode="objective"``: ``−f(θ_{t+1})``; ``"log_objective"``: ``−log10 f(θ_{t+1})``;
    ``"improvement"``: ``f(θ_t) − f(θ_{t+1})``. On divergence ``f`` is replaced by the finite penalty
    ``min(blowup · (|f(θ₀)| + 1), √finfo(dtype).max)``. Rewards and observations are always finite.

    ## Starting State
    θ₀ from the family's initial-point distribution; the instance comes from the ``split`` stream
    (``train``/``val``/``test`` are disjoint), seeded by ``reset(seed=...)``.

    ## Episode End
    Truncation after ``horizon`` steps. Termination when the objective diverges (non-finite, or above
    ``blowup · (|f(θ₀)| + 1)``); the step is rejected, so observations stay finite.

    ## Arguments
    ``gymnasium.make("l2o/Quadratic-v0", split="train", horizon=100, history=25, action_scale=0.5,
    reward_mode="objective", include_steps=False, blowup=1e4, device="cpu", dtype="float32",
    render_mode=None, threads="auto", **family_kwargs)``, e.g. ``dim=20`` for the quadratic. ``threads``: torch
    CPU threads of each ``reset``/``step`` (``"auto"``: one for small batches, the caller's setting is restored
    after each call; ``None``: torch's setting untouched; see :mod:`l2o_gym.threads`).

    ``reset(options={"problems": batch})`` runs the episode on a given one-instance
    :class:`~l2o_gym.problems.ProblemBatch` instead of sampling one.

    ``info`` holds ``"objective"``: the current ``f(θ_t)`` the reward is computed from (the *true* objective for
    families that have one, e.g. the full-dataset loss of ``l2o/NNClassifier-v0``), ``"observed_objective"``: the
    value the observation sees (the minibatch loss there; equal to ``"objective"`` elsewhere), and ``"diverged"``.

    The env truncates at ``horizon`` itself and registers no ``max_episode_steps`` (a ``TimeLimit`` from the spec would
    keep its length when the env is re-made from ``env.spec`` with another ``horizon``); wrappers that read the
    episode length, e.g. ``gymnasium.wrappers.TimeAwareObservation``, need
    ``gymnasium.make(id, horizon=T, max_episode_steps=T)`` (the ``TimeLimit`` then ends episodes with the env).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 10}

    def __init__(
        self,
        family: str | ProblemFamily = "quadratic",
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
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}: expected one of {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.driver = BatchedOptimizee(
            family, 1, split, horizon, history, action_scale, reward_mode, include_steps, blowup, device, dtype,
            threads=threads, **family_kwargs,
        )
        self._np_dtype = np.float64 if self.driver.dtype == torch.float64 else np.float32
        self.observation_space = self.driver.single_observation_space(self._np_dtype)
        self.action_space = self.driver.single_action_space()
        self._losses: list[float] = []

    def _obs(self, obs: torch.Tensor) -> np.ndarray:
        # ``obs`` is a new tensor at every call of core.features (the state keeps its histories apart), so the
        # array may share its memory: editing it in place cannot reach the env.
        return obs[0].detach().to("cpu").numpy().astype(self._np_dtype, copy=False)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is None and self.driver.sampler is None:
            seed = int(self.np_random.integers(2**31 - 1))
        problems = (options or {}).get("problems")
        obs = self.driver.reset(seed, problems)
        info = self._info(False)
        self._losses = [info["objective"]]
        return self._obs(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if isinstance(action, torch.Tensor):
            action = action.detach().cpu()  # the env is not differentiable: drop any autograd graph
        a = np.asarray(action)
        if a.shape != (self.driver.dim,):
            raise ValueError(f"action has shape {a.shape}, expected {(self.driver.dim,)}")
        obs, reward, terminated, truncated = self.driver.step(a[None])
        term = bool(terminated[0])
        info = self._info(term)
        self._losses.append(info["objective"])
        return self._obs(obs), float(reward[0]), term, bool(truncated[0]), info

    def _info(self, diverged: bool) -> dict[str, Any]:
        return {**{k: float(v[0]) for k, v in self.driver.objectives().items()}, "diverged": diverged}

    def render(self) -> str | np.ndarray | None:
        title = f"{self.spec.id if self.spec else self.driver.family.name} ({self.driver.split})"
        if self.render_mode == "ansi":
            return render_ansi(self._losses, title)
        if self.render_mode == "rgb_array":
            return render_rgb(self._losses, title)
        return None
