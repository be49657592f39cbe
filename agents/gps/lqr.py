"""LQR backward pass with BADMM and KL terms, and the search for the trust-region dual variable η.

The local update of BADMM-GPS (Levine et al. 2016; Li & Malik 2016) solves, per condition,

    min_p  Σ_t E_p[c_t(x_t, u_t) − λ_tᵀ u_t] + Σ_t ν_t E_p KL(p_t ‖ π̂_t)
    s.t.   Σ_t E_p KL(p_t ‖ p̄_t) ≤ ε

where ``π̂`` is the global policy linearised around the samples and ``p̄`` the previous controller. With the
Lagrange multiplier η of the constraint, and ``KL(p‖q) = −H(p) − E_p log q``, the objective becomes an
entropy-regularised LQR problem with the augmented quadratic cost

    c̃_t = c_t − λ_tᵀu − ν_t log π̂_t(u|x) − η log p̄_t(u|x)         (entropy weight τ_t = η + ν_t)

whose solution is the linear-Gaussian controller ``u ~ N(K_t x + k_t, τ_t Q_uu,t⁻¹)`` with the usual LQR
gains ``K_t = −Q_uu⁻¹ Q_ux``, ``k_t = −Q_uu⁻¹ q_u`` from the backward recursion (absolute coordinates,
affine dynamics ``x' = F y + f``)::

    Q_yy = C̃_t + Fᵀ V_{t+1} F,   q_y = c̃_t + Fᵀ (V_{t+1} f + v_{t+1})
    V_t = Q_xx + Q_xu K_t,       v_t = q_x + Q_xu k_t,        V_T = 0, v_T = 0

(``τ = 0``, the plain LQR case, uses temperature 1 for the covariance.) η is found per condition by a
bisection on ``log η ∈ [1e-8, 1e8]`` so that the achieved ``KL(p ‖ p̄)`` (under ``p``'s own marginals through the fitted
dynamics) equals ``ε`` within ``kl_tol``; an η at which ``Q_uu`` is not positive definite counts as too
small (η is increased), which is how non-convex cost expansions are handled.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from l2o_gym.agents.gps.cost import QuadraticCost
from l2o_gym.agents.gps.dynamics import GPSFitError
from l2o_gym.agents.gps.lingauss import (
    LinearGaussianDynamics,
    LinearGaussianPolicy,
    forward,
    kl_policies,
    neg_log_prob_quadratic,
    sym,
)

log = logging.getLogger(__name__)


@dataclass
class BackwardResult:
    """Output of :func:`backward`.

    Attributes:
        policy: the new controller.
        ok: ``[M]`` bool, ``Q_uu`` positive definite at every time step.
        bad_t: ``[M]`` int64, the last time step (backward order: the first met) where it was not (−1 if ok).
        V: ``[M, dX, dX]`` and v: ``[M, dX]``: the value function at ``t = 0``.
    """

    policy: LinearGaussianPolicy
    ok: Tensor
    bad_t: Tensor
    V: Tensor
    v: Tensor


def augmented_cost(
    cost: QuadraticCost,
    eta: Tensor,
    nu: Tensor | None = None,
    prev: LinearGaussianPolicy | None = None,
    glob: LinearGaussianPolicy | None = None,
    lam: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(C̃[M, T, dY, dY], c̃[M, T, dY], τ[M, T])`` of the module docstring.

    Args:
        eta: ``[M]``; nu: ``[M, T]`` (zero if None); lam: ``[M, T, dU]`` (zero if None).
    """
    C, c = cost.C.clone(), cost.c.clone()
    m, t_len = C.shape[:2]
    nu = torch.zeros(m, t_len, dtype=C.dtype, device=C.device) if nu is None else nu
    if prev is not None:
        Cp, cp = neg_log_prob_quadratic(prev)
        C = C + eta[:, None, None, None] * Cp
        c = c + eta[:, None, None] * cp
    if glob is not None:
        Cg, cg = neg_log_prob_quadratic(glob)
        C = C + nu[..., None, None] * Cg
        c = c + nu[..., None] * cg
    if lam is not None:
        du = lam.shape[-1]
        c[..., -du:] = c[..., -du:] - lam
    tau = eta[:, None] + nu
    return C, c, tau


def backward(
    dyn: LinearGaussianDynamics,
    cost: QuadraticCost,
    eta: Tensor,
    nu: Tensor | None = None,
    prev: LinearGaussianPolicy | None = None,
    glob: LinearGaussianPolicy | None = None,
    lam: Tensor | None = None,
    du: int | None = None,
) -> BackwardResult:
    """One LQR backward pass on the augmented cost (module docstring), batched over conditions.

    Args:
        dyn: fitted dynamics (``F[M, T, dX, dY]``; only ``t < T − 1`` is used).
        cost: quadratic cost ``[M, T, …]``.
        eta: ``[M]`` KL multiplier to ``prev`` (ignored if ``prev`` is None).
        nu: ``[M, T]`` weights of the KL to ``glob``.
        prev, glob: previous controller and linearised global policy.
        lam: ``[M, T, dU]`` BADMM multipliers.
        du: action dimension (inferred from ``prev``/``glob``/``lam`` if omitted).
    """
    C, c, tau = augmented_cost(cost, eta, nu, prev, glob, lam)
    m, t_len, dy = c.shape
    if du is None:
        src = prev if prev is not None else glob
        du = src.K.shape[-2] if src is not None else (lam.shape[-1] if lam is not None else None)
        if du is None:
            raise ValueError("backward: pass du when there is no prev, glob or lam")
    dx = dy - du
    tau = torch.where(tau > 0, tau, torch.ones_like(tau))
    V = c.new_zeros(m, dx, dx)
    v = c.new_zeros(m, dx)
    Ks, ks, covs = [None] * t_len, [None] * t_len, [None] * t_len
    ok = torch.ones(m, dtype=torch.bool, device=c.device)
    bad_t = torch.full((m,), -1, dtype=torch.int64, device=c.device)
    eye_u = torch.eye(du, dtype=c.dtype, device=c.device)
    for t in range(t_len - 1, -1, -1):
        Qyy, qy = C[:, t], c[:, t]
        if t < t_len - 1:
            F, f = dyn.F[:, t], dyn.f[:, t]
            Qyy = Qyy + F.transpose(-1, -2) @ V @ F
            qy = qy + torch.einsum("myx,mx->my", F.transpose(-1, -2), torch.einsum("mij,mj->mi", V, f) + v)
        Qyy = sym(Qyy)
        Quu, Qux = Qyy[:, dx:, dx:], Qyy[:, dx:, :dx]
        L, info = torch.linalg.cholesky_ex(Quu)
        fail = info != 0
        if bool(fail.any()):
            bad_t = torch.where(fail & ok, torch.full_like(bad_t, t), bad_t)
            ok = ok & ~fail
            L = torch.where(fail[:, None, None], eye_u.expand(m, du, du), L)
        K = -torch.cholesky_solve(Qux, L)
        k = -torch.cholesky_solve(qy[:, dx:, None], L).squeeze(-1)
        Ks[t], ks[t] = K, k
        covs[t] = tau[:, t, None, None] * sym(torch.cholesky_inverse(L))
        Qxu = Qyy[:, :dx, dx:]
        V = sym(Qyy[:, :dx, :dx] + Qxu @ K)
        v = qy[:, :dx] + torch.einsum("mxu,mu->mx", Qxu, k)
    pol = LinearGaussianPolicy(torch.stack(Ks, 1), torch.stack(ks, 1), torch.stack(covs, 1))
    return BackwardResult(pol, ok, bad_t, V, v)


@dataclass
class KLStepResult:
    """Output of :func:`solve_kl_step`: the new controller, its η ``[M]`` and achieved KL ``[M]``."""

    policy: LinearGaussianPolicy
    eta: Tensor
    kl: Tensor


def trajectory_kl(dyn: LinearGaussianDynamics, new: LinearGaussianPolicy, old: LinearGaussianPolicy) -> Tensor:
    """``Σ_t E KL(new_t ‖ old_t)`` under ``new``'s marginals through ``dyn`` → ``[M]``."""
    mu, S = forward(dyn, new)
    dx = new.K.shape[-1]
    return kl_policies(new, old, mu[..., :dx], S[..., :dx, :dx]).sum(-1)


def solve_kl_step(
    dyn: LinearGaussianDynamics,
    cost: QuadraticCost,
    prev: LinearGaussianPolicy,
    eps: Tensor,
    nu: Tensor | None = None,
    glob: LinearGaussianPolicy | None = None,
    lam: Tensor | None = None,
    *,
    eta_min: float = 1e-8,
    eta_max: float = 1e8,
    kl_tol: float = 0.1,
    max_iter: int = 60,
) -> KLStepResult:
    """New controllers meeting ``Σ_t KL(p ‖ prev) ≈ eps`` (per condition), by bisection on ``log η``.

    Args:
        eps: ``[M]`` KL budgets (summed over time steps).
        kl_tol: relative tolerance ``|KL − ε| ≤ kl_tol · ε``; a smaller KL is accepted at ``eta_min``
            (the constraint is inactive).

    Raises:
        GPSFitError: if even ``eta_max`` gives a non-positive-definite ``Q_uu`` (naming the condition and
            time step). A KL still above ``ε`` at ``eta_max`` (round-off: the solution there is the previous
            controller) is recovered by keeping the previous controller for that condition, with a warning.

    Each bisection step re-runs the backward pass only on the conditions whose search has not converged yet
    (the batched inputs are indexed by that active subset and the results scattered back), so the cost of the
    search scales with the unconverged conditions. Conditions are independent, so this gives the same η and
    controllers as solving each condition on its own (tested).
    """
    m = eps.shape[0]
    du = prev.K.shape[-2]
    opts = {"dtype": eps.dtype, "device": eps.device}
    lo = torch.full((m,), math.log(eta_min), **opts)
    hi = torch.full((m,), math.log(eta_max), **opts)

    def evaluate(log_eta: Tensor, idx: Tensor | None = None) -> tuple[BackwardResult, Tensor]:
        """Backward pass and achieved KL at ``log η``, on all conditions or only those in ``idx``."""
        d, c, n, p, g, la = dyn, cost, nu, prev, glob, lam
        if idx is not None:
            d = LinearGaussianDynamics(dyn.F[idx], dyn.f[idx], dyn.W[idx], dyn.x0_mean[idx], dyn.x0_cov[idx])
            c = QuadraticCost(cost.C[idx], cost.c[idx], cost.c0[idx])
            n = None if nu is None else nu[idx]
            p = prev.index(idx)
            g = None if glob is None else glob.index(idx)
            la = None if lam is None else lam[idx]
        res = backward(d, c, log_eta.exp(), n, p, g, la, du=du)
        pol = res.policy
        # Conditions whose Q_uu failed get the previous controller there, only to keep the KL finite.
        pol = LinearGaussianPolicy(
            torch.where(res.ok[:, None, None, None], pol.K, p.K),
            torch.where(res.ok[:, None, None], pol.k, p.k),
            torch.where(res.ok[:, None, None, None], pol.cov, p.cov),
        )
        kl = trajectory_kl(d, pol, p)
        kl = torch.where(res.ok & torch.isfinite(kl), kl, torch.full_like(kl, float("inf")))
        return BackwardResult(pol, res.ok, res.bad_t, res.V, res.v), kl

    top, kl_top = evaluate(hi)
    if not bool(top.ok.all()):
        i = int((~top.ok).nonzero()[0])
        raise GPSFitError(
            f"η search: Q_uu not positive definite at condition {i}, time step {int(top.bad_t[i])} even at "
            f"η = {eta_max:g}"
        )
    stuck = ~(kl_top <= eps * (1 + kl_tol))
    if bool(stuck.any()):
        # Documented recovery: at η_max the solution is the previous controller up to round-off; if round-off
        # still leaves KL > ε, keep the previous controller exactly (KL = 0) for those conditions.
        log.warning("η search: KL > ε even at η = %g for conditions %s; keeping their previous controllers",
                    eta_max, stuck.nonzero().flatten().tolist())
        top = BackwardResult(_select(stuck, prev, top.policy), top.ok, top.bad_t, top.V, top.v)
        kl_top = torch.where(stuck, torch.zeros_like(kl_top), kl_top)
    best_pol, best_eta, best_kl = top.policy, hi.clone(), kl_top
    low, kl_low = evaluate(lo)
    inactive = low.ok & (kl_low <= eps * (1 + kl_tol))
    best_pol = _select(inactive, low.policy, best_pol)
    best_eta = torch.where(inactive, lo, best_eta)
    best_kl = torch.where(inactive, kl_low, best_kl)
    done = inactive.clone()
    return _bisect_active(evaluate, lo, hi, eps, best_pol, best_eta, best_kl, done, kl_tol, max_iter)


def _bisect_active(
    evaluate, lo: Tensor, hi: Tensor, eps: Tensor, best_pol: LinearGaussianPolicy, best_eta: Tensor,
    best_kl: Tensor, done: Tensor, kl_tol: float, max_iter: int,
) -> KLStepResult:
    """The bisection loop of :func:`solve_kl_step`, evaluating only the not-yet-converged conditions.

    Each step halves ``[lo, hi]`` of every active condition (KL above ε: η too small), keeps the controller of
    the tightest feasible η, and marks a condition done once its KL is within ``kl_tol`` of ε (feasible) or its
    bracket is narrower than 1e-3 in ``log η``; results are scattered back into the full ``[M]`` tensors.
    """
    lo, hi, done = lo.clone(), hi.clone(), done.clone()
    best_pol, best_eta, best_kl = best_pol.clone(), best_eta.clone(), best_kl.clone()
    m = done.shape[0]
    for _ in range(max_iter):
        act = (~done).nonzero().flatten()
        n_act = act.numel()
        if n_act == 0:
            break
        lo_a, hi_a, eps_a = lo[act], hi[act], eps[act]
        mid = 0.5 * (lo_a + hi_a)
        res, kl = evaluate(mid, None if n_act == m else act)
        too_small = kl > eps_a  # includes non-PD (kl = inf)
        lo_a = torch.where(too_small, mid, lo_a)
        hi_a = torch.where(~too_small, mid, hi_a)
        lo[act], hi[act] = lo_a, hi_a
        feasible = ~too_small  # KL ≤ ε: a valid, tighter-η solution
        upd = act[feasible]
        best_pol.K[upd] = res.policy.K[feasible]
        best_pol.k[upd] = res.policy.k[feasible]
        best_pol.cov[upd] = res.policy.cov[feasible]
        best_eta[upd] = mid[feasible]
        best_kl[upd] = kl[feasible]
        close = (kl - eps_a).abs() <= kl_tol * eps_a
        done[act] = (close & feasible) | ((hi_a - lo_a) < 1e-3)
    return KLStepResult(best_pol, best_eta.exp(), best_kl)


def _select(mask: Tensor, a: LinearGaussianPolicy, b: LinearGaussianPolicy) -> LinearGaussianPolicy:
    return LinearGaussianPolicy(
        torch.where(mask[:, None, None, None], a.K, b.K),
        torch.where(mask[:, None, None], a.k, b.k),
        torch.where(mask[:, None, None, None], a.cov, b.cov),
    )
