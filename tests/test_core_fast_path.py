"""The core's CPU fast paths give exactly the numbers of the general code: the one-pass finiteness test, the
every-instance-accepted transition (no ``torch.where`` over ``[N, d]``) and the per-instance minibatch gather."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from l2o_gym import core, make_family
from l2o_gym.core import CoreConfig, rows_finite
from l2o_gym.problems.base import gather_rows

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [NAN, INF, -INF, "overflow", None])
def test_rows_finite_equals_entrywise_test(dtype, bad):
    x = torch.randn(6, 50, dtype=dtype)
    if bad == "overflow":  # finite entries whose row sum overflows: still finite rows
        big = torch.finfo(dtype).max
        x[2, :3] = big
        x[4, 7] = big
        x[4, 8] = big
    elif bad is not None:
        x[1, 0] = bad
        x[3, -1] = bad
        x[5, :] = bad
    got = rows_finite(x)
    assert got.dtype == torch.bool and got.shape == (6,)
    assert torch.equal(got, torch.isfinite(x).all(-1))


def test_rows_finite_single_column_and_mixed_nan_inf():
    x = torch.tensor([[1.0], [NAN], [INF]])
    assert rows_finite(x).tolist() == [True, False, False]
    y = torch.tensor([[INF, -INF, 1.0], [1.0, 2.0, 3.0]])  # inf - inf = NaN in the sum: still caught
    assert rows_finite(y).tolist() == [False, True]


def test_gather_rows_equals_advanced_indexing():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 30, 7, generator=g)
    y = torch.randint(0, 10, (5, 30), generator=g)
    pos = torch.randint(0, 30, (5, 11), generator=g)
    rows = torch.arange(5)[:, None]
    xb, yb = gather_rows(pos, X, y)
    assert torch.equal(xb, X[rows, pos]) and torch.equal(yb, y[rows, pos])
    assert xb.shape == (5, 11, 7) and yb.shape == (5, 11)


def _run(problems, cfg, actions, general: bool, monkeypatch):
    """States after each action, with the fast path allowed or forced off."""
    if general:
        monkeypatch.setattr(core, "_all_on_cpu", lambda mask: False)
    else:
        monkeypatch.undo()
    state = core.reset(problems, cfg)
    out = []
    for a in actions:
        state, cost, term, trunc = core.step(state, a(state))
        out.append((state, cost, term, trunc))
    return out


@pytest.mark.parametrize("include_steps", [False, True])
@pytest.mark.parametrize("diverge", [False, True])
def test_transition_fast_path_is_bitwise_the_general_one(monkeypatch, include_steps, diverge):
    fam = make_family("nn_classifier", dataset="digits", inputs=8, hidden=6, batch_size=16)
    problems = fam.sample(4, "val", 0)
    cfg = CoreConfig(horizon=6, history=2, include_steps=include_steps, true_every=2)

    def act(state):
        step = -0.1 * state.grad
        if diverge and int(state.t[0]) == 2:  # instance 1 blows up at the third step: the general path runs
            step = step.clone()
            step[1] = 1e30
        return step

    fast = _run(problems, cfg, [act] * 6, False, monkeypatch)
    slow = _run(problems, cfg, [act] * 6, True, monkeypatch)
    for (s1, *r1), (s2, *r2) in zip(fast, slow):
        for f in dataclasses.fields(s1):
            if f.name in ("problems", "config"):
                continue
            a, b = getattr(s1, f.name), getattr(s2, f.name)
            if isinstance(a, tuple):  # the histories
                assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b)), f.name
            else:
                assert torch.equal(a, b), f.name
        assert torch.equal(core.features(s1), core.features(s2))
        for a, b in zip(r1, r2):
            assert torch.equal(a, b)
    assert bool(fast[-1][0].terminated[1]) is diverge


def test_fast_path_keeps_the_graph_of_meta_training():
    """Meta-training (the action carries a graph) gets the first-order meta-gradient of the closed form: with
    θ_{t+1} = θ_t − lr·g_t and the g_t detached, d f(θ_T) / d lr = −∇f(θ_T) · Σ_t g_t per instance."""
    fam = make_family("quadratic", dim=5)
    problems = fam.sample(3, "train", 0)
    lr = torch.tensor(0.05, requires_grad=True)
    state = core.reset(problems, CoreConfig(horizon=4, history=1))
    total = torch.zeros_like(state.theta)
    for _ in range(4):
        total += state.grad
        state, *_ = core.step(state, -lr * state.grad)
    assert state.theta.requires_grad  # the transition kept the graph of the step
    (got,) = torch.autograd.grad(state.loss.sum(), lr)
    _, g_final = problems.loss_and_grad(state.theta.detach(), 4)
    want = -(g_final * total).sum()
    assert got.item() != 0.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)