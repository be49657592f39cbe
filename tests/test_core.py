"""The functional core: shapes, features, determinism, divergence, differentiability."""

from __future__ import annotations

import pytest
import torch

from l2o_gym import core, make_family, rollout, run_policy
from l2o_gym.agents import GradientDescent
from l2o_gym.core import CoreConfig

from conftest import requires_cuda


def _quad(n=8, dtype=torch.float64, seed=0, split="train", dim=5):
    return make_family("quadratic", dim=dim).sample(n, split, seed, dtype=dtype)


def _safe_lr(problems):
    # 1/L with L = 2 σ_max(W)² the gradient's Lipschitz constant: GD then decreases f monotonically.
    sigma = torch.linalg.matrix_norm(problems.data["W"], ord=2)
    return (1.0 / (2 * sigma**2))[:, None]


def test_reset_shapes_and_zero_padding():
    pb = _quad(n=4, dim=3)
    cfg = CoreConfig(history=5)
    s = core.reset(pb, cfg)
    assert core.features(s).shape == (4, core.obs_dim(cfg, 3)) == (4, 5 + 15)
    lf = core.loss_features(s)
    assert torch.all(lf == 0)
    gh = s.grad_hist
    assert torch.all(gh[:, :-1] == 0)
    torch.testing.assert_close(gh[:, -1], s.grad)
    assert core.coordinate_features(s).shape == (4, 3, 10)
    assert core.full_state(s).shape == (4, 3 + 1 + 20)


def test_features_match_definition_after_steps():
    pb = _quad(n=3, dim=4)
    cfg = CoreConfig(history=4, include_steps=True)
    s = core.reset(pb, cfg)
    losses, grads, steps = [s.loss], [s.grad], []
    gd = GradientDescent(_safe_lr(pb))
    for _ in range(6):
        a, _ = gd.act(s, None)
        s, cost, term, trunc = core.step(s, a)
        losses.append(s.loss)
        grads.append(s.grad)
        steps.append(a)
        torch.testing.assert_close(cost, s.loss)
    h, t = 4, 6
    expect_lf = torch.stack([(losses[t] - losses[t - i]) / (losses[t - i].abs() + cfg.eps) for i in range(h, 0, -1)], 1)
    torch.testing.assert_close(core.loss_features(s), expect_lf)
    # ... clipped to [−feature_clip, feature_clip], and gradients and steps times grad_scale: the same steps under
    # a clip below the largest feature and grad_scale 3
    clip = 0.5 * float(expect_lf.abs().max())
    sc = core.reset(pb, CoreConfig(history=4, include_steps=True, feature_clip=clip, grad_scale=3.0))
    for a in steps:
        sc, *_ = core.step(sc, a)
    torch.testing.assert_close(core.loss_features(sc), expect_lf.clamp(-clip, clip))
    torch.testing.assert_close(sc.grad_hist, 3.0 * torch.stack(grads[-h:], 1))
    torch.testing.assert_close(sc.step_hist, 3.0 * torch.stack(steps[-h:], 1))
    torch.testing.assert_close(s.grad_hist, torch.stack(grads[-h:], 1))
    torch.testing.assert_close(s.step_hist, torch.stack(steps[-h:], 1))
    cf = core.coordinate_features(s)
    assert cf.shape == (3, 4, 3 * h)
    torch.testing.assert_close(cf[:, 2, :h], s.grad_hist[:, :, 2])
    torch.testing.assert_close(cf[:, 2, h : 2 * h], expect_lf)


def test_partial_history_is_zero_padded():
    pb = _quad(n=2, dim=2)
    s = core.reset(pb, CoreConfig(history=5))
    s, *_ = core.step(s, GradientDescent(_safe_lr(pb)).act(s, None)[0])
    lf = core.loss_features(s)
    assert torch.all(lf[:, :-1] == 0) and torch.all(lf[:, -1] != 0)
    assert torch.all(s.grad_hist[:, :-2] == 0)


def test_gradient_descent_converges_monotonically():
    pb = _quad(n=16, dim=5)
    traj = run_policy(GradientDescent(_safe_lr(pb)), pb, 200)
    assert torch.all(traj.losses[1:] <= traj.losses[:-1] + 1e-12)
    assert torch.all(traj.losses[-1] < 0.5 * traj.losses[0])
    assert not traj.terminated.any()


def test_same_seed_identical_trajectories():
    fam = make_family("quadratic")
    a = run_policy(GradientDescent(0.01), fam.sample(32, "train", 7), 50)
    b = run_policy(GradientDescent(0.01), fam.sample(32, "train", 7), 50)
    c = run_policy(GradientDescent(0.01), fam.sample(32, "train", 8), 50)
    assert torch.equal(a.losses, b.losses)
    assert not torch.equal(a.losses, c.losses)


def test_truncation_at_horizon():
    pb = _quad(n=2)
    s = core.reset(pb, CoreConfig(horizon=3))
    for i in range(3):
        s, _, term, trunc = core.step(s, torch.zeros_like(s.theta))
        assert bool(trunc.all()) == (i == 2)
        assert not term.any()


def test_divergence_terminates_with_finite_penalty():
    pb = _quad(n=3, dtype=torch.float32)
    s0 = core.reset(pb, CoreConfig())
    big = torch.zeros_like(s0.theta)
    big[1] = 1e30  # finite, but the objective overflows float32
    big[2] = 1e4  # finite objective above the blow-up threshold
    s1, cost, term, trunc = core.step(s0, big)
    assert term.tolist() == [False, True, True]
    torch.testing.assert_close(cost[1:], s0.threshold[1:])
    assert torch.isfinite(core.features(s1)).all() and torch.isfinite(cost).all()
    torch.testing.assert_close(s1.theta[1:], s0.theta[1:])  # rejected steps
    # A terminated instance stays frozen and keeps paying the penalty.
    s2, cost2, term2, _ = core.step(s1, -big)
    torch.testing.assert_close(s2.theta[1:], s0.theta[1:])
    assert term2.tolist() == [False, True, True]
    torch.testing.assert_close(cost2[1:], s0.threshold[1:])


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (lambda s: torch.zeros(s.n, s.dim + 1, dtype=s.theta.dtype), ValueError, "shape"),
        (lambda s: torch.zeros(s.n, s.dim, dtype=torch.float16), TypeError, "dtype"),
        (lambda s: torch.full((s.n, s.dim), float("nan"), dtype=s.theta.dtype), ValueError, "NaN"),
        (lambda s: torch.full((s.n, s.dim), float("inf"), dtype=s.theta.dtype), ValueError, "inf"),
        (lambda s: [[0.0] * s.dim] * s.n, TypeError, "torch.Tensor"),
    ],
)
def test_bad_actions_raise_clear_errors(bad, exc, match):
    s = core.reset(_quad(n=2, dim=3), CoreConfig())
    with pytest.raises(exc, match=match):
        core.step(s, bad(s))


def test_bad_config_values():
    with pytest.raises(ValueError, match="-3"):
        CoreConfig(horizon=-3)
    with pytest.raises(ValueError, match="history"):
        CoreConfig(history=0)


def _unroll_loss(lr: torch.Tensor, problems, second_order: bool, steps: int = 8) -> torch.Tensor:
    cfg = CoreConfig(horizon=steps, second_order=second_order)
    traj = rollout(GradientDescent(lr), core.reset(problems, cfg), steps)
    return traj.costs.sum()


def test_second_order_unroll_gradient_matches_finite_differences():
    for family, kw, lr0 in [("quadratic", {"dim": 4}, 0.02), ("rosenbrock", {}, 1e-4)]:
        pb = make_family(family, **kw).sample(3, "train", 0, dtype=torch.float64)
        lr = torch.tensor(lr0, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(_unroll_loss(lr, pb, True), lr)
        h = lr0 * 1e-4
        with torch.no_grad():
            fd = (_unroll_loss(lr + h, pb, True) - _unroll_loss(lr - h, pb, True)) / (2 * h)
        torch.testing.assert_close(g, fd, rtol=1e-5, atol=1e-8)


def test_first_order_unroll_gradient_treats_optimizee_gradients_as_constants():
    pb = _quad(n=3, dim=4)
    lr0 = 0.02
    lr = torch.tensor(lr0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(_unroll_loss(lr, pb, False), lr)
    # Reference: θ_t = θ_0 − lr Σ_{s<t} g_s with the g_s held fixed, so
    # dL/dlr = Σ_{t≥1} ∇f(θ_t) · (−Σ_{s<t} g_s).
    traj = run_policy(GradientDescent(lr0), pb, 8)
    s = core.reset(pb, CoreConfig())
    grads, acc, ref = [s.grad], torch.zeros_like(s.grad), torch.zeros((), dtype=torch.float64)
    for _ in range(8):
        acc = acc + grads[-1]
        s, *_ = core.step(s, -lr0 * grads[-1])
        grads.append(s.grad)
        ref = ref + (s.grad * -acc).sum()
    torch.testing.assert_close(g, ref)
    assert traj.losses.shape == (9, 3)
    # ...and it differs from the true (second-order) derivative.
    (g2,) = torch.autograd.grad(_unroll_loss(lr, pb, True), lr)
    assert not torch.allclose(g, g2, rtol=1e-3)


def test_state_detach_and_scatter():
    pb = _quad(n=4)
    s = core.reset(pb, CoreConfig())
    other = core.reset(_quad(n=2, seed=5), CoreConfig())
    merged = s.scatter(torch.tensor([1, 3]), other)
    torch.testing.assert_close(merged.theta[[1, 3]], other.theta)
    torch.testing.assert_close(merged.theta[[0, 2]], s.theta[[0, 2]])
    torch.testing.assert_close(merged.problems.data["W"][[1, 3]], other.problems.data["W"])
    lr = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    s2, *_ = core.step(s, -lr * s.grad)
    assert s2.theta.requires_grad and not s2.detach().theta.requires_grad


@requires_cuda
@pytest.mark.cuda
def test_core_on_cuda_matches_cpu():
    fam = make_family("quadratic")
    cpu = run_policy(GradientDescent(0.01), fam.sample(16, "test", 0, dtype=torch.float64), 30)
    gpu = run_policy(GradientDescent(0.01), fam.sample(16, "test", 0, device="cuda", dtype=torch.float64), 30)
    assert gpu.losses.device.type == "cuda"
    torch.testing.assert_close(gpu.losses.cpu(), cpu.losses, rtol=1e-9, atol=1e-12)
