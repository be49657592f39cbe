"""Hand-designed optimizers as batched :class:`~l2o_gym.policy.Policy` objects."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from l2o_gym.core import State
from l2o_gym.policy import Policy


class GradientDescent(Policy):
    """Plain gradient descent: ``Δθ = −lr · ∇f(θ_t)``.

    Args:
        lr: step size (a float, or a tensor — e.g. one that requires grad, to differentiate an unroll
            with respect to it).
    """

    name = "sgd"

    def __init__(self, lr: float | Tensor = 0.01) -> None:
        if not isinstance(lr, Tensor) and not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.lr = lr

    def act(self, state: State, hidden: Any) -> tuple[Tensor, Any]:
        return -self.lr * state.grad, hidden
