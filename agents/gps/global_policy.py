"""The global policy: a Gaussian MLP on observations, trained by regression onto the local controllers.

``π(u | o) = N(μ_φ(o), Σ_π)`` with ``μ_φ`` an MLP (default: one hidden layer of 50 softplus units, as in
Li & Malik) on standardised observations, and a state-independent covariance ``Σ_π``.

BADMM global step (Levine et al. 2016, §4): minimise over ``φ`` and ``Σ_π``

    Σ_{i,t,s} ν_t [ KL(π(·|o_s) ‖ p_i(·|x_s)) ] + λ_tᵀ μ_φ(o_s)

For the mean, completing the square in ``μ_φ`` gives the precision-weighted regression

    ½ ν_t (μ_φ(o_s) − m_s)ᵀ P_t (μ_φ(o_s) − m_s),   m_s = K_t x_s + k_t − ν_t⁻¹ Σ_t λ_t,  P_t = Σ_t⁻¹

(:func:`regression_targets`), solved by Adam; for the covariance the minimiser is closed form,
``Σ_π = (Σ ν P / Σ ν)⁻¹``, the inverse of the weighted mean local precision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from l2o_gym.checks import check_nonnegative, check_positive, check_positive_int
from l2o_gym.agents.gps.lingauss import LinearGaussianPolicy, sym

log = logging.getLogger(__name__)


class GaussianMLP(nn.Module):
    """``μ(o) = out_mean + out_std · MLP((o − in_mean) / in_std)``, covariance buffer ``cov``.

    Args:
        obs_dim: observation length ``F``.
        act_dim: action dimension ``dU``.
        hidden: hidden layer widths (default ``(50,)``).
        activation: ``"softplus"`` (Li & Malik), ``"tanh"`` or ``"relu"``.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (50,), activation: str = "softplus") -> None:
        super().__init__()
        acts = {"softplus": nn.Softplus, "tanh": nn.Tanh, "relu": nn.ReLU}
        if activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), acts[activation]()]
            width = h
        layers.append(nn.Linear(width, act_dim))
        self.net = nn.Sequential(*layers)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.hidden, self.activation = tuple(hidden), activation
        self.register_buffer("in_mean", torch.zeros(obs_dim))
        self.register_buffer("in_std", torch.ones(obs_dim))
        self.register_buffer("out_mean", torch.zeros(act_dim))
        self.register_buffer("out_std", torch.ones(act_dim))
        self.register_buffer("cov", torch.eye(act_dim))

    def forward(self, obs: Tensor) -> Tensor:
        """Mean action ``[..., dU]`` for ``obs[..., F]``."""
        z = (obs - self.in_mean) / self.in_std
        return self.out_mean + self.out_std * self.net(z)

    @torch.no_grad()
    def set_normalization(self, obs: Tensor, act: Tensor, act_var: Tensor | None = None) -> None:
        """Standardise inputs/outputs with the statistics of ``obs[S, F]`` and ``act[S, dU]``.

        ``act_var[dU]`` (e.g. the mean diagonal of the local controllers' covariances) is added to the
        output variance, so targets that are all zero at the start still get a sensible output scale.
        """
        self.in_mean.copy_(obs.mean(0))
        self.in_std.copy_(obs.std(0).clamp_min(1e-6) if obs.shape[0] > 1 else torch.ones_like(self.in_std))
        self.out_mean.copy_(act.mean(0))
        var = act.var(0) if act.shape[0] > 1 else torch.zeros_like(self.out_std)
        if act_var is not None:
            var = var + act_var
        self.out_std.copy_(var.sqrt().clamp_min(1e-6))


@dataclass
class RegressionConfig:
    """Adam regression of the global policy.

    Args:
        iterations: Adam steps per global update.
        batch_size: minibatch size.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
    """

    iterations: int = 500
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check_positive_int("iterations", self.iterations)
        check_positive_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        check_nonnegative("weight_decay", self.weight_decay)


def regression_targets(
    local: LinearGaussianPolicy, X: Tensor, valid: Tensor, nu: Tensor, lam: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Targets of the global step on the sampled states.

    Args:
        local: controllers ``[M, T, …]``; X: ``[M, N, T(+1), dX]`` states; valid: ``[M, N]``;
        nu: ``[M, T]``; lam: ``[M, T, dU]`` or None.

    Returns:
        ``(mean[M, N, T, dU], prec[M, T, dU, dU], weight[M, T])`` with ``mean = Kx + k − Σλ/ν``.
    """
    t_len = local.K.shape[1]
    x = X[:, :, :t_len]
    mean = torch.einsum("mtux,mntx->mntu", local.K, x) + local.k[:, None]
    if lam is not None:
        shift = torch.einsum("mtuv,mtv->mtu", local.cov, lam) / nu[..., None]
        mean = mean - shift[:, None]
    return mean, local.prec, nu


def fit_global(
    model: GaussianMLP,
    obs: Tensor,
    target: Tensor,
    prec: Tensor,
    weight: Tensor,
    cfg: RegressionConfig,
    generator: torch.Generator | None = None,
    renormalize: bool = True,
) -> float:
    """Precision-weighted regression of ``model``'s mean onto ``target`` and closed-form covariance.

    Args:
        obs: ``[S, F]`` observations; target: ``[S, dU]``; prec: ``[S, dU, dU]``; weight: ``[S]`` (ν).
        renormalize: reset the input/output standardisation from this data first.

    Returns:
        The final weighted loss (per sample, with precisions scaled by their mean trace).
    """
    dtype = next(model.parameters()).dtype
    obs, target, prec, weight = (a.to(dtype) for a in (obs, target, prec, weight))
    if renormalize:
        act_var = torch.diagonal(torch.linalg.inv(prec), dim1=-2, dim2=-1).mean(0)
        model.set_normalization(obs, target, act_var)
    # Scale the precision-weighted loss to O(1) so Adam's step size is meaningful across problems.
    wp = weight[:, None, None] * prec
    scale = torch.diagonal(wp, dim1=-2, dim2=-1).sum(-1).mean().clamp_min(1e-12)
    wp = wp / scale
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    s = obs.shape[0]
    loss_val = float("nan")
    for _ in range(cfg.iterations):
        idx = torch.randint(0, s, (min(cfg.batch_size, s),), generator=generator, device="cpu").to(obs.device)
        diff = model(obs[idx]) - target[idx]
        loss = 0.5 * torch.einsum("su,suv,sv->s", diff, wp[idx], diff).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_val = float(loss.detach())
    with torch.no_grad():
        mean_prec = (weight[:, None, None] * prec).sum(0) / weight.sum().clamp_min(1e-12)
        model.cov.copy_(sym(torch.linalg.inv(sym(mean_prec))))
    return loss_val


def linearize(model: GaussianMLP, X: Tensor, valid: Tensor, obs_slice: slice) -> LinearGaussianPolicy:
    """The global policy as a linear-Gaussian controller in the full state, per condition and time step.

    ``K_t`` is the mean Jacobian ``∂μ/∂x`` over the valid samples at ``t`` (the observation is the slice
    ``obs_slice`` of ``x``), ``k_t`` the mean of ``μ(o_s) − K_t x_s``, and ``Σ_t = Σ_π``.

    Args:
        X: ``[M, N, T, dX]`` sampled states; valid: ``[M, N]``.
    """
    m, n, t_len, dx = X.shape
    dtype = next(model.parameters()).dtype
    x = X.reshape(-1, dx).to(dtype).detach().requires_grad_(True)
    with torch.enable_grad():
        mu = model(x[:, obs_slice])
        du = mu.shape[-1]
        rows = [torch.autograd.grad(mu[:, j].sum(), x, retain_graph=j + 1 < du)[0] for j in range(du)]
    J = torch.stack(rows, 1).to(X.dtype).view(m, n, t_len, du, dx)
    mu = mu.detach().to(X.dtype).view(m, n, t_len, du)
    w = valid.to(X.dtype)[:, :, None]
    cnt = w.sum(1).clamp_min(1.0)  # [M, 1]
    K = torch.einsum("mnt,mntux->mtux", w, J) / cnt[..., None, None]
    k = torch.einsum("mnt,mntu->mtu", w, mu - torch.einsum("mntux,mntx->mntu", K[:, None].expand_as(J), X)) / cnt[..., None]
    cov = model.cov.to(X.dtype).expand(m, t_len, du, du).clone()
    return LinearGaussianPolicy(K, k, cov)


def sample_kl(local: LinearGaussianPolicy, model: GaussianMLP, X: Tensor, obs_slice: slice) -> Tensor:
    """``KL(p_i(·|x_s) ‖ π(·|o_s))`` per sample and time step, ``[M, N, T]`` (the caller averages over samples)."""
    m, n, t_len, dx = X.shape
    du = local.K.shape[-2]
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        mu_pi = model(X[..., obs_slice].to(dtype)).to(X.dtype)  # [M, N, T, dU]
    mu_p = torch.einsum("mtux,mntx->mntu", local.K, X) + local.k[:, None]
    cov_pi = model.cov.to(X.dtype)
    Lq = torch.linalg.cholesky(cov_pi)
    prec_pi = torch.cholesky_inverse(Lq)
    logdet_q = 2 * torch.log(torch.diagonal(Lq)).sum()
    Lp = torch.linalg.cholesky(sym(local.cov))
    logdet_p = 2 * torch.log(torch.diagonal(Lp, dim1=-2, dim2=-1)).sum(-1)  # [M, T]
    tr = torch.einsum("uv,mtvu->mt", prec_pi, local.cov)
    diff = mu_p - mu_pi
    quad = torch.einsum("mntu,uv,mntv->mnt", diff, prec_pi, diff)
    return 0.5 * (tr[:, None] - du + logdet_q - logdet_p[:, None] + quad)
