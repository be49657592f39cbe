"""Linear-Gaussian controllers and dynamics, batched over ``M`` conditions and ``T`` time steps.

Notation (used throughout :mod:`l2o_gym.agents.gps`): state ``x ∈ R^{dX}``, action ``u ∈ R^{dU}``,
``y = [x; u] ∈ R^{dX+dU}``.

* controller  ``p(u_t | x_t) = N(K_t x_t + k_t, Σ_t)``: :class:`LinearGaussianPolicy`, tensors ``[M, T, …]``;
* dynamics    ``p(x_{t+1} | x_t, u_t) = N(F_t y_t + f_t, W_t)``: :class:`LinearGaussianDynamics`.

:func:`forward` propagates the Gaussian state-action marginals ``N(μ_t, S_t)`` of a controller under fitted
dynamics; :func:`kl_policies` is the expected KL divergence between two controllers under such marginals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def sym(a: Tensor) -> Tensor:
    """Symmetric part ``(A + Aᵀ)/2`` over the last two dimensions."""
    return 0.5 * (a + a.transpose(-1, -2))


@dataclass
class LinearGaussianPolicy:
    """Time-varying linear-Gaussian controllers ``u_t ~ N(K_t x_t + k_t, Σ_t)``, one per condition.

    Attributes:
        K: ``[M, T, dU, dX]`` feedback gains.
        k: ``[M, T, dU]`` open-loop terms.
        cov: ``[M, T, dU, dU]`` action covariances Σ_t (symmetric positive definite).
    """

    K: Tensor
    k: Tensor
    cov: Tensor

    @property
    def chol(self) -> Tensor:
        """``[M, T, dU, dU]`` lower Cholesky factor of Σ_t."""
        return torch.linalg.cholesky(sym(self.cov))

    @property
    def prec(self) -> Tensor:
        """``[M, T, dU, dU]`` precision Σ_t⁻¹."""
        return sym(torch.cholesky_inverse(self.chol))

    def mean(self, x: Tensor, t: int) -> Tensor:
        """Mean action ``K_t x + k_t`` for states ``x[M, N, dX]`` → ``[M, N, dU]``."""
        return torch.einsum("mux,mnx->mnu", self.K[:, t], x) + self.k[:, t, None]

    def sample(self, x: Tensor, t: int, noise: Tensor) -> Tensor:
        """Actions for states ``x[M, N, dX]`` with standard normal ``noise[M, N, dU]``."""
        return self.mean(x, t) + torch.einsum("muv,mnv->mnu", self.chol[:, t], noise)

    def clone(self) -> LinearGaussianPolicy:
        return LinearGaussianPolicy(self.K.clone(), self.k.clone(), self.cov.clone())

    def index(self, idx: Tensor) -> LinearGaussianPolicy:
        return LinearGaussianPolicy(self.K[idx], self.k[idx], self.cov[idx])


@dataclass
class LinearGaussianDynamics:
    """Time-varying linear-Gaussian dynamics ``x_{t+1} ~ N(F_t [x_t; u_t] + f_t, W_t)``.

    Attributes:
        F: ``[M, T, dX, dX+dU]``; f: ``[M, T, dX]``; W: ``[M, T, dX, dX]``.
        x0_mean: ``[M, dX]`` and x0_cov: ``[M, dX, dX]``: the initial-state distribution.
    """

    F: Tensor
    f: Tensor
    W: Tensor
    x0_mean: Tensor
    x0_cov: Tensor


def forward(dyn: LinearGaussianDynamics, pol: LinearGaussianPolicy) -> tuple[Tensor, Tensor]:
    """State-action marginals of ``pol`` run under ``dyn``.

    Returns:
        ``(mu[M, T, dX+dU], S[M, T, dX+dU, dX+dU])``.
    """
    m, t_len, du, dx = pol.K.shape
    mu_x, s_x = dyn.x0_mean, dyn.x0_cov
    mus, covs = [], []
    for t in range(t_len):
        K = pol.K[:, t]
        mu_u = torch.einsum("mux,mx->mu", K, mu_x) + pol.k[:, t]
        s_xu = s_x @ K.transpose(-1, -2)  # [M, dX, dU]
        s_uu = K @ s_xu + pol.cov[:, t]
        top = torch.cat([s_x, s_xu], -1)
        bot = torch.cat([s_xu.transpose(-1, -2), s_uu], -1)
        mu = torch.cat([mu_x, mu_u], -1)
        s = sym(torch.cat([top, bot], -2))
        mus.append(mu)
        covs.append(s)
        if t + 1 < t_len:
            F = dyn.F[:, t]
            mu_x = torch.einsum("mxy,my->mx", F, mu) + dyn.f[:, t]
            s_x = sym(F @ s @ F.transpose(-1, -2) + dyn.W[:, t])
    return torch.stack(mus, 1), torch.stack(covs, 1)


def kl_policies(p: LinearGaussianPolicy, q: LinearGaussianPolicy, mu_x: Tensor, s_x: Tensor) -> Tensor:
    """Expected ``KL(p(·|x) ‖ q(·|x))`` per condition and time step, ``x ~ N(mu_x, s_x)``.

    For Gaussians with equal-shaped means ``m_p = K_p x + k_p``, ``m_q = K_q x + k_q``::

        E_x KL = ½ [tr(Σ_q⁻¹ Σ_p) − dU + log|Σ_q| − log|Σ_p|
                    + (Δm)ᵀ Σ_q⁻¹ Δm + tr(ΔKᵀ Σ_q⁻¹ ΔK S_x)],   Δm = ΔK μ_x + Δk,  ΔK = K_p − K_q

    Args:
        p, q: controllers ``[M, T, …]``.
        mu_x: ``[M, T, dX]``; s_x: ``[M, T, dX, dX]``.

    Returns:
        ``[M, T]``.
    """
    du = p.K.shape[-2]
    lq = torch.linalg.cholesky(sym(q.cov))
    lp = torch.linalg.cholesky(sym(p.cov))
    q_prec = torch.cholesky_inverse(lq)
    logdet_q = 2 * torch.log(torch.diagonal(lq, dim1=-2, dim2=-1)).sum(-1)
    logdet_p = 2 * torch.log(torch.diagonal(lp, dim1=-2, dim2=-1)).sum(-1)
    dK = p.K - q.K
    dm = torch.einsum("mtux,mtx->mtu", dK, mu_x) + (p.k - q.k)
    tr1 = torch.einsum("mtuv,mtvu->mt", q_prec, p.cov)
    quad = torch.einsum("mtu,mtuv,mtv->mt", dm, q_prec, dm)
    tr2 = torch.einsum("mtux,mtuv,mtvy,mtyx->mt", dK, q_prec, dK, s_x)
    return 0.5 * (tr1 - du + logdet_q - logdet_p + quad + tr2)


def neg_log_prob_quadratic(pol: LinearGaussianPolicy) -> tuple[Tensor, Tensor]:
    """``−log p(u|x)`` as a quadratic in ``y = [x; u]`` (up to a constant): ``½ yᵀ C y + cᵀ y``.

    With ``P = Σ⁻¹``: ``C = [[KᵀPK, −KᵀP], [−PK, P]]``, ``c = [KᵀPk; −Pk]``.

    Returns:
        ``(C[M, T, dX+dU, dX+dU], c[M, T, dX+dU])``.
    """
    P = pol.prec
    KtP = pol.K.transpose(-1, -2) @ P  # [M, T, dX, dU]
    top = torch.cat([KtP @ pol.K, -KtP], -1)
    bot = torch.cat([-P @ pol.K, P], -1)
    C = sym(torch.cat([top, bot], -2))
    Pk = torch.einsum("mtuv,mtv->mtu", P, pol.k)
    c = torch.cat([torch.einsum("mtxu,mtu->mtx", KtP, pol.k), -Pk], -1)
    return C, c


def gaussian_entropy(cov: Tensor) -> Tensor:
    """Entropy of ``N(·, cov)`` over the last two dimensions."""
    d = cov.shape[-1]
    logdet = 2 * torch.log(torch.diagonal(torch.linalg.cholesky(sym(cov)), dim1=-2, dim2=-1)).sum(-1)
    return 0.5 * (logdet + d * (1.0 + math.log(2 * math.pi)))
