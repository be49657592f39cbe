"""Throughput measurements (used by ``scripts/bench.py``)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch


@dataclass
class ThroughputResult:
    """Env-steps per second of one vectorized env (``num_envs · steps / seconds``)."""

    env_id: str
    mode: str
    num_envs: int
    device: str
    steps: int
    seconds: float
    steps_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def env_throughput(
    env_id: str,
    num_envs: int,
    mode: str = "native",
    device: str = "cpu",
    min_seconds: float = 2.0,
    min_steps: int = 3,
    seed: int = 0,
    **env_kwargs,
) -> ThroughputResult:
    """Measure env-steps/s of ``env_id`` with a uniform-random policy.

    Args:
        env_id: a registered id, e.g. ``"l2o/Quadratic-v0"``.
        num_envs: number of parallel environments ``N``.
        mode: ``"native"`` (the torch :class:`~l2o_gym.envs.L2OVectorEnv`) or ``"sync"``
            (``gymnasium.vector.SyncVectorEnv`` over ``N`` single environments).
        device: torch device of the native env (the sync env always runs its single envs on ``device`` too).
        min_seconds: keep stepping until this much time has passed (after a warm-up) ...
        min_steps: ... and at least this many vector steps.
        seed: seeds the env and the random actions.

    Actions are drawn uniformly from the action space (a pool of 16 batches cycled, identical for both
    modes), so episodes end by divergence or by the horizon and autoresets are part of the measurement.
    """
    if mode == "native":
        venv = gym.make_vec(env_id, num_envs, device=device, **env_kwargs)
    elif mode == "sync":
        venv = gym.make_vec(env_id, num_envs, vectorization_mode="sync", device=device, **env_kwargs)
    else:
        raise ValueError(f"unknown mode {mode!r}: expected 'native' or 'sync'")
    rng = np.random.default_rng(seed)
    pool_np = [rng.uniform(-1, 1, (num_envs,) + venv.single_action_space.shape).astype(np.float32) for _ in range(16)]
    pool = [torch.as_tensor(a, device=device) for a in pool_np] if mode == "native" else pool_np
    venv.reset(seed=seed)
    for i in range(2):
        venv.step(pool[i])
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    steps = 0
    start = time.perf_counter()
    while True:
        venv.step(pool[steps % 16])
        steps += 1
        if steps >= min_steps and steps % 4 == 0:
            sync()
            if time.perf_counter() - start >= min_seconds:
                break
    sync()
    elapsed = time.perf_counter() - start
    venv.close()
    return ThroughputResult(env_id, mode, num_envs, str(device), steps, elapsed, num_envs * steps / elapsed)


def baseline_eval_time(
    env_id: str = "l2o/Quadratic-v0", n_problems: int = 1000, horizon: int = 100, device: str = "cpu"
) -> dict[str, float]:
    """Wall seconds of :func:`l2o_gym.experiments.evaluation.evaluate` for each first-order baseline (default settings)."""
    from l2o_gym.agents.baselines import FIRST_ORDER, make_baseline
    from l2o_gym.experiments.evaluation import evaluate

    out = {}
    for name in FIRST_ORDER:
        start = time.perf_counter()
        evaluate(make_baseline(name), env_id, n_problems=n_problems, horizon=horizon, device=device)
        out[name] = time.perf_counter() - start
    return out
