"""Checks of the small-problem GPS policy and its test table (review findings)."""

from __future__ import annotations

import pytest
import torch

from l2o_gym import core
from l2o_gym.agents.gps.global_policy import GaussianMLP
from l2o_gym.agents.gps.policy import GPSPolicy, load_gps_policy
from l2o_gym.checkpoint import CheckpointError, update_policy_config
from l2o_gym.core import CoreConfig
from l2o_gym.policy import run_policy
from l2o_gym.registry import env_family


def _zero_policy(env_id: str, d: int, cc: CoreConfig, max_step: float | None = None) -> GPSPolicy:
    """A GPS policy whose mean step is exactly zero (θ stays at θ₀)."""
    torch.manual_seed(0)
    model = GaussianMLP(core.obs_dim(cc, d), d, (4,))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return GPSPolicy(model, cc, d, env_id, max_step)


def test_evaluate_on_test_reports_the_true_objective_of_minibatch_families(tmp_path):
    """On a family with a true objective (NNClassifier: the optimizer sees minibatches) the table's f_T, gap and
    settled columns are about the true objective, as its val_final and the baselines' tuning are — not the
    noisy minibatch loss. A policy that never moves has a constant true objective: settled everywhere."""
    from l2o_gym.agents.gps.train import evaluate_on_test

    env = "l2o/NNClassifier-v0"
    fam = env_family(env)
    cc = CoreConfig(horizon=3, history=1)
    path = _zero_policy(env, fam.dim, cc).save(tmp_path / "zero.safetensors")
    rows = evaluate_on_test(path, env, horizon=3, long_factor=2, n_test=4, n_val=4, baselines=("sgd",))
    test = fam.sample(4, "test", 0, dtype=torch.float32)
    traj = run_policy(load_gps_policy(path), test, 6, cc)
    assert rows["gps"]["f_T"] == pytest.approx(float(traj.objectives[3].double().mean()), rel=1e-6)
    assert rows["gps"]["settled_T"] == 1.0
    assert rows["gps"]["ratio_long"] == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan")])
def test_policy_rejects_a_max_step_that_is_not_positive(bad):
    """A negative clip used to turn every step into -|max_step| (clamp with min > max), 0 or NaN froze θ."""
    fam = env_family("l2o/LogisticRegression-v0")
    with pytest.raises(ValueError, match="max_step"):
        _zero_policy("l2o/LogisticRegression-v0", fam.dim, CoreConfig(horizon=5, history=2), bad)


def test_checkpoint_with_a_negative_max_step_is_refused_naming_the_field(tmp_path):
    fam = env_family("l2o/LogisticRegression-v0")
    path = _zero_policy("l2o/LogisticRegression-v0", fam.dim, CoreConfig(horizon=5, history=2), 1.0).save(
        tmp_path / "p.safetensors")
    assert load_gps_policy(path).max_step == 1.0
    update_policy_config(path, {"max_step": -1.0}, kind="gps")
    with pytest.raises(CheckpointError, match="max_step.*-1.0"):
        load_gps_policy(path)


def test_problem_counts_accept_numpy_integers_and_refuse_bools_and_patches_need_a_photo():
    import numpy as np
    import pytest

    from l2o_gym import data
    from l2o_gym.problems import make_family

    fam = make_family("quadratic", dim=3)
    assert fam.sample(np.int64(2), "test", 0).n == 2
    assert torch.equal(fam.sample(np.int64(2), "test", 0).x0, fam.sample(2, "test", 0).x0)
    with pytest.raises(ValueError, match="number of problems must be a positive integer, got True"):
        fam.sample(True, "test", 0)
    with pytest.raises(ValueError, match=r"photos must name at least one photo.*\(\)"):
        data.photo_patches(photos=())
