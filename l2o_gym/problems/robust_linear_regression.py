"""Robust (Geman–McClure) linear regression on a random 4-cluster mixture (Li & Malik, 2016)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from l2o_gym.problems.base import ProblemBatch, ProblemFamily
from l2o_gym.checks import check_positive, check_positive_int
from l2o_gym.problems.logistic_regression import sample_gaussian_clusters


def geman_mcclure(u: Tensor) -> Tensor:
    """``ρ(u) = u² / (1 + u²)`` elementwise, finite with finite gradients for every finite ``u``.

    Evaluated as ``v²/(1+v²)`` with ``v = |u|`` when ``|u| ≤ 1`` and ``1/(1+v²)`` with ``v = 1/|u|``
    otherwise, so ``u²`` is never formed for large ``u`` (no overflow to ``inf/inf``).
    """
    a = u.abs()
    small = a <= 1.0
    v = torch.where(small, a, 1.0 / a.clamp_min(1.0))
    v2 = v * v
    return torch.where(small, v2 / (1.0 + v2), 1.0 / (1.0 + v2))


@dataclass(eq=False)
class RobustLinearRegression(ProblemFamily):
    """Linear regression with the Geman–McClure robust loss on data from four random linear models.

    Source: Li & Malik, *Learning to Optimize* (ICLR 2017, arXiv:1606.01885), §4 "Robust linear regression";
    the M-estimator is Geman & McClure (1987).

    Math:
        With points ``x_j ∈ R²``, targets ``y_j`` and residuals ``r_j = y_j − wᵀx_j − b``::

            f(θ) = (1/P) Σ_j ρ(r_j),     ρ(r) = r² / (c² + r²),     θ = (w₁, w₂, b)

        Non-convex (ρ saturates at 1): the robust fit locks onto one cluster's linear relation and
        treats the others as outliers, so instances have several local minima. ``0 ≤ f < 1``.
        ρ is evaluated without forming ``r²`` for large ``r`` (see :func:`geman_mcclure`), so ``f`` and
        its gradient are finite for every finite θ.

    Sampling distribution:
        ``n_clusters`` 2-D Gaussians from :func:`~l2o_gym.problems.logistic_regression.sample_gaussian_clusters`
        (mean ``~ U[-3, 3]²``, covariance ``R diag(s)² Rᵀ``, uniformly random rotation, ``s ~ U[0.25, 1]²``),
        ``points_per_cluster`` points each. Cluster ``k`` has its own linear relation
        ``y = w_kᵀx + b_k + ε`` with ``w_k ~ N(0, I₂)``, ``b_k ~ N(0, 1)`` and noise ``ε ~ N(0, noise_std²)``.
        ``x₀ ~ N(0, init_std² I)``.

    Sizes:
        ``n_clusters = 4``, ``points_per_cluster = 25`` (100 points), ``c = 1``, ``noise_std = 0.1``,
        ``init_std = 1``; ``dim = 3``.

    θ layout:
        ``[w₁, w₂, b]``.

    Data (``batch.data``):
        ``X``: ``[N, P, 2]`` points; ``y``: ``[N, P]`` targets.

    Args:
        n_clusters: number of Gaussian clusters (each with its own linear relation).
        points_per_cluster: points drawn from each cluster.
        c: scale of the Geman–McClure loss.
        noise_std: standard deviation of the target noise.
        init_std: standard deviation of the initial point.
    """

    n_clusters: int = 4
    points_per_cluster: int = 25
    c: float = 1.0
    noise_std: float = 0.1
    init_std: float = 1.0
    name = "robust_linear_regression"

    def __post_init__(self) -> None:
        self.n_clusters = check_positive_int("n_clusters", self.n_clusters)
        self.points_per_cluster = check_positive_int("points_per_cluster", self.points_per_cluster)
        self.c = check_positive("c", self.c)
        self.noise_std = check_positive("noise_std", self.noise_std)
        self.init_std = check_positive("init_std", self.init_std)

    @property
    def dim(self) -> int:
        return 3

    def sample_instances(self, n: int, generator: torch.Generator, split: str) -> tuple[dict[str, Tensor], Tensor]:
        k, m = self.n_clusters, self.points_per_cluster
        X, cluster = sample_gaussian_clusters(n, (m,) * k, generator)  # [n, P, 2], [P]
        opts = {"generator": generator, "dtype": torch.float64}
        w = torch.randn(n, k, 2, **opts)
        b = torch.randn(n, k, **opts)
        noise = self.noise_std * torch.randn(n, k * m, **opts)
        y = (X * w[:, cluster]).sum(-1) + b[:, cluster] + noise  # [n, P]
        x0 = self.init_std * torch.randn(n, 3, **opts)
        return {"X": X, "y": y}, x0

    def loss(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> Tensor:
        X, y = batch.data["X"], batch.data["y"]
        pred = torch.bmm(X, theta[:, :2].unsqueeze(-1)).squeeze(-1) + theta[:, 2:]  # [N, P]
        return geman_mcclure((y - pred) / self.c).mean(-1)
