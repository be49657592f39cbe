"""gymnasium and SB3 adapters: API checks, autoreset, seeding, bad input, PPO through the adapter."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from l2o_gym.envs import ENV_IDS, L2OEnv, L2OVectorEnv, SB3VecEnv, TorchToNumpy

from conftest import requires_cuda

# Small sizes for the MLP keep the checks fast; every other env runs at its registered defaults.
SMALL = {"l2o/MLP-v0": {"dataset": "digits", "batch_size": 16},
         "l2o/NNClassifier-v0": {"dataset": "breast_cancer", "inputs": 6, "hidden": 5, "batch_size": 8},
         "l2o/ConvNet-v0": {"channels": (2, 2, 2), "fc": 4, "batch_size": 8, "image_size": 8}}


def _make(env_id, **kw):
    return gym.make(env_id, **{**SMALL.get(env_id, {}), **kw})


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_env_checker(env_id):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infinity.*")
        gym_check_env(_make(env_id).unwrapped, skip_render_check=False)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_env_checker(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sb3_check_env(_make(env_id).unwrapped, warn=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_make_vec_64_steps(env_id):
    venv = gym.make_vec(env_id, 64, **SMALL.get(env_id, {}))
    assert isinstance(venv.unwrapped, L2OVectorEnv)
    obs, info = venv.reset(seed=0)
    assert isinstance(obs, torch.Tensor) and obs.shape == (64,) + venv.single_observation_space.shape
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, rew, term, trunc, info = venv.step(rng.uniform(-1, 1, (64,) + venv.single_action_space.shape))
        assert obs.shape[0] == rew.shape[0] == term.shape[0] == trunc.shape[0] == 64
        assert torch.isfinite(obs).all() and torch.isfinite(rew).all()
    assert venv.observation_space.contains(obs.numpy())


def test_single_env_episode_and_spaces():
    env = gym.make("l2o/Quadratic-v0", horizon=7)
    obs, info = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape == (25 + 250,)
    assert env.action_space.shape == (10,) and env.action_space.low.min() == -1
    for t in range(7):
        obs, r, term, trunc, info = env.step(np.zeros(10, np.float32))
        assert isinstance(r, float) and r == -info["objective"]
        assert trunc == (t == 6) and not term


def test_seeding_is_deterministic_and_splits_differ():
    def run(seed, split="train"):
        env = gym.make("l2o/LogisticRegression-v0", split=split)
        out = [env.reset(seed=seed)[0]]
        for a in np.linspace(-1, 1, 12).reshape(4, 3).astype(np.float32):
            out.append(env.step(a)[0])
        return np.stack(out)

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))
    assert not np.array_equal(run(5), run(5, "test"))


def test_vector_env_same_step_autoreset():
    venv = gym.make_vec("l2o/Quadratic-v0", 4, horizon=3)
    obs0, _ = venv.reset(seed=1)
    a = torch.full((4, 10), -0.01)
    for _ in range(2):
        _, _, _, trunc, info = venv.step(a)
        assert not trunc.any() and "final_obs" not in info
    obs, rew, term, trunc, info = venv.step(a)
    assert trunc.all() and info["_final_obs"].all()
    fin = info["final_obs"]
    assert fin.shape == obs.shape and not torch.equal(fin, obs)
    # The returned observation starts a fresh episode: no objective history yet.
    assert torch.all(obs[:, :25] == 0) and torch.any(fin[:, 24] != 0)
    assert not torch.equal(obs, obs0)  # new instances, not the old ones again


def test_vector_env_resets_only_diverged_instances():
    venv = gym.make_vec("l2o/Quadratic-v0", 3, action_scale=1e6)
    venv.reset(seed=0)
    before = venv.unwrapped.driver.state.problems.data["W"].clone()
    a = torch.zeros(3, 10)
    a[1] = 1.0
    _, rew, term, trunc, info = venv.step(a)
    assert term.tolist() == [False, True, False] and torch.isfinite(rew).all()
    after = venv.unwrapped.driver.state.problems.data["W"]
    assert torch.equal(after[[0, 2]], before[[0, 2]]) and not torch.equal(after[1], before[1])


def test_vector_env_deterministic():
    def run():
        venv = gym.make_vec("l2o/Rastrigin-v0", 8, horizon=4)
        obs = [venv.reset(seed=11)[0]]
        g = torch.Generator().manual_seed(0)
        for _ in range(9):
            obs.append(venv.step(torch.rand(8, 10, generator=g) * 2 - 1)[0])
        return torch.stack(obs)

    assert torch.equal(run(), run())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "validation"}, "'validation'"),
        ({"reward_mode": "loss"}, "'loss'"),
        ({"device": "tpu"}, "'tpu'"),
        ({"dtype": "float16"}, "'float16'"),
        ({"action_scale": -1.0}, "-1.0"),
        ({"horizon": 0}, "horizon"),
        ({"dim": 0}, "dim"),
        ({"render_mode": "video"}, "'video'"),
    ],
)
def test_bad_kwargs_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gym.make("l2o/Quadratic-v0", **kwargs)


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(ValueError, match="CUDA is not available"):
        gym.make_vec("l2o/Quadratic-v0", 2, device="cuda")


@pytest.mark.parametrize(
    "action, exc, match",
    [
        (np.full(10, np.nan, np.float32), ValueError, "NaN"),
        (np.full(10, np.inf, np.float32), ValueError, "inf"),
        (np.zeros(9, np.float32), ValueError, "shape"),
        (np.array(["a"] * 10), TypeError, "dtype|numeric"),
    ],
)
def test_bad_actions(action, exc, match):
    env = L2OEnv("quadratic")
    env.reset(seed=0)
    with pytest.raises(exc, match=match):
        env.step(action)


def test_huge_finite_step_terminates_with_finite_reward():
    env = gym.make("l2o/Quadratic-v0", action_scale=1e15)
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step(np.ones(10, np.float32))
    assert term and np.isfinite(r) and np.isfinite(obs).all() and info["diverged"]


def test_reward_modes():
    rewards = {}
    for mode in ("objective", "log_objective", "improvement"):
        env = gym.make("l2o/Quadratic-v0", reward_mode=mode)
        _, info0 = env.reset(seed=0)
        _, r, *_, info = env.step(np.full(10, 0.01, np.float32))
        rewards[mode] = (r, info0["objective"], info["objective"])
    r, f0, f1 = rewards["objective"]
    assert r == pytest.approx(-f1)
    assert rewards["log_objective"][0] == pytest.approx(-np.log10(f1 + 1e-12), rel=1e-5)
    assert rewards["improvement"][0] == pytest.approx(f0 - f1, rel=1e-4, abs=1e-6)


def test_reset_with_given_problems():
    from l2o_gym import make_family

    pb = make_family("quadratic").sample(1, "test", 4)
    env = L2OEnv("quadratic")
    _, info = env.reset(options={"problems": pb})
    assert info["objective"] == pytest.approx(float(pb.loss(pb.x0)[0]))
    with pytest.raises(ValueError, match="dim"):
        env.reset(options={"problems": make_family("quadratic", dim=3).sample(1)})
    with pytest.raises(TypeError, match=r'options\["problems"\] must be a ProblemBatch .*got str'):
        env.reset(options={"problems": "x"})


def test_render_modes():
    env = gym.make("l2o/Quadratic-v0", render_mode="rgb_array")
    env.reset(seed=0)
    env.step(np.zeros(10, np.float32))
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    env = gym.make("l2o/Quadratic-v0", render_mode="ansi")
    env.reset(seed=0)
    assert "f=" in env.render()
    venv = gym.make_vec("l2o/Quadratic-v0", 2, render_mode="ansi")
    venv.reset(seed=0)
    venv.step(torch.zeros(2, 10))
    assert "t=    1" in venv.render()[0]


def test_sb3_adapter_api():
    venv = SB3VecEnv("l2o/Quadratic-v0", num_envs=4, horizon=3)
    venv.seed(0)
    obs = venv.reset()
    assert obs.shape == (4, 275) and obs.dtype == np.float32
    for t in range(3):
        obs, rew, dones, infos = venv.step(np.zeros((4, 10), np.float32))
        assert rew.dtype == np.float32 and dones.dtype == bool and len(infos) == 4
    assert dones.all()
    for info in infos:
        assert info["TimeLimit.truncated"] and info["terminal_observation"].shape == (275,)
    assert venv.get_attr("num_envs") == [4] * 4 and venv.env_is_wrapped(gym.Wrapper) == [False] * 4
    with pytest.raises(TypeError, match="L2OVectorEnv"):
        SB3VecEnv(gym.make_vec("CartPole-v1", 2, vectorization_mode="sync"))


def test_sb3_adapter_marks_divergence_as_not_truncated():
    venv = SB3VecEnv("l2o/Quadratic-v0", num_envs=2, action_scale=1e6)
    venv.reset()
    _, _, dones, infos = venv.step(np.array([[0.0] * 10, [1.0] * 10], np.float32))
    assert dones.tolist() == [False, True] and infos[1]["TimeLimit.truncated"] is False


def test_ppo_trains_through_adapter():
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    venv = VecMonitor(SB3VecEnv("l2o/LogisticRegression-v0", num_envs=8, horizon=32))
    model = PPO("MlpPolicy", venv, n_steps=256, batch_size=256, n_epochs=2, seed=0, device="cpu")
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=2048)
    assert model.num_timesteps >= 2048
    after = list(model.policy.parameters())
    assert all(torch.isfinite(p).all() for p in after) and any(not torch.equal(a, b) for a, b in zip(before, after))
    # the episodes it collected ended by the horizon (32 steps of 8 envs: 64 per 2048 steps), as the adapter reports
    lengths = [ep["l"] for ep in model.ep_info_buffer]
    assert len(lengths) == 64 and set(lengths) == {32}
    obs = venv.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (8, 3)


@requires_cuda
@pytest.mark.cuda
def test_vector_env_on_cuda():
    venv = gym.make_vec("l2o/Quadratic-v0", 32, device="cuda")
    obs, _ = venv.reset(seed=0)
    assert obs.device.type == "cuda"
    obs, rew, term, trunc, info = venv.step(torch.zeros(32, 10, device="cuda"))
    assert rew.device.type == "cuda" and torch.isfinite(obs).all()


def _edit_obs_in_place_changes_later_obs(reset, step):
    """Whether zeroing every returned observation in place (user code normalising ``obs -= mean``) changes the
    observations that follow: it must not, the caller owns what it is given."""
    def run(edit):
        obs, out = reset(), []
        for _ in range(3):
            if edit:
                obs[...] = 0
            obs = step()
            out.append(obs.clone().numpy() if isinstance(obs, torch.Tensor) else obs.copy())
        return np.stack(out)

    return not np.array_equal(run(False), run(True))


@pytest.mark.parametrize("kind", ["single", "vector", "numpy_vector", "sb3"])
def test_returned_observations_do_not_alias_env_state(kind):
    kw = {"horizon": 5, "dim": 2, "history": 3}
    a1, a2 = np.full(2, 0.1, np.float32), np.full((2, 2), 0.1, np.float32)
    if kind == "single":
        env = gym.make("l2o/Quadratic-v0", **kw)
        reset, step = (lambda: env.reset(seed=0)[0]), (lambda: env.step(a1)[0])
    elif kind == "sb3":
        env = SB3VecEnv("l2o/Quadratic-v0", num_envs=2, **kw)
        reset, step = (lambda: (env.seed(0), env.reset())[1]), (lambda: env.step(a2)[0])
    else:
        env = gym.make_vec("l2o/Quadratic-v0", 2, **kw)
        if kind == "numpy_vector":
            env = TorchToNumpy(env)
        reset, step = (lambda: env.reset(seed=0)[0]), (lambda: env.step(a2)[0])
    assert not _edit_obs_in_place_changes_later_obs(reset, step)


@pytest.mark.parametrize("mode", ["next_step", "disabled"])
def test_sb3_adapter_refuses_autoreset_modes_it_cannot_serve(mode):
    # SB3's VecEnv contract is same-step autoreset with ``terminal_observation``; other modes used to fail
    # with KeyError('final_obs') at the first episode end (or, disabled, never restart).
    with pytest.raises(ValueError, match="autoreset_mode"):
        SB3VecEnv("l2o/Quadratic-v0", num_envs=2, horizon=2, autoreset_mode=mode)


def test_vector_info_marks_diverged_instances_like_the_single_env():
    """``info["diverged"]`` (``[N]`` bool) is the divergence flag of the step, as the single env's; after a reset
    all False; SB3VecEnv passes it on per sub-env."""
    venv = L2OVectorEnv("quadratic", num_envs=3, horizon=10, history=2, blowup=1.0)
    _, info = venv.reset(seed=0)
    assert info["diverged"].dtype == torch.bool and not bool(info["diverged"].any())
    action = torch.zeros(3, venv.single_action_space.shape[0])
    action[1] = 1e3  # far past the divergence threshold blowup·(|f0| + 1)
    _, _, terminated, _, info = venv.step(action)
    assert info["diverged"].tolist() == [False, True, False] and torch.equal(info["diverged"], terminated)
    assert info["final_info"]["diverged"].tolist() == [False, True, False]
    env = L2OEnv("quadratic", horizon=10, history=2, blowup=1.0)
    env.reset(seed=0)
    assert env.step(np.full(env.action_space.shape, 1e3, dtype=np.float32))[4]["diverged"] is True
    sb3 = SB3VecEnv(L2OVectorEnv("quadratic", num_envs=2, horizon=10, history=2, blowup=1.0))
    sb3.reset()
    sb3.step_async(np.stack([np.zeros(sb3.action_space.shape), np.full(sb3.action_space.shape, 1e3)]))
    infos = sb3.step_wait()[3]
    assert [i["diverged"] for i in infos] == [False, True]


def test_time_aware_wrappers_work_with_max_episode_steps_and_a_spec_remakes_with_another_horizon():
    """The env truncates at its horizon itself and its spec names no length, so re-making it from ``env.spec`` with
    another horizon runs that horizon (a spec length would keep the old one through a TimeLimit); wrappers that read
    the length get it from ``max_episode_steps`` given to gymnasium.make, which then ends episodes with the env."""
    from gymnasium.wrappers import TimeAwareObservation

    env = gym.make("l2o/Quadratic-v0", horizon=7, dim=3, max_episode_steps=7)
    wrapped = TimeAwareObservation(env)
    obs, _ = wrapped.reset(seed=0)
    assert obs.shape == (env.observation_space.shape[0] + 1,) and obs[-1] == 0
    for t in range(1, 8):
        obs, _, term, trunc, _ = wrapped.step(np.zeros(3, dtype=np.float32))
        assert obs[-1] == t and not term
        assert trunc == (t == 7)
    plain = gym.make("l2o/Quadratic-v0", horizon=5, dim=3)
    assert plain.spec.max_episode_steps is None
    again = gym.make(plain.spec, horizon=8)
    again.reset(seed=0)
    truncs = [again.step(np.zeros(3, dtype=np.float32))[3] for _ in range(8)]
    assert truncs == [False] * 7 + [True]
