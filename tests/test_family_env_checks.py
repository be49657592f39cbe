"""Review checks of the classic problem families and the gymnasium adapters (each test failed before its fix)."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

from l2o_gym.envs import register_envs

register_envs()


def _two_steps(mutate, **kwargs):
    venv = gym.make_vec("l2o/Quadratic-v0", 2, horizon=10, **kwargs)
    venv.reset(seed=0)
    action = torch.full((2, 10), -0.01)
    out = venv.step(action)
    mutate(out)
    _, reward, terminated, _, info = venv.step(action)
    return reward, terminated, info["objective"]


@pytest.mark.parametrize("mode", ["same_step", "next_step", "disabled"])
def test_vector_env_info_objectives_are_the_callers_own(mode):
    """Editing ``info["objective"]`` in place used to change the state's f(θ_t), hence the next
    ``improvement`` reward (the info entries were the core state's own tensors)."""
    ref = _two_steps(lambda out: None, reward_mode="improvement", autoreset_mode=mode)

    def edit(out):
        out[4]["objective"].zero_()
        out[4]["observed_objective"].fill_(-1.0)

    got = _two_steps(edit, reward_mode="improvement", autoreset_mode=mode)
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["same_step", "next_step", "disabled"])
def test_vector_env_terminated_is_the_callers_own(mode):
    """Editing the returned ``terminated`` in place used to mark the instance diverged inside the core state:
    its next step was rejected and paid the divergence penalty."""
    ref = _two_steps(lambda out: None, autoreset_mode=mode)

    def edit(out):
        out[2][0] = True

    got = _two_steps(edit, autoreset_mode=mode)
    for a, b in zip(ref, got):
        assert torch.equal(a, b)
