"""A small two-layer ReLU classifier on a random 4-cluster, 2-class mixture (Li & Malik, 2016)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from l2o_gym.problems.base import ProblemBatch, ProblemFamily
from l2o_gym.checks import check_positive, check_positive_int
from l2o_gym.problems.logistic_regression import sample_gaussian_clusters

#: Input dimension and number of classes.
_IN = 2
_OUT = 2


@dataclass(eq=False)
class NeuralNet(ProblemFamily):
    """Training a 2 → ``hidden`` → 2 ReLU network with softmax cross-entropy.

    Source: Li & Malik, *Learning to Optimize* (ICLR 2017, arXiv:1606.01885), §4 "Neural net classifier".

    Math:
        For points ``x_j ∈ R²`` with labels ``y_j ∈ {0, 1}``::

            h_j = relu(x_j W₁ + b₁),   z_j = h_j W₂ + b₂ ∈ R²
            f(θ) = (1/P) Σ_j [logsumexp(z_j) − z_{j, y_j}] + (l2/2)(‖W₁‖² + ‖W₂‖²)

        (softmax cross-entropy via ``logsumexp``, so ``f`` is finite for every finite θ; biases are not
        regularised). Non-convex and non-smooth (ReLU kinks, dead units).

    Sampling distribution:
        ``n_clusters = 4`` 2-D Gaussians from
        :func:`~l2o_gym.problems.logistic_regression.sample_gaussian_clusters` (mean ``~ U[-3, 3]²``,
        covariance ``R diag(s)² Rᵀ``, uniformly random rotation, ``s ~ U[0.25, 1]²``),
        ``points_per_cluster`` points each; clusters 0 and 1 are class 0, clusters 2 and 3 class 1 (the
        cluster parameters are i.i.d., so this fixed assignment is a uniformly random pairing). The
        initial point has weights ``~ N(0, 1/fan_in)`` (``fan_in = 2`` for W₁, ``hidden`` for W₂) and zero
        biases.

    Sizes:
        ``hidden = 2``, ``points_per_cluster = 25`` (100 points), ``l2 = 5e-4``;
        ``dim = 2·hidden + hidden + 2·hidden + 2`` (12 by default).

    θ layout:
        ``[W₁ (2×hidden, row-major) | b₁ (hidden) | W₂ (hidden×2, row-major) | b₂ (2)]``.

    Data (``batch.data``):
        ``X``: ``[N, P, 2]`` points; ``y``: ``[N, P]`` int64 class labels.

    Args:
        hidden: number of hidden ReLU units.
        points_per_cluster: points drawn from each of the 4 clusters.
        l2: ℓ2 regularisation strength on the weights.
    """

    hidden: int = 2
    points_per_cluster: int = 25
    l2: float = 5e-4
    name = "neural_net"

    def __post_init__(self) -> None:
        self.hidden = check_positive_int("hidden", self.hidden)
        self.points_per_cluster = check_positive_int("points_per_cluster", self.points_per_cluster)
        self.l2 = check_positive("l2", self.l2)

    @property
    def dim(self) -> int:
        h = self.hidden
        return _IN * h + h + h * _OUT + _OUT

    def sample_instances(self, n: int, generator: torch.Generator, split: str) -> tuple[dict[str, Tensor], Tensor]:
        X, cluster = sample_gaussian_clusters(n, (self.points_per_cluster,) * 4, generator)
        y = (cluster // 2).expand(n, -1).contiguous()  # [n, P] int64
        h = self.hidden
        opts = {"generator": generator, "dtype": torch.float64}
        w1 = torch.randn(n, _IN * h, **opts) / math.sqrt(_IN)
        w2 = torch.randn(n, h * _OUT, **opts) / math.sqrt(h)
        b1 = torch.zeros(n, h, dtype=torch.float64)
        b2 = torch.zeros(n, _OUT, dtype=torch.float64)
        x0 = torch.cat([w1, b1, w2, b2], dim=-1)
        return {"X": X, "y": y}, x0

    def unflatten(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Split ``theta[N, d]`` into ``W₁[N, 2, h]``, ``b₁[N, h]``, ``W₂[N, h, 2]``, ``b₂[N, 2]``."""
        n, h = theta.shape[0], self.hidden
        w1, b1, w2, b2 = torch.split(theta, [_IN * h, h, h * _OUT, _OUT], dim=-1)
        return w1.reshape(n, _IN, h), b1, w2.reshape(n, h, _OUT), b2

    def loss(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> Tensor:
        X, y = batch.data["X"], batch.data["y"]
        w1, b1, w2, b2 = self.unflatten(theta)
        hid = torch.relu(torch.baddbmm(b1.unsqueeze(1), X, w1))  # [N, P, h]
        z = torch.baddbmm(b2.unsqueeze(1), hid, w2)  # [N, P, 2]
        nll = torch.logsumexp(z, dim=-1) - z.gather(-1, y.unsqueeze(-1)).squeeze(-1)  # [N, P]
        reg = (w1 * w1).sum((1, 2)) + (w2 * w2).sum((1, 2))
        return nll.mean(-1) + 0.5 * self.l2 * reg
