"""The BADMM guided-policy-search loop (Levine et al., JMLR 2016; Li & Malik, ICLR 2017).

One iteration, read top to bottom (:meth:`BADMMTrainer.iteration`):

1. **Sample** ``N`` trajectories per condition from the local controllers ``p_i``; non-finite or diverged
   samples are dropped (warned, counted) and never reach a fit.
2. **Fit dynamics** per condition and time step with the pooled normal-inverse-Wishart prior
   (:mod:`~l2o_gym.agents.gps.dynamics`) and **expand the cost** to second order
   (:mod:`~l2o_gym.agents.gps.cost`).
3. **Adapt the KL step** ``ε_i = kl_step · T · mult_i`` from the ratio of actual to predicted improvement of
   the previous update (Levine & Abbeel 2014): ``mult ← mult · clip(pred / (2 max(1e-4, pred − actual)), 0.5, 2)``.
4. Inner loop (``inner_iterations`` times):
   a. **Local update**: LQR with the BADMM terms ``−λ_tᵀu + ν_t KL(p‖π̂)`` under ``KL(p‖p_prev) ≤ ε``
      (:func:`~l2o_gym.agents.gps.lqr.solve_kl_step`), ``π̂`` = global policy linearised on the samples;
   b. **Global update**: regression of the MLP onto the new controllers on the sampled observations
      (:func:`~l2o_gym.agents.gps.global_policy.fit_global`);
   c. **Dual update**: ``λ_t ← λ_t + α ν_t (E_s[μ_π(o_s)] − E_s[μ_p(x_s)])``, and ``ν_t`` doubled (halved)
      where the measured ``E_s KL(p‖π)`` is above twice (below half) ``kl_target``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from l2o_gym.checks import check_nonnegative, check_positive, check_positive_int
from l2o_gym.agents.gps.cost import QuadraticCost
from l2o_gym.agents.gps.dynamics import fit_dynamics, fit_prior
from l2o_gym.agents.gps.global_policy import (
    GaussianMLP,
    RegressionConfig,
    fit_global,
    linearize,
    regression_targets,
    sample_kl,
)
from l2o_gym.agents.gps.lingauss import LinearGaussianDynamics, LinearGaussianPolicy, forward
from l2o_gym.agents.gps.lqr import solve_kl_step
from l2o_gym.agents.gps.task import Samples

log = logging.getLogger(__name__)


class Task(Protocol):
    """What the loop needs from a task (see :mod:`~l2o_gym.agents.gps.task`)."""

    n_conditions: int
    horizon: int
    dx: int
    du: int
    obs_slice: slice

    def sample(self, policy: LinearGaussianPolicy, n: int, generator: torch.Generator) -> Samples: ...

    def expand_cost(self, samples: Samples) -> QuadraticCost: ...


@dataclass
class BADMMLoopConfig:
    """The knobs of the BADMM loop shared by every GPS variant (:class:`BADMMConfig` for GPS on the full state,
    :class:`~l2o_gym.agents.gps.conv.ConvGPSConfig` for convolutional GPS, which overrides some defaults).

    Args:
        n_samples: trajectories per condition per iteration ``N``.
        inner_iterations: local/global/dual rounds per iteration.
        kl_step: base KL step per time step (``ε = kl_step · T · mult``).
        min_mult, max_mult: bounds of the adaptive step multiplier.
        prior_strength: ``n₀`` of the dynamics prior (0 disables the prior).
        dyn_reg: ridge of the dynamics fit.
        init_nu: initial ν_t; nu_min, nu_max: its bounds.
        kl_target: target ``E KL(p‖π)`` per time step for the ν adjustment.
        dual_step: α of the λ update.
    """

    n_samples: int = 5
    inner_iterations: int = 2
    kl_step: float = 0.5
    min_mult: float = 0.05
    max_mult: float = 10.0
    prior_strength: float = 1.0
    dyn_reg: float = 1e-6
    init_nu: float = 1e-2
    nu_min: float = 1e-6
    nu_max: float = 1e3
    kl_target: float = 0.5
    dual_step: float = 1.0

    def __post_init__(self) -> None:
        for name in ("n_samples", "inner_iterations"):
            check_positive_int(name, getattr(self, name))
        for name in ("kl_step", "min_mult", "max_mult", "init_nu", "nu_min", "nu_max", "kl_target", "dual_step"):
            check_positive(name, getattr(self, name))
        for name in ("prior_strength", "dyn_reg"):
            check_nonnegative(name, getattr(self, name))
        if self.max_mult < self.min_mult or self.nu_max < self.nu_min:
            raise ValueError(f"max_mult must be >= min_mult and nu_max >= nu_min, got {self.max_mult}, {self.min_mult}, "
                             f"{self.nu_max}, {self.nu_min}")


@dataclass
class BADMMConfig(BADMMLoopConfig):
    """Hyperparameters of the BADMM loop of GPS on the full state: :class:`BADMMLoopConfig` plus

    Args:
        regression: Adam settings of the global update.
        global_samples: trajectories per condition sampled each iteration from the *global* policy (its mean
            plus its covariance noise) and added to the regression data, labelled by the local controllers at
            the states the global policy visits (a DAgger-like correction of the state distribution the global
            policy is trained on; the local fits use the local samples only). 0: plain BADMM.
    """

    regression: RegressionConfig = field(default_factory=RegressionConfig)
    global_samples: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.regression, dict):
            self.regression = RegressionConfig(**self.regression)
        super().__post_init__()
        if isinstance(self.global_samples, bool) or not isinstance(self.global_samples, int) or self.global_samples < 0:
            raise ValueError(f"global_samples must be a non-negative integer, got {self.global_samples!r}")


class GlobalSampler:
    """The global policy as a sampler for :meth:`Task.sample`: ``u = μ_φ(o) + chol(Σ_π) ξ``."""

    def __init__(self, model: GaussianMLP, obs_slice: slice) -> None:
        self.model, self.obs_slice = model, obs_slice

    def sample(self, x: Tensor, t: int, noise: Tensor) -> Tensor:
        dtype = next(self.model.parameters()).dtype
        with torch.no_grad():
            mu = self.model(x[..., self.obs_slice].to(dtype)).to(x.dtype)
        chol = torch.linalg.cholesky(self.model.cov.to(x.dtype))
        return mu + noise @ chol.T


@dataclass
class Prediction:
    """The last local update, kept to adapt the KL step from predicted vs actual improvement."""

    dyn: LinearGaussianDynamics
    cost: QuadraticCost
    old: LinearGaussianPolicy
    new: LinearGaussianPolicy

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors only (``state.pt`` loads with ``weights_only=True``)."""
        d, c = self.dyn, self.cost
        return {"F": d.F, "f": d.f, "W": d.W, "x0_mean": d.x0_mean, "x0_cov": d.x0_cov,
                "C": c.C, "c": c.c, "c0": c.c0, "oK": self.old.K, "ok": self.old.k, "ocov": self.old.cov,
                "nK": self.new.K, "nk": self.new.k, "ncov": self.new.cov}

    @staticmethod
    def from_state_dict(p: dict[str, Tensor]) -> Prediction:
        return Prediction(
            LinearGaussianDynamics(p["F"], p["f"], p["W"], p["x0_mean"], p["x0_cov"]),
            QuadraticCost(p["C"], p["c"], p["c0"]),
            LinearGaussianPolicy(p["oK"], p["ok"], p["ocov"]),
            LinearGaussianPolicy(p["nK"], p["nk"], p["ncov"]),
        )


def adapt_multiplier(
    pred: Prediction | None, dyn: LinearGaussianDynamics, cost: QuadraticCost, mult: Tensor, lo: float, hi: float
) -> Tensor:
    """The KL-step multiplier after an update (Levine & Abbeel 2014): ``mult · clip(pred / (2 max(1e-4, pred −
    actual)), 0.5, 2)`` clipped to ``[lo, hi]``, with ``pred``/``actual`` the improvements of the last update under
    the old and the newly fitted model (``mult`` unchanged before the first update)."""
    if pred is None:
        return mult
    old_prev = expected_cost(pred.dyn, pred.cost, pred.old)
    predicted = old_prev - expected_cost(pred.dyn, pred.cost, pred.new)
    actual = old_prev - expected_cost(dyn, cost, pred.new)
    factor = predicted / (2 * torch.clamp(predicted - actual, min=1e-4))
    factor = torch.where(torch.isfinite(factor), factor, torch.ones_like(factor)).clamp(0.5, 2.0)
    return (mult * factor).clamp(lo, hi)


def adjust_nu(nu: Tensor, kl: Tensor, target: float, lo: float, hi: float) -> Tensor:
    """``ν`` doubled where the measured ``KL(p‖π)`` is above ``2·target``, halved below ``target/2``, clipped."""
    up, down = kl > 2 * target, kl < 0.5 * target
    return torch.where(up, 2 * nu, torch.where(down, 0.5 * nu, nu)).clamp(lo, hi)


def expected_cost(dyn: LinearGaussianDynamics, cost: QuadraticCost, pol: LinearGaussianPolicy) -> Tensor:
    """``Σ_t E[c_t]`` of ``pol`` under ``dyn`` and the quadratic ``cost`` → ``[M]``."""
    mu, S = forward(dyn, pol)
    return cost.expected(mu, S)


class BADMMTrainer:
    """State of the BADMM loop: local controllers, global policy, multipliers λ, ν and step multipliers.

    Args:
        task: the conditions (:class:`~l2o_gym.agents.gps.task.OptimizationTask` or any :class:`Task`).
        local: initial controllers ``[M, T, …]``.
        model: the global policy (its parameters' dtype is used for regression).
        cfg: loop hyperparameters.
        seed: seed of the sampling noise and minibatches.
    """

    def __init__(self, task: Task, local: LinearGaussianPolicy, model: GaussianMLP, cfg: BADMMConfig, seed: int = 0) -> None:
        self.task, self.local, self.model, self.cfg = task, local, model, cfg
        #: the controllers being computed in the current iteration (== ``local`` between iterations).
        self.local_new = local
        m, t_len, du = task.n_conditions, task.horizon, task.du
        opts = {"dtype": local.K.dtype, "device": local.K.device}
        self.lam = torch.zeros(m, t_len, du, **opts)
        self.nu = torch.full((m, t_len), cfg.init_nu, **opts)
        self.mult = torch.ones(m, **opts)
        self.eta = torch.ones(m, **opts)
        self.generator = torch.Generator().manual_seed(seed)
        self.iteration_count = 0
        self.env_steps = 0
        self.n_dropped = 0
        self._pred: Prediction | None = None
        self._model_fitted = False

    # ------------------------------------------------------------------ pieces
    def _adapt_step(self, dyn: LinearGaussianDynamics, cost: QuadraticCost) -> None:
        self.mult = adapt_multiplier(self._pred, dyn, cost, self.mult, self.cfg.min_mult, self.cfg.max_mult)

    def _regression_data(self, samples: Samples) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(obs, target, precision, weight)`` of the valid sampled states, flattened over ``(m, n, t)``."""
        t_len = self.task.horizon
        X = samples.X[:, :, :t_len]
        target, prec, weight = regression_targets(self.local_new, X, samples.valid, self.nu, self.lam)
        m, n = samples.valid.shape
        v = samples.valid
        obs = X[..., self.task.obs_slice][v].reshape(-1, X[..., self.task.obs_slice].shape[-1])
        tgt = target[v].reshape(-1, target.shape[-1])
        pr = prec[:, None].expand(m, n, *prec.shape[1:])[v].reshape(-1, *prec.shape[-2:])
        wt = weight[:, None].expand(m, n, t_len)[v].reshape(-1)
        return obs, tgt, pr, wt

    def _global_step(self, samples: Samples, extra: Samples | None = None) -> float:
        parts = [self._regression_data(samples)]
        if extra is not None and bool(extra.valid.any()):
            parts.append(self._regression_data(extra))
        obs, tgt, pr, wt = (torch.cat(a) for a in zip(*parts))
        loss = fit_global(self.model, obs, tgt, pr, wt, self.cfg.regression, self.generator, renormalize=not self._model_fitted)
        self._model_fitted = True
        return loss

    def _dual_step(self, samples: Samples) -> Tensor:
        t_len = self.task.horizon
        X = samples.X[:, :, :t_len]
        w = samples.valid.to(X.dtype)
        cnt = w.sum(1).clamp_min(1.0)[:, None, None]
        dtype = next(self.model.parameters()).dtype
        with torch.no_grad():
            mu_pi = self.model(X[..., self.task.obs_slice].to(dtype)).to(X.dtype)
        mu_p = torch.einsum("mtux,mntx->mntu", self.local_new.K, X) + self.local_new.k[:, None]
        diff = torch.einsum("mn,mntu->mtu", w, mu_pi - mu_p) / cnt
        self.lam = self.lam + self.cfg.dual_step * self.nu[..., None] * diff
        kl = torch.einsum("mn,mnt->mt", w, sample_kl(self.local_new, self.model, X, self.task.obs_slice)) / cnt[..., 0]
        self.nu = adjust_nu(self.nu, kl, self.cfg.kl_target, self.cfg.nu_min, self.cfg.nu_max)
        return kl

    # ------------------------------------------------------------------ one iteration
    def iteration(self) -> dict[str, float]:
        """One BADMM iteration (module docstring); returns scalar metrics for logging."""
        t0 = time.perf_counter()
        task, cfg = self.task, self.cfg
        samples = task.sample(self.local, cfg.n_samples, self.generator)
        self.env_steps += task.n_conditions * cfg.n_samples * task.horizon
        self.n_dropped += samples.n_dropped
        gsamples = None
        if cfg.global_samples > 0 and self._model_fitted:
            gsamples = task.sample(GlobalSampler(self.model, task.obs_slice), cfg.global_samples, self.generator)
            self.env_steps += task.n_conditions * cfg.global_samples * task.horizon
        prior = fit_prior(samples.X, samples.U, samples.valid, cfg.prior_strength) if cfg.prior_strength > 0 else None
        dyn = fit_dynamics(samples.X, samples.U, samples.valid, prior, cfg.dyn_reg)
        cost = task.expand_cost(samples)
        self._adapt_step(dyn, cost)
        eps = cfg.kl_step * task.horizon * self.mult
        X = samples.X[:, :, : task.horizon]
        if not self._model_fitted:
            # Before the first regression the global policy is arbitrary: fit it to the sampling controllers.
            self.local_new = self.local
            self._global_step(samples)
        glob = linearize(self.model, X, samples.valid, task.obs_slice)
        kl_pol = torch.zeros(())
        reg_loss = float("nan")
        for _ in range(cfg.inner_iterations):
            res = solve_kl_step(dyn, cost, self.local, eps, self.nu, glob, self.lam)
            self.local_new, self.eta = res.policy, res.eta
            reg_loss = self._global_step(samples, gsamples)
            glob = linearize(self.model, X, samples.valid, task.obs_slice)
            kl_pol = self._dual_step(samples)
        self._pred = Prediction(dyn, cost, self.local, self.local_new)
        self.local = self.local_new
        self.iteration_count += 1
        valid = samples.valid
        per_sample = samples.costs.mean(-1)  # mean objective over the trajectory
        final = samples.costs[..., -1]
        w = valid.to(per_sample.dtype)
        metrics = {
            "sample_cost": float((w * per_sample).sum() / w.sum().clamp_min(1)),
            "sample_final": float((w * final).sum() / w.sum().clamp_min(1)),
            "kl_local_global": float(kl_pol.mean()),
            "kl_step_achieved": float(res.kl.mean()),
            "eps": float(eps.mean()),
            "eta_log10": float(torch.log10(self.eta).mean()),
            "step_mult": float(self.mult.mean()),
            "nu_log10": float(torch.log10(self.nu).mean()),
            "lambda_norm": float(self.lam.norm(dim=-1).mean()),
            "regression_loss": reg_loss,
            "dropped": float(samples.n_dropped),
            "max_action": float(samples.U[valid].abs().max()) if bool(valid.any()) else 0.0,
            "env_steps": float(self.env_steps),
            "wall_s": time.perf_counter() - t0,
        }
        log.info("GPS iter %d: %s", self.iteration_count, {k: round(v, 4) for k, v in metrics.items()})
        return metrics

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (tensors and numbers only; the prediction for step adaptation too)."""
        out: dict[str, Any] = {
            "K": self.local.K, "k": self.local.k, "cov": self.local.cov,
            "lam": self.lam, "nu": self.nu, "mult": self.mult, "eta": self.eta,
            "model": self.model.state_dict(), "generator": self.generator.get_state(),
            "iteration": self.iteration_count, "env_steps": self.env_steps, "n_dropped": self.n_dropped,
            "model_fitted": self._model_fitted,
        }
        if self._pred is not None:
            out["pred"] = self._pred.state_dict()
        return out

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        dev = self.lam.device  # state.pt is read onto the CPU: keep this run's device (a CUDA run resumes on CUDA)
        self.local = LinearGaussianPolicy(*(sd[k].to(dev) for k in ("K", "k", "cov")))
        self.local_new = self.local
        self.lam, self.nu, self.mult, self.eta = (sd[k].to(dev) for k in ("lam", "nu", "mult", "eta"))
        self.model.load_state_dict(sd["model"])
        self.generator.set_state(sd["generator"])
        self.iteration_count, self.env_steps, self.n_dropped = int(sd["iteration"]), int(sd["env_steps"]), int(sd["n_dropped"])
        self._model_fitted = bool(sd["model_fitted"])
        p = sd.get("pred")
        if p is not None:
            self._pred = Prediction.from_state_dict({k: v.to(dev) for k, v in p.items()})

