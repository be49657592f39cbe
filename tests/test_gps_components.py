"""GPS components, each against a closed form or an independent reference (numpy/scipy)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.linalg
import torch

from l2o_gym.agents.gps.cost import QuadraticCost, expand_cost
from l2o_gym.agents.gps.dynamics import GPSFitError, fit_dynamics, fit_prior
from l2o_gym.agents.gps.global_policy import GaussianMLP, RegressionConfig, fit_global
from l2o_gym.agents.gps.lingauss import LinearGaussianDynamics, LinearGaussianPolicy, forward, kl_policies
from l2o_gym.agents.gps.lqr import backward, solve_kl_step, trajectory_kl
from l2o_gym.agents.gps.task import drop_invalid
from l2o_gym import make_family

D = torch.float64


def _rand_spd(g, n, scale=1.0):
    a = torch.randn(n, n, generator=g, dtype=D)
    return scale * (a @ a.T / n + 0.5 * torch.eye(n, dtype=D))


def _simulate(A, B, W_chol, x0, K, n, t_len, g, u_std=1.0):
    """States/actions of x' = A x + B u + w with u = K x + noise; X[M, N, T+1, dX], U[M, N, T, dU]."""
    m, dx = x0.shape
    du = B.shape[-1]
    x = x0[:, None].expand(m, n, dx).clone() + torch.randn(m, n, dx, generator=g, dtype=D)
    xs, us = [x], []
    for _ in range(t_len):
        u = x @ K.T + u_std * torch.randn(m, n, du, generator=g, dtype=D)
        x = x @ A.T + u @ B.T + torch.randn(m, n, dx, generator=g, dtype=D) @ W_chol.T
        xs.append(x)
        us.append(u)
    return torch.stack(xs, 2), torch.stack(us, 2)


# ---------------------------------------------------------------------------------------------- dynamics
def test_dynamics_fit_recovers_known_linear_gaussian_system():
    g = torch.Generator().manual_seed(0)
    dx, du, m, t_len = 4, 2, 2, 3
    A = 0.5 * torch.randn(dx, dx, generator=g, dtype=D)
    B = torch.randn(dx, du, generator=g, dtype=D)
    Wc = 0.1 * torch.linalg.cholesky(_rand_spd(g, dx))
    K = 0.1 * torch.randn(du, dx, generator=g, dtype=D)
    X, U = _simulate(A, B, Wc, torch.zeros(m, dx, dtype=D), K, 20000, t_len, g)
    dyn = fit_dynamics(X, U, torch.ones(m, 20000, dtype=torch.bool), prior=None)
    AB = torch.cat([A, B], 1)
    assert torch.allclose(dyn.F, AB.expand_as(dyn.F), atol=0.02)
    assert torch.allclose(dyn.f, torch.zeros_like(dyn.f), atol=0.02)
    assert torch.allclose(dyn.W, (Wc @ Wc.T).expand_as(dyn.W), atol=0.01)


def test_dynamics_prior_helps_when_samples_fewer_than_dimension():
    g = torch.Generator().manual_seed(1)
    dx, du, m, t_len, n = 10, 3, 30, 6, 5  # n = 5 samples per (condition, t) for dX + dU = 13 regressors
    A = 0.3 * torch.randn(dx, dx, generator=g, dtype=D)
    B = torch.randn(dx, du, generator=g, dtype=D)
    Wc = 0.05 * torch.eye(dx, dtype=D)
    x0 = torch.randn(m, dx, generator=g, dtype=D)
    X, U = _simulate(A, B, Wc, x0, torch.zeros(du, dx, dtype=D), n, t_len, g)
    valid = torch.ones(m, n, dtype=torch.bool)
    AB = torch.cat([A, B], 1)
    err = lambda dyn: float((dyn.F - AB).norm(dim=(-2, -1)).mean())  # noqa: E731
    plain = fit_dynamics(X, U, valid, prior=None, reg=1e-6)
    with_prior = fit_dynamics(X, U, valid, prior=fit_prior(X, U, valid, strength=1.0))
    assert err(with_prior) < 0.25 * err(plain)
    assert err(with_prior) < 0.2 * float(AB.norm())


def test_dynamics_fit_names_condition_without_valid_samples():
    X = torch.randn(3, 4, 3, 2, dtype=D)
    U = torch.randn(3, 4, 2, 1, dtype=D)
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[1] = False
    with pytest.raises(GPSFitError, match=r"conditions \[1\]"):
        fit_dynamics(X, U, valid)


def test_non_finite_samples_are_dropped_with_warning(caplog):
    X = torch.randn(2, 3, 4, 2, dtype=D)
    U = torch.randn(2, 3, 3, 1, dtype=D)
    X[0, 1, 2, 0] = float("nan")
    U[1, 2, 0, 0] = float("inf")
    with caplog.at_level(logging.WARNING):
        s = drop_invalid(X, U, torch.zeros(2, 3, 3, dtype=D))
    assert s.n_dropped == 2 and not s.valid[0, 1] and not s.valid[1, 2]
    assert torch.isfinite(s.X).all() and torch.isfinite(s.U).all()
    assert "dropped 2 of 6" in caplog.text
    dyn = fit_dynamics(s.X, s.U, s.valid, fit_prior(s.X, s.U, s.valid))
    assert torch.isfinite(dyn.F).all()


# ---------------------------------------------------------------------------------------------- cost
def test_cost_expansion_is_exact_for_a_quadratic_objective():
    fam = make_family("quadratic", dim=3)
    pb = fam.sample(2, "train", 0, dtype=D)
    g = torch.Generator().manual_seed(0)
    m, n, t_len, d = 2, 3, 2, 3
    dx = d + 2
    X = torch.randn(m, n, t_len + 1, dx, generator=g, dtype=D)
    U = torch.randn(m, n, t_len, d, generator=g, dtype=D)
    cost = expand_cost(pb, X, U, torch.ones(m, n, dtype=torch.bool), action_penalty=0.1)
    # At an arbitrary point y, the quadratic must equal f(θ + u) + 0.05 ‖u‖² (f is quadratic).
    y = torch.randn(m, t_len, dx + d, generator=g, dtype=D)
    theta = y[..., :d] + y[..., dx:]
    f = torch.stack([pb.loss(theta[:, t]) for t in range(t_len)], 1) + 0.05 * (y[..., dx:] ** 2).sum(-1)
    model = 0.5 * torch.einsum("mti,mtij,mtj->mt", y, cost.C, y) + (cost.c * y).sum(-1) + cost.c0
    torch.testing.assert_close(model, f)


# ---------------------------------------------------------------------------------------------- LQR
def _numpy_lqr(A, B, c, Q, R, q, r):
    """Finite-horizon discrete Riccati recursion with affine dynamics/linear costs (numpy, independent)."""
    t_len = len(A)
    P = np.zeros_like(Q[0])
    p = np.zeros(Q[0].shape[0])
    Ks, ks = [None] * t_len, [None] * t_len
    for t in reversed(range(t_len)):
        if t == t_len - 1:  # x_T is not costed: nothing flows back from it
            Pn, pn = np.zeros_like(P), np.zeros_like(p)
        else:
            Pn, pn = P, p
        Quu = R[t] + B[t].T @ Pn @ B[t]
        Qux = B[t].T @ Pn @ A[t]
        qu = r[t] + B[t].T @ (Pn @ c[t] + pn)
        qx = q[t] + A[t].T @ (Pn @ c[t] + pn)
        K = -np.linalg.solve(Quu, Qux)
        k = -np.linalg.solve(Quu, qu)
        P = Q[t] + A[t].T @ Pn @ A[t] + Qux.T @ K
        p = qx + Qux.T @ k
        Ks[t], ks[t] = K, k
    return np.stack(Ks), np.stack(ks), P, p


def _random_lq(g, m, t_len, dx, du):
    A = 0.6 * torch.randn(m, t_len, dx, dx, generator=g, dtype=D)
    B = torch.randn(m, t_len, dx, du, generator=g, dtype=D)
    f = torch.randn(m, t_len, dx, generator=g, dtype=D)
    dy = dx + du
    C = torch.zeros(m, t_len, dy, dy, dtype=D)
    for i in range(m):
        for t in range(t_len):
            C[i, t, :dx, :dx] = _rand_spd(g, dx)
            C[i, t, dx:, dx:] = _rand_spd(g, du, 0.5)
    c = torch.randn(m, t_len, dy, generator=g, dtype=D)
    dyn = LinearGaussianDynamics(
        torch.cat([A, B], -1), f, 0.01 * torch.eye(dx, dtype=D).expand(m, t_len, dx, dx).clone(),
        torch.randn(m, dx, generator=g, dtype=D), 0.01 * torch.eye(dx, dtype=D).expand(m, dx, dx).clone(),
    )
    return dyn, QuadraticCost(C, c, torch.zeros(m, t_len, dtype=D)), (A, B, f)


def test_lqr_without_kl_terms_equals_numpy_riccati_recursion():
    g = torch.Generator().manual_seed(0)
    m, t_len, dx, du = 3, 6, 4, 2
    dyn, cost, (A, B, f) = _random_lq(g, m, t_len, dx, du)
    res = backward(dyn, cost, eta=torch.zeros(m, dtype=D), du=du)
    assert res.ok.all()
    for i in range(m):
        Ks, ks, P, p = _numpy_lqr(
            A[i].numpy(), B[i].numpy(), f[i].numpy(), cost.C[i, :, :dx, :dx].numpy(), cost.C[i, :, dx:, dx:].numpy(),
            cost.c[i, :, :dx].numpy(), cost.c[i, :, dx:].numpy(),
        )
        np.testing.assert_allclose(res.policy.K[i].numpy(), Ks, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(res.policy.k[i].numpy(), ks, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(res.V[i].numpy(), P, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(res.v[i].numpy(), p, rtol=1e-8, atol=1e-10)


def test_lqr_long_horizon_gain_matches_scipy_dare():
    g = torch.Generator().manual_seed(3)
    dx, du, t_len = 3, 2, 80
    A = 0.8 * torch.randn(dx, dx, generator=g, dtype=D)
    B = torch.randn(dx, du, generator=g, dtype=D)
    Q, R = _rand_spd(g, dx), _rand_spd(g, du)
    dy = dx + du
    C = torch.zeros(dy, dy, dtype=D)
    C[:dx, :dx], C[dx:, dx:] = Q, R
    dyn = LinearGaussianDynamics(
        torch.cat([A, B], -1).expand(1, t_len, dx, dy), torch.zeros(1, t_len, dx, dtype=D),
        torch.eye(dx, dtype=D).expand(1, t_len, dx, dx), torch.zeros(1, dx, dtype=D), torch.eye(dx, dtype=D)[None],
    )
    cost = QuadraticCost(C.expand(1, t_len, dy, dy), torch.zeros(1, t_len, dy, dtype=D), torch.zeros(1, t_len, dtype=D))
    res = backward(dyn, cost, eta=torch.zeros(1, dtype=D), du=du)
    P = scipy.linalg.solve_discrete_are(A.numpy(), B.numpy(), Q.numpy(), R.numpy())
    K_inf = -np.linalg.solve(R.numpy() + B.numpy().T @ P @ B.numpy(), B.numpy().T @ P @ A.numpy())
    np.testing.assert_allclose(res.policy.K[0, 0].numpy(), K_inf, rtol=1e-6, atol=1e-8)


def test_kl_formula_matches_monte_carlo():
    g = torch.Generator().manual_seed(5)
    m, t_len, dx, du = 1, 1, 3, 2
    mk = lambda: LinearGaussianPolicy(  # noqa: E731
        torch.randn(m, t_len, du, dx, generator=g, dtype=D), torch.randn(m, t_len, du, generator=g, dtype=D),
        _rand_spd(g, du).expand(m, t_len, du, du).clone(),
    )
    p, q = mk(), mk()
    mu_x = torch.randn(m, t_len, dx, generator=g, dtype=D)
    s_x = _rand_spd(g, dx, 0.3).expand(m, t_len, dx, dx).clone()
    kl = float(kl_policies(p, q, mu_x, s_x))
    n = 400000
    x = mu_x[0, 0] + torch.randn(n, dx, generator=g, dtype=D) @ torch.linalg.cholesky(s_x[0, 0]).T
    mp = x @ p.K[0, 0].T + p.k[0, 0]
    mq = x @ q.K[0, 0].T + q.k[0, 0]
    u = mp + torch.randn(n, du, generator=g, dtype=D) @ torch.linalg.cholesky(p.cov[0, 0]).T
    lp = torch.distributions.MultivariateNormal(mp, p.cov[0, 0]).log_prob(u)
    lq = torch.distributions.MultivariateNormal(mq, q.cov[0, 0]).log_prob(u)
    mc = float((lp - lq).mean())
    assert abs(kl - mc) < 0.03 * max(1.0, abs(kl))


@pytest.mark.parametrize("eps", [0.5, 3.0])
def test_lqr_kl_constraint_is_met(eps):
    g = torch.Generator().manual_seed(2)
    m, t_len, dx, du = 4, 8, 4, 2
    dyn, cost, _ = _random_lq(g, m, t_len, dx, du)
    prev = LinearGaussianPolicy(
        0.1 * torch.randn(m, t_len, du, dx, generator=g, dtype=D), torch.zeros(m, t_len, du, dtype=D),
        torch.eye(du, dtype=D).expand(m, t_len, du, du).clone(),
    )
    eps_t = torch.full((m,), eps, dtype=D)
    res = solve_kl_step(dyn, cost, prev, eps_t)
    kl = trajectory_kl(dyn, res.policy, prev)
    torch.testing.assert_close(kl, res.kl)
    assert torch.all((kl - eps_t).abs() <= 0.1 * eps_t), (kl, eps_t)
    # The step improves the expected cost over the previous controller.
    mu0, S0 = forward(dyn, prev)
    mu1, S1 = forward(dyn, res.policy)
    assert torch.all(cost.expected(mu1, S1) < cost.expected(mu0, S0))


def test_lqr_non_convex_cost_handled_by_increasing_eta():
    g = torch.Generator().manual_seed(4)
    m, t_len, dx, du = 2, 5, 3, 2
    dyn, cost, _ = _random_lq(g, m, t_len, dx, du)
    cost.C[..., dx:, dx:] = -cost.C[..., dx:, dx:]  # concave in u: Q_uu < 0 without the KL term
    assert not backward(dyn, cost, torch.zeros(m, dtype=D), du=du).ok.any()
    prev = LinearGaussianPolicy(
        torch.zeros(m, t_len, du, dx, dtype=D), torch.zeros(m, t_len, du, dtype=D),
        0.1 * torch.eye(du, dtype=D).expand(m, t_len, du, du).clone(),
    )
    res = solve_kl_step(dyn, cost, prev, torch.full((m,), 1.0, dtype=D))
    assert torch.all(res.eta > 1e-3) and torch.all(res.kl <= 1.1)


def test_eta_search_failure_names_condition_and_time_step():
    g = torch.Generator().manual_seed(4)
    m, t_len, dx, du = 2, 5, 3, 2
    dyn, cost, _ = _random_lq(g, m, t_len, dx, du)
    cost.C[1, 3, dx:, dx:] = -1e30 * torch.eye(du, dtype=D)
    prev = LinearGaussianPolicy(
        torch.zeros(m, t_len, du, dx, dtype=D), torch.zeros(m, t_len, du, dtype=D),
        torch.eye(du, dtype=D).expand(m, t_len, du, du).clone(),
    )
    with pytest.raises(GPSFitError, match="condition 1, time step 3"):
        solve_kl_step(dyn, cost, prev, torch.ones(m, dtype=D), eta_max=1e6)


@pytest.mark.parametrize("with_terms", [False, True])
def test_eta_search_on_active_subset_equals_per_condition_solves(monkeypatch, with_terms):
    """The bisection re-runs the backward pass only on unconverged conditions; η, controllers and KL equal
    solving each condition alone (conditions with budgets from tiny to inactive converge at different
    iterations), and the active batch at each step is exactly the conditions still searching."""
    import l2o_gym.agents.gps.lqr as lqr

    g = torch.Generator().manual_seed(7)
    m, t_len, dx, du = 9, 6, 3, 2
    dyn, cost, _ = _random_lq(g, m, t_len, dx, du)
    cost.C[2, ..., dx:, dx:] = -cost.C[2, ..., dx:, dx:]  # non-convex in u: needs a large η
    prev = LinearGaussianPolicy(
        0.1 * torch.randn(m, t_len, du, dx, generator=g, dtype=D), torch.zeros(m, t_len, du, dtype=D),
        0.5 * torch.eye(du, dtype=D).expand(m, t_len, du, du).clone(),
    )
    eps = torch.tensor([1e-3, 0.01, 0.3, 0.1, 1.0, 3.0, 10.0, 1e6, 0.05], dtype=D)
    kw = {}
    if with_terms:
        kw = {
            "nu": 0.1 * torch.rand(m, t_len, generator=g, dtype=D),
            "glob": LinearGaussianPolicy(
                0.1 * torch.randn(m, t_len, du, dx, generator=g, dtype=D),
                0.1 * torch.randn(m, t_len, du, generator=g, dtype=D),
                torch.eye(du, dtype=D).expand(m, t_len, du, du).clone(),
            ),
            "lam": 0.1 * torch.randn(m, t_len, du, generator=g, dtype=D),
        }
    sizes = []
    orig = lqr.backward

    def counting(dyn_, *a, **k):
        sizes.append(dyn_.F.shape[0])
        return orig(dyn_, *a, **k)

    monkeypatch.setattr(lqr, "backward", counting)
    fast = solve_kl_step(dyn, cost, prev, eps, **kw)
    fast_sizes, sizes[:] = list(sizes), []
    solo_steps = []  # backward passes each condition needs when solved alone
    for i in range(m):
        one = slice(i, i + 1)
        sub = {k: (v.index(torch.tensor([i])) if isinstance(v, LinearGaussianPolicy) else v[one]) for k, v in kw.items()}
        r = solve_kl_step(
            LinearGaussianDynamics(dyn.F[one], dyn.f[one], dyn.W[one], dyn.x0_mean[one], dyn.x0_cov[one]),
            QuadraticCost(cost.C[one], cost.c[one], cost.c0[one]), prev.index(torch.tensor([i])), eps[one], **sub,
        )
        solo_steps.append(len(sizes))
        sizes[:] = []
        torch.testing.assert_close(r.eta, fast.eta[one], rtol=1e-12, atol=0)
        torch.testing.assert_close(r.kl, fast.kl[one], rtol=1e-10, atol=1e-12)
        for a, b in ((r.policy.K, fast.policy.K[one]), (r.policy.k, fast.policy.k[one]),
                     (r.policy.cov, fast.policy.cov[one])):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # The batched search evaluates, at each step j, exactly the conditions that still search at step j alone.
    assert fast_sizes == [sum(n > j for n in solo_steps) for j in range(max(solo_steps))]
    assert fast_sizes[2] < m and fast_sizes[-1] < fast_sizes[2]
    assert fast_sizes == sorted(fast_sizes, reverse=True)
    assert len(set(fast_sizes[2:])) > 2


# ---------------------------------------------------------------------------------------------- global policy
def test_global_regression_recovers_linear_gaussian_policy():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    s, do, du = 4000, 5, 2
    K = torch.randn(du, do, generator=g, dtype=D)
    k = torch.randn(du, generator=g, dtype=D)
    cov = _rand_spd(g, du, 0.1)
    obs = torch.randn(s, do, generator=g, dtype=D)
    target = obs @ K.T + k
    prec = torch.linalg.inv(cov).expand(s, du, du)
    model = GaussianMLP(do, du).double()
    fit_global(model, obs, target, prec, torch.ones(s, dtype=D), RegressionConfig(iterations=1500, lr=3e-3), g)
    test = torch.randn(500, do, generator=g, dtype=D)
    with torch.no_grad():
        err = (model(test) - (test @ K.T + k)).norm(dim=-1).mean() / (test @ K.T).norm(dim=-1).mean()
    assert err < 0.05
    torch.testing.assert_close(model.cov, cov)
