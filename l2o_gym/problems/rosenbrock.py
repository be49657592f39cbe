"""Randomly shifted and scaled Rosenbrock functions (Rosenbrock, 1960; Open-L2O non-convex benchmark)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from l2o_gym.problems.base import ProblemBatch, ProblemFamily
from l2o_gym.checks import check_positive, check_positive_int


def sample_log_uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    """``[n]`` float64 draws from the log-uniform distribution on ``[low, high]`` (``0 < low ≤ high``)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.exp(math.log(low) + (math.log(high) - math.log(low)) * u)


def check_scale_range(scale_min: float, scale_max: float) -> tuple[float, float]:
    """Validate a positive ``scale_min ≤ scale_max`` pair; ``ValueError`` naming the bad value otherwise."""
    lo = check_positive("scale_min", scale_min)
    hi = check_positive("scale_max", scale_max)
    if lo > hi:
        raise ValueError(f"scale_min must not exceed scale_max, got scale_min={scale_min!r} > scale_max={scale_max!r}")
    return lo, hi


@dataclass(eq=False)
class Rosenbrock(ProblemFamily):
    """The d-dimensional Rosenbrock "banana" function, randomly shifted and scaled per instance.

    Source: Rosenbrock, *An automatic method for finding the greatest or least value of a function*
    (The Computer Journal, 1960); used as the non-convex benchmark of Open-L2O (Chen et al., *Learning to
    Optimize: A Primer and a Benchmark*, JMLR 2022).

    Math:
        With ``z = x + shift``::

            f(x) = scale · Σ_{i=1}^{d−1} [ b (z_{i+1} − z_i²)² + (1 − z_i)² ]

        Global minimum ``f = 0`` at ``z = 1``, i.e. ``x* = 1 − shift`` (:meth:`minimizer`); a long curved
        flat valley makes it hard for gradient descent. The gradient is computed in closed form.

    Sampling distribution:
        ``shift ~ U[-shift_range, shift_range]^d``, ``scale`` log-uniform on ``[scale_min, scale_max]``,
        ``x₀ ~ U[-init_range, init_range]^d``.

    Sizes:
        ``dim = 2`` (any ``≥ 2``), ``b = 100``, ``shift_range = 1``, ``scale ∈ [0.5, 2]``, ``init_range = 2``.

    θ layout:
        ``x`` itself, ``[N, dim]``.

    Data (``batch.data``):
        ``shift``: ``[N, d]``; ``scale``: ``[N]``.

    Args:
        dim: dimension ``d ≥ 2``.
        b: valley curvature constant.
        shift_range: half-width of the uniform shift.
        scale_min, scale_max: range of the log-uniform scale.
        init_range: half-width of the uniform initial point.
    """

    dim: int = 2
    b: float = 100.0
    shift_range: float = 1.0
    scale_min: float = 0.5
    scale_max: float = 2.0
    init_range: float = 2.0
    name = "rosenbrock"

    def __post_init__(self) -> None:
        self.dim = check_positive_int("dim", self.dim)
        if self.dim < 2:
            raise ValueError(f"dim must be at least 2 for the Rosenbrock function, got {self.dim!r}")
        self.b = check_positive("b", self.b)
        self.shift_range = check_positive("shift_range", self.shift_range)
        self.scale_min, self.scale_max = check_scale_range(self.scale_min, self.scale_max)
        self.init_range = check_positive("init_range", self.init_range)

    def sample_instances(self, n: int, generator: torch.Generator, split: str) -> tuple[dict[str, Tensor], Tensor]:
        d = self.dim
        shift = self.shift_range * (2.0 * torch.rand(n, d, generator=generator, dtype=torch.float64) - 1.0)
        scale = sample_log_uniform(n, self.scale_min, self.scale_max, generator)
        x0 = self.init_range * (2.0 * torch.rand(n, d, generator=generator, dtype=torch.float64) - 1.0)
        return {"shift": shift, "scale": scale}, x0

    def _terms(self, batch: ProblemBatch, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z = theta + batch.data["shift"]
        u = z[:, 1:] - z[:, :-1] ** 2  # [N, d-1]
        v = 1.0 - z[:, :-1]  # [N, d-1]
        f = batch.data["scale"] * (self.b * u * u + v * v).sum(-1)
        return f, z, torch.stack([u, v])

    def loss(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> Tensor:
        return self._terms(batch, theta)[0]

    def loss_and_grad(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        f, z, (u, v) = self._terms(batch, theta)
        zero = torch.zeros_like(z[:, :1])
        head = -4.0 * self.b * z[:, :-1] * u - 2.0 * v  # ∂/∂z_i, i < d
        tail = 2.0 * self.b * u  # ∂/∂z_{i+1}
        g = torch.cat([head, zero], dim=-1) + torch.cat([zero, tail], dim=-1)
        return f, batch.data["scale"][:, None] * g

    def minimizer(self, batch: ProblemBatch) -> Tensor:
        """``x* = 1 − shift`` for every instance, ``[N, d]`` (the global minimum, f = 0)."""
        return 1.0 - batch.data["shift"]
