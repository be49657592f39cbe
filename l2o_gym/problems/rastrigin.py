"""Randomly centred and scaled Rastrigin functions (Rastrigin, 1974; Open-L2O non-convex benchmark)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from l2o_gym.problems.base import ProblemBatch, ProblemFamily
from l2o_gym.checks import check_positive, check_positive_int
from l2o_gym.problems.rosenbrock import check_scale_range, sample_log_uniform


@dataclass(eq=False)
class Rastrigin(ProblemFamily):
    """The Rastrigin function: a quadratic bowl covered in a regular grid of local minima.

    Source: Rastrigin, *Systems of extremal control* (1974); used as a non-convex benchmark of Open-L2O
    (Chen et al., *Learning to Optimize: A Primer and a Benchmark*, JMLR 2022).

    Math:
        With ``z = x − c``::

            f(x) = scale · (A d + Σ_{i=1}^{d} [ z_i² − A cos(2π z_i) ])

        Global minimum ``f = 0`` at ``x* = c`` (:meth:`minimizer`); local minima near every integer
        lattice point of ``z``. Gradient (closed form): ``scale · (2 z + 2π A sin(2π z))``.

    Sampling distribution:
        ``c ~ U[-center_range, center_range]^d``, ``scale`` log-uniform on ``[scale_min, scale_max]``,
        ``x₀ ~ U[-init_range, init_range]^d``.

    Sizes:
        ``dim = 10``, ``A = 10``, ``center_range = 2``, ``scale ∈ [0.5, 2]``, ``init_range = 5.12`` (the
        classic domain).

    θ layout:
        ``x`` itself, ``[N, dim]``.

    Data (``batch.data``):
        ``center``: ``[N, d]``; ``scale``: ``[N]``.

    Args:
        dim: dimension ``d``.
        A: amplitude of the cosine ripples.
        center_range: half-width of the uniform centre.
        scale_min, scale_max: range of the log-uniform scale.
        init_range: half-width of the uniform initial point.
    """

    dim: int = 10
    A: float = 10.0
    center_range: float = 2.0
    scale_min: float = 0.5
    scale_max: float = 2.0
    init_range: float = 5.12
    name = "rastrigin"

    def __post_init__(self) -> None:
        self.dim = check_positive_int("dim", self.dim)
        self.A = check_positive("A", self.A)
        self.center_range = check_positive("center_range", self.center_range)
        self.scale_min, self.scale_max = check_scale_range(self.scale_min, self.scale_max)
        self.init_range = check_positive("init_range", self.init_range)

    def sample_instances(self, n: int, generator: torch.Generator, split: str) -> tuple[dict[str, Tensor], Tensor]:
        d = self.dim
        center = self.center_range * (2.0 * torch.rand(n, d, generator=generator, dtype=torch.float64) - 1.0)
        scale = sample_log_uniform(n, self.scale_min, self.scale_max, generator)
        x0 = self.init_range * (2.0 * torch.rand(n, d, generator=generator, dtype=torch.float64) - 1.0)
        return {"center": center, "scale": scale}, x0

    def loss(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> Tensor:
        z = theta - batch.data["center"]
        terms = z * z + self.A * (1.0 - torch.cos(2.0 * math.pi * z))
        return batch.data["scale"] * terms.sum(-1)

    def loss_and_grad(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        z = theta - batch.data["center"]
        w = 2.0 * math.pi * z
        scale = batch.data["scale"]
        f = scale * (z * z + self.A * (1.0 - torch.cos(w))).sum(-1)
        g = scale[:, None] * (2.0 * z + 2.0 * math.pi * self.A * torch.sin(w))
        return f, g

    def minimizer(self, batch: ProblemBatch) -> Tensor:
        """``x* = c`` for every instance, ``[N, d]`` (the global minimum, f = 0)."""
        return batch.data["center"].clone()
