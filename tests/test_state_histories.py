"""The core state keeps its gradient (and step) histories as a tuple of per-iterate tensors; observations are
assembled on request, new at every call. States saved in the earlier layout (one flat ``obs``) still load."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from torch import nn

from l2o_gym import core, make_family
from l2o_gym.agents.lstm import LSTMPolicy
from l2o_gym.core import CoreConfig
from l2o_gym.optim import LearnedOptimizer
from l2o_gym.policy import FeatureView


def _states(include_steps: bool, steps: int = 5, history: int = 3):
    problems = make_family("quadratic", dim=4).sample(2, "train", 0)
    state = core.reset(problems, CoreConfig(horizon=50, history=history, include_steps=include_steps, grad_scale=2.0))
    out = [state]
    for k in range(steps):
        state, *_ = core.step(state, -0.05 * (k + 1) * state.grad)
        out.append(state)
    return out


@pytest.mark.parametrize("include_steps", [False, True])
def test_features_follow_the_documented_layout_and_are_the_callers(include_steps):
    states = _states(include_steps)
    s = states[-1]
    h, d = s.config.history, s.dim
    obs = core.features(s)
    assert obs.shape == (s.n, core.obs_dim(s.config, d))
    grads = [2.0 * x.grad for x in states[-h:]]
    torch.testing.assert_close(obs[:, h : h + h * d], torch.cat(grads, 1), rtol=0, atol=0)
    torch.testing.assert_close(obs[:, :h], core.loss_features(s), rtol=0, atol=0)
    if include_steps:
        taken = [2.0 * (b.theta - a.theta) for a, b in zip(states[-h - 1 : -1], states[-h:])]
        torch.testing.assert_close(obs[:, h + h * d :], torch.cat(taken, 1))
    again = core.features(s)
    assert again.data_ptr() != obs.data_ptr() and torch.equal(again, obs)
    obs.zero_()  # the caller's tensor: editing it changes nothing in the state or the next observation
    nxt, *_ = core.step(s, -0.1 * s.grad)
    fresh = _states(include_steps)[-1]  # the same trajectory, never observed: its next observation is the reference
    ref, *_ = core.step(fresh, -0.1 * fresh.grad)
    assert torch.equal(core.features(s), again) and torch.equal(core.features(nxt), core.features(ref))


def _old_layout(state: core.State) -> dict:
    """The earlier saved form of ``state``: its tensors with the histories inside one flat ``obs``."""
    d = {k: getattr(state, k) for k in core.STATE_TENSORS if k not in ("grads", "steps")}
    d["obs"] = core.features(state)
    return d


@pytest.mark.parametrize("include_steps", [False, True])
def test_state_from_tensors_reads_both_layouts(include_steps):
    s = _states(include_steps)[-1]
    new = core.state_from_tensors({k: getattr(s, k) for k in core.STATE_TENSORS}, s.config)
    old = core.state_from_tensors(_old_layout(s), s.config)
    seq = core.state_from_tensors([_old_layout(s)[k] for k in core._STATE_TENSORS_OBS], s.config)
    for r in (new, old, seq):
        assert torch.equal(core.features(r), core.features(s))
        a, *_ = core.transition(r, -0.1 * s.grad, s.loss, s.grad)
        b, *_ = core.transition(s, -0.1 * s.grad, s.loss, s.grad)
        assert torch.equal(core.features(a), core.features(b)) and torch.equal(a.theta, b.theta)


def test_state_from_tensors_refuses_another_history():
    s = _states(False, history=3)[-1]
    other = dataclasses.replace(s.config, history=2)
    with pytest.raises(ValueError, match="history 2"):
        core.state_from_tensors({k: getattr(s, k) for k in core.STATE_TENSORS}, other)
    with pytest.raises(ValueError, match="width"):
        core.state_from_tensors(_old_layout(s), other)
    with pytest.raises(ValueError, match="tensors"):
        core.state_from_tensors([s.theta, s.loss], s.config)


def test_feature_view_continues_an_old_layout_shadow():
    """A shadow state saved before the change (a tuple with one flat obs) advances as the new one does."""
    s0 = _states(False, steps=0, history=1)[0]
    view = FeatureView(CoreConfig(history=3))
    shadow = view.start(s0)
    old_shadow = (tuple(_old_layout(core.state_from_tensors(shadow[0], view.config))[k]
                        for k in core._STATE_TENSORS_OBS), shadow[1])
    s1, *_ = core.step(s0, -0.1 * s0.grad)
    f_new, _ = view.observe(s1, shadow)
    f_old, _ = view.observe(s1, old_shadow)
    assert torch.equal(f_new, f_old)


def test_learned_optimizer_loads_a_state_saved_in_the_old_layout():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    policy = LSTMPolicy()

    def run(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

    m1 = nn.Linear(5, 3)
    o1 = LearnedOptimizer(m1.parameters(), policy)
    run(m1, o1, 3)
    sd = o1.state_dict()
    old = dict(sd, l2o=dict(sd["l2o"], mdp=_old_layout(o1._mdp)))
    buf = io.BytesIO()
    torch.save({"model": m1.state_dict(), "opt": old}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    m2 = nn.Linear(5, 3)
    m2.load_state_dict(saved["model"])
    o2 = LearnedOptimizer(m2.parameters(), policy)
    o2.load_state_dict(saved["opt"])
    run(m1, o1, 3)
    run(m2, o2, 3)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="another CoreConfig"):
        bad = dict(sd, l2o=dict(sd["l2o"], mdp=dict(sd["l2o"]["mdp"], grads=sd["l2o"]["mdp"]["grads"] * 2)))
        LearnedOptimizer(nn.Linear(5, 3).parameters(), policy).load_state_dict(bad)
    with pytest.raises(ValueError, match="is incomplete: a saved state lacks steps"):
        mdp = {k: v for k, v in sd["l2o"]["mdp"].items() if k != "steps"}
        LearnedOptimizer(nn.Linear(5, 3).parameters(), policy).load_state_dict(dict(sd, l2o=dict(sd["l2o"], mdp=mdp)))
