"""Property-based: every registered env, single and vector, at any accepted setting — extreme ones included —
either refuses the setting with a ``ValueError`` naming it, or returns finite observations and rewards
(divergence is the documented finite penalty). The same for the functional core at extreme constants."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2o_gym import core
from l2o_gym.core import CoreConfig, penalty_cap
from l2o_gym.problems import make_family
from l2o_gym.registry import ENV_IDS

# The MLP at a small size keeps the examples fast; every other id runs at its registered sizes.
SMALL = {"l2o/MLP-v0": {"dataset": "digits", "batch_size": 16}}
F32_MAX = float(np.finfo(np.float32).max)

SETTINGS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,  # same examples every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0**e)


# Accepted env settings, extreme ones included: blowup far past float32 (the threshold overflows unless
# capped), action scales up to past float32's range (refused in float32, accepted in float64).
env_settings = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["float32", "float64"]),
        "action_scale": st.one_of(_log_uniform(1e-8, 1e300), st.sampled_from([1e10, 3e38, 1e39])),
        "blowup": st.one_of(_log_uniform(1e-6, 1e300), st.sampled_from([1e38, 1e300])),
        "horizon": st.integers(1, 4),
        "history": st.integers(1, 3),
        "include_steps": st.booleans(),
        "reward_mode": st.sampled_from(["objective", "log_objective", "improvement"]),
    }
)

# Actions: anything finite, including values far outside [-1, 1] and past float32's range; drawn as
# (magnitude, pattern, seed) so that a d = 1510 MLP action stays a small example.
action_magnitudes = st.one_of(
    st.floats(0.0, 1.0),
    st.floats(0.0, 1e300, allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, 1e30, 1e300]),
)


def _draw_action(data, shape: tuple[int, ...]) -> np.ndarray:
    magnitude = data.draw(action_magnitudes, label="magnitude")
    pattern = data.draw(st.sampled_from(["+", "-", "random"]), label="pattern")
    if pattern == "random":
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="action seed"))
        return rng.uniform(-1.0, 1.0, shape) * magnitude
    return np.full(shape, magnitude if pattern == "+" else -magnitude, dtype=np.float64)


def _make(env_id: str, vector: bool, kw: dict):
    kw = {**SMALL.get(env_id, {}), **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's passive checker warns about extreme rewards by design
        return gym.make_vec(env_id, 3, **kw) if vector else gym.make(env_id, **kw)


def _accepted(kw: dict) -> bool:
    return not (kw["dtype"] == "float32" and kw["action_scale"] > F32_MAX)


def _check_finite(obs, reward, info) -> None:
    obs = torch.as_tensor(np.asarray(obs) if not isinstance(obs, torch.Tensor) else obs)
    assert torch.isfinite(obs).all(), "non-finite observation"
    assert np.isfinite(np.asarray(reward if not isinstance(reward, torch.Tensor) else reward.numpy())).all(), reward
    objective = info["objective"]
    assert np.isfinite(np.asarray(objective if not isinstance(objective, torch.Tensor) else objective.numpy())).all()


@pytest.mark.parametrize("vector", [False, True], ids=["single", "vector"])
@pytest.mark.parametrize("env_id", ENV_IDS)
@SETTINGS
@given(kw=env_settings, data=st.data())
def test_env_is_finite_or_refuses_the_setting(env_id, vector, kw, data):
    torch.set_num_threads(1)
    if not _accepted(kw):
        with pytest.raises(ValueError, match="action_scale"):
            _make(env_id, vector, kw)
        return
    env = _make(env_id, vector, kw)
    obs, info = env.reset(seed=data.draw(st.integers(0, 2**31 - 1), label="seed"))
    _check_finite(obs, np.zeros(1), info)
    shape = env.action_space.shape
    cap = penalty_cap(torch.float32 if kw["dtype"] == "float32" else torch.float64)
    for _ in range(5):
        a = _draw_action(data, shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obs, reward, terminated, truncated, info = env.step(a)
        _check_finite(obs, reward, info)
        if kw["reward_mode"] == "objective":  # the penalty is capped, so -reward never exceeds the cap
            assert np.all(-np.asarray(reward if not isinstance(reward, torch.Tensor) else reward.numpy()) <= cap * (1 + 1e-6))
        if not vector and (terminated or truncated):
            obs, info = env.reset()
            _check_finite(obs, np.zeros(1), info)


# The core at extreme (accepted) constants: gradient scales and clips near the dtype's range, huge raw steps.
core_settings = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from([torch.float32, torch.float64]),
        # out-of-range values too (past float32's range or below its smallest normal, fine in float64), so that
        # the refusal branch of the test below runs
        "grad_scale": st.one_of(_log_uniform(1e-30, 1e38), st.sampled_from([1e39, 1e300])),
        "feature_clip": st.one_of(_log_uniform(1e-3, 3e38), st.sampled_from([1e39, 1e300])),
        "blowup": _log_uniform(1e-6, 1e300),
        "eps": st.one_of(_log_uniform(1e-30, 1.0), st.sampled_from([1e-46, 1e-300])),
        "include_steps": st.booleans(),
        "family": st.sampled_from(["quadratic", "rosenbrock", "rastrigin", "logistic_regression"]),
    }
)


@SETTINGS
@given(kw=core_settings, data=st.data())
def test_core_is_finite_or_refuses_the_config(kw, data):
    torch.set_num_threads(1)
    dtype = kw.pop("dtype")
    family = kw.pop("family")
    cfg = CoreConfig(horizon=4, history=2, **kw)
    problems = make_family(family).sample(3, "train", 0, dtype=dtype)
    big = torch.finfo(dtype).max
    if kw["feature_clip"] > big or kw["grad_scale"] > big or kw["eps"] < torch.finfo(dtype).tiny:
        with pytest.raises(ValueError, match="feature_clip|grad_scale|eps"):
            core.reset(problems, cfg)
        return
    try:
        state = core.reset(problems, cfg)
    except ValueError as exc:  # the documented refusal: a start point whose (scaled) gradient is not finite
        assert problems.family.name in str(exc) and "x0" in str(exc)
        return
    for _ in range(4):
        action = torch.from_numpy(_draw_action(data, (3, state.dim))).clamp(-big, big).to(dtype)
        state, cost, terminated, _ = core.step(state, action)
        assert torch.isfinite(core.features(state)).all()
        assert torch.isfinite(cost).all() and (cost <= penalty_cap(dtype)).all()
        assert torch.isfinite(state.theta).all() and torch.isfinite(state.loss).all()
