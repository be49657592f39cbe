"""Convolutional GPS local side (agents/gps/coord.py): per-group LQG vs the full LQG, per-coordinate dynamics
fits, permutation equivariance."""

from __future__ import annotations

import pytest
import torch

from l2o_gym.agents.gps.coord import (
    GRAD,
    OBS_DIM,
    STATE_DIM,
    CoordinateController,
    CoordinateFeatures,
    DynamicsMoments,
    CostMoments,
    group_index,
    initial_controller,
    obs_dim,
)
from l2o_gym.agents.gps.cost import QuadraticCost
from l2o_gym.agents.gps.dynamics import fit_dynamics
from l2o_gym.agents.gps.lingauss import LinearGaussianDynamics, LinearGaussianPolicy
from l2o_gym.agents.gps.lqr import backward, solve_kl_step
from l2o_gym.problems import make_family

from conftest import full_batch_losses

DT = torch.float64


def _random_group_system(ds: int, T: int, gen: torch.Generator):
    F = 0.3 * torch.randn(1, T, ds, ds + 1, generator=gen, dtype=DT)
    f = 0.1 * torch.randn(1, T, ds, generator=gen, dtype=DT)
    W = 0.01 * torch.eye(ds, dtype=DT).expand(1, T, ds, ds).clone()
    A = torch.randn(1, T, ds + 1, ds + 1, generator=gen, dtype=DT)
    C = A @ A.transpose(-1, -2) / (ds + 1) + 0.1 * torch.eye(ds + 1, dtype=DT)
    c = torch.randn(1, T, ds + 1, generator=gen, dtype=DT)
    x0m = torch.randn(1, ds, generator=gen, dtype=DT)
    x0c = 0.1 * torch.eye(ds, dtype=DT)[None]
    prev = LinearGaussianPolicy(
        0.2 * torch.randn(1, T, 1, ds, generator=gen, dtype=DT),
        0.1 * torch.randn(1, T, 1, generator=gen, dtype=DT),
        torch.full((1, T, 1, 1), 0.3, dtype=DT),
    )
    return LinearGaussianDynamics(F, f, W, x0m, x0c), QuadraticCost(C, c, torch.zeros(1, T, dtype=DT)), prev


def _assemble(dyn, cost, prev, n: int):
    """The full system of ``n`` coordinates with block-diagonal, shared blocks; y = [s^1..s^n, a^1..a^n]."""
    _, T, ds, dy = dyn.F.shape
    dx = n * ds
    eye = torch.eye(n, dtype=DT)

    def to_full_y(M):  # [T, ds+1, ds+1] block over (s, a) -> [T, dx+n, dx+n]
        out = torch.zeros(T, dx + n, dx + n, dtype=DT)
        out[:, :dx, :dx] = torch.kron(eye, M[:, :ds, :ds])
        out[:, :dx, dx:] = torch.kron(eye, M[:, :ds, ds:])
        out[:, dx:, :dx] = torch.kron(eye, M[:, ds:, :ds])
        out[:, dx:, dx:] = torch.kron(eye, M[:, ds:, ds:])
        return out

    Ff = torch.zeros(T, dx, dx + n, dtype=DT)
    Ff[:, :, :dx] = torch.kron(eye, dyn.F[0, :, :, :ds])
    Ff[:, :, dx:] = torch.kron(eye, dyn.F[0, :, :, ds:])
    dyn_f = LinearGaussianDynamics(
        Ff[None], dyn.f[0].repeat(1, n)[None], torch.kron(eye, dyn.W[0])[None],
        dyn.x0_mean.repeat(1, n), torch.kron(eye, dyn.x0_cov[0])[None],
    )
    cost_f = QuadraticCost(to_full_y(cost.C[0])[None],
                           torch.cat([cost.c[0, :, :ds].repeat(1, n), cost.c[0, :, ds:].repeat(1, n)], -1)[None],
                           n * cost.c0)
    prev_f = LinearGaussianPolicy(torch.kron(eye, prev.K[0])[None], prev.k[0].repeat(1, n)[None],
                                  torch.kron(eye, prev.cov[0])[None])
    return dyn_f, cost_f, prev_f


def test_per_group_lqg_equals_full_lqg_on_assembled_system():
    gen = torch.Generator().manual_seed(0)
    ds, T, n = 3, 6, 4
    dyn, cost, prev = _random_group_system(ds, T, gen)
    dyn_f, cost_f, prev_f = _assemble(dyn, cost, prev, n)
    eta = torch.tensor([0.7], dtype=DT)
    g = backward(dyn, cost, eta, prev=prev, du=1)
    full = backward(dyn_f, cost_f, eta, prev=prev_f, du=n)
    eye = torch.eye(n, dtype=DT)
    assert bool(g.ok.all()) and bool(full.ok.all())
    torch.testing.assert_close(full.policy.K[0], torch.kron(eye, g.policy.K[0]))
    torch.testing.assert_close(full.policy.k[0], g.policy.k[0].repeat(1, n))
    torch.testing.assert_close(full.policy.cov[0], torch.kron(eye, g.policy.cov[0]))
    torch.testing.assert_close(full.V[0], torch.kron(eye, g.V[0]))


def test_per_coordinate_kl_budget_scales_with_group_size():
    # KL of the full controller = n × the group's, so ε_full = n·ε_g gives the same η and controllers.
    gen = torch.Generator().manual_seed(1)
    ds, T, n = 2, 5, 3
    dyn, cost, prev = _random_group_system(ds, T, gen)
    dyn_f, cost_f, prev_f = _assemble(dyn, cost, prev, n)
    eps = torch.tensor([0.05], dtype=DT)
    g = solve_kl_step(dyn, cost, prev, eps)
    full = solve_kl_step(dyn_f, cost_f, prev_f, n * eps)
    torch.testing.assert_close(full.eta, g.eta, rtol=1e-6, atol=0)
    torch.testing.assert_close(full.kl, n * g.kl, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(full.policy.K[0], torch.kron(torch.eye(n, dtype=DT), g.policy.K[0]))


def _shared_system_samples(G=2, ds=2, T=4, N=6, d_per=(300, 500), seed=0):
    gen = torch.Generator().manual_seed(seed)
    A = 0.5 * torch.randn(G, T, ds, ds + 1, generator=gen, dtype=DT)
    b = torch.randn(G, T, ds, generator=gen, dtype=DT)
    noise = 0.05
    groups = torch.repeat_interleave(torch.arange(G), torch.tensor(d_per))
    d = len(groups)
    s = torch.randn(N, d, ds, generator=gen, dtype=DT)
    S, Aa = [s], []
    for t in range(T):
        a = torch.randn(N, d, generator=gen, dtype=DT)
        y = torch.cat([s, a[..., None]], -1)
        s = torch.einsum("dij,ndj->ndi", A[groups, t], y) + b[groups, t] + noise * torch.randn(N, d, ds, generator=gen, dtype=DT)
        S.append(s)
        Aa.append(a)
    return A, b, groups, torch.stack(S, 2), torch.stack(Aa, 2)  # S [N, d, T+1, ds], Aa [N, d, T]


def test_moments_fit_recovers_shared_linear_gaussian_system():
    A, b, groups, S, Aa = _shared_system_samples()
    G, T, ds = A.shape[0], A.shape[1], A.shape[2]
    mom = DynamicsMoments(G, T, ds)
    for t in range(T):
        mom.add(t, S[:, :, t], Aa[:, :, t], S[:, :, t + 1], groups)
    dyn = mom.fit(reg=1e-9)
    # the fit is the least-squares regression of s_{t+1} on [s_t, a_t, 1] over every coordinate of a group …
    for g in range(G):
        for t in range(T):
            idx = groups == g
            Y = torch.cat([S[:, idx, t], Aa[:, idx, t, None], torch.ones_like(Aa[:, idx, t, None])], -1).reshape(-1, ds + 2)
            coef = torch.linalg.lstsq(Y, S[:, idx, t + 1].reshape(-1, ds)).solution.T  # [ds, ds+2]
            torch.testing.assert_close(dyn.F[g, t], coef[:, : ds + 1], atol=1e-6, rtol=0)
            torch.testing.assert_close(dyn.f[g, t], coef[:, -1], atol=1e-6, rtol=0)
    # … which recovers the shared system from 1,800–3,000 coordinate samples per group and step
    torch.testing.assert_close(dyn.F, A, atol=0.02, rtol=0)
    torch.testing.assert_close(dyn.f, b, atol=0.03, rtol=0)
    W_true = 0.05**2 * torch.eye(ds, dtype=DT)
    torch.testing.assert_close(dyn.W, W_true.expand_as(dyn.W), atol=5e-4, rtol=0)


def test_moments_add_up_and_match_fit_dynamics():
    A, b, groups, S, Aa = _shared_system_samples(G=1, d_per=(40,), N=3)
    T, ds = A.shape[1], A.shape[2]
    whole, half1, half2 = (DynamicsMoments(1, T, ds) for _ in range(3))
    for t in range(T):
        whole.add(t, S[:, :, t], Aa[:, :, t], S[:, :, t + 1], groups)
        half1.add(t, S[:2, :, t], Aa[:2, :, t], S[:2, :, t + 1], groups)
        half2.add(t, S[2:, :, t], Aa[2:, :, t], S[2:, :, t + 1], groups)
    half1.merge(half2)
    torch.testing.assert_close(half1.outer, whole.outer)
    prior = whole.prior()
    a, c = whole.fit(prior), half1.fit(prior)
    torch.testing.assert_close(a.F, c.F)
    # The same samples, arranged as one condition with N·d samples, through the classic fit.
    X = S.reshape(1, -1, T + 1, ds)
    U = Aa.reshape(1, -1, T, 1)
    ref = fit_dynamics(X, U, torch.ones(1, X.shape[1], dtype=torch.bool), prior)
    torch.testing.assert_close(a.F, ref.F)
    torch.testing.assert_close(a.f, ref.f)
    torch.testing.assert_close(a.W, ref.W)


def test_non_finite_samples_are_dropped_and_counted():
    A, b, groups, S, Aa = _shared_system_samples(G=1, d_per=(10,), N=2, T=2)
    S = S.clone()
    S[0, 3, 1, 0] = float("nan")
    mom = DynamicsMoments(1, 2, S.shape[-1])
    for t in range(2):
        mom.add(t, S[:, :, t], Aa[:, :, t], S[:, :, t + 1], groups)
    assert mom.dropped == 2  # (t=0, s_next) and (t=1, s)
    assert torch.isfinite(mom.outer).all() and mom.count[0].tolist() == [19.0, 19.0]


def _run_features(theta_seq, loss_seq, grad_seq, grad_average="last3"):
    feats = CoordinateFeatures(grad_average=grad_average)
    feats.reset(theta_seq[0], loss_seq[0], grad_seq[0])
    out = [(feats.state, feats.obs)]
    for th, f, g in zip(theta_seq[1:], loss_seq[1:], grad_seq[1:]):
        feats.update(th, f, g)
        out.append((feats.state, feats.obs))
    return out


@pytest.mark.parametrize("grad_average", ["last3", "ema"])
def test_features_shapes_finite_and_permutation_equivariant(grad_average):
    fam = make_family("mlp", hidden=(4,), dataset="digits")
    problems = fam.sample(2, "train", 0, dtype=DT)
    theta = problems.x0.clone()
    thetas, losses, grads = [], [], []
    for t in range(40):
        f, g = problems.loss_and_grad(theta, t)
        thetas.append(theta.clone()), losses.append(f), grads.append(g)
        theta = theta - 0.5 * g
    perm = torch.randperm(fam.dim, generator=torch.Generator().manual_seed(0))
    a = _run_features(thetas, losses, grads, grad_average)
    b = _run_features([x[:, perm] for x in thetas], losses, [x[:, perm] for x in grads], grad_average)
    for (sa, oa), (sb, ob) in zip(a, b):
        assert sa.shape == (2, fam.dim, STATE_DIM) and oa.shape == (2, fam.dim, obs_dim(grad_average))
        assert torch.isfinite(sa).all() and torch.isfinite(oa).all()
        torch.testing.assert_close(sa[:, perm], sb)
        torch.testing.assert_close(oa[:, perm], ob)
    # the objective falls under gradient descent: the most recent stride-5 change is negative at t = 39
    assert bool((a[-1][0][:, 0, 4] < 0).all())


def test_controller_is_permutation_equivariant_within_groups():
    fam = make_family("mlp", hidden=(3,), dataset="digits")
    specs = fam.param_specs()
    groups = group_index(specs)
    G, T = len(specs), 2
    pol = initial_controller(G, T, lr=0.1, std=0.2)
    pol.K[..., 0, 0] = torch.arange(G, dtype=DT)[:, None]  # groups differ
    ctrl = CoordinateController(pol, groups)
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(2, fam.dim, STATE_DIM, generator=gen, dtype=DT)
    noise = torch.randn(2, fam.dim, generator=gen, dtype=DT)
    # a permutation that stays within each group
    perm = torch.cat([spec.offset + torch.randperm(spec.numel, generator=gen) for spec in specs])
    a = ctrl.sample(s, 1, noise)
    b = ctrl.sample(s[:, perm], 1, noise[:, perm])
    torch.testing.assert_close(a[:, perm], b)
    torch.testing.assert_close(ctrl.mean(s, 0), -0.1 * s[..., GRAD] + pol.K[groups, 0, 0, 0] * s[..., 0])


def test_cost_model_recovers_gradient_regression_and_curvature():
    # Separable quadratic f(θ) = Σ ½ h_i θ_i² with |f0| = 1: r = |g| is an exact linear function of a state
    # feature here (s[0] = |g|), and the secant curvature along any step is the mean of h over the group.
    gen = torch.Generator().manual_seed(0)
    G, T, ds, N, d = 2, 3, 2, 5, 200
    groups = torch.repeat_interleave(torch.arange(G), torch.tensor([120, 80]))
    h = torch.where(groups == 0, 2.0, 0.5).to(DT)
    mom = CostMoments(G, T, ds)
    theta = torch.randn(N, d, generator=gen, dtype=DT)
    from l2o_gym.agents.gps.coord import contiguous_segments
    for t in range(T):
        g = h * theta
        s = torch.stack([g.abs(), torch.randn(N, d, generator=gen, dtype=DT)], -1)
        step = -0.1 * g + 0.01 * torch.randn(N, d, generator=gen, dtype=DT)
        g_next = h * (theta + step)
        mom.add_segments(t, s, g.abs(), (g_next - g) * step, step * step, contiguous_segments(groups))
        theta = theta + step
    cost = mom.fit(action_penalty=0.0, ridge=1e-12)
    w = (T - torch.arange(T, dtype=DT)) / T
    torch.testing.assert_close(cost.C[:, :, 0, ds], w.expand(G, T))  # β on |g| is 1
    torch.testing.assert_close(cost.C[:, :, 1, ds], torch.zeros(G, T, dtype=DT), atol=1e-9, rtol=0)
    torch.testing.assert_close(cost.c[:, :, ds], torch.zeros(G, T, dtype=DT), atol=1e-9, rtol=0)
    torch.testing.assert_close(cost.C[:, :, ds, ds], torch.tensor([[2.0], [0.5]], dtype=DT) * w)


def test_cost_model_equals_first_order_decrease_for_the_frame_step():
    # c(s, a') with β on the |g| feature: a frame step a' = −η|g| costs −η|g|² + ½ h η²|g|², the exact change of
    # f = ½ h θ² (normalised by |f0| = 1) at t = 0 (weight 1).
    mom = CostMoments(1, 1, 1)
    g = torch.linspace(0.1, 2.0, 50, dtype=DT)[None]
    s = g.abs()[..., None]
    step = -0.3 * g
    mom.add_segments(0, s, g.abs(), (1.5 * step) * step, step * step, [(slice(None), slice(None), 0)])
    cost = mom.fit(action_penalty=0.0, ridge=1e-12)
    y = torch.cat([s[0], (-0.3 * g.abs())[0][:, None]], -1)  # [50, 2]
    model = 0.5 * torch.einsum("ni,ij,nj->n", y, cost.C[0, 0], y) + y @ cost.c[0, 0]
    exact = (-0.3 * g * g + 0.5 * 1.5 * (0.3 * g) ** 2)[0]
    torch.testing.assert_close(model, exact)


# ---------------------------------------------------------------- global policy and the loop

def _tiny_setup(T=15):
    from l2o_gym.agents.gps.conv import ConvGPSConfig

    fam = make_family("mlp", hidden=(4,), dataset="digits", batch_size=16)
    train = fam.sample(2, "train", 0, dtype=DT)
    cfg = ConvGPSConfig(horizon=T, n_samples=2, hidden=8, regression_coords=4, init_std=0.01, kl_step=0.05,
                        regression_epochs=3, bptt=5, seed=3)
    return fam, train, cfg


def test_global_policy_is_permutation_equivariant_within_groups():
    from l2o_gym.agents.gps.coord_policy import ConvGPSPolicy, CoordinateLSTMNet
    from l2o_gym.policy import run_policy

    fam = make_family("mlp", hidden=(3,), dataset="digits")
    specs = fam.param_specs()
    torch.manual_seed(0)
    net = CoordinateLSTMNet([(s.name, s.kind) for s in specs], hidden=6).double()
    for head in net.heads:
        torch.nn.init.normal_(head.weight, std=0.5)
    problems = fam.sample(2, "val", 0, dtype=DT)
    gen = torch.Generator().manual_seed(1)
    perm = torch.cat([s.offset + torch.randperm(s.numel, generator=gen) for s in specs])
    permuted = type(problems)(problems.family, problems.split, problems.data, problems.x0[:, perm], problems.seeds)

    pol = ConvGPSPolicy(net)
    a = run_policy(pol, problems, 6)
    # evaluate on the permuted parametrisation: θ' = θ[perm], f'(θ') = f(θ'[inv])
    inv = torch.argsort(perm)

    class PermFamily(type(fam)):
        def loss(self, batch, theta, step):
            return super().loss(batch, theta[:, inv], step)

    pfam = PermFamily(**fam.config())
    pprob = type(problems)(pfam, problems.split, problems.data, problems.x0[:, perm], problems.seeds)
    b = run_policy(ConvGPSPolicy(net, specs=specs), pprob, 6)
    torch.testing.assert_close(a.losses, b.losses)
    torch.testing.assert_close(a.state.theta[:, perm], b.state.theta)


@pytest.mark.parametrize("grad_average", ["last3", "ema"])
def test_global_policy_is_equivariant_to_flipping_coordinate_signs(grad_average):
    """θ' = Dθ with D = diag(±1) and f'(θ') = f(Dθ'): the policy's steps on f' are D times its steps on f (the
    gradient-sign frame; coord module docstring), with either averaged gradient. (On a net whose gradients are
    never exactly 0: the frame of a zero gradient is +1 whatever the flip, e.g. for the weights of an input pixel
    that is 0 in a whole minibatch.)"""
    from l2o_gym.agents.gps.coord_policy import ConvGPSPolicy, CoordinateLSTMNet, obs_dim
    from l2o_gym.policy import run_policy

    fam = make_family("nn_classifier", dataset="digits", inputs=6, hidden=4, activation="sigmoid", batch_size=16)
    specs = fam.param_specs()
    torch.manual_seed(0)
    net = CoordinateLSTMNet([(s.name, s.kind) for s in specs], hidden=6, n_obs=obs_dim(grad_average)).double()
    for head in net.heads:
        torch.nn.init.normal_(head.weight, std=0.5)
    problems = fam.sample(2, "val", 0, dtype=DT)
    flip = torch.where(torch.rand(fam.dim, generator=torch.Generator().manual_seed(2)) < 0.5, -1.0, 1.0).to(DT)

    class FlipFamily(type(fam)):
        def loss(self, batch, theta, step):
            return super().loss(batch, theta * flip, step)

    flipped = type(problems)(FlipFamily(**fam.config()), problems.split, problems.data, problems.x0 * flip,
                             problems.seeds)
    pol = ConvGPSPolicy(net, step_unit="sqrt", grad_average=grad_average)
    a = run_policy(pol, problems, 6)
    b = run_policy(ConvGPSPolicy(net, specs=specs, step_unit="sqrt", grad_average=grad_average), flipped, 6)
    torch.testing.assert_close(a.losses, b.losses)
    torch.testing.assert_close(a.state.theta * flip, b.state.theta)


def test_conv_gps_improves_on_its_initial_controller_on_val():
    from l2o_gym.agents.gps.conv import ConvGPSTrainer
    from l2o_gym.policy import run_policy

    fam, train, cfg = _tiny_setup()
    val = fam.sample(8, "val", 0, dtype=DT)
    tr = ConvGPSTrainer(train, cfg)
    init_final, _ = tr.controller_objective(tr.local, val)
    for _ in range(3):
        m = tr.iteration()
        assert m["dropped"] == 0
    traj = run_policy(tr.policy(), val, cfg.horizon)
    assert float(traj.losses[-1].mean()) < init_final
    assert torch.isfinite(traj.losses).all()


def test_conv_gps_training_reads_the_true_objective_only_where_it_evaluates_it():
    """On a family with a true objective the trainer's core evaluates it at T only; the samples, fits and policy
    equal those of a core that evaluates it every step (nothing in training reads the held values)."""
    import dataclasses

    from l2o_gym.agents.gps.conv import ConvGPSConfig, ConvGPSTrainer

    train = make_family("nn_classifier", dataset="digits", inputs=8, hidden=6).sample(2, "train", 0)
    cfg = ConvGPSConfig(horizon=20, n_samples=2, hidden=6, regression_coords=4, regression_epochs=2, bptt=5, seed=3,
                        init_lr=0.03)
    runs = []
    for every in (None, 1):
        tr = ConvGPSTrainer(train, cfg)
        assert tr.core_config.true_every == cfg.horizon
        if every is not None:
            tr.core_config = dataclasses.replace(tr.core_config, true_every=every)
        metrics = tr.iteration()
        runs.append((metrics.pop("wall_s"), metrics, tr.local.K.clone(), tr.policy().net.state_dict()))
    (_, m0, k0, net0), (_, m1, k1, net1) = runs
    assert m0 == m1 and torch.equal(k0, k1)
    assert all(torch.equal(net0[k], net1[k]) for k in net0)


def test_conv_gps_policy_round_trips_through_a_checkpoint(tmp_path):
    from l2o_gym.agents.gps.conv import ConvGPSTrainer
    from l2o_gym.agents.gps.coord_policy import ConvGPSPolicy
    from l2o_gym.checkpoint import CheckpointError
    from l2o_gym.policy import run_policy

    fam, train, cfg = _tiny_setup(T=6)
    tr = ConvGPSTrainer(train, cfg)
    tr.iteration()
    path = tr.policy().save(tmp_path / "cgps.safetensors")
    loaded = ConvGPSPolicy.load(path)
    val = fam.sample(3, "val", 0, dtype=DT)
    a = run_policy(tr.policy(), val, 6).losses
    b = run_policy(loaded, val, 6).losses
    torch.testing.assert_close(a, b)
    assert loaded.step_unit == cfg.step_unit == "sqrt"
    # a checkpoint written before the step unit existed has none in its header: it ran with Δθ = σ a'
    from l2o_gym.checkpoint import load_policy_file, save_policy

    tensors, config = load_policy_file(path, kind="conv_gps")
    del config["step_unit"]
    legacy = ConvGPSPolicy.load(save_policy(tmp_path / "legacy.safetensors", tensors, config))
    assert legacy.step_unit == "sign"
    config["step_unit"] = "newton"
    with pytest.raises(CheckpointError, match="step_unit must be one of"):
        ConvGPSPolicy.load(save_policy(tmp_path / "bad.safetensors", tensors, config))
    # a model whose tensors have a kind the policy never saw is refused, naming it
    from l2o_gym.problems.base import param_specs_from

    with pytest.raises(CheckpointError, match="'emb'.*'embedding'.*matches none"):
        loaded.net.group_map(param_specs_from([("emb", (3, 3), "embedding")]))
    # module-type kinds of LearnedOptimizer map onto the trained weight/bias groups
    gm = loaded.net.group_map(param_specs_from([("c", (2, 3), "conv"), ("fc", (3, 2), "fc"), ("b", (2,), "bias"),
                                                 ("n", (2,), "bn")]))
    kinds = [loaded.net.groups[j][1] for j in gm]
    assert kinds == ["weight", "weight", "bias", "bias"]


def test_two_torchrun_processes_train_the_same_policy_as_one(tmp_path):
    """Each rank samples its share of the trajectories (per-trajectory noise seeds), moments are all-reduced and
    regression data gathered: the policy equals the single-process one up to the order of the float sums."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    root = Path(__file__).resolve().parents[1]
    worker = str(root / "tests" / "cgps_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, worker, str(tmp_path / "one.safetensors")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          worker, str(tmp_path / "two.safetensors")], capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert a.keys() == b.keys()
    from l2o_gym.checkpoint import read_policy_config

    steps = [read_policy_config(tmp_path / f"{n}.safetensors")["env_steps"] for n in ("one", "two")]
    assert steps == [2 * 2 * 3 * 8, 2 * 2 * 3 * 8]  # 2 iterations x 2 conditions x 3 samples x T, on both
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_conv_gps_env_steps_count_every_process_s_trajectories_and_too_many_processes_are_refused(monkeypatch):
    """Simulated ranks of 2 processes (5 trajectories: 3 and 2): each rank's env_steps is the iteration's total,
    as with one process (it was this rank's share: half the steps in the record, ranks disagreeing); more processes
    than trajectories is refused on every rank alike (the empty rank crashed alone, the others waited in
    all_reduce)."""
    import dataclasses

    from l2o_gym.agents.gps import conv as conv_mod

    _, train, cfg = _tiny_setup(T=4)
    cfg = dataclasses.replace(cfg, n_samples=1, init_lr=0.01)
    train = train.index(torch.tensor([0, 1, 0, 1, 0]))  # M = 5 conditions x 1 sample
    steps = []
    for rank in (0, 1):
        tr = conv_mod.ConvGPSTrainer(train, cfg)
        monkeypatch.setattr(conv_mod, "world", lambda rank=rank: (rank, 2))
        *_, ids = tr.sample(tr.local)
        assert len(ids) == (3, 2)[rank]
        steps.append(tr.env_steps)
    assert steps == [5 * 4, 5 * 4]
    monkeypatch.setattr(conv_mod, "world", lambda: (0, 6))
    with pytest.raises(ValueError, match="5 trajectories .* 6 processes"):
        tr.sample(tr.local)


def test_train_conv_gps_script_trains_resumes_and_compare_loads_the_checkpoint(tmp_path):
    import importlib.util
    from pathlib import Path

    from l2o_gym.agents.gps import load_policy
    from l2o_gym.agents.gps.coord_policy import ConvGPSPolicy

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("train_conv_gps", root / "scripts" / "train_conv_gps.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = ["--env", "l2o/MLP-v0", "--family-kwargs", '{"dataset": "digits", "hidden": [4], "batch_size": 16}',
            "--horizon", "6", "--conditions", "2", "--samples", "2", "--lstm-hidden", "4", "--regression-coords", "2",
            "--n-val", "3", "--regression-epochs", "1", "--out", str(tmp_path / "run"), "--quiet", "--no-tensorboard"]
    assert mod.main([*args, "--iterations", "1"]) == 0
    assert mod.main([*args, "--iterations", "2", "--resume"]) == 0
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["env_steps_total"] == 2 * 2 * 2 * 6  # 2 iterations x 2 conditions x 2 samples x T
    policy = load_policy(tmp_path / "run" / "gps_best.safetensors", env_id="l2o/MLP-v0")
    assert isinstance(policy, ConvGPSPolicy)
    # bad values are usage errors naming the flag
    with pytest.raises(SystemExit) as exc:
        mod.main([*args, "--kl-step", "-1"])
    assert exc.value.code == 2


def test_conv_gps_policy_runs_in_learned_optimizer_on_a_users_model():
    from l2o_gym.agents.gps.coord_policy import ConvGPSPolicy, CoordinateLSTMNet
    from l2o_gym.optim import LearnedOptimizer

    torch.manual_seed(0)
    net = CoordinateLSTMNet([("layer0.weight", "weight"), ("layer0.bias", "bias")], hidden=4)
    with torch.no_grad():  # a policy that steps against the gradient: a' = -0.05 (the head's bias)
        for head in net.heads:
            head.weight.zero_()
            head.bias.fill_(-0.05)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    opt = LearnedOptimizer(model.parameters(), ConvGPSPolicy(net))  # one coordinate group per parameter tensor
    losses = full_batch_losses(opt, lambda: torch.nn.functional.mse_loss(model(x), y), 30)
    assert losses[-1] < 0.9 * losses[0]
    assert [kind for _, kind in (net.groups[j] for j in net.group_map(opt.policy.specs))] == ["weight", "bias"] * 2


def test_conv_gps_iteration_benchmark_times_real_iterations():
    from l2o_gym.experiments.benchmark import conv_gps_iteration

    r = conv_gps_iteration(iters=2, conditions=1, samples=2, horizon=4)
    assert r["world_size"] == 1 and len(r["iteration_s"]) == 2 and all(t > 0 for t in r["iteration_s"])
    assert r["env_steps_per_iteration"] == 8 and r["median_s"] in r["iteration_s"]


# ---------------------------------------------------------------- the step unit

def test_decay_and_sqrt_unit_scales_are_rms_over_its_running_max_and_step_is_unit_times_frame_step():
    gen = torch.Generator().manual_seed(0)
    N, d, T = 2, 5, 12
    # gradients that grow, then vanish; coordinate 4 is dead (always 0)
    size = torch.cat([torch.linspace(0.5, 2.0, 4), 2.0 * 0.5 ** torch.arange(1, T - 3)]).to(DT)
    grads = [size[t] * torch.randn(N, d, generator=gen, dtype=DT) for t in range(T)]
    for g in grads:
        g[:, 4] = 0.0
    thetas = [torch.randn(N, d, generator=gen, dtype=DT) for _ in range(T)]
    losses = [torch.full((N,), 1.0 / (t + 1), dtype=DT) for t in range(T)]
    sign, decay, sqrt = CoordinateFeatures("sign"), CoordinateFeatures("decay"), CoordinateFeatures("sqrt")
    ms = rms_max = None
    for t in range(T):
        for f in (sign, decay, sqrt):
            (f.reset if t == 0 else f.update)(thetas[t], losses[t], grads[t])
        gbar = torch.stack(grads[max(0, t - 2): t + 1]).mean(0)
        ms = gbar * gbar if ms is None else 0.9 * ms + 0.1 * gbar * gbar
        rms_max = ms.sqrt() if rms_max is None else torch.maximum(rms_max, ms.sqrt())
        rho = torch.where(rms_max > 0, ms.sqrt() / rms_max.clamp_min(1e-300), torch.zeros_like(ms))
        torch.testing.assert_close(decay.scale, rho)
        torch.testing.assert_close(sign.scale, torch.ones_like(rho))
        torch.testing.assert_close(sqrt.scale, rho.sqrt())
        torch.testing.assert_close(decay.unit, decay.frame * rho)
        torch.testing.assert_close(sqrt.unit, sqrt.frame * rho.sqrt())
        for f in (decay, sqrt):  # Φ and Ψ do not depend on the unit
            torch.testing.assert_close(f.state, sign.state)
            torch.testing.assert_close(f.obs, sign.obs)
    # the EMA forgets at 0.9 per step: 8 halvings of ḡ leave ρ ≈ 0.95^8; the dead coordinate does not move
    assert bool((decay.scale[:, :4] < 0.9).all()) and bool((decay.scale[:, 4] == 0).all())
    with pytest.raises(ValueError, match="step_unit must be one of .*'adam'"):
        CoordinateFeatures("adam")


def test_ema_average_is_the_bias_corrected_momentum_normalised_by_the_last3_rms():
    """``grad_average="ema"``: Φ's GRAD is σ·m̂/rms with m̂ Adam's bias-corrected first moment (β = 0.9) and rms
    the running RMS of the mean of the last 3 gradients (as for "last3"); Ψ's fifth entry repeats it; every other
    entry of Φ and Ψ, the unit and the frame equal the "last3" features'."""
    gen = torch.Generator().manual_seed(4)
    N, d, T = 2, 5, 12
    grads = [torch.randn(N, d, generator=gen, dtype=DT) * (1 + t) for t in range(T)]
    thetas = [torch.randn(N, d, generator=gen, dtype=DT) for _ in range(T)]
    losses = [torch.full((N,), 2.0 / (t + 1), dtype=DT) for t in range(T)]
    last3, ema = CoordinateFeatures("sqrt", "last3"), CoordinateFeatures("sqrt", "ema")
    m = torch.zeros(N, d, dtype=DT)
    ms = None
    for t in range(T):
        for f in (last3, ema):
            (f.reset if t == 0 else f.update)(thetas[t], losses[t], grads[t])
        m = 0.9 * m + 0.1 * grads[t]
        mhat = m / (1 - 0.9 ** (t + 1))
        gbar3 = torch.stack(grads[max(0, t - 2): t + 1]).mean(0)
        ms = gbar3 * gbar3 if ms is None else 0.9 * ms + 0.1 * gbar3 * gbar3
        sigma = torch.where(grads[t] < 0, -1.0, 1.0).to(DT)
        torch.testing.assert_close(ema.state[..., GRAD], sigma * mhat / (ms.sqrt() + 1e-8))
        torch.testing.assert_close(last3.state[..., GRAD], sigma * gbar3 / (ms.sqrt() + 1e-8))
        others = [i for i in range(STATE_DIM) if i != GRAD]
        torch.testing.assert_close(ema.state[..., others], last3.state[..., others])
        assert ema.obs.shape == (N, d, OBS_DIM + 1) and last3.obs.shape == (N, d, OBS_DIM)
        torch.testing.assert_close(ema.obs[..., :OBS_DIM], last3.obs)
        torch.testing.assert_close(ema.obs[..., OBS_DIM], ema.state[..., GRAD])
        torch.testing.assert_close(ema.unit, last3.unit)
    assert t == T - 1 and abs(mhat - grads[0]).max() > 0  # the average really has more than one step of memory
    with pytest.raises(ValueError, match="grad_average must be one of .*'adam'"):
        CoordinateFeatures("sqrt", "adam")


def test_ema_policy_round_trips_and_refuses_a_net_of_the_other_input_size(tmp_path):
    from l2o_gym.agents.gps.conv import ConvGPSConfig, ConvGPSTrainer
    from l2o_gym.agents.gps.coord_policy import ConvGPSPolicy, CoordinateLSTMNet
    from l2o_gym.policy import run_policy

    fam, train, cfg = _tiny_setup(T=6)
    cfg = ConvGPSConfig(**{**cfg.__dict__, "grad_average": "ema"})
    tr = ConvGPSTrainer(train, cfg)
    tr.iteration()
    assert tr.net.n_obs == OBS_DIM + 1
    loaded = ConvGPSPolicy.load(tr.policy().save(tmp_path / "ema.safetensors"))
    assert loaded.grad_average == "ema" and loaded.net.n_obs == OBS_DIM + 1
    val = fam.sample(3, "val", 0, dtype=DT)
    torch.testing.assert_close(run_policy(tr.policy(), val, 6).losses, run_policy(loaded, val, 6).losses)
    with pytest.raises(ValueError, match="grad_average='last3' gives 4 observation entries, the net reads 5"):
        ConvGPSPolicy(loaded.net, grad_average="last3")
    with pytest.raises(ValueError, match="grad_average must be one of"):
        ConvGPSConfig(grad_average="mean")
    net = CoordinateLSTMNet([(s.name, s.kind) for s in fam.param_specs()], hidden=4)
    with pytest.raises(ValueError, match="reads 4 observation entries per coordinate, got 5"):
        net.step(torch.zeros(1, fam.dim, 5), net.zero_memory(1, fam.param_specs(), torch.device("cpu"), torch.float32),
                 fam.param_specs(), net.group_map(fam.param_specs()))


def _separable_quadratic_family():
    from dataclasses import dataclass

    from l2o_gym.problems.base import ProblemFamily

    @dataclass(eq=False)
    class Separable(ProblemFamily):
        """f(θ) = ½ Σ h_i θ_i², h_i ∈ [0.5, 2]: minimum 0 at θ = 0."""

        dim: int = 6
        name = "separable"

        def sample_instances(self, n, generator, split):
            h = 0.5 + 1.5 * torch.rand(n, self.dim, generator=generator, dtype=DT)
            return {"h": h}, torch.randn(n, self.dim, generator=generator, dtype=DT)

        def loss(self, batch, theta, step):
            return 0.5 * (batch.data["h"] * theta * theta).sum(-1)

        def loss_and_grad(self, batch, theta, step):
            return self.loss(batch, theta, step), batch.data["h"] * theta

    return Separable()


def test_decay_unit_steps_shrink_with_the_gradient_so_the_initial_controller_converges():
    """The scale-free "sign" unit keeps steps of about lr per coordinate and stalls at a floor set by lr (what
    the first shipped policy did near a minimum, docs/conv-gps.md); with the "decay" unit the same controller is
    gradient descent with a per-coordinate rate lr / max rms and converges linearly to the minimum; with the
    "sqrt" unit (steps ∝ √|g|: the per-coordinate rate grows as the gradient vanishes) it oscillates too, at a
    floor far below the "sign" one, and does not converge like "decay"."""
    from l2o_gym.agents.gps.coord_policy import ControllerPolicy
    from l2o_gym.core import CoreConfig
    from l2o_gym.policy import run_policy

    fam = _separable_quadratic_family()
    problems = fam.sample(4, "test", 0, dtype=DT)
    ctrl = initial_controller(1, 10, lr=0.05, std=0.0)
    H = 600
    final = {}
    for unit in ("sign", "sqrt", "decay"):
        traj = run_policy(ControllerPolicy(ctrl, fam.param_specs(), unit), problems, H, CoreConfig(horizon=H))
        assert torch.isfinite(traj.losses).all()
        final[unit] = traj.losses[-1] / traj.losses[0]
    assert bool((final["decay"] < 1e-8).all()), final["decay"]
    assert bool((final["sign"] > 1e-5).all()), final["sign"]
    assert bool((final["sqrt"] < final["sign"]).all() and (final["sqrt"] > final["decay"]).all()), final


def test_log_cost_divides_the_expansion_by_the_samples_geometric_mean_objective():
    """c_t of the "log" cost = the expansion of f at t divided by f̂_t (geometric mean of the trajectories'
    objectives at t): a first-order model of Σ_t log f_t; the action penalty w_u is not rescaled. The "mixed"
    cost adds w · f_t / f̂_0 to each term (its reference and the initial-lr criterion)."""
    from l2o_gym.agents.gps.conv import ConvGPSConfig, ConvGPSTrainer
    from l2o_gym.agents.gps.coord import contiguous_segments

    fam, train, cfg = _tiny_setup(T=4)
    tr = ConvGPSTrainer(train, ConvGPSConfig(**{**cfg.__dict__, "init_lr": 0.01}))
    objs = torch.tensor([[2.0, 1e-2, 4e-4, 1e-6, 5e-7], [0.5, 1e-4, 1e-4, 1e-4, 1e-6]], dtype=DT)
    ref = torch.tensor([1.0, 1e-3, 2e-4, 1e-5], dtype=DT)  # sqrt(2 · 0.5), sqrt(1e-2 · 1e-4), …
    torch.testing.assert_close(tr._cost_reference(objs), ref)
    # the expansion of a separable quadratic (curvature 3) with and without the reference
    gen = torch.Generator().manual_seed(0)
    G, T, dS, N, d = 2, 4, 2, 5, 60
    groups = torch.repeat_interleave(torch.arange(G), torch.tensor([40, 20]))
    mom = CostMoments(G, T, dS)
    theta = torch.randn(N, d, generator=gen, dtype=DT)
    for t in range(T):
        g = 3.0 * theta
        s = torch.stack([g.abs(), torch.randn(N, d, generator=gen, dtype=DT)], -1)
        step = -0.1 * g + 0.01 * torch.randn(N, d, generator=gen, dtype=DT)
        mom.add_segments(t, s, g.abs(), (3.0 * (theta + step) - g) * step, step * step, contiguous_segments(groups))
        theta = theta + step
    plain = mom.fit(action_penalty=0.5, ridge=1e-12)
    out = mom.fit(action_penalty=0.5, ridge=1e-12, reference=ref)
    w = (T - torch.arange(T, dtype=DT)) / T
    torch.testing.assert_close(plain.C[..., dS, dS], ((3.0 + 0.5) * w).expand(G, T))  # (h + w_u) · w_t
    torch.testing.assert_close(out.c, plain.c / ref[None, :, None])
    torch.testing.assert_close(out.C[..., :dS, :], plain.C[..., :dS, :] / ref[None, :, None, None])
    torch.testing.assert_close(out.C[..., dS, dS], (3.0 * w / ref + 0.5 * w).expand(G, T))
    # "mixed": 1 / reference = 1/f̂_t + w / f̂_0, the expansion of Σ_t (log f_t + w f_t / f̂_0)
    mixed = ConvGPSTrainer(train, ConvGPSConfig(**{**cfg.__dict__, "init_lr": 0.01, "cost": "mixed", "area_weight": 4.0}))
    torch.testing.assert_close(mixed._cost_reference(objs), 1.0 / (1.0 / ref + 4.0 / ref[0]))
    curve = torch.tensor([1.0, 0.1, 0.01], dtype=DT)
    expected = float(curve.log().mean()) + 4.0 * float(curve.mean()) / 2.0
    assert mixed._cost_of_curve(curve, 2.0) == pytest.approx(expected)
    assert tr._cost_of_curve(curve, 2.0) == pytest.approx(float(curve.log().mean()))
    with pytest.raises(ValueError, match="cost must be one of .*'sum'"):
        ConvGPSConfig(cost="sum")
    with pytest.raises(ValueError, match="area_weight"):
        ConvGPSConfig(area_weight=-1.0)


def test_the_small_problem_gps_loader_names_the_loader_of_a_conv_gps_checkpoint():
    from l2o_gym.agents.common import pretrained_dir
    from l2o_gym.agents.gps import load_gps_policy, load_policy
    from l2o_gym.agents.gps.coord_policy import ConvGPSPolicy
    from l2o_gym.checkpoint import CheckpointError

    path = pretrained_dir() / "gps_NNClassifier.safetensors"
    with pytest.raises(CheckpointError, match="convolutional-GPS policy.*agents.gps.load_policy"):
        load_gps_policy(path)
    assert isinstance(load_policy(path), ConvGPSPolicy)


def test_conv_gps_memory_is_per_tensor_and_a_one_block_memory_still_reads():
    """The LSTM memory is kept per parameter tensor ([N·numel, hidden] each: no copies per step); an optimizer
    state saved with the earlier single [N, d, hidden] block acts identically."""
    import copy

    from l2o_gym import core
    from l2o_gym.agents.gps.coord_policy import ConvGPSPolicy, CoordinateLSTMNet, _Memory
    from l2o_gym.core import CoreConfig

    fam = make_family("mlp", hidden=(4,), dataset="digits", batch_size=16)
    specs = fam.param_specs()
    torch.manual_seed(0)
    pol = ConvGPSPolicy(CoordinateLSTMNet([(s.name, s.kind) for s in specs], hidden=5), step_unit="sqrt",
                        grad_average="last3")
    state = core.reset(fam.sample(3, "test", 0), CoreConfig(horizon=10, history=1))
    mem = pol.reset(state)
    assert [[tuple(t.shape) for piece in carry for t in piece] for carry in mem.lstm] == [[(3 * s.numel, 5)] * 2
                                                                                          for s in specs]
    for _ in range(2):
        a, mem = pol.act(state, mem)
        state, *_ = core.step(state, a)
    whole = [tuple(torch.cat([piece[i] for piece in carry]) for i in (0, 1)) for carry in mem.lstm]
    block = tuple(torch.cat([m[i].view(3, s.numel, 5) for m, s in zip(whole, specs)], 1) for i in (0, 1))
    legacy = _Memory(copy.deepcopy(mem.features), block, True)
    new, _ = pol.act(state, copy.deepcopy(mem))
    old, _ = pol.act(state, legacy)
    assert torch.equal(new, old)
    # the memory carried between steps is the updated one (not the zero memory of reset)
    p = next(pol.net.parameters())
    zero = _Memory(copy.deepcopy(mem.features), pol.net.zero_memory(3, specs, p.device, p.dtype), True)
    fresh, _ = pol.act(state, zero)
    assert not torch.equal(new, fresh)
