"""Second-order expansion of the GPS cost around sampled trajectories.

The cost of taking action ``u_t`` in state ``x_t`` is the core's cost, the objective after the step,
plus an optional action penalty::

    c(x_t, u_t) = f(θ_t + u_t) + (w_u / 2) ‖u_t‖²,       θ_t = x_t[:d]

(``f(θ_{t+1})`` is Li & Malik's ``c(x_{t+1})``, attributed to the action that produced it.) Its derivatives in
``y = [x; u]`` follow from those of ``f`` at ``θ' = θ + u`` with the selector ``J = [E_θ | I]`` (``E_θ``
picks θ out of x): ``∇_y c = Jᵀ∇f``, ``∇²_y c = Jᵀ ∇²f J`` (+ ``w_u`` on the action block).

``∇²f`` comes from autograd (``d`` extra backward passes, fine for the small ``d`` of the Li & Malik
families). ``hessian="psd"`` projects it onto the positive semi-definite cone (eigenvalues clipped at 0), a
Gauss-Newton-like convexification for non-convex objectives; ``"none"`` drops it (first-order model).

The per-sample expansions ``c ≈ c_s + l_sᵀ(y − ŷ_s) + ½(y − ŷ_s)ᵀ L_s (y − ŷ_s)`` are rewritten in absolute
coordinates ``½ yᵀ C y + cᵀ y + c₀`` and averaged over the valid samples of each condition and time step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from l2o_gym.problems.base import ProblemBatch


@dataclass
class QuadraticCost:
    """``c_t(y) ≈ ½ yᵀ C_t y + c_tᵀ y + c0_t`` per condition.

    Attributes:
        C: ``[M, T, dY, dY]``; c: ``[M, T, dY]``; c0: ``[M, T]``.
    """

    C: Tensor
    c: Tensor
    c0: Tensor

    def expected(self, mu: Tensor, S: Tensor) -> Tensor:
        """``E[c_t(y)]`` for ``y ~ N(mu[M, T, dY], S[M, T, dY, dY])``, summed over t → ``[M]``."""
        quad = 0.5 * torch.einsum("mti,mtij,mtj->mt", mu, self.C, mu) + 0.5 * torch.einsum("mtij,mtji->mt", self.C, S)
        return (quad + torch.einsum("mti,mti->mt", self.c, mu) + self.c0).sum(-1)


def objective_derivatives(
    problems: ProblemBatch, theta: Tensor, step: Tensor, hessian: str = "exact"
) -> tuple[Tensor, Tensor, Tensor]:
    """``f[B]``, ``∇f[B, d]`` and ``∇²f[B, d, d]`` at ``theta[B, d]`` for a batch of ``B`` problems."""
    if hessian not in ("exact", "psd", "none"):
        raise ValueError(f"hessian must be 'exact', 'psd' or 'none', got {hessian!r}")
    b, d = theta.shape
    with torch.enable_grad():
        th = theta.detach().requires_grad_(True)
        f, g = problems.loss_and_grad(th, step, create_graph=hessian != "none")
        if hessian == "none":
            return f.detach(), g.detach(), theta.new_zeros(b, d, d)
        rows = []
        for j in range(d):
            (hj,) = torch.autograd.grad(g[:, j].sum(), th, retain_graph=j + 1 < d, allow_unused=True)
            rows.append(torch.zeros_like(th) if hj is None else hj)
    H = torch.stack(rows, 1).detach()
    H = 0.5 * (H + H.transpose(-1, -2))
    if hessian == "psd":
        evals, evecs = torch.linalg.eigh(H)
        H = evecs @ torch.diag_embed(evals.clamp_min(0.0)) @ evecs.transpose(-1, -2)
    return f.detach(), g.detach(), H


def expand_cost(
    problems: ProblemBatch,
    X: Tensor,
    U: Tensor,
    valid: Tensor,
    *,
    action_penalty: float = 0.0,
    hessian: str = "exact",
) -> QuadraticCost:
    """Quadratic expansion of ``c(x_t, u_t)`` (module docstring) averaged over the valid samples.

    Args:
        problems: the ``M`` training problems (conditions), one per row of ``X``.
        X: ``[M, N, T+1, dX]`` states whose first ``d`` entries are θ; U: ``[M, N, T, dU=d]``.
        valid: ``[M, N]`` bool.
        action_penalty: ``w_u``.
        hessian: ``"exact"``, ``"psd"`` or ``"none"``.
    """
    m, n, t1, dx = X.shape
    t_len, du = t1 - 1, U.shape[-1]
    dy = dx + du
    theta_next = (X[:, :, :-1, :du] + U).reshape(-1, du)  # [M*N*T, d]
    idx = torch.arange(m, device=X.device).repeat_interleave(n * t_len)
    steps = torch.arange(1, t_len + 1, device=X.device).repeat(m * n)
    f, g, H = objective_derivatives(problems.index(idx), theta_next, steps, hessian)
    f, g, H = f.view(m, n, t_len), g.view(m, n, t_len, du), H.view(m, n, t_len, du, du)
    # l = Jᵀ g and L = Jᵀ H J with J = [E_θ | I]: θ block (first du entries of x) and u block.
    l = X.new_zeros(m, n, t_len, dy)
    l[..., :du] = g
    l[..., dx:] = g
    L = X.new_zeros(m, n, t_len, dy, dy)
    for a in (slice(0, du), slice(dx, dy)):
        for b in (slice(0, du), slice(dx, dy)):
            L[..., a, b] = H
    eye_u = torch.eye(du, dtype=X.dtype, device=X.device)
    yhat = torch.cat([X[:, :, :-1], U], -1)  # [M, N, T, dY]
    f = f + 0.5 * action_penalty * (U * U).sum(-1)
    l[..., dx:] = l[..., dx:] + action_penalty * U
    L[..., dx:, dx:] = L[..., dx:, dx:] + action_penalty * eye_u
    Ly = torch.einsum("mntij,mntj->mnti", L, yhat)
    c = l - Ly
    c0 = f - torch.einsum("mnti,mnti->mnt", l, yhat) + 0.5 * torch.einsum("mnti,mnti->mnt", yhat, Ly)
    w = valid.to(X.dtype)
    cnt = w.sum(1).clamp_min(1.0)  # [M]
    avg = lambda a: torch.einsum("mn,mn...->m...", w, torch.where(  # noqa: E731
        valid.view(m, n, *([1] * (a.dim() - 2))), a, torch.zeros((), dtype=a.dtype, device=a.device))
    ) / cnt.view(m, *([1] * (a.dim() - 2)))
    return QuadraticCost(avg(L), avg(c), avg(c0))
