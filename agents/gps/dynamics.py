"""Fitting time-varying linear-Gaussian dynamics to samples, with a normal-inverse-Wishart prior.

For each condition ``m`` and time step ``t`` we model the joint ``z = [x_t; u_t; x_{t+1}]`` as Gaussian and
condition on ``y = [x_t; u_t]``::

    F = Σ_{x'y} Σ_yy⁻¹,   f = μ_{x'} − F μ_y,   W = Σ_{x'x'} − F Σ_yy Fᵀ

With only ``N`` samples per ``(m, t)`` (often ``N < dX + dU``) the empirical covariance is singular. The
prior is a single Gaussian ``N(μ₀, Σ₀)`` fitted to *all* samples pooled over conditions and time steps,
used as a normal-inverse-Wishart prior with ``n₀`` pseudo-observations (``Φ = n₀ Σ₀``, ``κ₀ = n₀``); the
posterior-mean joint is::

    μ = (n₀ μ₀ + N μ̂) / (n₀ + N)
    Σ = (n₀ Σ₀ + N Ŝ + (N n₀ / (N + n₀)) (μ̂ − μ₀)(μ̂ − μ₀)ᵀ) / (N + n₀)

``reg`` is added to the diagonal of ``Σ_yy`` (ridge) and ``W``: the documented regularisation that keeps
every solve well-posed. Without a prior (``prior=None``) the fit is ridge regression on the samples alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from l2o_gym.agents.gps.lingauss import LinearGaussianDynamics, sym


class GPSFitError(RuntimeError):
    """A fit or search failed for a named condition and time step."""


@dataclass
class GaussianPrior:
    """Pooled Gaussian over ``z = [x_t; u_t; x_{t+1}]``.

    Attributes:
        mean: ``[dZ]``; cov: ``[dZ, dZ]``; strength: pseudo-observation count ``n₀``.
    """

    mean: Tensor
    cov: Tensor
    strength: float = 1.0


def _joint(X: Tensor, U: Tensor) -> Tensor:
    """``[M, N, T, 2dX+dU]`` tuples ``[x_t, u_t, x_{t+1}]`` from ``X[M, N, T+1, dX]``, ``U[M, N, T, dU]``."""
    return torch.cat([X[:, :, :-1], U, X[:, :, 1:]], -1)


def fit_prior(X: Tensor, U: Tensor, valid: Tensor, strength: float = 1.0, reg: float = 1e-6) -> GaussianPrior:
    """Fit the pooled Gaussian prior to all valid samples.

    Args:
        X: ``[M, N, T+1, dX]`` states; U: ``[M, N, T, dU]`` actions; valid: ``[M, N]`` bool sample mask.
        strength: ``n₀``, how many samples' worth the prior counts for at each ``(m, t)``.
        reg: added to the diagonal of the pooled covariance.
    """
    z = _joint(X, U)[valid]  # [S, T, dZ]
    if z.shape[0] == 0:
        raise GPSFitError("dynamics prior: no valid samples to fit")
    z = z.reshape(-1, z.shape[-1])
    mean = z.mean(0)
    dz = z - mean
    cov = dz.T @ dz / z.shape[0] + reg * torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    return GaussianPrior(mean, sym(cov), float(strength))


def fit_dynamics(
    X: Tensor,
    U: Tensor,
    valid: Tensor,
    prior: GaussianPrior | None = None,
    reg: float = 1e-6,
) -> LinearGaussianDynamics:
    """Per-condition, per-time-step linear-Gaussian dynamics (module docstring).

    Args:
        X: ``[M, N, T+1, dX]`` sampled states; U: ``[M, N, T, dU]`` actions.
        valid: ``[M, N]`` bool; invalid (dropped) samples get zero weight.
        prior: the pooled prior, or ``None`` for plain ridge regression.
        reg: ridge added to ``Σ_yy`` and ``W``.

    Returns:
        :class:`LinearGaussianDynamics` with ``F[M, T, dX, dX+dU]``, the initial-state distribution
        estimated from ``X[:, :, 0]``.

    Raises:
        GPSFitError: if a condition has no valid sample, or a covariance is not positive definite.
    """
    m, n, t1, dx = X.shape
    w = valid.to(X.dtype)  # [M, N]
    counts = w.sum(1)  # [M]
    if bool((counts == 0).any()):
        bad = (counts == 0).nonzero().flatten().tolist()
        raise GPSFitError(f"dynamics fit: conditions {bad} have no valid sample (all diverged or non-finite)")
    z = _joint(X, U)  # [M, N, T, dZ]
    z = torch.where(valid[:, :, None, None], z, torch.zeros((), dtype=z.dtype, device=z.device))
    wn = w[:, :, None, None]  # [M, N, 1, 1]
    cnt = counts[:, None, None]  # [M, 1, 1]
    mean = (wn * z).sum(1) / cnt  # [M, T, dZ]
    dz = (z - mean[:, None]) * wn.sqrt()
    emp = torch.einsum("mnti,mntj->mtij", dz, dz) / cnt[..., None]  # [M, T, dZ, dZ]
    x0 = X[:, :, 0]  # [M, N, dX]
    x0_mean = (w[..., None] * x0).sum(1) / counts[:, None]
    d0 = (x0 - x0_mean[:, None]) * w[..., None].sqrt()
    x0_cov = torch.einsum("mni,mnj->mij", d0, d0) / counts[:, None, None]
    return dynamics_from_moments(counts, mean, emp, x0_mean, x0_cov, dx, prior, reg)


def dynamics_from_moments(
    counts: Tensor,
    mean: Tensor,
    emp: Tensor,
    x0_mean: Tensor,
    x0_cov: Tensor,
    dx: int,
    prior: GaussianPrior | None = None,
    reg: float = 1e-6,
) -> LinearGaussianDynamics:
    """The fit of :func:`fit_dynamics` from the sample moments of ``z = [x_t; u_t; x_{t+1}]``.

    Args:
        counts: ``[M]`` valid samples per condition (> 0); mean: ``[M, T, dZ]`` sample means;
        emp: ``[M, T, dZ, dZ]`` sample covariances (divided by the count); x0_mean ``[M, dX]`` and
        x0_cov ``[M, dX, dX]``: moments of the initial states; dx: state dimension.

    Moments can be accumulated in pieces (over samples, coordinates, processes) and combined before the
    fit, which is how convolutional GPS fits one group's dynamics from every coordinate of every trajectory
    (:mod:`l2o_gym.agents.gps.coord`).
    """
    dz = mean.shape[-1]
    dy = dz - dx
    cnt = counts[:, None, None]
    if prior is not None:
        n0 = prior.strength
        nn = cnt[..., None]  # [M, 1, 1, 1]
        diff = mean - prior.mean
        outer = torch.einsum("mti,mtj->mtij", diff, diff)
        cov = (n0 * prior.cov + nn * emp + (nn * n0 / (nn + n0)) * outer) / (nn + n0)
        mean = (n0 * prior.mean + cnt * mean) / (n0 + cnt)
    else:
        cov = emp
    cov = sym(cov)
    eye_y = torch.eye(dy, dtype=mean.dtype, device=mean.device)
    s_yy = cov[..., :dy, :dy] + reg * eye_y
    s_ny = cov[..., dy:, :dy]
    L, info = torch.linalg.cholesky_ex(s_yy)
    if bool((info != 0).any()):
        mi, ti = (info != 0).nonzero()[0].tolist()
        raise GPSFitError(f"dynamics fit: Σ_yy not positive definite at condition {mi}, time step {ti}; raise reg")
    F = torch.cholesky_solve(s_ny.transpose(-1, -2), L).transpose(-1, -2)  # [M, T, dX, dY]
    f = mean[..., dy:] - torch.einsum("mtxy,mty->mtx", F, mean[..., :dy])
    W = sym(cov[..., dy:, dy:] - F @ s_yy @ F.transpose(-1, -2)) + reg * torch.eye(dx, dtype=mean.dtype, device=mean.device)
    x0_cov = sym(x0_cov) + reg * torch.eye(dx, dtype=mean.dtype, device=mean.device)
    return LinearGaussianDynamics(F, f, W, x0_mean, x0_cov)
