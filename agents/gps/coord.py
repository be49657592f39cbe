"""Convolutional GPS (Li & Malik 2017, "Learning to Optimize Neural Nets"): the per-coordinate, group-shared
pieces of the local side.

**Coordinate groups.** A group ``g`` is one parameter tensor of the optimizee (one weight matrix or bias
vector: :meth:`l2o_gym.problems.ProblemFamily.param_specs`), ``n_g`` coordinates. Every coordinate ``i`` of a
problem has its own local state ``s^i_t ∈ R^{dS}`` (:class:`CoordinateFeatures`, the features Φ) and action
``a^i_t ∈ R`` (its step). The dynamics, the cost and the local controllers are assumed **block-diagonal per
coordinate with parameters shared within a group**::

    s^i_{t+1} ~ N(F^g_t [s^i_t; a^i_t] + f^g_t, W^g_t)      a^i_t ~ N(K^g_t s^i_t + k^g_t, σ^g_t)
    c(s_t, a_t) = Σ_g Σ_{i ∈ g} c^g_t(s^i_t, a^i_t)

Then the LQG problem of the whole net (state dimension ``d·dS``) is ``n_g`` identical copies of one small
LQG per group (state ``dS``, action 1): the value function is block-diagonal with identical blocks, the
backward pass of the full problem assembles ``K = blockdiag(K^g, …, K^g)`` (tested against the full LQR on the
assembled system), the expected cost of the whole net is ``Σ_g n_g ×`` the group's, and the KL divergence
between two such controllers is ``Σ_g n_g KL_g``. A trust region ``ε_g`` *per coordinate* in group ``g``
therefore bounds the full controller's KL by ``Σ_g n_g ε_g``. :func:`l2o_gym.agents.gps.lqr.solve_kl_step`
solves all groups at once with ``M = G`` conditions (the groups), unchanged.

**Samples.** Every coordinate of a group at every sampled trajectory is a sample of that group's dynamics:
:class:`DynamicsMoments` accumulates, per group and time step, the count, mean and covariance of
``z = [s_t; a_t; s_{t+1}]`` while trajectories run (nothing of size ``trajectories × d × T`` is stored), adds
moments from several processes (``torch.distributed.all_reduce`` of the raw sums), and fits the dynamics with
:func:`l2o_gym.agents.gps.dynamics.dynamics_from_moments` (the normal-inverse-Wishart posterior around a prior
pooled over all groups and time steps). Non-finite samples are dropped and counted, never fed to a fit.

**Gradient-sign frame.** The effect of a step on the objective is ``Σ_i g^i a^i`` to first order: bilinear in
state and action, which no linear model of one coordinate can represent (pooled over coordinates whose
gradients have both signs, a regression of ``Δf`` on ``a^i`` sees nothing). Every per-coordinate quantity is
therefore expressed in the frame of the current gradient's sign ``σ^i_t = sign(g^i_t)`` (``+1`` at 0): the
features hold ``σ·ĝ`` (≥ 0 when the averaged and current gradients agree) and sign agreements, the
controllers and the global policy output ``a' = σ·a`` (the step *along* the gradient), and the dynamics are
fitted on ``(s, a', s')``; in that frame ``Δf ≈ Σ_i |g^i| a'^i`` is linear in the action with a coefficient of one
sign. The optimizer is then equivariant to flipping the sign of any coordinate (θ^i → −θ^i flips g^i and the
step), as a hand-designed first-order method is (tested), except at steps where a coordinate's gradient is
exactly 0: its frame is then +1 either way.

**Step unit.** The executed step is ``Δθ^i = σ^i ρ^i a'^i``. With ``step_unit="sign"`` (the first shipped
policy) ``ρ = 1``: the frame step is the step itself, and the features Φ and Ψ are scale-free, so no
controller linear in Φ (and no policy of Ψ) can make its steps follow the gradient's size, and near a minimum
the optimizer keeps stepping at the size it learned for the middle of the run (measured: docs/conv-gps.md).
With ``step_unit="decay"`` ``ρ^i_t = rms^i_t / max_{s≤t} rms^i_s ∈ [0, 1]``, the gradient's current RMS
relative to its largest so far: 1 while gradients keep their size or grow, and falling with them as they
vanish. The initial controller's constant frame step is then ``−lr · ḡ / max rms``, gradient descent with a
per-coordinate learning rate that stops changing once the gradient has peaked (a maximum, not a mean over
the run, so that the effective learning rate cannot grow past the horizon as a mean of ever smaller gradients
would); and the Newton step ``−g / h``, which a scale-free linear controller cannot represent in absolute
units, is ``a' ≈ −(|ḡ| / rms) · max rms / h``: linear in Φ's normalised gradient with a constant gain.
With ``step_unit="sqrt"`` ``ρ`` is the square root of that ratio: the initial controller's step
``−lr · ḡ / sqrt(rms · max rms)`` shrinks with the square root of the gradient, between the other two; its
per-coordinate learning rate keeps growing as the gradient vanishes, without the early steps being as large
as the late rate would make them (docs/conv-gps.md, *Step unit*, has the measurements that led to it).
``ρ`` is element-wise, so permutation and sign-flip equivariance are unchanged.

**Averaged gradient.** Φ's ``GRAD`` is ``σ ḡ / rms`` with ``rms`` the running RMS (decay :data:`GRAD_DECAY`)
of the mean of the last 3 gradients, as Li & Malik average the last 3 iterates, gradients and objective values.
With ``grad_average="last3"`` ``ḡ`` is that mean too, and the initial controller ``a' = −lr σ ḡ / rms`` has 3
steps of memory. With ``grad_average="ema"`` ``ḡ`` is the bias-corrected exponential moving average of the
gradient with decay :data:`MOMENTUM_DECAY` (Adam's first moment; ``rms``, the unit ``ρ`` and the iterate and
objective averages are unchanged — normalising by the RMS of the average itself was measured worse), and Ψ
gets ``σ ḡ / rms`` as a fifth entry, so the global policy sees the quantity the controllers are linear in.
The initial controller is then a momentum method with about 10 steps of memory, which damps the early
oscillation that the 3-step average lets through (docs/conv-gps.md, *Averaged gradient*, has the measurements).

**Cost.** The objective is shared by all coordinates, so a per-coordinate model cannot attribute its value
to one coordinate's step: a regression of ``f_{t+1}`` on ``a^i`` over the coordinates of one trajectory sees a
constant. What *is* additive over coordinates is the local second-order model of the objective's change,
``f(θ + Δθ) − f(θ) ≈ Σ_i (g^i Δθ^i + ½ h^i (Δθ^i)²)``, which in frame units is
``Σ_i (|g^i| ρ^i a'^i + ½ h^i ρ^i² a'^2)``. The per-coordinate cost is this model (normalised by ``|f_0|``),
expanded around the samples as GPS expands any cost: ``|g^i_t| ρ^i_t / |f_0|`` is regressed on the local state
per group and time step (``β_tᵀ s + β0_t``, a state-action cross term of the quadratic cost), and the curvature
``h_t`` (per unit frame step) is the secant curvature along the steps the samples took,
``Σ (g_{t+1} − g_t)·Δθ_t / Σ a'_t²`` (clipped at 0); ``w_u`` is added to it (:class:`CostMoments`)::

    c^g_t(s, a') = (β_tᵀ s + β0_t) a' + ½ (h_t + w_u) a'²

Summed over coordinates and time this is the model's predicted total decrease of ``f / |f_0|`` over the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from l2o_gym.agents.gps.cost import QuadraticCost
from l2o_gym.agents.gps.dynamics import GaussianPrior, GPSFitError, dynamics_from_moments
from l2o_gym.agents.gps.lingauss import LinearGaussianDynamics, LinearGaussianPolicy, sym
from l2o_gym.problems.base import ParamSpec

#: number of relative changes of the averaged objective in Φ, and their stride (iterations).
N_OBJ_CHANGES: int = 25
OBJ_STRIDE: int = 5
#: iterates averaged for the local-state features (Li & Malik 2017: the last 3).
AVERAGE_OVER: int = 3
#: decay of the running mean square that normalises gradients (element-wise, as in RMSprop).
GRAD_DECAY: float = 0.9
_EPS: float = 1e-8

#: units of the frame step (module docstring, *Step unit*) and the exponent ``p`` of ``ρ = (rms / max rms)^p``:
#: ``Δθ = σ a'`` (``p = 0``), ``Δθ = σ ρ a'`` with ``p = ½`` or ``p = 1``.
UNIT_POWER: dict[str, float] = {"sign": 0.0, "sqrt": 0.5, "decay": 1.0}
STEP_UNITS: tuple[str, ...] = tuple(UNIT_POWER)

#: how Φ's averaged gradient ``ḡ`` is formed (module docstring, *Averaged gradient*): ``"last3"`` — the mean of
#: the last :data:`AVERAGE_OVER` gradients (Li & Malik 2017); ``"ema"`` — the bias-corrected exponential moving
#: average ``m_t / (1 − β^{t+1})``, ``m_t = β m_{t−1} + (1 − β) g_t``, ``β`` = :data:`MOMENTUM_DECAY` (Adam's first
#: moment), which also adds ``σ ḡ / rms`` to Ψ.
GRAD_AVERAGES: tuple[str, ...] = ("last3", "ema")
MOMENTUM_DECAY: float = 0.9

#: layout of the local state Φ (``STATE_DIM`` entries per coordinate).
OBJ: int = 0  #: f̄_t / f̄_0, the averaged objective relative to its start value
GRAD: int = 1  #: ḡ_t / sqrt(running mean of ḡ²), the normalised averaged gradient
STEP_RATIO: int = 2  #: log((|x̄_t − x̄_{t−1}| + ε) / (|x̄_{t−1} − x̄_{t−2}| + ε)), clipped to ±10
AGREE: int = 3  #: σ · sign(x̄_t − x̄_{t−1}): does the last averaged move point along the current gradient?
OBJ_CHANGES: slice = slice(4, 4 + N_OBJ_CHANGES)  #: (f̄_{t−5(k−1)} − f̄_{t−5k}) / |f̄_{t−5k}|, k = 1…25, clipped to ±10
STATE_DIM: int = 4 + N_OBJ_CHANGES
#: layout of the observation Ψ (global side): one-step relative objective change, |g_t| / rms, log step
#: ratio, σ · sign(Δθ_{t−1}); with ``grad_average="ema"`` a fifth entry, σ ḡ / rms (Φ's ``GRAD``).
OBS_DIM: int = 4


def obs_dim(grad_average: str = "last3") -> int:
    """Entries of Ψ per coordinate for a :data:`GRAD_AVERAGES` choice (:data:`OBS_DIM`, plus one for ``"ema"``)."""
    return OBS_DIM + (check_grad_average(grad_average) == "ema")


def check_grad_average(grad_average: str) -> str:
    """``grad_average`` if it is one of :data:`GRAD_AVERAGES`, else a ``ValueError`` naming it."""
    if grad_average not in GRAD_AVERAGES:
        raise ValueError(f"grad_average must be one of {GRAD_AVERAGES}, got {grad_average!r}")
    return grad_average


def check_step_unit(step_unit: str) -> str:
    """``step_unit`` if it is one of :data:`STEP_UNITS`, else a ``ValueError`` naming it."""
    if step_unit not in STEP_UNITS:
        raise ValueError(f"step_unit must be one of {STEP_UNITS}, got {step_unit!r}")
    return step_unit


def group_index(specs: tuple[ParamSpec, ...], device: torch.device | str = "cpu") -> Tensor:
    """``[d]`` int64: the group (index into ``specs``) of every coordinate of θ."""
    sizes = torch.tensor([s.numel for s in specs], device=device)
    return torch.repeat_interleave(torch.arange(len(specs), device=device), sizes)


def contiguous_segments(groups: Tensor) -> list[tuple[slice, slice, int]]:
    """``(all rows, cols, index)`` for every run of equal values in ``groups[d]`` (coordinate groups are
    contiguous in θ, so this is one segment per parameter tensor)."""
    g = groups.tolist()
    out, start = [], 0
    for i in range(1, len(g) + 1):
        if i == len(g) or g[i] != g[start]:
            out.append((slice(None), slice(start, i), int(g[start])))
            start = i
    return out


class CoordinateFeatures:
    """Per-coordinate local-state features Φ and observations Ψ of ``N`` problems with ``d`` coordinates,
    in the gradient-sign frame (module docstring; :attr:`frame` is ``σ[N, d]``).

    Call :meth:`reset` with the start iterate, objective and gradient, then :meth:`update` after every step.
    Every quantity is element-wise per coordinate or a per-problem scalar, so permuting the coordinates of θ
    permutes the features the same way (tested). Before enough history exists, missing entries are zero.

    Args:
        step_unit: one of :data:`STEP_UNITS` (module docstring, *Step unit*): what :attr:`scale` is.
        grad_average: one of :data:`GRAD_AVERAGES` (module docstring, *Averaged gradient*): how ``ḡ`` is formed.

    Attributes (after reset):
        state: ``[N, d, STATE_DIM]`` Φ (local side, training only): built when first read after each update,
            so evaluation, which reads only Ψ, never allocates it (it is ``STATE_DIM / obs_dim`` ≈ 6× Ψ's size;
            building it was a fifth of a conv-GPS rollout step on the wide net).
        obs: ``[N, d, obs_dim(grad_average)]`` Ψ (global side, train and test).
        frame: ``σ[N, d]``, the sign of the current gradient (+1 at 0).
        scale: ``ρ[N, d]`` in ``[0, 1]``: ``(rms / max_{s≤t} rms)^p``, ``p`` = :data:`UNIT_POWER` of the unit
            (ones for ``"sign"``).
        unit: ``σ ρ`` ``[N, d]``: the step is ``unit · a'`` for frame steps ``a'[N, d]``.
    """

    def __init__(self, step_unit: str = "sign", grad_average: str = "last3") -> None:
        self.step_unit = check_step_unit(step_unit)
        self.grad_average = check_grad_average(grad_average)
        self._phi: Tensor | None = None  # Φ of the current step once built (:attr:`state`)

    #: attributes every :meth:`update` recomputes before anything reads them (not saved by :meth:`memory_state`).
    _DERIVED = ("_phi", "_gnorm", "obs", "frame", "scale", "unit")

    @property
    def state(self) -> Tensor:
        """Φ ``[N, d, STATE_DIM]`` of the current step (built on first access after each update)."""
        if self._phi is None:
            self._phi = self._build_state()
        return self._phi

    def memory_state(self) -> dict[str, Any]:
        """What the tracker carries from step to step (tensors, lists of tensors, numbers, the two option
        strings; not the features of the last step, which the next :meth:`update` recomputes), for
        :meth:`l2o_gym.optim.LearnedOptimizer.state_dict`; :meth:`from_memory_state` rebuilds it, and the next
        update gives exactly what the original tracker's would."""
        return {k: v for k, v in vars(self).items() if k not in self._DERIVED}

    @classmethod
    def from_memory_state(cls, state: dict[str, Any]) -> CoordinateFeatures:
        """The tracker of :meth:`memory_state` (options checked; ``ValueError`` naming a bad one)."""
        out = cls(str(state.get("step_unit", "sign")), str(state.get("grad_average", "last3")))
        out.__dict__.update({k: v for k, v in state.items() if k not in ("step_unit", "grad_average")})
        return out

    def reset(self, theta: Tensor, loss: Tensor, grad: Tensor, objective: Tensor | None = None) -> None:
        """Start from iterate ``theta[N, d]``, minibatch objective ``loss[N]`` and gradient ``grad[N, d]``.

        ``objective[N]`` (default ``loss``) feeds the objective part of Φ (``OBJ`` and the relative changes);
        Ψ always uses ``loss``. Conv-GPS training passes none: Φ, like Ψ, sees the minibatch values.
        """
        objective = loss if objective is None else objective
        self._x = [theta.clone()]  # last AVERAGE_OVER iterates
        self._g = [grad.clone()]
        self._f = [objective.clone()]
        self._xbar: list[Tensor] = [theta.clone()]  # averaged iterates, last 3
        self._fbar: list[Tensor] = [objective.clone()]  # averaged objective, last N_OBJ_CHANGES·OBJ_STRIDE + 1
        self._f0 = objective.abs().clamp_min(_EPS)
        self._ms = grad * grad
        self._m = torch.zeros_like(grad)  # EMA of the gradient ("ema"), bias-corrected in _build
        self._m_debias = 1.0  # β^(t+1) after the t-th update
        self._rms_max = torch.zeros_like(grad)  # max_s rms_s, for the "sqrt" and "decay" units
        self._prev_loss = loss.clone()
        self._steps: list[Tensor] = []
        self._build(loss, grad)

    def update(self, theta: Tensor, loss: Tensor, grad: Tensor, objective: Tensor | None = None) -> None:
        """Advance by one iteration (arguments as in :meth:`reset`)."""
        objective = loss if objective is None else objective
        self._steps = (self._steps + [theta - self._x[-1]])[-2:]
        self._x = (self._x + [theta.clone()])[-AVERAGE_OVER:]
        self._g = (self._g + [grad.clone()])[-AVERAGE_OVER:]
        self._f = (self._f + [objective.clone()])[-AVERAGE_OVER:]
        self._xbar = (self._xbar + [torch.stack(self._x).mean(0)])[-3:]
        self._fbar = (self._fbar + [torch.stack(self._f).mean(0)])[-(N_OBJ_CHANGES * OBJ_STRIDE + 1):]
        self._build(loss, grad)
        self._prev_loss = loss.clone()

    def _build(self, loss: Tensor, grad: Tensor) -> None:
        n, d = grad.shape
        gbar = torch.stack(self._g).mean(0)  # the mean of the last 3 gradients: its running RMS normalises
        self._ms = GRAD_DECAY * self._ms + (1 - GRAD_DECAY) * gbar * gbar
        rms = self._ms.sqrt()
        if self.grad_average == "ema":
            self._m = MOMENTUM_DECAY * self._m + (1 - MOMENTUM_DECAY) * grad
            self._m_debias *= MOMENTUM_DECAY
            gbar = self._m / (1 - self._m_debias)
        power = UNIT_POWER[self.step_unit]
        if power:
            self._rms_max = torch.maximum(self._rms_max, rms)
            self.scale = (rms / (self._rms_max + _EPS * _EPS)).clamp(0.0, 1.0)
            if power != 1.0:
                self.scale = self.scale.pow(power)
        else:
            self.scale = torch.ones_like(grad)
        sigma = torch.where(grad < 0, -1.0, 1.0).to(grad.dtype)
        self.frame = sigma
        self.unit = sigma * self.scale
        self._gnorm = sigma * gbar / (rms + _EPS)  # Φ's GRAD entry; also Ψ's last one with "ema"
        self._phi = None
        o = grad.new_zeros(n, d, obs_dim(self.grad_average))
        o[..., 0] = ((loss - self._prev_loss) / self._prev_loss.abs().clamp_min(_EPS)).clamp(-10.0, 10.0)[:, None]
        o[..., 1] = grad.abs() / (rms + _EPS)
        if len(self._steps) == 2:
            o[..., 2] = torch.log((self._steps[-1].abs() + _EPS) / (self._steps[-2].abs() + _EPS)).clamp(-10.0, 10.0)
        if self._steps:
            o[..., 3] = sigma * torch.sign(self._steps[-1])
        if self.grad_average == "ema":
            o[..., OBS_DIM] = self._gnorm
        self.obs = o

    def _build_state(self) -> Tensor:
        """Φ of the current step from what the last :meth:`_build` left (the averaged iterates and objectives,
        the normalised averaged gradient and the frame)."""
        sigma = self.frame
        n, d = sigma.shape
        s = sigma.new_zeros(n, d, STATE_DIM)
        s[..., OBJ] = (self._fbar[-1] / self._f0)[:, None]
        s[..., GRAD] = self._gnorm
        if len(self._xbar) >= 2:
            s[..., AGREE] = sigma * torch.sign(self._xbar[-1] - self._xbar[-2])
        if len(self._xbar) >= 3:
            num = (self._xbar[-1] - self._xbar[-2]).abs() + _EPS
            den = (self._xbar[-2] - self._xbar[-3]).abs() + _EPS
            s[..., STEP_RATIO] = torch.log(num / den).clamp(-10.0, 10.0)
        hist = self._fbar[::-1]  # hist[j] = f̄_{t−j}
        for k in range(1, N_OBJ_CHANGES + 1):
            if k * OBJ_STRIDE >= len(hist):
                break
            new, old = hist[(k - 1) * OBJ_STRIDE], hist[k * OBJ_STRIDE]
            s[..., OBJ_CHANGES.start + k - 1] = ((new - old) / old.abs().clamp_min(_EPS)).clamp(-10.0, 10.0)[:, None]
        return s


@dataclass
class CoordinateController:
    """Group-shared linear-Gaussian controllers applied to every coordinate: ``a^i_t ~ N(K^g_t s^i_t + k^g_t, σ^g_t)``.

    Attributes:
        policy: :class:`LinearGaussianPolicy` with ``M = G`` groups: ``K[G, T, 1, dS]``, ``k[G, T, 1]``,
            ``cov[G, T, 1, 1]``.
        groups: ``[d]`` controller of every coordinate (:func:`group_index`), or ``[N, d]`` per row (conv GPS's
            sampler with one controller set per training condition: ``condition · G + group``).
    """

    policy: LinearGaussianPolicy
    groups: Tensor

    def mean(self, s: Tensor, t: int) -> Tensor:
        """Mean frame steps ``a'[N, d]`` for local states ``s[N, d, dS]`` (the step is ``σ · a'``)."""
        K = self.policy.K[self.groups, t, 0]  # [d, dS] or [N, d, dS]
        k = self.policy.k[self.groups, t, 0]  # [d] or [N, d]
        return (s * K).sum(-1) + k

    def sample(self, s: Tensor, t: int, noise: Tensor) -> Tensor:
        """Frame steps ``a'[N, d]`` with standard normal ``noise[N, d]``."""
        std = self.policy.cov[self.groups, t, 0, 0].clamp_min(0.0).sqrt()  # [d] or [N, d]
        return self.mean(s, t) + std * noise


class DynamicsMoments:
    """Streaming per-group, per-time-step moments of ``z = [s_t; a_t; s_{t+1}]`` (module docstring).

    Raw sums (count, Σz, Σzzᵀ) in float64 are kept so that pieces from several batches or processes add up
    exactly; :meth:`all_reduce` sums them across a ``torch.distributed`` process group. ``x0`` moments (the
    local states at ``t = 0``) are kept per group too.

    Args:
        n_groups: ``G``; horizon: ``T``; state_dim: ``dS`` (action dimension is 1).
    """

    def __init__(self, n_groups: int, horizon: int, state_dim: int, device: torch.device | str = "cpu") -> None:
        dz = 2 * state_dim + 1
        opts = {"dtype": torch.float64, "device": device}
        self.G, self.T, self.dS = n_groups, horizon, state_dim
        self.count = torch.zeros(n_groups, horizon, **opts)
        self.sum = torch.zeros(n_groups, horizon, dz, **opts)
        self.outer = torch.zeros(n_groups, horizon, dz, dz, **opts)
        self.x0_count = torch.zeros(n_groups, **opts)
        self.x0_sum = torch.zeros(n_groups, state_dim, **opts)
        self.x0_outer = torch.zeros(n_groups, state_dim, state_dim, **opts)
        #: samples (coordinate × trajectory × step) dropped for being non-finite.
        self.dropped = 0

    def add(self, t: int, s: Tensor, a: Tensor, s_next: Tensor, groups: Tensor, valid: Tensor | None = None) -> None:
        """Add the transitions of step ``t``: ``s[N, d, dS]``, ``a[N, d]``, ``s_next[N, d, dS]``.

        ``groups[d]`` is the moment index of every coordinate (the same for every row). ``valid[N]`` masks
        whole rows (diverged problems); entries with any non-finite value are dropped and counted in
        :attr:`dropped`.
        """
        self.add_segments(t, s, a, s_next, contiguous_segments(groups), valid)

    def add_segments(
        self, t: int, s: Tensor, a: Tensor, s_next: Tensor, segments: list[tuple[Tensor | slice, slice, int]],
        valid: Tensor | None = None,
    ) -> None:
        """Like :meth:`add`, with explicit ``segments``: ``(rows, cols, index)`` — the entries ``[rows, cols]``
        are samples of moment index ``index`` (e.g. the coordinates of group ``g`` in the trajectories of
        condition ``m``)."""
        z = torch.cat([s, a[..., None], s_next], -1).to(torch.float64)  # [N, d, dZ]
        ok = torch.isfinite(z).all(-1)  # [N, d]
        if valid is not None:
            ok = ok & valid[:, None]
        self.dropped += int((~ok).sum())
        z = torch.where(ok[..., None], z, torch.zeros((), dtype=z.dtype, device=z.device))
        w = ok.to(z.dtype)
        for rows, cols, idx in segments:
            zz = z[rows, cols].reshape(-1, z.shape[-1])
            ww = w[rows, cols].reshape(-1)
            self.count[idx, t] += ww.sum()
            self.sum[idx, t] += zz.sum(0)
            self.outer[idx, t] += zz.T @ zz
            if t == 0:
                x = zz[:, : self.dS]
                self.x0_count[idx] += ww.sum()
                self.x0_sum[idx] += x.sum(0)
                self.x0_outer[idx] += x.T @ x

    def merge(self, other: DynamicsMoments) -> None:
        """Add another accumulator's sums (same shape)."""
        for name in ("count", "sum", "outer", "x0_count", "x0_sum", "x0_outer"):
            getattr(self, name).add_(getattr(other, name))
        self.dropped += other.dropped

    def all_reduce(self) -> None:
        """Sum the moments over every process of the default ``torch.distributed`` group (no-op without one)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        for name in ("count", "sum", "outer", "x0_count", "x0_sum", "x0_outer"):
            dist.all_reduce(getattr(self, name))
        dropped = torch.tensor([self.dropped], dtype=torch.float64, device=self.count.device)
        dist.all_reduce(dropped)
        self.dropped = int(dropped.item())

    def _moments(self) -> tuple[Tensor, Tensor, Tensor]:
        if bool((self.count <= 0).any()):
            g, t = (self.count <= 0).nonzero()[0].tolist()
            raise GPSFitError(f"dynamics fit: group {g} has no valid sample at time step {t}")
        cnt = self.count[..., None]
        mean = self.sum / cnt
        emp = self.outer / cnt[..., None] - torch.einsum("gti,gtj->gtij", mean, mean)
        return self.count, mean, sym(emp)

    def prior(self, strength: float = 1.0, reg: float = 1e-6) -> GaussianPrior:
        """The Gaussian of ``z`` pooled over all groups and time steps (the dynamics prior)."""
        n = self.count.sum()
        if float(n) <= 0:
            raise GPSFitError("dynamics prior: no valid samples to fit")
        mean = self.sum.sum((0, 1)) / n
        cov = self.outer.sum((0, 1)) / n - torch.outer(mean, mean)
        cov = sym(cov) + reg * torch.eye(mean.shape[0], dtype=mean.dtype, device=mean.device)
        return GaussianPrior(mean, cov, float(strength))

    def fit(self, prior: GaussianPrior | None = None, reg: float = 1e-6) -> LinearGaussianDynamics:
        """Per-group dynamics ``F[G, T, dS, dS+1]`` (:func:`~l2o_gym.agents.gps.dynamics.dynamics_from_moments`).

        Only ``t < T − 1`` matters to the backward pass; a prior keeps sparse steps well-posed.
        """
        count, mean, emp = self._moments()
        if bool((self.x0_count <= 0).any()):
            raise GPSFitError(f"dynamics fit: group {int((self.x0_count <= 0).nonzero()[0])} has no valid initial state")
        x0_mean = self.x0_sum / self.x0_count[:, None]
        x0_cov = self.x0_outer / self.x0_count[:, None, None] - torch.einsum("gi,gj->gij", x0_mean, x0_mean)
        # The per-group count differs between time steps only through dropped samples; the posterior uses the
        # smallest (the conservative choice: the prior weighs the most where data is scarcest).
        return dynamics_from_moments(count.min(1).values, mean, emp, x0_mean, x0_cov, self.dS, prior, reg)


class CostMoments:
    """Per-(group, t) statistics of the local quadratic model of the objective (module docstring, *Cost*).

    For every coordinate sample it accumulates the moments of ``z = [s_t; r_t]`` with ``r = |g_t| ρ_t / |f_0|``
    (the first-order decrease of the normalised objective per unit frame step), and the secant sums
    ``Σ (g_{t+1} − g_t)·Δθ_t / |f_0|`` and ``Σ a'_t²`` whose ratio is the curvature of the objective along the
    steps taken, per unit frame step. Raw sums, so pieces add up across batches and processes.
    """

    def __init__(self, n_groups: int, horizon: int, state_dim: int, device: torch.device | str = "cpu") -> None:
        opts = {"dtype": torch.float64, "device": device}
        dz = state_dim + 1
        self.G, self.T, self.dS = n_groups, horizon, state_dim
        self.count = torch.zeros(n_groups, horizon, **opts)
        self.sum = torch.zeros(n_groups, horizon, dz, **opts)
        self.outer = torch.zeros(n_groups, horizon, dz, dz, **opts)
        self.secant = torch.zeros(n_groups, horizon, **opts)
        self.step_sq = torch.zeros(n_groups, horizon, **opts)

    _FIELDS = ("count", "sum", "outer", "secant", "step_sq")

    def add_segments(
        self, t: int, s: Tensor, r: Tensor, dgrad_step: Tensor, step_sq: Tensor,
        segments: list[tuple[Tensor | slice, slice, int]], valid: Tensor | None = None,
    ) -> None:
        """Add step ``t``: local states ``s[N, d, dS]``, ``r[N, d]``, ``(g_{t+1} − g_t) Δθ_t / |f_0|`` and
        ``a'_t²`` (``[N, d]``; ``= Δθ_t²`` with the ``"sign"`` unit) over ``segments`` (as :meth:`DynamicsMoments.add_segments`)."""
        z = torch.cat([s, r[..., None]], -1).to(torch.float64)
        ok = torch.isfinite(z).all(-1) & torch.isfinite(dgrad_step) & torch.isfinite(step_sq)
        if valid is not None:
            ok = ok & valid[:, None]
        zero = torch.zeros((), dtype=torch.float64, device=z.device)
        z = torch.where(ok[..., None], z, zero)
        w = ok.to(torch.float64)
        sec = torch.where(ok, dgrad_step.to(torch.float64), zero)
        sq = torch.where(ok, step_sq.to(torch.float64), zero)
        for rows, cols, idx in segments:
            zz = z[rows, cols].reshape(-1, z.shape[-1])
            self.count[idx, t] += w[rows, cols].sum()
            self.sum[idx, t] += zz.sum(0)
            self.outer[idx, t] += zz.T @ zz
            self.secant[idx, t] += sec[rows, cols].sum()
            self.step_sq[idx, t] += sq[rows, cols].sum()

    def merge(self, other: CostMoments) -> None:
        for name in self._FIELDS:
            getattr(self, name).add_(getattr(other, name))

    def all_reduce(self) -> None:
        """Sum over the default ``torch.distributed`` group (no-op without one)."""
        if dist.is_available() and dist.is_initialized():
            for name in self._FIELDS:
                dist.all_reduce(getattr(self, name))

    def fit(
        self, *, action_penalty: float = 1e-4, min_curvature: float = 0.0, ridge: float = 1e-6,
        reference: Tensor | None = None,
    ) -> QuadraticCost:
        """The per-coordinate quadratic cost ``c_t(s, a') = w_t [(β_tᵀ s + β0_t) a' + ½ (h_t + w_u) a'²]`` per group,
        ``w_t = (T − t) / T``: the change of ``f`` at step ``t`` persists in the ``T − t`` objective values after it,
        so the summed cost is the model's change of ``Σ_t f_t / (T |f_0|)``, the area under the curve (Li & Malik's
        cost) rather than only the final value.

        ``β, β0``: least-squares regression of ``r`` on ``[s, 1]`` (ridge ``ridge`` on ``s``); ``h_t`` the secant
        curvature (clipped below at ``min_curvature``); ``w_u`` the action penalty. ``reference[T]`` (optional):
        the expansion at step ``t`` (``β``, ``β0``, ``h``, not ``w_u``) is divided by ``reference[t]`` — conv GPS's
        ``"log"`` cost, ``log f ≈ log f̂_t + (f − f̂_t) / f̂_t``. Returns :class:`QuadraticCost` ``[G, T, …]`` over
        ``y = [s; a']``.
        """
        if bool((self.count <= 0).any()):
            g, t = (self.count <= 0).nonzero()[0].tolist()
            raise GPSFitError(f"cost fit: group {g} has no valid sample at time step {t}")
        dS = self.dS
        cnt = self.count[..., None]
        mean = self.sum / cnt
        cov = sym(self.outer / cnt[..., None] - torch.einsum("gti,gtj->gtij", mean, mean))
        s_ss = cov[..., :dS, :dS] + ridge * torch.eye(dS, dtype=cov.dtype, device=cov.device)
        beta = torch.linalg.solve(s_ss, cov[..., :dS, dS:]).squeeze(-1)  # [G, T, dS]
        beta0 = mean[..., dS] - torch.einsum("gti,gti->gt", beta, mean[..., :dS])
        h = torch.where(self.step_sq > 0, self.secant / self.step_sq.clamp_min(1e-300), torch.zeros_like(self.secant))
        h = h.clamp_min(min_curvature)
        if reference is not None:
            inv = 1.0 / reference.to(dtype=torch.float64, device=cov.device)  # [T]
            beta, beta0, h = beta * inv[None, :, None], beta0 * inv[None], h * inv[None]
        dy = dS + 1
        C = torch.zeros(self.G, self.T, dy, dy, dtype=torch.float64, device=cov.device)
        C[..., :dS, dS] = beta
        C[..., dS, :dS] = beta
        C[..., dS, dS] = h + action_penalty
        c = torch.zeros(self.G, self.T, dy, dtype=torch.float64, device=cov.device)
        c[..., dS] = beta0
        w = (self.T - torch.arange(self.T, dtype=torch.float64, device=cov.device)) / self.T  # [T]
        return QuadraticCost(C * w[:, None, None], c * w[:, None], torch.zeros(self.G, self.T, dtype=torch.float64, device=cov.device))


def initial_controller(
    n_groups: int, horizon: int, lr: float, std: float, state_dim: int = STATE_DIM,
    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
) -> LinearGaussianPolicy:
    """``a' = −lr · s[GRAD] + N(0, std²)`` in every group: a normalised-gradient step with exploration noise,
    the starting point of the local controllers (RMSprop-like with the ``"sign"`` step unit, gradient descent at
    the per-coordinate rate ``lr / max rms`` with ``"decay"``: module docstring, *Step unit*)."""
    K = torch.zeros(n_groups, horizon, 1, state_dim, dtype=dtype, device=device)
    K[..., 0, GRAD] = -lr  # a' = −lr σ ĝ, i.e. the step −lr ĝ
    cov = torch.full((n_groups, horizon, 1, 1), std**2, dtype=dtype, device=device)
    return LinearGaussianPolicy(K, torch.zeros(n_groups, horizon, 1, dtype=dtype, device=device), cov)
