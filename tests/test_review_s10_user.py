"""A first-time user on the neural-net benchmark (review session 10): bad arguments that used to be accepted
silently or to fail deep in torch, and an optimizer state loaded into another kind of policy."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import l2o_gym  # noqa: F401  (registers the env ids)
from l2o_gym.agents.common import pretrained_dir
from l2o_gym.agents.gps.coord_policy import ConvGPSPolicy
from l2o_gym.agents.lstm import load_pretrained
from l2o_gym.optim import LearnedOptimizer
from l2o_gym.problems.nn_classifier import NNClassifier


def _conv_gps() -> ConvGPSPolicy:
    return ConvGPSPolicy.load(pretrained_dir() / "gps_NNClassifier.safetensors")


def _lstm():
    return load_pretrained("l2o/NNClassifier-v0")


def _train(model: nn.Module, opt: LearnedOptimizer, steps: int) -> None:
    x = torch.linspace(-1, 1, 24).reshape(8, 3)
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            return loss

        opt.step(closure)


# ---- NNClassifier / env arguments ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["False", "no", 0, 1.0])
def test_split_examples_must_be_a_bool(value):
    # bool("False") is True: a string used to switch the example split on silently
    with pytest.raises(ValueError, match=f"split_examples must be True, False or None, got {value!r}"):
        NNClassifier(dataset="digits", inputs=4, hidden=3, batch_size=8, split_examples=value)
    assert NNClassifier(dataset="digits", inputs=4, hidden=3, batch_size=8, split_examples=np.bool_(False)).split_examples is False


def test_batch_size_above_n_examples_names_n_examples():
    # the error used to blame the dataset ("dataset 'mnist' is too small"), which has 3,500 training digits
    with pytest.raises(ValueError, match="batch_size=64 is larger than n_examples=10"):
        NNClassifier(n_examples=10)
    with pytest.raises(ValueError, match="dataset 'lfw_subset' is too small for batch_size=300"):
        NNClassifier(dataset="lfw_subset", batch_size=300)  # the dataset's own size: unchanged


def test_env_include_steps_must_be_a_bool():
    with pytest.raises(ValueError, match="include_steps must be True or False, got 'no'"):
        gym.make("l2o/NNClassifier-v0", dataset="digits", inputs=4, hidden=3, batch_size=8, history=1,
                 include_steps="no")
    env = gym.make("l2o/NNClassifier-v0", dataset="digits", inputs=4, hidden=3, batch_size=8, history=1,
                   include_steps=np.bool_(True))
    d = env.unwrapped.driver.dim
    assert env.observation_space.shape == (1 + 2 * d,)


# ---- LearnedOptimizer: each group's lr -----------------------------------------------------------------------

@pytest.mark.parametrize("lr", ["0.1", -1.0, math.nan, math.inf, True, None])
def test_param_group_lr_is_checked_at_construction(lr):
    model = nn.Linear(3, 1)
    # a string used to fail at the first step inside torch.add ("argument 'alpha' must be Number"), a negative lr
    # silently ascended and NaN was reported as an overflow of the parameter's dtype
    with pytest.raises(ValueError, match=f"the lr of param group 1 must be a finite non-negative number, got {lr!r}"):
        LearnedOptimizer([{"params": [model.weight]}, {"params": [model.bias], "lr": lr}], _lstm())
    opt = LearnedOptimizer([model.weight], _lstm())
    with pytest.raises(ValueError, match="the lr of param group 1 must be"):
        opt.add_param_group({"params": [model.bias], "lr": lr})
    assert len(opt.param_groups) == 1  # the refused group was not added


def test_param_group_lr_is_checked_at_step():
    model = nn.Linear(3, 1)
    opt = LearnedOptimizer(model.parameters(), _lstm(), lr=np.float32(0.5))  # numpy scalars are numbers too
    _train(model, opt, 1)
    opt.param_groups[0]["lr"] = math.nan
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="the lr of param group 0 must be a finite non-negative number, got nan"):
        _train(model, opt, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ---- LearnedOptimizer: state of another kind of policy -------------------------------------------------------

@pytest.mark.parametrize("saved, loaded", [(_conv_gps, _lstm), (_lstm, _conv_gps)], ids=["cgps->lstm", "lstm->cgps"])
def test_state_of_another_policy_is_refused_at_load(saved, loaded):
    # used to load, then crash at the next step inside the policy ("'tuple' object has no attribute 'features'",
    # "Value after * must be an iterable, not _Memory")
    torch.manual_seed(0)
    m1 = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    o1 = LearnedOptimizer(m1.parameters(), saved())
    _train(m1, o1, 2)
    sd = o1.state_dict()
    m2 = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    o2 = LearnedOptimizer(m2.parameters(), loaded())
    with pytest.raises(ValueError, match=r"saved with a .*:(ConvGPSPolicy|LSTMPolicy) policy, this optimizer runs a "
                                         r".*:(LSTMPolicy|ConvGPSPolicy) policy"):
        o2.load_state_dict(sd)
    assert o2._mdp is None  # refused: left as it was, and it still trains
    _train(m2, o2, 2)
    assert all(bool(torch.isfinite(p).all()) for p in m2.parameters())
    # the same kind of policy still loads and continues
    o3 = LearnedOptimizer(m1.parameters(), saved())
    o3.load_state_dict(sd)
    _train(m1, o3, 1)


# ---- loading a shipped policy onto a device --------------------------------------------------------------------

@pytest.mark.parametrize("device, message", [("tpu", "unknown device 'tpu'"),
                                             ("cuda:99", "device 'cuda:99' requested but")])
def test_loading_a_policy_on_a_bad_device_names_the_device(device, message):
    # used to be "checkpoint '…gps_NNClassifier.safetensors' is not a readable safetensors file: device tpu is
    # invalid" (or, for CUDA on a CPU machine, "…: pin_memory=True requires a CUDA …"): the file was blamed
    with pytest.raises(ValueError, match=message) as err:
        ConvGPSPolicy.load(pretrained_dir() / "gps_NNClassifier.safetensors", device=device)
    assert "not a readable safetensors file" not in str(err.value)
    with pytest.raises(ValueError, match=message):
        load_pretrained("l2o/NNClassifier-v0", device=device)
