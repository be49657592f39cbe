"""LearnedOptimizer with policies and parameters it used to mishandle (issue 17 §3, §4)."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

from l2o_gym.agents import LBFGS, Adam, ConjugateGradient, GradientDescent, load_gps_policy
from l2o_gym.agents.lstm import load_pretrained
from l2o_gym.experiments.compare import pretrained_path
from l2o_gym.optim import LearnedOptimizer

LR_ID = "l2o/LogisticRegression-v0"


def _data(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 2, generator=g)
    y = (x @ torch.tensor([1.5, -2.0]) > 0).float()
    return x.to(dtype), y.to(dtype)


def _closure(model: nn.Module, opt: torch.optim.Optimizer, x, y):
    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0].float(), y.float())
        loss.backward()
        return loss

    return closure


def _ppo():
    from l2o_gym.agents.sb3 import load_policy

    return load_policy(pretrained_path("ppo", LR_ID), env_id=LR_ID)


@pytest.mark.parametrize("policy", [ConjugateGradient(), LBFGS()], ids=["cg", "lbfgs"])
def test_line_search_policies_are_refused_at_construction(policy):
    with pytest.raises(TypeError, match=f"'{policy.name}'.*torch.optim.LBFGS"):
        LearnedOptimizer(nn.Linear(2, 1).parameters(), policy)


@pytest.mark.parametrize("loader", ["gps", "ppo"])
def test_dimension_mismatch_is_an_error_at_construction(loader):
    policy = load_gps_policy(pretrained_path("gps", LR_ID)) if loader == "gps" else _ppo()
    assert policy.dim == 3
    with pytest.raises(ValueError, match="dimension 3.*8 entries"):
        LearnedOptimizer(nn.Linear(3, 2).parameters(), policy)
    LearnedOptimizer(nn.Linear(2, 1).parameters(), policy)  # 2 + 1 entries: fits


def test_adam_memory_goes_through_state_dict():
    x, y = _data()

    def run(interrupt: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Linear(2, 1)
        opt = LearnedOptimizer(model.parameters(), Adam(0.05))
        for k in range(8):
            if interrupt and k == 4:
                buf = io.BytesIO()
                torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
                buf.seek(0)
                saved = torch.load(buf, weights_only=True)
                model = nn.Linear(2, 1)
                model.load_state_dict(saved["model"])
                opt = LearnedOptimizer(model.parameters(), Adam(0.05))
                opt.load_state_dict(saved["opt"])
            opt.step(_closure(model, opt, x, y))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.testing.assert_close(run(True), run(False), rtol=0, atol=0)


def test_memory_class_outside_the_package_is_refused_on_load():
    model = nn.Linear(2, 1)
    opt = LearnedOptimizer(model.parameters(), Adam(0.05))
    x, y = _data()
    opt.step(_closure(model, opt, x, y))
    sd = opt.state_dict()
    sd["l2o"]["memory"]["__dataclass__"] = "os:system"
    with pytest.raises(ValueError, match="os:system"):
        LearnedOptimizer(nn.Linear(2, 1).parameters(), Adam(0.05)).load_state_dict(sd)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ppo_on_half_precision_parameters_stays_finite_and_learns(dtype):
    x, y = _data(dtype=dtype)
    torch.manual_seed(0)
    model = nn.Linear(2, 1).to(dtype)
    opt = LearnedOptimizer(model.parameters(), _ppo())
    closure = _closure(model, opt, x, y)
    with torch.no_grad():
        start = float(nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0].float(), y.float()))
    for _ in range(20):
        loss = opt.step(closure)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt._mdp.theta.dtype == torch.float32  # features computed in float32
    assert float(loss.detach()) < start


def test_update_overflowing_float16_is_skipped_with_a_warning():
    model = nn.Linear(2, 1).half()
    before = [p.detach().clone() for p in model.parameters()]
    opt = LearnedOptimizer(model.parameters(), GradientDescent(1.0), lr=1e6)
    x, y = _data(dtype=torch.float16)
    with pytest.warns(RuntimeWarning, match="overflows"):
        opt.step(_closure(model, opt, x, y))
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)  # skipped, not inf


def _lstm_run(opt_factory, steps: int = 6):
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = opt_factory(model)
    for _ in range(3):
        opt.step(_closure(model, opt, x, y))
    return model, opt, x, y


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_keeps_the_policy_and_continues_identically(how):
    model, opt, x, y = _lstm_run(lambda m: LearnedOptimizer(m.parameters(), load_pretrained("l2o/Quadratic-v0")))
    clone = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert type(clone.policy) is type(opt.policy) and clone._mdp is not None
    # ... a copy, not the same objects: otherwise the comparison below would compare each parameter with itself
    assert clone._mdp is not opt._mdp and clone._mdp.theta is not opt._mdp.theta
    for p, q in zip(model.parameters(), clone.param_groups[0]["params"]):
        assert q is not p and torch.equal(q, p)
    # The clone's parameters are copies (as for torch optimizers); a model around them continues the same.
    model2 = nn.Linear(2, 1)
    with torch.no_grad():
        model2.weight, model2.bias = clone.param_groups[0]["params"]
    for _ in range(3):
        opt.step(_closure(model, opt, x, y))
        clone.step(_closure(model2, clone, x, y))
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_torch_optimizers_deepcopy_the_same_way():
    # The convention followed: a deep-copied torch optimizer holds copies of the parameters.
    m = nn.Linear(2, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    c = copy.deepcopy(opt)
    assert c.param_groups[0]["params"][0] is not m.weight
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lc = copy.deepcopy(LearnedOptimizer(m.parameters(), GradientDescent(0.1)))
    assert lc.param_groups[0]["params"][0] is not m.weight and torch.equal(lc.param_groups[0]["params"][0], m.weight)


def test_state_for_other_parameter_shapes_is_refused_on_load():
    # Linear(4, 2) and Linear(1, 5) both have 10 entries in two parameters: torch's group-size check passes, and
    # the flat policy memory would be applied to the wrong coordinates; so would a reordering of the parameters.
    m = nn.Linear(4, 2)
    opt = LearnedOptimizer(m.parameters(), Adam(0.05))
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    sd = opt.state_dict()
    for params in (nn.Linear(1, 5).parameters(), list(nn.Linear(4, 2).parameters())[::-1]):
        with pytest.raises(ValueError, match=r"parameter shapes \[\[2, 4\], \[2\]\]"):
            LearnedOptimizer(params, Adam(0.05)).load_state_dict(sd)
    LearnedOptimizer(nn.Linear(4, 2).parameters(), Adam(0.05)).load_state_dict(sd)  # same shapes: loads


def test_a_layout_policy_shared_by_two_optimizers_serves_both():
    # The multi-LSTM keeps the bound layout on the policy object: the second optimizer's bind must not leave
    # the first one stepping with the other model's layout.
    from l2o_gym.agents.lstm import load_pretrained_multi
    from l2o_gym.optim import param_groups_by_kind

    def nets():
        torch.manual_seed(0)
        a = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
        b = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
        return a, b

    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))

    def run(shared: bool) -> list[torch.Tensor]:
        a, b = nets()
        pa = load_pretrained_multi("mlstm")
        pb = pa if shared else load_pretrained_multi("mlstm")
        opts = [(a, LearnedOptimizer(param_groups_by_kind(a), pa)), (b, LearnedOptimizer(param_groups_by_kind(b), pb))]
        for _ in range(2):
            for m, o in opts:
                o.zero_grad()
                m(x).pow(2).mean().backward()
                o.step()
        return [p.detach().clone() for m, _ in opts for p in m.parameters()]

    for p, q in zip(run(True), run(False)):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_complex_parameters_are_a_clear_error():
    # torch's optimizers step complex parameters as (real, imag) pairs; casting them to the real θ would
    # silently drop the imaginary part, so they are refused.
    p = nn.Parameter(torch.tensor([1 + 1j, 2 - 1j]))
    frozen = nn.Parameter(torch.tensor([1j]), requires_grad=False)  # not optimized: accepted
    opt = LearnedOptimizer([p, frozen], GradientDescent(0.1))
    (p.abs() ** 2).sum().backward()
    with pytest.raises(TypeError, match="complex"):
        opt.step()
    assert torch.equal(p.detach(), torch.tensor([1 + 1j, 2 - 1j]))
