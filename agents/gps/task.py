"""What BADMM-GPS trains on: a batch of ``M`` conditions that can be sampled and whose cost can be expanded.

:class:`OptimizationTask` wraps the l2o-gym core (conditions = training problems, full state
``x = [θ, f(θ), features]``, action ``u = Δθ``, observation = the features); :class:`LinearQuadraticTask` is a
small linear-Gaussian system with a quadratic cost and known optimum, used to test the BADMM loop.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from l2o_gym import core
from l2o_gym.agents.gps.cost import QuadraticCost, expand_cost
from l2o_gym.agents.gps.lingauss import LinearGaussianPolicy
from l2o_gym.core import CoreConfig
from l2o_gym.problems.base import ProblemBatch

log = logging.getLogger(__name__)


@dataclass
class Samples:
    """Sampled trajectories of the local controllers.

    Attributes:
        X: ``[M, N, T+1, dX]`` states; U: ``[M, N, T, dU]`` actions;
        valid: ``[M, N]`` bool — finite and not diverged (the others are dropped from every fit);
        costs: ``[M, N, T]`` per-step costs (the core's cost, ``f(θ_{t+1})``).
    """

    X: Tensor
    U: Tensor
    valid: Tensor
    costs: Tensor

    @property
    def n_dropped(self) -> int:
        return int((~self.valid).sum())


def drop_invalid(X: Tensor, U: Tensor, costs: Tensor, extra_invalid: Tensor | None = None) -> Samples:
    """Mark samples with any non-finite entry (or ``extra_invalid``) invalid, zero them, warn with the count."""
    ok = torch.isfinite(X).flatten(2).all(-1) & torch.isfinite(U).flatten(2).all(-1) & torch.isfinite(costs).all(-1)
    if extra_invalid is not None:
        ok = ok & ~extra_invalid
    n_bad = int((~ok).sum())
    if n_bad:
        per = (~ok).sum(1).tolist()
        log.warning("GPS: dropped %d of %d samples (non-finite or diverged); per condition: %s", n_bad, ok.numel(), per)
    zero = torch.zeros((), dtype=X.dtype, device=X.device)
    X = torch.where(ok[:, :, None, None], X, zero)
    U = torch.where(ok[:, :, None, None], U, zero)
    costs = torch.where(ok[:, :, None], costs, zero)
    return Samples(X, U, ok, costs)


class OptimizationTask:
    """Conditions = ``M`` training problems of one family, run through :mod:`l2o_gym.core`.

    Args:
        problems: the ``M`` problems (float64 recommended).
        core_config: the MDP config (``horizon`` = GPS horizon ``T``; ``history`` sets the feature size).
        action_penalty: ``w_u`` in the cost (:mod:`~l2o_gym.agents.gps.cost`).
        hessian: ``"exact"``, ``"psd"`` or ``"none"``.
    """

    def __init__(
        self, problems: ProblemBatch, core_config: CoreConfig, action_penalty: float = 0.0, hessian: str = "exact"
    ) -> None:
        self.problems = problems
        self.core_config = dataclasses.replace(core_config, validate=False)
        self.action_penalty = action_penalty
        self.hessian = hessian
        d = problems.dim
        self.d = d
        self.n_conditions = problems.n
        self.horizon = core_config.horizon
        self.obs_dim = core.obs_dim(core_config, d)
        self.dx = d + 1 + self.obs_dim
        self.du = d
        #: the observation (features) inside the full state x = [θ, f, features].
        self.obs_slice = slice(d + 1, self.dx)
        h = core_config.history
        #: the latest gradient (times grad_scale) inside x.
        self.grad_slice = slice(d + 1 + h + (h - 1) * d, d + 1 + h + h * d)

    def initial_policy(self, lr: float, std: float) -> LinearGaussianPolicy:
        """``u = −lr · ∇f(θ_t) + N(0, std² I)``: a gradient step with exploration noise."""
        m, t, du, dx = self.n_conditions, self.horizon, self.du, self.dx
        opts = {"dtype": self.problems.dtype, "device": self.problems.device}
        K = torch.zeros(m, t, du, dx, **opts)
        K[..., self.grad_slice] = -lr / self.core_config.grad_scale * torch.eye(du, **opts)
        cov = std**2 * torch.eye(du, **opts).expand(m, t, du, du).clone()
        return LinearGaussianPolicy(K, torch.zeros(m, t, du, **opts), cov)

    def sample(self, policy: LinearGaussianPolicy, n: int, generator: torch.Generator) -> Samples:
        """``n`` trajectories per condition from ``policy`` (noise from ``generator``, CPU).

        ``policy`` is anything with ``sample(x[M, N, dX], t, noise[M, N, dU]) -> u[M, N, dU]`` (the local
        controllers, or the global policy through :class:`~l2o_gym.agents.gps.badmm.GlobalSampler`).
        """
        m, t_len, du, dx = self.n_conditions, self.horizon, self.du, self.dx
        idx = torch.arange(m, device=self.problems.device).repeat_interleave(n)
        state = core.reset(self.problems.index(idx), self.core_config)
        xs, us, cs = [], [], []
        diverged = torch.zeros(m, n, dtype=torch.bool, device=self.problems.device)
        with torch.no_grad():
            for t in range(t_len):
                x = core.full_state(state).view(m, n, dx)
                noise = torch.randn(m, n, du, generator=generator, dtype=x.dtype).to(x.device)
                u = policy.sample(x, t, noise)
                u_flat = torch.where(torch.isfinite(u), u, torch.zeros_like(u)).reshape(m * n, du)
                bad_u = ~torch.isfinite(u).all(-1)
                state, cost, term, _ = core.step(state, u_flat)
                diverged |= term.view(m, n) | bad_u
                xs.append(x)
                us.append(u)
                cs.append(cost.view(m, n))
            xs.append(core.full_state(state).view(m, n, dx))
        X = torch.stack(xs, 2)
        U = torch.stack(us, 2)
        C = torch.stack(cs, 2)
        return drop_invalid(X, U, C, diverged)

    def expand_cost(self, samples: Samples) -> QuadraticCost:
        return expand_cost(
            self.problems, samples.X, samples.U, samples.valid, action_penalty=self.action_penalty, hessian=self.hessian
        )


class LinearQuadraticTask:
    """``x_{t+1} = A x_t + B u_t + N(0, W)``, cost ``½ xᵀQx + ½ uᵀRu`` (state and action), M initial states.

    The observation is the full state, so the optimal time-varying linear feedback is the LQR solution.

    Args:
        A: ``[dX, dX]``; B: ``[dX, dU]``; Q: ``[dX, dX]``; R: ``[dU, dU]``; x0: ``[M, dX]``;
        horizon: ``T``; noise_std: process noise standard deviation.
    """

    def __init__(self, A: Tensor, B: Tensor, Q: Tensor, R: Tensor, x0: Tensor, horizon: int, noise_std: float = 0.01) -> None:
        self.A, self.B, self.Q, self.R, self.x0 = A, B, Q, R, x0
        self.horizon = horizon
        self.noise_std = noise_std
        self.n_conditions, self.dx = x0.shape
        self.du = B.shape[1]
        self.obs_slice = slice(0, self.dx)

    def initial_policy(self, std: float = 1.0) -> LinearGaussianPolicy:
        m, t, du, dx = self.n_conditions, self.horizon, self.du, self.dx
        opts = {"dtype": self.x0.dtype}
        return LinearGaussianPolicy(
            torch.zeros(m, t, du, dx, **opts), torch.zeros(m, t, du, **opts),
            std**2 * torch.eye(du, **opts).expand(m, t, du, du).clone(),
        )

    def sample(self, policy: LinearGaussianPolicy, n: int, generator: torch.Generator) -> Samples:
        m = self.n_conditions
        x = self.x0[:, None].expand(m, n, self.dx).clone()
        xs, us, cs = [], [], []
        for t in range(self.horizon):
            u = policy.sample(x, t, torch.randn(m, n, self.du, generator=generator, dtype=x.dtype))
            cs.append(0.5 * torch.einsum("mni,ij,mnj->mn", x, self.Q, x) + 0.5 * torch.einsum("mni,ij,mnj->mn", u, self.R, u))
            xs.append(x)
            us.append(u)
            w = self.noise_std * torch.randn(m, n, self.dx, generator=generator, dtype=x.dtype)
            x = x @ self.A.T + u @ self.B.T + w
        xs.append(x)
        return drop_invalid(torch.stack(xs, 2), torch.stack(us, 2), torch.stack(cs, 2))

    def expand_cost(self, samples: Samples) -> QuadraticCost:
        m, t_len = self.n_conditions, self.horizon
        dy = self.dx + self.du
        C = torch.zeros(dy, dy, dtype=self.x0.dtype)
        C[: self.dx, : self.dx] = self.Q
        C[self.dx :, self.dx :] = self.R
        return QuadraticCost(C.expand(m, t_len, dy, dy).clone(), C.new_zeros(m, t_len, dy), C.new_zeros(m, t_len))
