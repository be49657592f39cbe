"""Random least-squares quadratics (Andrychowicz et al., 2016, §3.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from l2o_gym.problems.base import ProblemBatch, ProblemFamily
from l2o_gym.checks import check_positive, check_positive_int


@dataclass(eq=False)
class Quadratic(ProblemFamily):
    """Random quadratics ``f(x) = ‖W x − y‖²``.

    Source: Andrychowicz et al., *Learning to learn by gradient descent by gradient descent* (2016), §3.1.

    Math:
        ``f(x) = Σ_i ((W x)_i − y_i)²``, gradient ``∇f(x) = 2 Wᵀ(W x − y)`` (closed form, used by the core).

    Sampling distribution:
        ``W ∈ R^{d×d}`` and ``y ∈ R^d`` with i.i.d. ``U[0, 1)`` entries; ``x₀ ~ N(0, init_std² I)``.
        The minimum is 0 (``W`` is almost surely invertible) at ``x* = W⁻¹y``; ``W`` is badly conditioned,
        which is what makes the family hard for first-order methods in 100 steps.

    Sizes:
        ``dim = 10`` (paper), ``init_std = 0.01``. θ has dimension ``dim``.

    Args:
        dim: dimension ``d`` of x.
        init_std: standard deviation of the initial point.
    """

    dim: int = 10
    init_std: float = 0.01
    name = "quadratic"

    def __post_init__(self) -> None:
        self.dim = check_positive_int("dim", self.dim)
        self.init_std = check_positive("init_std", self.init_std)

    def sample_instances(self, n: int, generator: torch.Generator, split: str) -> tuple[dict[str, Tensor], Tensor]:
        d = self.dim
        W = torch.rand(n, d, d, generator=generator, dtype=torch.float64)
        y = torch.rand(n, d, generator=generator, dtype=torch.float64)
        x0 = self.init_std * torch.randn(n, d, generator=generator, dtype=torch.float64)
        return {"W": W, "y": y}, x0

    def _residual(self, batch: ProblemBatch, theta: Tensor) -> Tensor:
        W, y = batch.data["W"], batch.data["y"]
        return torch.bmm(W, theta.unsqueeze(-1)).squeeze(-1) - y

    def loss(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> Tensor:
        r = self._residual(batch, theta)
        return (r * r).sum(-1)

    def loss_and_grad(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        r = self._residual(batch, theta)
        g = 2.0 * torch.bmm(r.unsqueeze(1), batch.data["W"]).squeeze(1)
        return (r * r).sum(-1), g

    def minimizer(self, batch: ProblemBatch) -> Tensor:
        """``x* = W⁻¹ y`` for every instance, ``[N, d]`` (the exact minimum, f = 0)."""
        return torch.linalg.solve(batch.data["W"], batch.data["y"])
