"""The stateful driver shared by the gymnasium adapters: one batched core, its sampler and rewards.

Both :class:`~l2o_gym.envs.env.L2OEnv` (``N = 1``, numpy) and :class:`~l2o_gym.envs.vector.L2OVectorEnv`
(``N = num_envs``, torch) hold a :class:`BatchedOptimizee`; neither re-implements the dynamics.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from l2o_gym import core
from l2o_gym.core import CoreConfig, State
from l2o_gym.problems import ProblemBatch, ProblemFamily, make_family
from l2o_gym.problems.base import ProblemSampler, check_memory
from l2o_gym.checks import check_positive, check_split, resolve_device, resolve_dtype
from l2o_gym.threads import auto_threads, check_threads, torch_threads

_F = TypeVar("_F", bound=Callable[..., Any])


def _under_thread_policy(method: _F) -> _F:
    """Run a :class:`BatchedOptimizee` method with torch's thread count set to ``self.step_threads``
    (restored afterwards; see :mod:`l2o_gym.threads`)."""

    @functools.wraps(method)
    def wrapper(self: BatchedOptimizee, *args: Any, **kwargs: Any) -> Any:
        with torch_threads(self.step_threads):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]

REWARD_MODES: tuple[str, ...] = ("objective", "log_objective", "improvement")

logger = logging.getLogger(__name__)

#: The process that imported this module. An env built in another process that did not import it anew is
#: in a *forked* child (e.g. a worker of ``gymnasium.make_vec(..., vectorization_mode="async")``).
_IMPORT_PID = os.getpid()


def fork_safe_threads() -> None:
    """In a forked child, run torch on one thread (what ``torch.utils.data.DataLoader`` does in its workers).

    torch's OpenMP thread pool does not survive ``fork``: a child whose parent already ran parallel torch
    code deadlocks at its first parallel kernel (measured: ``gymnasium.make_vec("l2o/LogisticRegression-v0",
    2, vectorization_mode="async")`` after a 512×512 matmul in the parent hung in every try; with this, the
    same call steps in 0.25 s). One env per worker process gets its parallelism from the processes. Only
    forked children are changed (logged at INFO); the parent's and spawned processes' settings are untouched.
    """
    if os.getpid() != _IMPORT_PID and torch.get_num_threads() > 1:
        logger.info("l2o_gym env built in a forked process: torch.set_num_threads(1) (was %d) to avoid "
                    "torch's thread pool deadlocking after fork", torch.get_num_threads())
        torch.set_num_threads(1)


def reward_from_cost(cost: Tensor, prev_loss: Tensor, mode: str) -> Tensor:
    """Reward ``[N]`` from the core's cost ``[N]`` (``f(θ_{t+1})`` — the true objective for families with one,
    :mod:`l2o_gym.core` — or the divergence penalty).

    * ``"objective"``: ``−cost`` (Li & Malik's cost, negated);
    * ``"log_objective"``: ``−log10(max(cost, 0) + 1e-12)``, scale-free across families;
    * ``"improvement"``: ``f(θ_t) − cost``, the decrease of the objective in this step.

    Every reward is finite: the core's cost is finite (its penalty is capped, :func:`l2o_gym.core.penalty_cap`)
    and an ``improvement`` that would overflow the dtype (only possible for objectives near ``−finfo.max``)
    saturates at ``±finfo(dtype).max``. Rewards never carry an autograd graph.
    """
    cost, prev_loss = cost.detach(), prev_loss.detach()
    if mode == "objective":
        return -cost
    if mode == "log_objective":
        return -torch.log10(cost.clamp_min(0.0) + 1e-12)
    if mode == "improvement":
        big = torch.finfo(cost.dtype).max
        return (prev_loss - cost).clamp(-big, big)
    raise ValueError(f"unknown reward_mode {mode!r}: expected one of {', '.join(REWARD_MODES)}")


class BatchedOptimizee:
    """``N`` optimizees of one family driven through :mod:`l2o_gym.core`, with gymnasium-style conventions.

    Args:
        family: registry name (e.g. ``"quadratic"``) or a :class:`~l2o_gym.problems.ProblemFamily`.
        num: number ``N`` of parallel optimizees.
        split: ``"train"``, ``"val"`` or ``"test"``: which instance stream resets draw from.
        horizon: episode length ``T`` (truncation).
        history: history length ``H`` of the observation.
        action_scale: an action ``a ∈ [−1, 1]^d`` becomes the step ``Δθ = action_scale · a``; must be
            finite in ``dtype``.
        reward_mode: see :func:`reward_from_cost`.
        include_steps: add the past steps to the observation.
        blowup: divergence factor (see :mod:`l2o_gym.core`; the threshold is capped at
            :func:`l2o_gym.core.penalty_cap`).
        device: torch device of every tensor.
        dtype: ``torch.float32`` or ``torch.float64`` (names accepted).
        threads: torch CPU threads for ``reset``/``step`` (the caller's setting is restored after each call):
            ``"auto"`` (default) — 1 thread when the step's work ``N·F`` is below
            :data:`l2o_gym.threads.SMALL_WORK` (small kernels: a second thread gains little and collapses when
            another process competes for the cores), else the caller's setting; an int fixes the count;
            ``None`` leaves torch's setting alone. See :mod:`l2o_gym.threads`.
        family_kwargs: sizes of the family (e.g. ``dim=20``).
    """

    def __init__(
        self,
        family: str | ProblemFamily = "quadratic",
        num: int = 1,
        split: str = "train",
        horizon: int = 100,
        history: int = 25,
        action_scale: float = 1.0,
        reward_mode: str = "objective",
        include_steps: bool = False,
        blowup: float = 1e4,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        threads: int | str | None = "auto",
        **family_kwargs: Any,
    ) -> None:
        self.threads = check_threads(threads)
        fork_safe_threads()
        self.family = make_family(family, **family_kwargs)
        self.num = num
        self.split = check_split(split)
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"unknown reward_mode {reward_mode!r}: expected one of {', '.join(REWARD_MODES)}")
        self.reward_mode = reward_mode
        self.action_scale = check_positive("action_scale", action_scale)
        if not isinstance(include_steps, (bool, np.bool_)):  # bool("False") would be True
            raise ValueError(f"include_steps must be True or False, got {include_steps!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if self.action_scale > torch.finfo(self.dtype).max:
            raise ValueError(f"action_scale={action_scale!r} overflows {self.dtype} (largest finite value "
                             f"{torch.finfo(self.dtype).max:.3g})")
        # Actions are validated and clipped here, so the core need not re-check each step.
        self.config = CoreConfig(
            horizon=horizon, history=history, include_steps=bool(include_steps), blowup=blowup, validate=False
        )
        core.check_config_dtype(self.config, self.dtype)
        self.dim = self.family.dim
        self.obs_dim = core.obs_dim(self.config, self.dim)
        # the observations of all instances, the space's bounds and a step's temporaries
        check_memory(f"observations of {self.obs_dim:,} entries (history={history}, d={self.dim:,}) for {self.num} "
                     "instance(s)", 4.0 * self.obs_dim * (self.num + 3) * torch.finfo(self.dtype).bits / 32,
                     "use a family with fewer parameters, a shorter history or fewer instances")
        #: the thread count ``reset``/``step`` run with (``None``: the caller's), resolved from ``threads``.
        self.step_threads: int | None = (
            (auto_threads(self.num * self.obs_dim) if self.device.type == "cpu" else None)
            if self.threads == "auto" else self.threads  # type: ignore[assignment]
        )
        self.sampler: ProblemSampler | None = None
        self.state: State | None = None

    # -- spaces ------------------------------------------------------------------------------------
    def single_observation_space(self, np_dtype: type = np.float32) -> spaces.Box:
        return spaces.Box(-np.inf, np.inf, shape=(self.obs_dim,), dtype=np_dtype)

    def single_action_space(self) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, shape=(self.dim,), dtype=np.float32)

    # -- episode control ---------------------------------------------------------------------------
    @_under_thread_policy
    def reset(self, seed: int | None, problems: ProblemBatch | None = None) -> Tensor:
        """Start new episodes; returns the observation ``[N, F]``.

        ``seed`` (re)starts the instance stream; ``problems`` (``N`` instances) overrides sampling.
        """
        if seed is not None or self.sampler is None:
            self.sampler = self.family.sampler(self.split, 0 if seed is None else seed, self.device, self.dtype)
        if problems is None:
            problems = self.sampler.sample(self.num)
        elif not isinstance(problems, ProblemBatch):
            raise TypeError(f'options["problems"] must be a ProblemBatch (family.sample(...)), got {type(problems).__name__}')
        elif problems.n != self.num or problems.dim != self.dim:
            raise ValueError(
                f"problems have n={problems.n}, dim={problems.dim}; this environment needs n={self.num}, dim={self.dim}"
            )
        else:
            problems = problems.to(self.device, self.dtype)
        self.state = core.reset(problems, self.config)
        return core.features(self.state)

    def to_action(self, action: Any) -> Tensor:
        """Validate a policy action (``[N, d]`` array-like in [−1, 1]) and return the raw step ``[N, d]``.

        A tensor that requires grad is detached (the envs are not differentiable; backpropagate through
        :mod:`l2o_gym.core` instead). Finite values outside [−1, 1] — however large, even beyond the env's
        dtype — are clipped; NaN or inf is a ``ValueError``.
        """
        self._check_started()
        if isinstance(action, Tensor):
            action = action.detach()
        try:
            a = torch.as_tensor(action, device=self.device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"action of type {type(action).__name__} is not a numeric array: {exc}") from None
        if not (a.is_floating_point() or a.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"action has dtype {a.dtype}, expected a floating-point array in [-1, 1]")
        if a.shape != (self.num, self.dim):
            raise ValueError(f"action has shape {tuple(a.shape)}, expected {(self.num, self.dim)}")
        finite = torch.isfinite(a).all(-1)  # in the action's own dtype, before any cast
        if not bool(finite.all()):
            idx = (~finite).nonzero().flatten().tolist()[:10]
            raise ValueError(f"action contains NaN or inf (instances {idx}); actions must be finite values in [-1, 1]")
        return a.clamp(-1.0, 1.0).to(self.dtype) * self.action_scale

    def objectives(self) -> dict[str, Tensor]:
        """The envs' ``info`` entries, ``[N]`` each: ``objective`` — what the reward uses (the true objective where
        the family has one) — and ``observed_objective`` — what the observation sees (the minibatch loss there)."""
        # Copies: the state's own tensors feed the next step (the ``improvement`` reward's f(θ_t), a rejected step's
        # loss), so a caller editing an info entry in place must not change the env's dynamics.
        state = self.state
        return {"objective": state.objective.detach().clone(), "observed_objective": state.loss.detach().clone()}

    def _check_started(self) -> None:
        if self.state is None:
            raise RuntimeError("call reset() before step(): the environment has no episode yet")

    @_under_thread_policy
    def step(self, action: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One transition: ``(obs[N, F], reward[N], terminated[N], truncated[N])`` (no autoreset)."""
        self._check_started()
        delta = self.to_action(action)
        prev = self.state.objective  # the true objective where the family has one (core.State.objective)
        self.state, cost, terminated, truncated = core.step(self.state, delta)
        reward = reward_from_cost(cost, prev, self.reward_mode)
        # ``terminated`` is the new state's own tensor (it freezes diverged instances at the next step): a copy, so
        # a caller editing it in place (``terminated |= truncated``) cannot freeze or revive an instance.
        return core.features(self.state), reward, terminated.clone(), truncated

    @_under_thread_policy
    def reset_done(self, done: Tensor) -> Tensor:
        """Replace the instances where ``done[N]`` by fresh ones from the stream; returns the new ``[N, F]``."""
        self._check_started()
        assert self.sampler is not None  # set by every reset()
        idx = done.nonzero().flatten()
        fresh = core.reset(self.sampler.sample(int(idx.numel())), self.config)
        self.state = self.state.scatter(idx, fresh)
        return core.features(self.state)
