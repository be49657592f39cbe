"""Learned optimizers on CUDA (skipped without a GPU): GPS trains end to end there, and the GPS and shipped
PPO policies give the CPU's objectives on the GPU."""

from __future__ import annotations

import pytest
import torch

from l2o_gym import make_family, run_policy
from l2o_gym.agents.gps import load_gps_policy
from l2o_gym.agents.gps.badmm import BADMMConfig
from l2o_gym.agents.gps.global_policy import RegressionConfig
from l2o_gym.agents.gps.train import GPSTrainConfig, train_gps

from conftest import requires_cuda

pytestmark = [pytest.mark.cuda, requires_cuda]


def test_gps_trains_on_cuda_and_matches_cpu_at_test_time(tmp_path):
    cfg = GPSTrainConfig(env_id="l2o/LogisticRegression-v0", n_conditions=8, horizon=8, history=3, iterations=2,
                         n_val=16, baselines=("sgd",), badmm=BADMMConfig(regression=RegressionConfig(iterations=50)))
    summary = train_gps(cfg, tmp_path, device="cuda", progress=False, tensorboard=False)
    assert len(summary["history"]) == 2 and summary["dropped_samples"] == 0
    path = tmp_path / "gps_best.safetensors"
    fam = make_family("logistic_regression")
    losses = {}
    for dev in ("cpu", "cuda"):
        policy = load_gps_policy(path, env_id=cfg.env_id, dim=3, device=dev)
        problems = fam.sample(16, "test", 0, device=dev, dtype=torch.float64)
        losses[dev] = run_policy(policy, problems, cfg.horizon, policy.core_config).losses.cpu()
    assert torch.allclose(losses["cpu"], losses["cuda"], rtol=1e-5, atol=1e-7)


def test_shipped_ppo_policy_on_cuda_matches_cpu():
    from l2o_gym.agents.sb3 import load_policy
    from l2o_gym.experiments.compare import pretrained_path

    env_id = "l2o/LogisticRegression-v0"
    finals = {}
    for dev in ("cpu", "cuda"):
        policy = load_policy(pretrained_path("ppo", env_id), env_id=env_id, device=dev)
        problems = make_family("logistic_regression").sample(16, "test", 0, device=dev)
        finals[dev] = run_policy(policy, problems, 10, policy.core_config).losses.cpu()
    assert torch.allclose(finals["cpu"], finals["cuda"], rtol=1e-4, atol=1e-6)
