"""A diverged instance contributes a zero — not NaN — meta-gradient (``l2o_gym.core.step``)."""

from __future__ import annotations

import pytest
import torch

from l2o_gym.core import CoreConfig, reset, step
from l2o_gym.registry import env_family


def _grad(env_id: str, row0_scale: float, rows: slice, second_order: bool) -> tuple[torch.Tensor, torch.Tensor]:
    problems = env_family(env_id).sample(3, "train", 0, torch.device("cpu"), torch.float32)
    state = reset(problems, CoreConfig(horizon=5, history=1, second_order=second_order))
    w = torch.tensor(1.0, requires_grad=True)
    scale = torch.ones(3, 1)
    scale[0] = row0_scale
    _, cost, terminated, _ = step(state, w * scale * torch.ones_like(state.theta))
    cost[rows].sum().backward()
    return w.grad, terminated


@pytest.mark.parametrize("second_order", [False, True])
@pytest.mark.parametrize(("env_id", "huge"), [("l2o/Quadratic-v0", 1e38), ("l2o/NNClassifier-v0", 1e30)])
def test_overflowing_instance_gives_a_zero_gradient(env_id: str, huge: float, second_order: bool) -> None:
    grad, terminated = _grad(env_id, huge, slice(None), second_order)
    assert terminated.tolist() == [True, False, False]
    assert torch.isfinite(grad)  # before the fix: NaN (the family's backward computed 0·inf at the overflow)
    # the diverged instance pays a constant penalty: the gradient is the other two instances' alone
    others, ok = _grad(env_id, 1.0, slice(1, None), second_order)
    assert not ok.any()
    assert grad == pytest.approx(float(others), rel=1e-6)


def test_nothing_diverged_leaves_the_gradient_bitwise_unchanged() -> None:
    problems = env_family("l2o/Quadratic-v0").sample(3, "train", 0, torch.device("cpu"), torch.float64)
    state = reset(problems, CoreConfig(horizon=5, history=1))
    w = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    _, cost, terminated, _ = step(state, -w * state.grad)
    assert not terminated.any()
    (gw,) = torch.autograd.grad(cost.sum(), w)
    # the same step written out by hand: f(θ − w·∇f) summed over the instances
    theta = state.theta - w * state.grad
    f, _ = problems.loss_and_grad(theta, state.t + 1)
    (ref,) = torch.autograd.grad(f.sum(), w)
    assert torch.equal(gw, ref)
