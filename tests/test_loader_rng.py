"""Loading a policy does not move torch's global random stream (``l2o_gym.checkpoint.keeps_rng_state``)."""

from __future__ import annotations

import importlib

import pytest
import torch

from l2o_gym.agents.common import pretrained_dir
from l2o_gym.experiments.compare import LEARNED

# one shipped checkpoint per loader (every kind LEARNED names goes through one of these four functions)
CASES = [
    ("lstm", "lstm_Quadratic.safetensors", "l2o/Quadratic-v0"),
    ("mlstm", "mlstm_ConvNet.safetensors", "l2o/ConvNet-v0"),
    ("gps", "gps_LogisticRegression.safetensors", "l2o/LogisticRegression-v0"),  # small-problem GPS
    ("gps", "gps_NNClassifier.safetensors", "l2o/NNClassifier-v0"),  # conv GPS
    ("ppo", "ppo_LogisticRegression.safetensors", "l2o/LogisticRegression-v0"),
]


@pytest.mark.parametrize(("kind", "name", "env_id"), CASES, ids=[c[1] for c in CASES])
def test_loading_keeps_the_global_random_stream(kind: str, name: str, env_id: str) -> None:
    module, _, fn = LEARNED[kind].partition(":")
    loader = getattr(importlib.import_module(module), fn)
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    policy = loader(pretrained_dir() / name, env_id=env_id)
    assert policy is not None
    assert torch.equal(torch.rand(5), expected)  # before the fix: the modules' initialisation drew from it


def test_a_failing_load_keeps_it_too(monkeypatch) -> None:
    """A load that fails *after* the modules were built (here: setting their weights) leaves the stream where it
    was; the undecorated loader would have moved it."""
    from torch import nn

    from l2o_gym.agents.lstm import load_policy
    from l2o_gym.agents.lstm.policy import LSTMPolicy

    def broken(self, *args, **kwargs):
        raise RuntimeError("weights could not be set")

    monkeypatch.setattr(nn.Module, "load_state_dict", broken)
    undecorated = LSTMPolicy.load.__func__.__wrapped__  # type: ignore[attr-defined]
    path = pretrained_dir() / "lstm_Quadratic.safetensors"
    for load, keeps in ((load_policy, True), (lambda p: undecorated(LSTMPolicy, p), False)):
        torch.manual_seed(7)
        expected = torch.rand(3)
        torch.manual_seed(7)
        with pytest.raises(RuntimeError, match="weights could not be set"):
            load(path)
        assert torch.equal(torch.rand(3), expected) is keeps
