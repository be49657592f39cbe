"""The one Policy interface every optimizer implements, and the one rollout loop that runs them all.

A policy maps the MDP state to a step Δθ. Learned policies read only :func:`l2o_gym.core.features` or
:func:`l2o_gym.core.coordinate_features` of the state (never θ itself); hand-designed ones read the current
gradient ``state.grad``, and line-search methods may evaluate ``state.problems`` (CG and L-BFGS evaluate
per-instance copies, which ``state.problems.n_evals`` does not count: they report their evaluations through
:meth:`Policy.evals`).

    memory = policy.reset(state)
    step, memory = policy.act(state, memory)   # step: [N, d]

``memory`` is whatever per-episode memory the policy needs (momentum buffers, LSTM states), batched over
the ``N`` instances; ``None`` for memoryless policies.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from l2o_gym import core
from l2o_gym.core import CoreConfig, State
from l2o_gym.problems.base import ProblemBatch


class Policy(ABC):
    """A batched optimizer: ``reset(state) -> memory``, ``act(state, memory) -> (step[N, d], memory)``."""

    #: short name used in reports.
    name: str = "policy"
    #: the core config whose features the policy was trained on (the evaluation resets problems with it);
    #: ``None``: the policy reads any state (baselines, the coordinatewise LSTM).
    core_config: CoreConfig | None = None
    #: the problem dimension ``d`` the policy is restricted to (a learned policy that reads whole gradient
    #: vectors, e.g. GPS or SB3, fits only the ``d`` it was trained on); ``None``: any dimension.
    dim: int | None = None
    #: the JSON config of the checkpoint the policy was loaded from; ``None`` if it was not loaded from one.
    checkpoint_config: dict[str, Any] | None = None
    #: whether :meth:`reset`/:meth:`act` evaluate ``state.problems`` themselves (line searches: CG, L-BFGS);
    #: such a policy cannot run where there is no :class:`ProblemBatch` (``LearnedOptimizer``).
    needs_problems: bool = False
    #: whether the policy needs the parameter layout of a model (one ``ParamSpec`` per parameter tensor, with
    #: a kind) when the state carries no problem family: ``LearnedOptimizer`` then calls :meth:`bind` before the
    #: first step (per-kind LSTMs, convolutional GPS).
    binds_layout: bool = False
    #: with ``binds_layout``: every param group must name its ``"kind"`` (``param_groups_by_kind``); otherwise a
    #: group without one gets ``"weight"`` (tensors of ≥ 2 dimensions) or ``"bias"``.
    needs_kinds: bool = False
    #: whether :meth:`act` reads the objective (``state.loss`` or features of it); ``LearnedOptimizer`` warns
    #: once when such a policy is stepped without a closure (it would see a constant). Gradient-only policies
    #: (the first-order baselines, the coordinatewise LSTMs) set it to ``False``.
    reads_objective: bool = True

    def reset(self, state: State) -> Any:
        """Per-episode memory for the ``state.n`` instances (``None`` if the policy has none)."""
        return None

    @abstractmethod
    def act(self, state: State, memory: Any) -> tuple[Tensor, Any]:
        """The step Δθ ``[N, d]`` (same dtype and device as θ) and the updated memory."""

    def bind(self, specs: Any) -> None:
        """Fix the parameter layout (a sequence of ``ParamSpec``) used when a state carries no problem family;
        only policies with ``binds_layout`` use it."""

    def to(self, device: torch.device | str) -> Policy:
        """Move the policy's tensors to ``device`` (in place) and return it; a no-op for policies without any
        (``LearnedOptimizer`` calls it with the parameters' device)."""
        return self

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the policy to a ``.safetensors`` checkpoint (weights + JSON config, ``extra`` merged into the
        config) that its kind's ``load_policy`` reads back. Hand-designed baselines have no weights to save."""
        raise NotImplementedError(f"{type(self).__name__} has no checkpoint format (only learned policies are saved)")

    def evals(self, memory: Any, steps: int) -> Tensor | None:
        """Objective+gradient evaluations ``[N]`` used in the first ``steps`` iterations.

        ``None`` (the default) means one per iteration, the core's; line-search methods override it.
        """
        return None


class FeatureView:
    """The observation a policy trained with ``config`` expects, from a state built with any config.

    Learned policies that read :func:`l2o_gym.core.features` (GPS, SB3) were trained with one history length
    ``H`` (and ``include_steps``, scaling); the state they are handed may have been built with another (the
    env's default, or ``LearnedOptimizer``'s minimal one). Then :meth:`start` makes a *shadow* state with the
    trained config from the same θ, objective and gradient, and :meth:`observe` advances it from the real
    state's iterate, objective and gradient — the step actually taken, learning-rate multipliers and rejected
    (diverged) steps included — so no extra objective evaluations are made. The shadow is a tuple of tensors
    (it saves in ``LearnedOptimizer.state_dict()``); ``None`` when the state's features are already right.
    """

    def __init__(self, config: CoreConfig) -> None:
        self.config = dataclasses.replace(config, horizon=2**62, blowup=1e30, validate=False)

    def matches(self, config: CoreConfig) -> bool:
        """Whether a state built with ``config`` already has the trained features."""
        mine = self.config
        return (config.history, config.include_steps, config.grad_scale, config.feature_clip, config.eps) == (
            mine.history, mine.include_steps, mine.grad_scale, mine.feature_clip, mine.eps)

    def start(self, state: State) -> tuple[tuple[Tensor, ...], Tensor] | None:
        """The shadow memory for ``state`` (``None`` if its own features are the trained ones)."""
        if self.matches(state.config):
            return None
        s = core.initial_state(state.theta.detach(), state.loss.detach(), state.grad.detach(), self.config)
        # The shadow follows the real state, which alone decides divergence: it never terminates itself.
        s = dataclasses.replace(s, threshold=torch.full_like(s.threshold, float("inf")))
        return tuple(getattr(s, k) for k in core.STATE_TENSORS), state.t.clone()

    def observe(self, state: State, shadow: Any) -> tuple[Tensor, Any]:
        """``(features [N, F], updated shadow)`` of ``state`` under the trained config."""
        if shadow is None:
            return core.features(state), None
        tensors, last_t = shadow
        s = core.state_from_tensors(tensors, self.config)
        if not torch.equal(state.t, last_t):  # the state moved on since the last call: advance the shadow
            s, *_ = core.transition(s, state.theta.detach() - s.theta, state.loss.detach(), state.grad.detach())
        return core.features(s), (tuple(getattr(s, k) for k in core.STATE_TENSORS), state.t.clone())



#: rows per chunk in :func:`rowwise` (coordinates of a coordinatewise network evaluated without gradients).
ROW_CHUNK = 8192


def row_chunks(m: int, device: torch.device | str, chunk: int | None = None) -> list[tuple[int, int]]:
    """The ``[start, end)`` row ranges :func:`rowwise` evaluates ``m`` rows in: ``chunk`` rows each (default
    :data:`ROW_CHUNK`, read at each call), the last taking the remainder too; one range with gradients enabled, under
    ``2·chunk`` rows or off the CPU."""
    chunk = ROW_CHUNK if chunk is None else chunk
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    if torch.is_grad_enabled() or m < 2 * chunk or torch.device(device).type != "cpu":
        return [(0, m)]
    starts = list(range(0, m - chunk + 1, chunk))
    return list(zip(starts, starts[1:] + [m]))


def rowwise(fn: Callable[..., tuple[Tensor, ...]], *rows: Tensor, chunk: int | None = None) -> tuple[Tensor, ...]:
    """``fn(*rows)`` computed ``chunk`` rows at a time when no gradient is being recorded.

    For a row-wise ``fn`` — row ``i`` of every output depends on row ``i`` of the inputs only, as in a
    coordinatewise LSTM — the result is the same; what changes is the working set: a 2-layer 20-unit LSTM step on
    8,192 coordinates touches ~5 MB, on the 2.2 million of 100 wide nets ~1.4 GB per pass, so memory traffic
    dominates and chunking is 1.8× (0.3 M coordinates) to 2.3× (2.2 M) faster on one CPU core (docs/benchmarks.md).
    Every chunk has ``chunk`` rows but the last, which takes the remainder as well (between ``chunk`` and
    ``2·chunk − 1`` rows): small matrices take other GEMM kernels, so no chunk is small. With gradients enabled
    (BPTT training), under ``2·chunk`` rows, or off the CPU (a GPU's bandwidth makes the argument moot and the
    chunks would multiply its kernel launches), ``fn`` runs once on everything (:func:`row_chunks`).

    Args:
        fn: ``fn(*rows) -> tuple of [M, ...] tensors``.
        rows: ``[M, ...]`` inputs with the same first dimension ``M``.
        chunk: rows per chunk (default :data:`ROW_CHUNK`, read at each call).
    """
    m = rows[0].shape[0]
    bounds = row_chunks(m, rows[0].device, chunk)
    if len(bounds) == 1:
        return fn(*rows)
    outs: tuple[Tensor, ...] = ()
    for s, e in bounds:
        part = fn(*(r[s:e] for r in rows))
        if not outs:
            outs = tuple(t.new_empty((m, *t.shape[1:])) for t in part)
        for o, t in zip(outs, part):
            o[s:e] = t
    return outs


#: A recurrent state kept in :func:`row_chunks` pieces: one tuple of tensors per chunk (``[rows of the chunk, ...]``).
Chunked = tuple[tuple[Tensor, ...], ...]


def join_rows(state: tuple[Tensor, ...] | Chunked) -> tuple[Tensor, ...]:
    """``state`` — whole ``[M, ...]`` tensors or :data:`Chunked` — as whole tensors (one chunk: no copy)."""
    if not state or isinstance(state[0], Tensor):
        return tuple(state)  # type: ignore[arg-type]
    if len(state) == 1:
        return tuple(state[0])  # type: ignore[arg-type]
    return tuple(torch.cat([p[i] for p in state]) for i in range(len(state[0])))  # type: ignore[index]


def chunk_rows(state: tuple[Tensor, ...] | Chunked, bounds: list[tuple[int, int]]) -> Chunked:
    """``state`` — whole ``[M, ...]`` tensors or already chunked — as pieces for ``bounds`` (views where it can)."""
    if not state or (not isinstance(state[0], Tensor) and not state[0]):  # no carry (or chunks of none)
        return tuple(() for _ in bounds)
    chunked = not isinstance(state[0], Tensor)
    if chunked and [p[0].shape[0] for p in state] == [e - s for s, e in bounds]:  # type: ignore[index]
        return tuple(state)  # type: ignore[arg-type]
    whole = join_rows(state)
    return tuple(tuple(t[s:e] for t in whole) for s, e in bounds)


def rowwise_carry(fn: Callable[..., tuple[Tensor, ...]], inputs: tuple[Tensor, ...],
                  carry: tuple[Tensor, ...] | Chunked, chunk: int | None = None) -> tuple[tuple[Tensor, ...], Chunked]:
    """:func:`rowwise` for a recurrent ``fn(*inputs, *carry) -> (*outputs, *new_carry)`` whose carry (e.g. LSTM
    ``h, c``) stays in chunks between calls: the same chunks and the same numbers as :func:`rowwise`, without
    copying the carry out of and back into one ``[M, ...]`` block every call. Returns the outputs (whole ``[M, ...]``)
    and the new carry (:data:`Chunked`; a carry in other chunks, e.g. made with gradients enabled, is re-split)."""
    m = inputs[0].shape[0]
    bounds = row_chunks(m, inputs[0].device, chunk)
    pieces = chunk_rows(carry, bounds)
    k = len(pieces[0]) if pieces else 0
    outs, new = [], []
    for (s, e), c in zip(bounds, pieces):
        part = fn(*(x[s:e] for x in inputs), *c)
        outs.append(part[: len(part) - k])
        new.append(tuple(part[len(part) - k:]))
    whole = tuple(torch.cat([o[i] for o in outs]) if len(outs) > 1 else outs[0][i] for i in range(len(outs[0])))
    return whole, tuple(new)


def preprocess(g: Tensor, preprocessing: str, p: float) -> Tensor:
    """Gradient entries ``g[M]`` → coordinatewise network input ``[M, 2]`` (``"log"``) or ``[M, 1]`` (``"none"``).

    ``"log"`` is Andrychowicz et al.'s (2016, appendix A) scale-free input: ``(log|g| / p, sign g)`` where
    ``|g| ≥ e^−p``, else ``(−1, e^p g)`` — both parts within about ``[−1, 1]`` whatever the gradient's scale.
    Used by the LSTM and the coordinatewise SB3 policy.
    """
    if preprocessing == "none":
        return g[:, None]
    big = g.abs() >= math.exp(-p)
    log_part = torch.where(big, g.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(g, -1.0))
    sign_part = torch.where(big, torch.sign(g), g * math.exp(p))
    return torch.stack([log_part, sign_part], dim=1)

@dataclass
class Trajectory:
    """Result of :func:`rollout`.

    Attributes:
        state: the final state.
        memory: the policy's final memory (to continue the unroll).
        costs: ``[T, N]`` per-step costs from :func:`l2o_gym.core.step` (keeps the autograd graph if any).
        losses: ``[T+1, N]`` objective ``f(θ_t)`` from the start state on (detached; frozen after divergence).
        terminated: ``[T, N]`` bool, diverged at or before each step.
        true_losses: ``[T+1, N]`` the true (full-data) objective ``State.true_loss`` after each step (held
            between evaluations when ``CoreConfig.true_every > 1``), or ``None`` for families without one.
    """

    state: State
    memory: Any
    costs: Tensor
    losses: Tensor
    terminated: Tensor
    true_losses: Tensor | None = None

    @property
    def objectives(self) -> Tensor:
        """``[T+1, N]`` what reports use: :attr:`true_losses` where the family has them, else :attr:`losses`."""
        return self.losses if self.true_losses is None else self.true_losses


_RESET = object()


def rollout(
    policy: Policy,
    state: State,
    n_steps: int,
    memory: Any = _RESET,
    *,
    progress: bool = False,
    desc: str | None = None,
) -> Trajectory:
    """Run ``policy`` for ``n_steps`` steps from ``state`` through the functional core.

    The single rollout loop of l2o-gym: evaluation calls it under ``torch.no_grad()``, the BPTT trainer
    calls it with gradients enabled on truncated unrolls (passing ``memory`` and ``state`` on).

    Args:
        policy: any :class:`Policy`.
        state: the start state (e.g. ``core.reset(problems, config)``).
        n_steps: number of steps.
        memory: the policy's memory; by default ``policy.reset(state)``.
        progress: show a tqdm bar.
        desc: the bar's label.
    """
    if memory is _RESET:
        memory = policy.reset(state)
    losses = [state.loss.detach()]
    true_losses = None if state.true_loss is None else [state.true_loss.detach()]
    costs: list[Tensor] = []
    terms: list[Tensor] = []
    for _ in tqdm(range(n_steps), desc=desc or policy.name, disable=not progress, leave=False):
        action, memory = policy.act(state, memory)
        state, cost, terminated, _ = core.step(state, action)
        costs.append(cost)
        terms.append(terminated)
        losses.append(state.loss.detach())
        if true_losses is not None:
            true_losses.append(state.true_loss.detach())  # type: ignore[union-attr]
    n = state.n
    empty = state.loss.new_zeros(0, n)
    return Trajectory(
        state=state,
        memory=memory,
        costs=torch.stack(costs) if costs else empty,
        losses=torch.stack(losses),
        terminated=torch.stack(terms) if terms else empty.bool(),
        true_losses=None if true_losses is None else torch.stack(true_losses),
    )


def run_policy(
    policy: Policy,
    problems: ProblemBatch,
    horizon: int,
    config: CoreConfig | None = None,
    *,
    progress: bool = False,
) -> Trajectory:
    """Reset ``problems`` and roll ``policy`` out for ``horizon`` steps, without gradients."""
    config = config or CoreConfig(horizon=horizon)
    with torch.no_grad():
        return rollout(policy, core.reset(problems, config), horizon, progress=progress)
