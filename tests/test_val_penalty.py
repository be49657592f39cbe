"""A learned policy's ``val`` value counts a diverged problem as the tuned baselines' targets do: the penalty."""

from __future__ import annotations

import pytest
import torch

from l2o_gym.agents.baselines import make_baseline
from l2o_gym.agents.tuning import _tuning_config, final_objective, score_config
from l2o_gym.policy import run_policy
from l2o_gym.registry import env_family


@pytest.fixture(scope="module")
def problems():
    return env_family("l2o/Quadratic-v0").sample(8, "val", 0, torch.device("cpu"), torch.float64)


def test_stable_policy_scores_its_mean_final_objective(problems) -> None:
    policy = make_baseline("sgd", lr=0.01)
    traj = run_policy(policy, problems, 30, _tuning_config(30))
    assert not traj.state.terminated.any()
    assert final_objective(policy, problems, 30, _tuning_config(30)) == pytest.approx(float(traj.objectives[-1].mean()),
                                                                                     rel=1e-15)


def test_diverging_policy_scores_the_protocols_penalty(problems) -> None:
    policy = make_baseline("sgd", lr=0.5)  # overshoots: every problem diverges within a few steps
    traj = run_policy(policy, problems, 30, _tuning_config(30))
    assert traj.state.terminated.all()
    last_finite = float(traj.objectives[-1].mean())
    value = final_objective(policy, problems, 30, _tuning_config(30))
    assert value == pytest.approx(float(traj.state.threshold.mean()), rel=1e-12)
    assert value == pytest.approx(score_config(policy, problems, 30).penalized_mean, rel=1e-12)  # the targets' score
    assert value > 10 * last_finite  # the last finite objective understated the divergence (2.1e3 vs 5.0e4)
