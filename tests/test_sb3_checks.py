"""Regression tests from a review of the SB3 integration (agents/sb3.py, envs/sb3.py, scripts/train_sb3.py)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from l2o_gym import core, make_family
from l2o_gym.agents import sb3
from l2o_gym.agents.sb3 import SB3Policy, SB3TrainConfig, build_sb3_policy, load_policy, save_sb3_policy
from l2o_gym.checkpoint import CheckpointError
from l2o_gym.envs.sb3 import SB3VecEnv

ENV = "l2o/LogisticRegression-v0"
REPO = Path(__file__).resolve().parents[1]


def test_sb3vecenv_refuses_a_wrapped_vector_env_instead_of_bypassing_it():
    import gymnasium as gym
    from gymnasium.wrappers.vector import TransformReward

    wrapped = TransformReward(gym.make_vec(ENV, num_envs=2), lambda r: r * 0 + 123.0)
    with pytest.raises(TypeError, match="TransformReward"):
        SB3VecEnv(wrapped)  # before: accepted, and the rewards were the bare env's (the wrapper silently skipped)


def test_sb3vecenv_reset_uses_the_options_of_set_options():
    venv = SB3VecEnv(ENV, num_envs=2, horizon=3, history=1)
    problems = make_family("logistic_regression").sample(2, "test", 5)
    venv.set_options({"problems": problems})
    obs = venv.reset()
    expected = core.features(core.reset(problems, core.CoreConfig(horizon=3, history=1))).numpy()
    np.testing.assert_array_equal(obs, expected)  # before: the options were dropped, the stream's problems ran
    assert not np.array_equal(venv.reset(), obs)  # used once, as in SB3's VecEnvs
    venv.set_options([{"problems": problems}, {}])
    with pytest.raises(ValueError, match="one options dict"):
        venv.reset()


@pytest.mark.parametrize("algo", ["ppo", "coord_ppo"])
def test_on_policy_minibatch_sizes_sb3_rejects_are_value_errors(algo):
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        SB3TrainConfig(algo=algo, batch_size=1)
    with pytest.raises(ValueError, match="n_steps=1, n_envs=1"):
        SB3TrainConfig(algo=algo, n_steps=1, n_envs=1)
    SB3TrainConfig(algo="sac", batch_size=1, n_steps=1, n_envs=1)  # PPO-only settings: not SAC's concern


def test_observation_statistics_of_another_length_are_a_checkpoint_error(tmp_path):
    cfg = SB3TrainConfig(history=3, net_arch=(8,))
    F = core.obs_dim(cfg.core_config(), 3)
    module = build_sb3_policy("ppo", F, 3, cfg.policy_kwargs())
    path = save_sb3_policy(tmp_path / "p.safetensors", module, cfg, 3, torch.zeros(F - 1, dtype=torch.float64),
                           torch.ones(F - 1, dtype=torch.float64), 1e-8)
    with pytest.raises(CheckpointError, match=r"p\.safetensors.*shape \(11,\), expected \(12,\)"):
        load_policy(path)  # before: a bare ValueError without the file's name


def test_float64_observations_saturate_at_test_time_as_in_training():
    """SB3VecEnv clamps a float64 env's values to float32's range; SB3Policy must feed the network the same input
    (before: inf, which the coordinatewise log preprocessing turned into another action than training's)."""
    cfg = SB3TrainConfig(algo="coord_ppo", history=3, net_arch=(8,))
    torch.manual_seed(0)
    module = build_sb3_policy("coord_ppo", core.obs_dim(cfg.core_config(), 3), 3, cfg.policy_kwargs())
    policy = SB3Policy(module, "coord_ppo", cfg.core_config(), 3, 1.0)
    obs = torch.zeros(2, 12, dtype=torch.float64)
    obs[0, -1], obs[1, -2] = 1e39, -1e300
    train_input = torch.as_tensor(SB3VecEnv._np(obs))
    assert torch.isfinite(train_input).all()  # saturated, not inf, on both sides
    torch.testing.assert_close(policy.normalize(obs), train_input, rtol=0, atol=0)


def test_export_without_a_best_checkpoint_is_a_runtime_error_naming_it(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("_script_train_sb3_review", REPO / "scripts" / "train_sb3.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sb3.SB3Agent, "validate", lambda self: math.inf)  # no finite val value: no best
    argv = ["--timesteps", "64", "--n-envs", "4", "--horizon", "4", "--n-steps", "16", "--batch-size", "64",
            "--n-val", "4", "--n-eval-envs", "2", "--eval-every", "64", "--quiet", "--no-tensorboard", "--baselines",
            "--out", str(tmp_path / "run"), "--export", str(tmp_path / "exported.safetensors")]
    try:
        code = mod.main(argv)
    except SystemExit as exc:  # before: exit 2, a usage error about a missing ppo_best.safetensors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 1, err
    assert "no iteration was selected as best" in err and "ppo_last.safetensors" in err
    assert not (tmp_path / "exported.safetensors").exists()


def test_resume_keeps_the_eval_callback_record(tmp_path):
    import dataclasses

    from l2o_gym.agents.sb3 import train_sb3

    cfg = SB3TrainConfig(algo="ppo", env_id=ENV, total_timesteps=256, n_envs=8, horizon=10, history=3, n_steps=32,
                         batch_size=128, n_epochs=1, net_arch=(8,), n_val=4, n_eval_envs=2, eval_every=128,
                         checkpoint_every=128, baselines=())
    train_sb3(cfg, tmp_path, progress_bar=False, tensorboard=False)
    before = np.load(tmp_path / "eval" / "evaluations.npz")["timesteps"].tolist()
    assert before
    # an evaluation written after the saved state (e.g. interrupted before the state write) is not resumed
    with np.load(tmp_path / "eval" / "evaluations.npz") as old:
        rec = {k: old[k] for k in old.files}
    rec["timesteps"] = np.append(rec["timesteps"], 10**6)
    rec["results"] = np.concatenate([rec["results"], rec["results"][-1:]])
    rec["ep_lengths"] = np.concatenate([rec["ep_lengths"], rec["ep_lengths"][-1:]])
    np.savez(tmp_path / "eval" / "evaluations.npz", **rec)
    train_sb3(dataclasses.replace(cfg, total_timesteps=512), tmp_path, resume=True, progress_bar=False,
              tensorboard=False)
    after = np.load(tmp_path / "eval" / "evaluations.npz")["timesteps"].tolist()
    assert after[: len(before)] == before and len(after) > len(before)  # before: only the resumed part's
    assert 10**6 not in after and after == sorted(after)


def test_resume_with_another_seed_or_horizon_is_refused_naming_them(tmp_path):
    import dataclasses

    from l2o_gym.agents.sb3 import train_sb3
    from l2o_gym.checkpoint import CheckpointError

    cfg = SB3TrainConfig(algo="ppo", env_id="l2o/LogisticRegression-v0", total_timesteps=128, n_envs=4, horizon=8,
                         history=3, n_steps=16, batch_size=32, n_epochs=1, net_arch=(8,), n_val=4, n_eval_envs=2,
                         eval_every=64, checkpoint_every=64, baselines=())
    train_sb3(cfg, tmp_path, progress_bar=False, tensorboard=False)
    with pytest.raises(CheckpointError, match=r"horizon \(8, now 6\), seed \(0, now 3\)"):
        train_sb3(dataclasses.replace(cfg, total_timesteps=256, horizon=6, seed=3), tmp_path, resume=True,
                  progress_bar=False, tensorboard=False)
    train_sb3(dataclasses.replace(cfg, total_timesteps=192), tmp_path, resume=True, progress_bar=False,
              tensorboard=False)  # more timesteps: allowed
