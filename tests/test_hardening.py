"""Regression tests for bad or extreme input to the core and the env adapters (issue 17 §3, §4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from l2o_gym import core
from l2o_gym.checkpoint import atomic_write
from l2o_gym.checks import UnknownArgumentError, resolve_device
from l2o_gym.core import CoreConfig, penalty_cap
from l2o_gym.problems import make_family

F32_MAX = float(np.finfo(np.float32).max)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's passive checker comments on extreme rewards
        return fn(*args, **kwargs)


# ---------------------------------------------------------------------------------- overflowing settings
def test_overflowing_threshold_gives_the_capped_finite_penalty():
    # blowup·(|f0|+1) overflows float32: the step to an overflowing objective used to give reward -inf,
    # then non-finite observations with terminated False.
    env = gym.make("l2o/Rosenbrock-v0", blowup=1e38, action_scale=1e10)
    env.reset(seed=0)
    cap = penalty_cap(torch.float32)
    assert cap == pytest.approx(F32_MAX**0.5)
    for _ in range(3):
        obs, reward, terminated, truncated, info = _quiet(env.step, np.ones(2, np.float32))
        assert terminated and info["diverged"]
        assert reward == pytest.approx(-cap, rel=1e-6) and np.isfinite(obs).all()
        assert np.isfinite(info["objective"])


def test_threshold_is_unchanged_below_the_cap():
    problems = make_family("quadratic").sample(4, "test", 0)
    state = core.reset(problems, CoreConfig(blowup=1e4))
    torch.testing.assert_close(state.threshold, 1e4 * (state.loss.abs() + 1), rtol=0, atol=0)


def test_float64_env_with_state_beyond_float32_keeps_finite_observations():
    # A finite float64 gradient of ~1e100 used to become inf in the float32 observation.
    # θ ~ 1e70: f ~ 1e141 stays below the float64 penalty cap (1.3e154), ∇f ~ 1e71 is past float32's range.
    env = gym.make("l2o/Quadratic-v0", dtype="float64", blowup=1e150, action_scale=1e70)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float64 and env.observation_space.dtype == np.float64
    obs, reward, terminated, _, info = _quiet(env.step, np.ones(10))
    assert not terminated and info["objective"] > 1e130  # accepted: below the float64 threshold
    assert np.isfinite(obs).all() and np.abs(obs).max() > F32_MAX and np.isfinite(reward)
    assert env.observation_space.contains(obs)


def test_sb3_adapter_saturates_float64_values_beyond_float32():
    from l2o_gym.envs import SB3VecEnv

    venv = SB3VecEnv("l2o/Quadratic-v0", num_envs=2, dtype="float64", blowup=1e150, action_scale=1e70)
    venv.reset()
    obs, reward, _, _ = venv.step(np.ones((2, 10), np.float32))
    assert obs.dtype == np.float32 and np.isfinite(obs).all() and np.abs(obs).max() == F32_MAX


def test_overflowing_scaled_gradient_is_divergence_not_inf():
    problems = make_family("quadratic").sample(3, "test", 0)
    state = core.reset(problems, CoreConfig(grad_scale=1e30))
    state, cost, terminated, _ = core.step(state, torch.full((3, 10), 1e9))  # ∇f ~ 1e10 · 1e30 overflows
    assert terminated.all() and torch.isfinite(core.features(state)).all() and torch.isfinite(cost).all()


def test_overflowing_scaled_step_is_divergence_not_inf():
    problems = make_family("quadratic").sample(2, "test", 0)
    cfg = CoreConfig(grad_scale=1e30, include_steps=True, blowup=1e300)
    state = core.reset(problems.to("cpu", torch.float64), cfg)
    state, _, terminated, _ = core.step(state, torch.full((2, 10), 1e290, dtype=torch.float64))
    assert terminated.all() and torch.isfinite(core.features(state)).all()


@pytest.mark.parametrize("field, value", [("feature_clip", 1e39), ("grad_scale", 1e39), ("eps", 1e-46)])
def test_config_constants_must_be_finite_in_the_dtype(field, value):
    problems = make_family("quadratic").sample(2, "test", 0)
    with pytest.raises(ValueError, match=field):
        core.reset(problems, CoreConfig(**{field: value}))
    core.reset(problems.to("cpu", torch.float64), CoreConfig(**{field: value}))  # fine in float64


def test_action_scale_beyond_the_dtype_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"action_scale=1e\+39"):
        gym.make("l2o/Quadratic-v0", action_scale=1e39)
    gym.make("l2o/Quadratic-v0", action_scale=1e39, dtype="float64")


def test_horizon_bound():
    with pytest.raises(ValueError, match=str(2**63)):
        gym.make("l2o/Quadratic-v0", horizon=2**63)
    env = gym.make("l2o/Quadratic-v0", horizon=2**62)
    env.reset(seed=0)
    _, _, _, truncated, _ = env.step(np.zeros(10, np.float32))
    assert not truncated


# ---------------------------------------------------------------------------------- actions
def test_vector_env_detaches_actions_that_require_grad():
    venv = gym.make_vec("l2o/Quadratic-v0", 3)
    venv.reset(seed=0)
    w = torch.zeros(3, 10, requires_grad=True)
    for _ in range(20):
        obs, reward, *_ = venv.step(torch.tanh(w - 0.1))
        assert not reward.requires_grad and not obs.requires_grad
    state = venv.unwrapped.driver.state
    kept = [v for k in core.STATE_TENSORS for v in (getattr(state, k) if isinstance(getattr(state, k), tuple)
                                                    else (getattr(state, k),))]
    assert len(kept) > len(core.STATE_TENSORS) - 2 and all(v.grad_fn is None for v in kept)  # no graph kept inside


def test_single_env_accepts_a_tensor_that_requires_grad():
    a = torch.full((10,), 0.3, requires_grad=True)
    e1, e2 = gym.make("l2o/Quadratic-v0"), gym.make("l2o/Quadratic-v0")
    e1.reset(seed=0), e2.reset(seed=0)
    o1, r1, *_ = e1.step(a * 1.0)
    o2, r2, *_ = e2.step(np.full(10, 0.3, np.float32))
    np.testing.assert_array_equal(o1, o2)
    assert r1 == r2 and isinstance(r1, float)


def test_finite_action_beyond_float32_is_clipped_not_called_inf():
    e1, e2 = gym.make("l2o/Quadratic-v0"), gym.make("l2o/Quadratic-v0")
    e1.reset(seed=0), e2.reset(seed=0)
    o1, *_ = _quiet(e1.step, np.full(10, 1e300))  # float64, finite, clipped to 1 like any value above 1
    o2, *_ = _quiet(e2.step, np.ones(10, np.float32))
    np.testing.assert_array_equal(o1, o2)


def test_non_finite_action_error_names_the_instances():
    venv = gym.make_vec("l2o/Quadratic-v0", 4)
    venv.reset(seed=0)
    a = np.zeros((4, 10))
    a[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf \(instances \[2\]\)"):
        venv.step(a)


def test_vector_step_before_reset_is_a_clear_error():
    venv = gym.make_vec("l2o/Quadratic-v0", 2)
    with pytest.raises(RuntimeError, match=r"reset\(\) before step\(\)"):
        venv.step(np.zeros((2, 10)))


# ---------------------------------------------------------------------------------- arguments
def test_unknown_keyword_is_a_type_error_like_python():
    with pytest.raises(TypeError, match="unexpected keyword argument 'frameskip'") as exc:
        gym.make("l2o/Quadratic-v0", frameskip=4)
    assert isinstance(exc.value, ValueError)  # still caught where the package's ValueErrors are
    with pytest.raises(UnknownArgumentError, match="'quadratic'"):
        gym.make_vec("l2o/Quadratic-v0", 2, frameskip=4)


def test_bad_value_of_a_known_keyword_stays_a_value_error():
    with pytest.raises(ValueError, match="dim") as exc:
        gym.make("l2o/Quadratic-v0", dim=0)
    assert not isinstance(exc.value, TypeError)


def test_mps_without_mps_is_a_clear_error():
    if torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    with pytest.raises(ValueError, match="'mps'.*MPS is not available"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="mps"):
        gym.make("l2o/Quadratic-v0", device="mps")


def test_cuda_index_beyond_the_devices_is_a_clear_error():
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=f"cuda:{n + 3}"):
        resolve_device(f"cuda:{n + 3}")


# ---------------------------------------------------------------------------------- autoreset modes
def _run(mode: str, steps: int, horizon: int = 2):
    venv = gym.make_vec("l2o/Quadratic-v0", 3, horizon=horizon, autoreset_mode=mode)
    obs, _ = venv.reset(seed=4)
    out = [(obs, None, None, None, {})]
    for _ in range(steps):
        out.append(venv.step(torch.full((3, 10), -0.01)))
    return venv, out


def test_autoreset_mode_attribute_and_metadata():
    for mode, enum in [("same_step", AutoresetMode.SAME_STEP), ("NextStep", AutoresetMode.NEXT_STEP),
                       (AutoresetMode.DISABLED, AutoresetMode.DISABLED)]:
        venv = gym.make_vec("l2o/Quadratic-v0", 2, autoreset_mode=mode)
        assert venv.autoreset_mode is enum and venv.metadata["autoreset_mode"] is enum
    assert gym.make_vec("l2o/Quadratic-v0", 2).autoreset_mode is AutoresetMode.SAME_STEP
    with pytest.raises(ValueError, match="'later'"):
        gym.make_vec("l2o/Quadratic-v0", 2, autoreset_mode="later")


def test_next_step_autoreset_matches_same_step_one_step_later():
    _, same = _run("same_step", 3)
    _, nxt = _run("next_step", 4)
    assert nxt[2][3].all() and "final_obs" not in nxt[2][4]  # truncated at t = 2, no same-step reset
    torch.testing.assert_close(nxt[2][0], same[2][4]["final_obs"], rtol=0, atol=0)
    obs, reward, terminated, truncated, _ = nxt[3]  # the reset step: fresh instances, reward 0, not done
    assert (reward == 0).all() and not terminated.any() and not truncated.any()
    torch.testing.assert_close(obs, same[2][0], rtol=0, atol=0)  # same instance stream as SAME_STEP
    torch.testing.assert_close(nxt[4][0], same[3][0], rtol=0, atol=0)


def test_disabled_autoreset_and_reset_mask():
    venv, out = _run("disabled", 3)
    assert out[2][3].all() and out[3][3].all()  # stays truncated: nothing restarted
    mask = torch.tensor([True, False, True])
    obs, info = venv.reset(options={"reset_mask": mask})
    assert (obs[mask, :25] == 0).all() and (obs[1] == out[3][0][1]).all()
    _, _, _, truncated, _ = venv.step(torch.zeros(3, 10))
    assert truncated.tolist() == [False, True, False]
    with pytest.raises(ValueError, match="reset_mask"):
        venv.reset(options={"reset_mask": np.ones(2, bool)})


# ---------------------------------------------------------------------------------- checkpoints
def test_atomic_write_removes_temp_files_of_killed_writers(tmp_path):
    target = tmp_path / "state.pt"
    code = textwrap.dedent(f"""
        import time
        from l2o_gym.checkpoint import atomic_write
        def write(tmp):
            open(tmp, "wb").write(b"partial")
            print("writing", flush=True)
            time.sleep(60)
        atomic_write({str(target)!r}, write)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    stale = list(tmp_path.glob(".state.pt.*.tmp"))
    assert len(stale) == 1 and str(proc.pid) in stale[0].name
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"complete"))
    assert target.read_bytes() == b"complete" and list(tmp_path.glob(".state.pt.*")) == []


def test_atomic_write_keeps_temp_files_of_live_writers(tmp_path):
    target = tmp_path / "a.bin"
    live = tmp_path / f".a.bin.{os.getppid()}.x.tmp"  # our parent process is alive
    live.write_bytes(b"in progress")
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"ok"))
    assert live.exists()


@pytest.mark.parametrize("env_id, kwargs, names", [
    ("l2o/Quadratic-v0", {"dim": 10**10}, "observations of 250,000,000,025 entries"),
    ("l2o/NNClassifier-v0", {"inputs": 10**8}, "inputs=100000000"),
    ("l2o/MLP-v0", {"batch_size": 10**12}, "batch_size=1000000000000"),
])
def test_sizes_beyond_the_machine_are_a_clear_error_before_any_allocation(env_id, kwargs, names):
    """Sizes that would need more than half of the machine's memory raise a ValueError naming the setting, instead
    of a crash in torch's allocator or the kernel's out-of-memory killer (sizes far beyond any machine, so the
    test allocates nothing wherever it runs)."""
    import l2o_gym  # noqa: F401
    from l2o_gym.problems.base import physical_memory

    if not physical_memory():
        pytest.skip("the OS does not report its physical memory")
    with pytest.raises(ValueError, match=f"{names}.*GiB, more than half of this machine's"):
        gym.make(env_id, **kwargs)
