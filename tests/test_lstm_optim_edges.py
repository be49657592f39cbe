"""Regression tests from a review of the LSTM learned optimizer and LearnedOptimizer (each failed before its fix)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

from l2o_gym.agents.lstm import LSTMConfig, LSTMPolicy, MultiLSTMPolicy
from l2o_gym.agents.lstm import multi as multi_mod
from l2o_gym.checkpoint import CheckpointError, save_policy
from l2o_gym.optim import LearnedOptimizer, param_groups_by_kind


class _WithEmpty(nn.Module):
    """A model whose first parameter (in ``param_groups_by_kind`` order) has no entries."""

    def __init__(self) -> None:
        super().__init__()
        self.empty = nn.Parameter(torch.zeros(0))
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)).pow(2).mean() + self.empty.sum()


def test_multi_lstm_with_a_zero_size_parameter_steps_every_coordinate():
    torch.manual_seed(0)
    model = _WithEmpty()
    policy = MultiLSTMPolicy(("fc", "bias", "other"))
    opt = LearnedOptimizer(param_groups_by_kind(model), policy)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 3)
    for _ in range(2):
        opt.zero_grad()
        model(x).backward()
        opt.step()  # crashed: the empty parameter's piece replaced the one of the parameter at the same offset
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()) if p.numel())


def test_multi_lstm_checkpoint_shapes_are_checked_before_networks_are_built(tmp_path, monkeypatch):
    small = LSTMConfig(hidden=4)
    tensors = {f"fc.{k}": v for k, v in MultiLSTMPolicy(("fc",), small).nets["fc"].state_dict().items()}
    path = tmp_path / "edited.safetensors"
    save_policy(path, tensors, {"kind": "mlstm", "env_id": None, "dim": None, "kinds": ["fc"],
                                "arch": {**small.__dict__, "hidden": 4000}, "assign": {}})

    def refuse(*args, **kwargs):
        raise AssertionError("a network was allocated from the edited header before its shapes were checked")

    monkeypatch.setattr(multi_mod, "CoordinateLSTM", refuse)
    with pytest.raises(CheckpointError, match="does not match"):
        MultiLSTMPolicy.load(path)


def test_lstm_config_refuses_a_p_whose_exponential_overflows_float32():
    # e^p overflows float32 above ~88.7: the small-gradient branch gave 0 * inf = NaN for a zero gradient
    with pytest.raises(ValueError, match="p must be at most 88.7.*got 89"):
        LSTMConfig(p=89.0)
    policy = LSTMPolicy(LSTMConfig(p=88.0))
    from l2o_gym.core import CoreConfig, initial_state

    state = initial_state(torch.zeros(1, 3), torch.ones(1), torch.tensor([[0.0, 1e-30, 1.0]]), CoreConfig(history=1))
    step, _ = policy.act(state, policy.reset(state))
    assert torch.isfinite(step).all()


def _loss(body: nn.Module, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return head(torch.tanh(body(x))).pow(2).mean()


def _steps(opt, body, head, x, n):
    for _ in range(n):
        opt.zero_grad()
        _loss(body, head, x).backward()
        opt.step()


def test_state_dict_taken_after_add_param_group_loads_and_continues_identically():
    torch.manual_seed(0)
    x = torch.randn(16, 3)
    body, head = nn.Linear(3, 4), nn.Linear(4, 1)
    policy = LSTMPolicy()
    opt = LearnedOptimizer(body.parameters(), policy)
    _steps(opt, body, head, x, 2)
    opt.add_param_group({"params": list(head.parameters())})  # unfreeze the head, then checkpoint
    buf = io.BytesIO()
    torch.save({"body": body.state_dict(), "head": head.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    body2, head2 = nn.Linear(3, 4), nn.Linear(4, 1)
    body2.load_state_dict(saved["body"])
    head2.load_state_dict(saved["head"])
    opt2 = LearnedOptimizer([{"params": list(body2.parameters())}, {"params": list(head2.parameters())}], policy)
    opt2.load_state_dict(saved["opt"])  # ValueError: state for 16 entries, this optimizer has 21
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the original resets its memory at the next step, with a warning
        _steps(opt, body, head, x, 3)
    _steps(opt2, body2, head2, x, 3)
    for a, b in zip(list(body.parameters()) + list(head.parameters()), list(body2.parameters()) + list(head2.parameters())):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_refused_state_dict_leaves_the_optimizer_unchanged():
    torch.manual_seed(0)
    policy = LSTMPolicy()
    m1 = nn.Linear(3, 2)
    o1 = LearnedOptimizer(m1.parameters(), policy, lr=0.5)
    o1.zero_grad()
    m1(torch.randn(4, 3)).sum().backward()
    o1.step()
    for m2, error in ((nn.Linear(4, 2), r"state is for 8 optimized parameter entries, this optimizer has 10"),
                      (nn.Linear(1, 4), r"state is for parameter shapes \[\[2, 3\], \[2\]\], this optimizer's are "
                                        r"\[\[4, 1\], \[4\]\]")):  # other entry count; same count (8), other shapes
        o2 = LearnedOptimizer(m2.parameters(), policy, lr=1.0)
        with pytest.raises(ValueError, match=error):
            o2.load_state_dict(o1.state_dict())
        assert o2.param_groups[0]["lr"] == 1.0  # was 0.5: param_groups were loaded before the state was refused


def test_param_kind_calls_every_bias_a_bias():
    from torch import nn

    from l2o_gym.optim import param_kind

    lstm, attn = nn.LSTM(3, 4), nn.MultiheadAttention(4, 2)
    assert {n: param_kind(lstm, n) for n, _ in lstm.named_parameters()} == {
        "weight_ih_l0": "other", "weight_hh_l0": "other", "bias_ih_l0": "bias", "bias_hh_l0": "bias"}
    assert param_kind(attn, "in_proj_bias") == "bias" and param_kind(attn, "in_proj_weight") == "other"
    assert param_kind(nn.Linear(2, 2), "bias") == "bias" and param_kind(nn.Conv2d(1, 1, 3), "weight") == "conv"
    assert param_kind(nn.LayerNorm(3), "bias") == "bn"
