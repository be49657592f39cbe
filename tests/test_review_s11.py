"""Review of session 11's core changes: the every-instance-accepted fast path of the transition must give the general
path's state also for operands the selections broadcast or promote, and states rebuilt from tensors take their
histories as any sequence."""

from __future__ import annotations

import pytest
import torch

from l2o_gym import core, make_family
from l2o_gym.core import CoreConfig
from l2o_gym.policy import FeatureView


def _fields_equal(a: core.State, b: core.State) -> None:
    for k in core.STATE_TENSORS:
        x, y = getattr(a, k), getattr(b, k)
        if isinstance(x, tuple):
            assert isinstance(y, tuple) and len(x) == len(y), k
            for u, v in zip(x, y):
                assert u.shape == v.shape and u.dtype == v.dtype and torch.equal(u, v), k
        else:
            assert x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y), k


def _both(monkeypatch, fn):
    """``fn()`` with the fast path allowed, then forced off."""
    fast = fn()
    with monkeypatch.context() as m:
        m.setattr(core, "_all_on_cpu", lambda mask: False)
        general = fn()
    return fast, general


@pytest.mark.parametrize("shape", [(1, 4), (4,)])
def test_broadcast_action_without_validation_keeps_the_state_shapes(monkeypatch, shape):
    """validate=False lets a broadcastable action through; the general path's selections broadcast it to [N, d]
    (the step history included), so the fast path must too (it built a [1, d] or [d] step slot, and features()
    then failed)."""
    probs = make_family("quadratic", dim=4).sample(3, "train", 0)
    cfg = CoreConfig(horizon=10, history=2, include_steps=True, validate=False)
    action = torch.full(shape, -0.01)

    def run():
        s = core.reset(probs, cfg)
        for _ in range(3):
            s, *_ = core.step(s, action)
        return s

    fast, general = _both(monkeypatch, run)
    _fields_equal(fast, general)
    assert torch.equal(core.features(fast), core.features(general))
    assert core.features(fast).shape == (3, core.obs_dim(cfg, 4))


def test_transition_with_a_gradient_of_another_dtype_promotes_as_the_selections(monkeypatch):
    """transition() given a float32 gradient for a float64 state: the selections promote to float64."""
    probs = make_family("quadratic", dim=5).sample(2, "train", 0, dtype=torch.float64)
    s0 = core.reset(probs, CoreConfig(horizon=10, history=2))
    g = (s0.grad * 0.5).float()

    def run():
        s, *_ = core.transition(s0, -0.1 * s0.grad, s0.loss * 0.9, g)
        return s

    fast, general = _both(monkeypatch, run)
    _fields_equal(fast, general)
    assert fast.grad.dtype == torch.float64


@pytest.mark.parametrize("include_steps", [False, True])
def test_state_from_tensors_takes_histories_as_lists(include_steps):
    probs = make_family("quadratic", dim=4).sample(2, "train", 0)
    cfg = CoreConfig(horizon=10, history=3, include_steps=include_steps)
    s = core.reset(probs, cfg)
    s, *_ = core.step(s, -0.1 * s.grad)
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(s, k)) for k in core.STATE_TENSORS)}
    r = core.state_from_tensors(values, cfg)
    assert isinstance(r.grads, tuple) and isinstance(r.steps, tuple)
    a, *_ = core.transition(r, -0.1 * s.grad, s.loss, s.grad)
    b, *_ = core.transition(s, -0.1 * s.grad, s.loss, s.grad)
    assert torch.equal(core.features(a), core.features(b))
    assert len(r.detach().grads) == 3  # detach (and scatter) see the histories


def test_feature_view_shadow_with_list_histories():
    probs = make_family("quadratic", dim=4).sample(2, "train", 0)
    s0 = core.reset(probs, CoreConfig(horizon=10, history=1))
    view = FeatureView(CoreConfig(history=3, include_steps=True))
    tensors, t = view.start(s0)
    as_lists = tuple(list(v) if isinstance(v, tuple) else v for v in tensors)
    s1, *_ = core.step(s0, -0.1 * s0.grad)
    f_tuple, _ = view.observe(s1, (tensors, t))
    f_list, _ = view.observe(s1, (as_lists, t))
    assert torch.equal(f_tuple, f_list)
