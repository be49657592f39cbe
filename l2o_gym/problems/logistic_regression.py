"""ℓ2-regularised logistic regression on random 2-D Gaussian clusters (Li & Malik, 2016).

Also home of :func:`sample_gaussian_clusters`, the random-mixture data generator shared by the
Li & Malik families (:mod:`~l2o_gym.problems.robust_linear_regression`, :mod:`~l2o_gym.problems.neural_net`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from l2o_gym.problems.base import ProblemBatch, ProblemFamily
from l2o_gym.checks import check_positive, check_positive_int

#: Cluster means are drawn from ``U[-MEAN_RANGE, MEAN_RANGE]^2``.
MEAN_RANGE: float = 3.0
#: Cluster standard deviations along their principal axes are drawn from ``U[STD_MIN, STD_MAX]``.
STD_MIN: float = 0.25
STD_MAX: float = 1.0


def sample_gaussian_clusters(
    n: int,
    counts: Sequence[int],
    generator: torch.Generator,
    mean_range: float = MEAN_RANGE,
    std_min: float = STD_MIN,
    std_max: float = STD_MAX,
) -> tuple[Tensor, Tensor]:
    """Points of ``n`` independent random Gaussian mixtures in 2-D, batched (CPU, float64).

    Cluster ``k`` of every instance has mean ``μ_k ~ U[-mean_range, mean_range]^2`` and covariance
    ``Σ_k = R(φ_k) diag(s_k)² R(φ_k)ᵀ`` with rotation angle ``φ_k ~ U[0, π)`` and principal standard
    deviations ``s_k ~ U[std_min, std_max]^2``; its ``counts[k]`` points are ``μ_k + R(φ_k) diag(s_k) ε``,
    ``ε ~ N(0, I)``. Points are laid out cluster by cluster (cluster 0's points first).

    Args:
        n: number of instances.
        counts: number of points of each cluster (``K = len(counts)`` clusters).
        generator: the only source of randomness.
        mean_range, std_min, std_max: see above.

    Returns:
        ``(X[n, P, 2], cluster[P])`` with ``P = sum(counts)``: the points, and each point's cluster index
        (int64, the same for every instance).
    """
    k = len(counts)
    opts = {"generator": generator, "dtype": torch.float64}
    means = (2.0 * torch.rand(n, k, 2, **opts) - 1.0) * mean_range  # [n, K, 2]
    angle = torch.rand(n, k, **opts) * math.pi  # [n, K]
    stds = std_min + (std_max - std_min) * torch.rand(n, k, 2, **opts)  # [n, K, 2]
    cluster = torch.repeat_interleave(torch.arange(k), torch.tensor(list(counts), dtype=torch.int64))  # [P]
    eps = torch.randn(n, cluster.numel(), 2, **opts)  # [n, P, 2]
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # [n, K, 2, 2]
    local = stds[:, cluster] * eps  # [n, P, 2]
    x = means[:, cluster] + torch.einsum("npij,npj->npi", rot[:, cluster], local)
    return x, cluster


@dataclass(eq=False)
class LogisticRegression(ProblemFamily):
    """ℓ2-regularised logistic regression on two random Gaussian clusters.

    Source: Li & Malik, *Learning to Optimize* (ICLR 2017, arXiv:1606.01885), §4 "Logistic regression".

    Math:
        With features ``x̃_j = (x_j, 1) ∈ R³`` (bias column appended), labels ``y_j ∈ {0, 1}`` and
        logits ``z_j = θᵀx̃_j``::

            f(θ) = (1/P) Σ_j [softplus(z_j) − y_j z_j] + (l2/2) ‖w‖²,     θ = (w₁, w₂, b)

        i.e. mean binary cross-entropy with logits plus an ℓ2 penalty on the weights only (the bias is
        not regularised). Convex; with ``l2 > 0`` strictly convex in ``w`` and bounded below by 0.
        Gradient (closed form, used by the core): ``∇f = (1/P) X̃ᵀ(σ(z) − y) + l2·(w, 0)``.
        Computed with ``softplus`` so it is finite for every finite θ.

    Sampling distribution:
        ``⌊P/2⌋`` points of class 0 and ``⌈P/2⌉`` of class 1, each class one 2-D Gaussian from
        :func:`sample_gaussian_clusters`: mean ``~ U[-3, 3]²``, covariance ``R diag(s)² Rᵀ`` with a uniformly
        random rotation ``R`` and principal standard deviations ``s ~ U[0.25, 1]²``.
        ``x₀ ~ N(0, init_std² I)``.

    Sizes:
        ``n_points = 100``, ``l2 = 5e-4``, ``init_std = 1``; ``dim = 3``.

    θ layout:
        ``[w₁, w₂, b]`` (``θ[:, :2]`` weights, ``θ[:, 2]`` bias).

    Data (``batch.data``):
        ``X``: ``[N, P, 3]`` features with bias column; ``y``: ``[N, P]`` labels in {0, 1} (float).

    Args:
        n_points: number of data points ``P`` per instance (≥ 2).
        l2: ℓ2 regularisation strength.
        init_std: standard deviation of the initial point.
    """

    n_points: int = 100
    l2: float = 5e-4
    init_std: float = 1.0
    name = "logistic_regression"

    def __post_init__(self) -> None:
        self.n_points = check_positive_int("n_points", self.n_points)
        if self.n_points < 2:
            raise ValueError(f"n_points must be at least 2 (one point per class), got {self.n_points!r}")
        self.l2 = check_positive("l2", self.l2)
        self.init_std = check_positive("init_std", self.init_std)

    @property
    def dim(self) -> int:
        return 3

    def sample_instances(self, n: int, generator: torch.Generator, split: str) -> tuple[dict[str, Tensor], Tensor]:
        n0 = self.n_points // 2
        x, cluster = sample_gaussian_clusters(n, (n0, self.n_points - n0), generator)
        X = torch.cat([x, torch.ones(n, self.n_points, 1, dtype=torch.float64)], dim=-1)  # [n, P, 3]
        y = cluster.to(torch.float64).expand(n, -1).contiguous()  # [n, P]
        x0 = self.init_std * torch.randn(n, 3, generator=generator, dtype=torch.float64)
        return {"X": X, "y": y}, x0

    def _parts(self, batch: ProblemBatch, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        X, y = batch.data["X"], batch.data["y"]
        z = torch.bmm(X, theta.unsqueeze(-1)).squeeze(-1)  # [N, P]
        w = theta[:, :2]
        f = F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(-1) + 0.5 * self.l2 * (w * w).sum(-1)
        return f, z, w

    def loss(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> Tensor:
        return self._parts(batch, theta)[0]

    def loss_and_grad(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        f, z, w = self._parts(batch, theta)
        X, y = batch.data["X"], batch.data["y"]
        resid = (torch.sigmoid(z) - y) / z.shape[-1]  # [N, P]
        g = torch.bmm(resid.unsqueeze(1), X).squeeze(1)  # [N, 3]
        g = g + self.l2 * torch.cat([w, torch.zeros_like(theta[:, 2:])], dim=-1)
        return f, g
