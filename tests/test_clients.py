"""The envs under the clients users put them in: TorchRL, gymnasium's own vector wrappers, async
vectorisation after torch work in the parent. Each test skips cleanly when its client is missing
(TorchRL: ``pip install -c constraints.txt -e ".[clients]"``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

from l2o_gym.envs import TorchToNumpy
from l2o_gym.registry import ENV_IDS

SMALL = {"l2o/MLP-v0": {"dataset": "digits", "batch_size": 16}}


# ---------------------------------------------------------------------------------- TorchRL
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_torchrl_gymenv(env_id):
    envs = pytest.importorskip("torchrl.envs")
    from torchrl.envs.utils import check_env_specs

    # TorchRL's own batch_size keyword shadows the MLP family's minibatch size: only the dataset is passed.
    kw = {"dataset": "digits"} if env_id == "l2o/MLP-v0" else {}
    env = envs.GymEnv(env_id, **kw)  # probes frameskip=: needs a TypeError
    check_env_specs(env)
    td = env.rollout(4)
    assert td["next", "observation"].shape[0] == 4 and torch.isfinite(td["next", "reward"]).all()


def test_torchrl_gymwrapper_on_the_native_vector_env():
    envs = pytest.importorskip("torchrl.envs")
    env = envs.GymWrapper(gym.make_vec("l2o/Quadratic-v0", 4, horizon=3))  # needs venv.autoreset_mode
    td = env.rollout(5, break_when_any_done=False)
    assert td.batch_size == (4, 5)
    assert td["next", "truncated"][:, 2].all()  # the horizon ends every episode at the third step
    assert torch.isfinite(td["next", "observation"]).all()


# ---------------------------------------------------------------------------------- gymnasium wrappers
def test_record_episode_statistics_on_the_native_vector_env():
    from gymnasium.wrappers.vector import RecordEpisodeStatistics

    venv = RecordEpisodeStatistics(TorchToNumpy(gym.make_vec("l2o/Quadratic-v0", 3, horizon=4)))
    venv.reset(seed=0)
    total = np.zeros(3)
    for t in range(4):
        obs, reward, terminated, truncated, info = venv.step(np.full((3, 10), -0.02, np.float32))
        assert isinstance(obs, np.ndarray) and isinstance(reward, np.ndarray)
        total += reward
    assert truncated.all() and info["_episode"].all()
    np.testing.assert_allclose(info["episode"]["r"], total, rtol=1e-5)
    assert (info["episode"]["l"] == 4).all()


def test_normalize_observation_and_reward_on_the_native_vector_env():
    from gymnasium.wrappers.vector import NormalizeObservation, NormalizeReward

    base = gym.make_vec("l2o/LogisticRegression-v0", 8, horizon=5, autoreset_mode="next_step")
    venv = NormalizeReward(NormalizeObservation(TorchToNumpy(base)))
    obs, _ = venv.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(12):
        obs, reward, *_ = venv.step(rng.uniform(-1, 1, (8, 3)).astype(np.float32))
        assert np.isfinite(obs).all() and np.isfinite(reward).all()
    assert venv.env.obs_rms.count > 8  # statistics were collected


def test_vector_observation_wrappers_refuse_same_step_as_gymnasium_says():
    from gymnasium.wrappers.vector import NormalizeObservation

    with pytest.raises(ValueError, match="NEXT_STEP or DISABLED"):
        NormalizeObservation(TorchToNumpy(gym.make_vec("l2o/Quadratic-v0", 2)))


# ---------------------------------------------------------------------------------- async after torch work
ASYNC_SCRIPT = textwrap.dedent("""
    import sys, warnings
    import gymnasium as gym, numpy as np, torch
    import l2o_gym
    warnings.simplefilter("ignore")
    x = torch.randn(512, 512)
    (x @ x).sum(); torch.randn(200_000).exp().sum()      # the parent uses torch's thread pool first
    threads = torch.get_num_threads()
    for env_id in sys.argv[1:]:
        kw = {"dataset": "digits", "batch_size": 16} if env_id == "l2o/MLP-v0" else {}
        venv = gym.make_vec(env_id, 2, vectorization_mode="async", **kw)
        obs, _ = venv.reset(seed=0)
        for _ in range(3):
            obs, reward, *_ = venv.step(venv.action_space.sample())
        assert np.isfinite(obs).all() and np.isfinite(reward).all()
        venv.close()
        assert torch.get_num_threads() == threads        # the parent's setting is untouched
        print("ok", env_id, flush=True)
""")


def test_async_vectorisation_after_torch_work_in_the_parent():
    # Forked workers used to deadlock on torch's thread pool for some of the ids; a regression must fail
    # (timeout), not hang the suite. One process for every id: one import of torch.
    try:
        out = subprocess.run([sys.executable, "-c", ASYNC_SCRIPT, *ENV_IDS], capture_output=True, text=True,
                             timeout=300)
    except subprocess.TimeoutExpired as exc:
        done = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(f"async make_vec hung after torch work in the parent; finished: {done.split()}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [w for env_id in ENV_IDS for w in ("ok", env_id)]


def test_fork_safe_threads_only_changes_forked_children(monkeypatch):
    import os

    from l2o_gym.envs import common

    torch.set_num_threads(2)  # more than one thread whatever OMP_NUM_THREADS says (conftest restores it)
    common.fork_safe_threads()  # in the importing process: nothing changes
    assert torch.get_num_threads() == 2
    # in any other process (a forked child has the parent's module state, so another pid than the importer's)
    monkeypatch.setattr(common, "_IMPORT_PID", os.getpid() + 1)
    common.fork_safe_threads()
    assert torch.get_num_threads() == 1
