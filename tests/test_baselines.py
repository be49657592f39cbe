"""Baselines: updates identical to torch.optim; CG and L-BFGS reach scipy's optimum."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

from l2o_gym import CoreConfig, core, make_family, run_policy
from l2o_gym.agents import LBFGS, Adagrad, Adam, ConjugateGradient, GradientDescent, Momentum, Nesterov, RMSprop, make_baseline


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: GradientDescent(0.01), lambda p: torch.optim.SGD(p, lr=0.01)),
        (lambda: Momentum(0.01, 0.9), lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)),
        (lambda: Nesterov(0.01, 0.8), lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.8, nesterov=True)),
        (lambda: Adam(0.05, (0.8, 0.99), 1e-6), lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6)),
        (lambda: RMSprop(0.01, 0.9, 1e-7), lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-7)),
        (lambda: Adagrad(0.3), lambda p: torch.optim.Adagrad(p, lr=0.3)),
        (lambda: Adagrad(0.1, 1e-6, 0.5), lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-6, initial_accumulator_value=0.5)),
    ],
    ids=["sgd", "momentum", "nag", "adam", "rmsprop", "adagrad", "adagrad-eps-init"],
)
def test_first_order_updates_match_torch_optim(ours, theirs):
    problems = make_family("logistic_regression").sample(5, "train", 3, dtype=torch.float64)
    traj = run_policy(ours(), problems, 15)
    theta = torch.nn.Parameter(problems.x0.clone())
    opt = theirs([theta])
    ref = [problems.loss(theta.detach()).detach()]
    for t in range(15):
        opt.zero_grad()
        problems.loss(theta, t).sum().backward()
        opt.step()
        ref.append(problems.loss(theta.detach()).detach())
    torch.testing.assert_close(traj.state.theta, theta.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(traj.losses, torch.stack(ref), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", ["logistic_regression", "quadratic"])
@pytest.mark.parametrize("policy", [ConjugateGradient, LBFGS])
def test_line_search_methods_reach_scipy_optimum(family, policy):
    fam = make_family(family, **({"dim": 4} if family == "quadratic" else {}))
    problems = fam.sample(3, "val", 0, dtype=torch.float64)
    traj = run_policy(policy(), problems, 60)
    for i in range(3):
        p = problems.index(slice(i, i + 1))

        def fun(x):
            f, g = p.loss_and_grad(torch.from_numpy(x)[None])
            return float(f[0]), g[0].numpy()

        best = scipy.optimize.minimize(fun, p.x0[0].numpy(), jac=True, method="BFGS", options={"gtol": 1e-10})
        assert float(traj.losses[-1, i]) == pytest.approx(best.fun, rel=1e-6, abs=1e-9)
    assert not traj.terminated.any()


def test_line_search_methods_count_evaluations():
    problems = make_family("logistic_regression").sample(4, "train", 0, dtype=torch.float64)
    policy = LBFGS()
    state = core.reset(problems, CoreConfig(horizon=20))
    memory = policy.reset(state)
    ev = policy.evals(memory, 20)
    assert ev.shape == (4,) and torch.all(ev >= 20)
    assert torch.all(policy.evals(memory, 10) <= ev)
    assert GradientDescent(0.1).evals(None, 20) is None


def test_cg_and_lbfgs_far_ahead_of_gradient_descent_on_quadratics():
    # Nonlinear CG with an inexact (Wolfe) line search is not the exact-in-d-steps linear CG, but on these
    # badly conditioned quadratics it is still orders of magnitude ahead of the best fixed-step GD.
    problems = make_family("quadratic", dim=5).sample(8, "test", 0, dtype=torch.float64)
    gd = min(float(run_policy(GradientDescent(lr), problems, 25).losses[-1].mean()) for lr in (0.01, 0.03, 0.1))
    for policy in (ConjugateGradient(), LBFGS()):
        assert float(run_policy(policy, problems, 25).losses[-1].median()) < 1e-2 * gd


def test_adam_converges_on_quadratics():
    problems = make_family("quadratic").sample(64, "train", 0)
    traj = run_policy(Adam(0.03), problems, 200)
    assert traj.losses[-1].mean() < 0.3 * traj.losses[0].mean()


@pytest.mark.parametrize("bad", [{"lr": -1.0}, {"lr": float("nan")}, {"lr": 0.1, "momentum": 1.5}])
def test_bad_hyperparameters(bad):
    name = "momentum" if "momentum" in bad else "sgd"
    with pytest.raises(ValueError, match="lr|momentum"):
        make_baseline(name, **bad)
    with pytest.raises(ValueError, match="'newton'"):
        make_baseline("newton")


def test_adagrad_bad_arguments_and_registry():
    with pytest.raises(ValueError, match="lr"):
        Adagrad(-1.0)
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        Adagrad(0.1, initial_accumulator_value=-1.0)
    assert isinstance(make_baseline("adagrad", lr=0.2), Adagrad)
