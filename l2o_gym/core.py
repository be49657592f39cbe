"""The functional, batched MDP of optimization (Li & Malik, 2016; Andrychowicz et al., 2016).

``N`` optimizees of one family advance together on one device:

    state = reset(problems, config)
    state, cost, terminated, truncated = step(state, action)      # action = Δθ, [N, d]
    obs = features(state)                                         # [N, F], what learned policies see

``step`` is a pure function of ``(state, action)``: nothing is modified in place, so an unroll is
differentiable when the actions carry an autograd graph (the BPTT trainer backpropagates through it) and
RL agents simply call it under ``torch.no_grad()``.

**Transition.** ``θ_{t+1} = θ_t + Δθ_t``; the objective and its gradient are evaluated at ``θ_{t+1}``
(minibatch ``t + 1`` for stochastic families). By default the gradient fed back to the policy is detached
(*first-order*, as in Andrychowicz et al.); ``CoreConfig(second_order=True)`` keeps its graph.

**Cost.** ``cost_t = f(θ_{t+1})``, the objective after the step (Li & Malik's cost). For a family with a
*true objective* (:attr:`~l2o_gym.problems.base.ProblemFamily.has_true_loss`: e.g. the loss over an instance's
whole dataset while ``f`` is a minibatch loss) the cost is the true objective instead: ``State.true_loss``,
evaluated at θ₀ and after every step whose new counter ``t`` is a multiple of ``CoreConfig.true_every``
or reaches the horizon, and held in between (so with ``true_every = k > 1`` the cost is the true
objective of the last evaluated iterate; ``k = 1``, the default, is exact every step). Observations (and
the divergence test) use the minibatch values, except that a non-finite true objective where it is evaluated
is divergence too (and one at θ₀ a ``ValueError``). For the other families ``State.true_loss`` is
``None`` and nothing changes.

**Episode end.** ``truncated`` once ``t ≥ horizon``. ``terminated`` only for divergence: if ``f(θ_{t+1})``
or its gradient is non-finite, or ``f(θ_{t+1}) > threshold = blowup · (|f(θ₀)| + 1)``, the step is
*rejected* (θ, f and ∇f keep their last finite values, so no NaN ever reaches an observation), the
instance is marked terminated, and its cost is the finite penalty ``threshold``. A terminated instance
stays frozen and keeps paying ``threshold`` per step until it is reset; the penalty is a constant, so a rejected
step's gradient (meta-training through :func:`step`) is exactly zero for that instance, never NaN (:func:`transition`
cannot ensure it: the objective and gradient it is given carry the caller's graph, whose backward pass at an
overflowing iterate gives NaN; zero the rejected rows' gradient where that graph meets the step, as :func:`step`
does). The threshold is capped at
:func:`penalty_cap` ``= √(largest finite value of the dtype)`` (≈ 1.8e19 in float32, 1.3e154 in float64), so
the penalty, sums of it over any episode and differences of objectives never overflow, whatever ``blowup``
is. A step whose scaled gradient (or, with ``include_steps``, scaled step) overflows the dtype is treated
as divergence too, so every observation is finite.

**Observation** (:func:`features`; Li & Malik's state without θ). With history length ``H``:

* ``H`` objective features: for ``i = H, …, 1`` (oldest first), the relative change
  ``(f_t − f_{t−i}) / (|f_{t−i}| + eps)``, clipped to ``[−feature_clip, feature_clip]``;
* ``H·d`` gradient features: ``grad_scale · ∇f(θ_{t−j})`` for ``j = H−1, …, 0`` (oldest first), flattened
  iterate-major (``[H, d]`` → ``H·d``);
* optionally (``include_steps``) ``H·d`` past steps ``grad_scale · Δθ`` laid out the same way.

Entries that refer to iterates before ``θ₀`` are zero (zero padding at the start of an episode). The state holds
the histories as tuples of ``H`` per-iterate tensors (``State.grads``, ``State.steps``) and :func:`features`
assembles the flat observation on request, a new tensor each call; policies that read only the gradient (the
LSTM, the hand-designed optimizers) never pay for it. :func:`coordinate_features` gives the per-coordinate view
``[N, d, F_c]`` (``F_c = 2H`` or ``3H``) that coordinatewise policies (the LSTM) read: coordinate ``k``'s gradient and step histories plus the shared
objective features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from l2o_gym.problems.base import ProblemBatch
from l2o_gym.checks import check_positive, check_positive_int


#: Largest accepted ``horizon``: the step counter ``t`` is int64 and must reach it without wrapping.
MAX_HORIZON: int = 2**62


def penalty_cap(dtype: torch.dtype) -> float:
    """Upper bound of the divergence threshold (and penalty) in ``dtype``: ``√finfo(dtype).max``.

    ≈ 1.8e19 for float32, 1.3e154 for float64: any sum of ``2**62`` penalties, and the difference of two
    accepted objectives, stay finite."""
    return math.sqrt(torch.finfo(dtype).max)


def check_config_dtype(config: CoreConfig, dtype: torch.dtype) -> None:
    """Raise ``ValueError`` naming the field if a constant of ``config`` is not finite in ``dtype``
    (e.g. ``feature_clip=1e39`` in float32 would clip nothing and let ``inf`` through)."""
    big = torch.finfo(dtype).max
    for name in ("grad_scale", "feature_clip"):
        value = getattr(config, name)
        if value > big:
            raise ValueError(f"{name}={value!r} is not finite in {dtype} (largest finite value {big:.3g})")
    if config.eps < torch.finfo(dtype).tiny:
        raise ValueError(f"eps={config.eps!r} underflows in {dtype} (smallest normal value {torch.finfo(dtype).tiny:.3g})")


@dataclass(frozen=True)
class CoreConfig:
    """Constants of the optimization MDP.

    Args:
        horizon: episode length ``T`` (steps); ``truncated`` once ``t ≥ T``; at most :data:`MAX_HORIZON`.
        history: number ``H`` of past iterates in the observation (Li & Malik: 25).
        include_steps: also put the last ``H`` steps Δθ into the observation.
        second_order: keep the autograd graph of the optimizee gradient (second-order meta-gradients).
        blowup: divergence factor: an objective above ``blowup · (|f(θ₀)| + 1)`` terminates the episode.
        grad_scale: multiplier applied to gradient (and step) features.
        feature_clip: bound on the relative objective-change features.
        eps: denominator guard of the relative objective change.
        validate: check every action's shape, dtype, device and finiteness (one device sync per step).
        true_every: evaluate the true objective (families that have one) every this many steps (and at the
            horizon); 1 = every step.
    """

    horizon: int = 100
    history: int = 25
    include_steps: bool = False
    second_order: bool = False
    blowup: float = 1e4
    grad_scale: float = 1.0
    feature_clip: float = 1e3
    eps: float = 1e-8
    validate: bool = True
    true_every: int = 1

    def __post_init__(self) -> None:
        check_positive_int("horizon", self.horizon)
        if self.horizon > MAX_HORIZON:
            raise ValueError(f"horizon must be at most 2**62 (the int64 step counter), got {self.horizon!r}")
        check_positive_int("true_every", self.true_every)
        check_positive_int("history", self.history)
        check_positive("blowup", self.blowup)
        check_positive("grad_scale", self.grad_scale)
        check_positive("feature_clip", self.feature_clip)
        check_positive("eps", self.eps)


@dataclass(frozen=True)
class State:
    """Full state of ``N`` optimizees (θ included; policies read :func:`features` instead).

    Attributes:
        problems: the ``N`` objective functions; ``None`` in a state rebuilt from its tensors alone
            (:data:`STATE_TENSORS`: feature views, ``LearnedOptimizer``), which only :func:`transition` advances.
        config: the MDP constants.
        theta: ``[N, d]`` current iterates θ_t.
        loss: ``[N]`` current objective f(θ_t) (last finite value once terminated).
        grad: ``[N, d]`` current gradient ∇f(θ_t).
        loss_hist: ``[N, H+1]`` objectives f_{t−H}, …, f_t (oldest first; zero before θ₀).
        grads: the ``H`` last scaled gradients ``grad_scale · ∇f(θ_{t−j})``, ``j = H−1, …, 0`` (oldest first), a
            tuple of ``[N, d]`` tensors (zero before θ₀). A step drops the oldest and appends the newest without
            copying the others; :func:`features` assembles the observation from them on request (a new tensor
            each call: the caller's to keep or edit).
        steps: the ``H`` last scaled steps ``grad_scale · Δθ`` laid out the same way with ``include_steps``, else
            ``()``.
        t: ``[N]`` int64 iteration counters.
        threshold: ``[N]`` divergence thresholds ``blowup · (|f(θ₀)| + 1)`` (also the penalty).
        terminated: ``[N]`` bool, diverged.
        true_loss: ``[N]`` true objective at the last iterate where it was evaluated (see the module
            docstring), or ``None`` for families without one (then ``loss`` is exact).
    """

    problems: ProblemBatch | None
    config: CoreConfig
    theta: Tensor
    loss: Tensor
    grad: Tensor
    loss_hist: Tensor
    grads: tuple[Tensor, ...]
    steps: tuple[Tensor, ...]
    t: Tensor
    threshold: Tensor
    terminated: Tensor
    true_loss: Tensor | None = None

    @property
    def n(self) -> int:
        return self.theta.shape[0]

    @property
    def dim(self) -> int:
        return self.theta.shape[1]

    @property
    def grad_hist(self) -> Tensor:
        """``[N, H, d]``: ``grad_scale · ∇f`` at θ_{t−H+1}, …, θ_t (oldest first; zero before θ₀); a new tensor."""
        return torch.stack(self.grads, 1)

    @property
    def step_hist(self) -> Tensor | None:
        """``[N, H, d]``: the last ``H`` steps (``grad_scale · Δθ``), or ``None`` unless ``include_steps``."""
        return torch.stack(self.steps, 1) if self.steps else None

    @property
    def obs(self) -> Tensor:
        """The flat observation ``[N, F]`` (:func:`features`; a new tensor each time)."""
        return features(self)

    def _tensor_fields(self) -> list[str]:
        return [f.name for f in fields(self) if isinstance(getattr(self, f.name), (Tensor, tuple))]

    @property
    def objective(self) -> Tensor:
        """``[N]`` the objective reports use: :attr:`true_loss` where the family has one, else :attr:`loss`."""
        return self.loss if self.true_loss is None else self.true_loss

    def detach(self) -> State:
        """The same state cut from the autograd graph (truncated BPTT)."""
        return replace(self, **{k: _map(Tensor.detach, getattr(self, k)) for k in self._tensor_fields()})

    def scatter(self, idx: Tensor, other: State) -> State:
        """A new state whose instances ``idx`` (``[k]`` indices) are replaced by ``other`` (``k`` instances)."""

        def put(a: Tensor, b: Tensor) -> Tensor:
            a = a.clone()
            a[idx] = b
            return a

        out: dict[str, Any] = {}
        for k in self._tensor_fields():
            a, b = getattr(self, k), getattr(other, k)
            out[k] = tuple(put(x, y) for x, y in zip(a, b)) if isinstance(a, tuple) else put(a, b)
        return replace(self, problems=self.problems.scatter(idx, other.problems), **out)


def _map(fn: Any, x: Tensor | tuple[Tensor, ...]) -> Any:
    """``fn`` applied to a state field: a tensor, or each tensor of a history tuple."""
    return tuple(fn(v) for v in x) if isinstance(x, tuple) else fn(x)


def obs_dim(config: CoreConfig, dim: int) -> int:
    """Length ``F`` of the flat observation for problems of dimension ``dim``."""
    h = config.history
    return h + h * dim * (2 if config.include_steps else 1)


def coordinate_feature_dim(config: CoreConfig) -> int:
    """Length ``F_c`` of the per-coordinate observation."""
    return config.history * (3 if config.include_steps else 2)


#: Names of the tensor fields of :class:`State` (everything but ``problems`` and ``config``), in order: what a
#: state is saved or carried as when its problems are not at hand (``LearnedOptimizer``, feature views).
#: ``true_loss`` is not among them: states without problems have no true objective.
STATE_TENSORS: tuple[str, ...] = tuple(
    f.name for f in fields(State) if f.name not in ("problems", "config", "true_loss"))

#: The earlier layout of :data:`STATE_TENSORS` (l2o-gym up to 2026-11-30), when the gradient and step histories were
#: stored inside one flat observation ``obs[N, F]``: what older ``LearnedOptimizer`` states hold
#: (:func:`state_from_tensors` reads both).
_STATE_TENSORS_OBS: tuple[str, ...] = ("theta", "loss", "grad", "loss_hist", "obs", "t", "threshold", "terminated")


class HistoryMismatch(ValueError):
    """A saved state whose histories do not fit the :class:`CoreConfig` it is loaded with (another ``history`` or
    ``include_steps``)."""


def state_from_tensors(values: dict[str, Any] | tuple[Any, ...] | list[Any], config: CoreConfig) -> State:
    """A state without problems (only :func:`transition` advances it) from its tensors: a dict by
    :data:`STATE_TENSORS` name or a sequence in that order — or the older layout with one flat ``obs``, which is
    split into the histories.

    Raises:
        HistoryMismatch: histories (or an ``obs`` width) that do not fit ``config``.
        ValueError: neither layout, or a field missing.
    """
    if not isinstance(values, dict):
        values = list(values)
        names = STATE_TENSORS if len(values) == len(STATE_TENSORS) else _STATE_TENSORS_OBS
        if len(values) != len(names):
            raise ValueError(f"a state has {len(STATE_TENSORS)} tensors ({', '.join(STATE_TENSORS)}; earlier layout: "
                             f"{len(_STATE_TENSORS_OBS)}, {', '.join(_STATE_TENSORS_OBS)}), got {len(values)}")
        values = dict(zip(names, values))
    values = dict(values)
    if "obs" in values:
        obs = values.pop("obs")
        n, d, h = obs.shape[0], values["theta"].shape[1], config.history
        if obs.shape[1] != obs_dim(config, d):
            raise HistoryMismatch(
                f"a saved observation of width {obs.shape[1]} does not fit history {config.history}, "
                f"include_steps={config.include_steps} and dimension {d} (width {obs_dim(config, d)})")
        hist = obs[:, h:].reshape(n, -1, d).unbind(1)
        values["grads"], values["steps"] = tuple(hist[:h]), tuple(hist[h:])
    missing = [k for k in STATE_TENSORS if k not in values]
    if missing:
        raise ValueError(f"a saved state lacks {', '.join(missing)}")
    # the histories as tuples whatever sequence they arrive in (a list from a deserialiser): transition appends with
    # ``+ (new,)`` and detach/scatter recognise them as tuples
    values["grads"], values["steps"] = tuple(values["grads"]), tuple(values["steps"])
    h, steps = config.history, config.history if config.include_steps else 0
    if len(values["grads"]) != h or len(values["steps"]) != steps:
        raise HistoryMismatch(
            f"the state's histories hold {len(values['grads'])} gradients and {len(values['steps'])} steps, history "
            f"{h} with include_steps={config.include_steps} needs {h} and {steps}")
    return State(problems=None, config=config, **{k: values[k] for k in STATE_TENSORS})  # type: ignore[arg-type]


def reset(problems: ProblemBatch, config: CoreConfig | None = None) -> State:
    """Start ``problems.n`` episodes at the problems' initial points θ₀.

    Raises:
        ValueError: if some instance has a non-finite objective or gradient at θ₀.
    """
    config = config or CoreConfig()
    theta = problems.x0
    check_config_dtype(config, theta.dtype)
    zero_t = torch.zeros(problems.n, dtype=torch.int64, device=problems.device)
    f0, g0 = problems.loss_and_grad(theta, zero_t, create_graph=config.second_order)
    bad = ~(torch.isfinite(f0) & rows_finite(g0 * config.grad_scale))
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()[:10]
        raise ValueError(f"{problems.family.name}: non-finite objective or gradient at x0 for instances {idx}")
    state = initial_state(theta, f0, g0, config, problems)
    if problems.has_true_loss:
        true0 = problems.true_loss(theta)
        bad = ~torch.isfinite(true0)
        if bool(bad.any()):
            idx = bad.nonzero().flatten().tolist()[:10]
            raise ValueError(f"{problems.family.name}: non-finite true objective at x0 for instances {idx}")
        state = replace(state, true_loss=true0)
    return state


def initial_state(theta: Tensor, loss: Tensor, grad: Tensor, config: CoreConfig | None = None,
                  problems: ProblemBatch | None = None) -> State:
    """A start state (``t = 0``) from an iterate ``theta[N, d]``, its objective ``loss[N]`` and gradient
    ``grad[N, d]`` evaluated elsewhere — e.g. by :class:`l2o_gym.optim.LearnedOptimizer` from a user's
    closure, where there is no :class:`ProblemBatch` (``problems`` may then be ``None``; only
    :func:`transition`, not :func:`step`, can advance such a state). Same layout as :func:`reset`.
    """
    config = config or CoreConfig()
    check_config_dtype(config, theta.dtype)
    n, d, h = theta.shape[0], theta.shape[1], config.history
    loss_hist = torch.cat([loss.new_zeros(n, h), loss.detach()[:, None]], dim=1)
    zero = grad.new_zeros(n, d)  # every slot before θ₀ (shared: never written in place)
    return State(
        problems=problems,  # type: ignore[arg-type]
        config=config,
        theta=theta,
        loss=loss,
        grad=grad,
        loss_hist=loss_hist,
        grads=(zero,) * (h - 1) + (grad.detach() * config.grad_scale,),
        steps=(zero,) * h if config.include_steps else (),
        t=torch.zeros(n, dtype=torch.int64, device=theta.device),
        threshold=(config.blowup * (loss.detach().abs() + 1.0)).clamp_max(penalty_cap(loss.dtype)),
        terminated=torch.zeros(n, dtype=torch.bool, device=theta.device),
    )


def check_action(state: State, action: Any) -> None:
    """Raise a clear ``TypeError``/``ValueError`` unless ``action`` is a finite ``[N, d]`` tensor like θ."""
    if not isinstance(action, Tensor):
        raise TypeError(f"action must be a torch.Tensor of shape {tuple(state.theta.shape)}, got {type(action).__name__}")
    if action.shape != state.theta.shape:
        raise ValueError(f"action has shape {tuple(action.shape)}, expected {tuple(state.theta.shape)} ([N, d])")
    if action.dtype != state.theta.dtype:
        raise TypeError(f"action has dtype {action.dtype}, expected {state.theta.dtype}")
    if action.device != state.theta.device:
        raise ValueError(f"action is on device {action.device}, expected {state.theta.device}")
    finite = rows_finite(action)
    if not bool(finite.all()):
        idx = (~finite).nonzero().flatten().tolist()[:10]
        raise ValueError(f"action contains NaN or inf (instances {idx}); steps must be finite")


def step(state: State, action: Tensor) -> tuple[State, Tensor, Tensor, Tensor]:
    """Advance every instance by ``action`` (the raw step Δθ, ``[N, d]``).

    Returns:
        ``(next_state, cost[N], terminated[N], truncated[N])``: ``cost`` is ``f(θ_{t+1})`` or the divergence
        penalty (see the module docstring); it carries the graph of ``action`` when there is one.
    """
    cfg = state.config
    if cfg.validate:
        check_action(state, action)
    if state.problems is None:
        raise ValueError("step() needs a state with its problems (this one was rebuilt from tensors alone); "
                         "advance it with transition(state, action, loss, grad)")
    cand = state.theta + action
    accepted: list[Tensor] = []  # filled below; read by the hook during a later backward pass
    if cand.requires_grad:
        # A rejected instance's cost is the constant penalty, so its gradient is zero; but the family's backward
        # pass at an overflowing iterate computes 0·inf = NaN there, and one such row made the whole meta-gradient
        # NaN. Select (not multiply) zeros for the rejected rows where the objective's graph meets the step (not
        # in the family's own gradient computation below, which runs before the step is judged).
        cand.register_hook(lambda gr: torch.where(accepted[0][:, None], gr, torch.zeros((), dtype=gr.dtype,
                                                                                      device=gr.device))
                           if accepted else gr)
    f, g = state.problems.loss_and_grad(cand, state.t + 1, create_graph=cfg.second_order)
    true_f = None
    if state.true_loss is not None and bool(true_due(state.t + 1, cfg).any()):
        true_f = state.problems.true_loss(cand)
    # the state's iterate: the hooked candidate itself without a graph; with one, a separate sum (the hook belongs
    # to the objective's graph only)
    out = _transition(state, action, state.theta + action if cand.requires_grad else cand, f, g, true_f)
    accepted.append(~out[2])
    return out


def rows_finite(x: Tensor) -> Tensor:
    """``[N]`` bool: whether every entry of each row of ``x[N, d]`` is finite (``torch.isfinite(x).all(-1)``).

    On the CPU one cheap pass decides the common case: a row whose sum is finite has only finite entries (a NaN
    or ±inf anywhere makes the sum NaN or ±inf); only when some row's sum is not finite (a non-finite entry, or
    finite entries whose sum overflows) does the exact entrywise test run. Elsewhere (CUDA) the entrywise test
    runs directly, without a host synchronisation.
    """
    if x.device.type == "cpu" and x.dim() == 2 and x.shape[1] > 1:
        quick = torch.isfinite(x.sum(-1))
        if bool(quick.all()):
            return quick
    return torch.isfinite(x).all(-1)


def _all_on_cpu(mask: Tensor) -> bool:
    """Whether ``mask`` is all true, asked only on the CPU (where asking costs nothing); ``False`` elsewhere, so
    the caller takes its general ``torch.where`` path without a host synchronisation."""
    return mask.device.type == "cpu" and bool(mask.all())


def true_due(t: Tensor, config: CoreConfig) -> Tensor:
    """``[N]`` bool: whether the true objective is evaluated at iteration counter ``t[N]``."""
    return (t % config.true_every == 0) | (t >= config.horizon)


def transition(
    state: State, action: Tensor, f: Tensor, g: Tensor, true_f: Tensor | None = None
) -> tuple[State, Tensor, Tensor, Tensor]:
    """The bookkeeping half of :func:`step`, given the objective ``f[N]`` and gradient ``g[N, d]`` at
    ``θ_t + action`` evaluated elsewhere (e.g. by :class:`l2o_gym.optim.LearnedOptimizer` from a user's
    closure): divergence check, history update, new observation. Same return value as :func:`step`.

    ``f`` and ``g`` are taken over, not copied (the new state may hold them): do not edit them in place afterwards.
    """
    return _transition(state, action, state.theta + action, f, g, true_f)


def _transition(
    state: State, action: Tensor, cand: Tensor, f: Tensor, g: Tensor, true_f: Tensor | None
) -> tuple[State, Tensor, Tensor, Tensor]:
    """:func:`transition` given the candidate iterate ``cand = θ_t + action`` (computed once by :func:`step`)."""
    cfg = state.config
    t = state.t + 1
    scale = cfg.grad_scale
    g_feat = g.detach() * scale if scale != 1.0 else g.detach()
    # NaN compares False, so this also rejects NaN objectives; -inf and inf (or overflowing scaled)
    # gradients are checked explicitly.
    ok = (f <= state.threshold) & (f > float("-inf")) & rows_finite(g_feat) & ~state.terminated
    true_now = true_due(t, cfg) if true_f is not None else None  # where true_f is this step's true objective
    if true_now is not None:  # a true objective that overflows where it is evaluated diverges too (never a NaN cost)
        ok = ok & ~(true_now & ~torch.isfinite(true_f.detach()))
    if cfg.include_steps:
        ok = ok & rows_finite(action.detach() * scale)
    ok_col = ok[:, None]
    # Every instance accepted (the common case, asked on the CPU only) and no graph to keep: the new values are the
    # candidates themselves — the same numbers as the selections below, without three passes over [N, d]. With a
    # graph (meta-training) the selections stay, so the backward pass is the same whatever the instances did.
    # Only for operands of the state's own shapes and dtypes: the selections also broadcast (an action or gradient
    # of shape [1, d] or [d], allowed with validate=False) and promote (a gradient of another dtype), which the
    # candidates alone would not.
    every = (not (cand.requires_grad or g.requires_grad or action.requires_grad)
             and action.shape == cand.shape == g.shape == state.grad.shape
             and g.dtype == state.grad.dtype == state.grads[-1].dtype
             and _all_on_cpu(ok))
    theta = cand if every else torch.where(ok_col, cand, state.theta)
    loss = torch.where(ok, f, state.loss)
    grad = g if every else torch.where(ok_col, g, state.grad)
    true_loss = state.true_loss
    if true_loss is not None:
        if true_now is not None:
            true_loss = torch.where(ok & true_now, true_f, true_loss)
        cost = torch.where(ok, true_loss, state.threshold)
    else:
        cost = torch.where(ok, f, state.threshold)
    terminated = ~ok
    loss_hist = torch.cat([state.loss_hist[:, 1:], loss.detach()[:, None]], dim=1)
    # The histories: drop the oldest gradient (and step), append the newest; nothing else is copied.
    grads = state.grads[1:] + (g_feat if every else torch.where(ok_col, g_feat, state.grads[-1]),)
    steps = state.steps
    if cfg.include_steps:
        taken = action.detach() if every else torch.where(ok_col, action, torch.zeros_like(action)).detach()
        steps = steps[1:] + (taken * scale,)
    new = State(
        problems=state.problems,
        config=cfg,
        theta=theta,
        loss=loss,
        grad=grad,
        loss_hist=loss_hist,
        grads=grads,
        steps=steps,
        t=t,
        threshold=state.threshold,
        terminated=terminated,
        true_loss=true_loss,
    )
    return new, cost, terminated, t >= cfg.horizon


def _loss_features(loss_hist: Tensor, t: Tensor, cfg: CoreConfig) -> Tensor:
    past = loss_hist[:, :-1]
    rel = (loss_hist[:, -1:] - past) / (past.abs() + cfg.eps)
    rel = rel.clamp(-cfg.feature_clip, cfg.feature_clip)
    age = torch.arange(cfg.history, 0, -1, device=rel.device)
    return torch.where(age[None, :] <= t[:, None], rel, torch.zeros((), dtype=rel.dtype, device=rel.device))


def loss_features(state: State) -> Tensor:
    """``[N, H]`` relative objective changes ``(f_t − f_{t−i}) / (|f_{t−i}| + eps)``, ``i = H…1``."""
    return _loss_features(state.loss_hist, state.t, state.config)


def _feature_parts(state: State) -> list[Tensor]:
    """The pieces of the flat observation, in its layout: objective features, gradient history, step history."""
    return [loss_features(state), *state.grads, *state.steps]


def features(state: State) -> Tensor:
    """The flat observation ``[N, F]`` with ``F = obs_dim(config, d)`` (layout in the module docstring).

    Assembled from the state's histories in one copy on each call: the returned tensor is the caller's (editing
    it changes nothing in the state).
    """
    return torch.cat(_feature_parts(state), dim=1)


def coordinate_features(state: State) -> Tensor:
    """Per-coordinate observation ``[N, d, F_c]``: gradient history, shared objective features, step history."""
    cfg = state.config
    n, d, h = state.n, state.dim, cfg.history
    parts = [torch.stack(state.grads, 2), loss_features(state)[:, None, :].expand(n, d, h)]
    if state.steps:
        parts.append(torch.stack(state.steps, 2))
    return torch.cat(parts, dim=2)


def full_state(state: State) -> Tensor:
    """The full state vector ``x = [θ, f(θ), features]``, ``[N, d + 1 + F]`` (GPS local policies act on it)."""
    return torch.cat([state.theta, state.loss[:, None], *_feature_parts(state)], dim=1)  # one copy
