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


def step_overhead(
    env_id: str,
    num_envs: int = 8,
    history: int = 25,
    reps: int = 20,
    warmup: int = 3,
    device: str = "cpu",
    seed: int = 0,
    **family_kwargs,
) -> dict[str, float]:
    """Seconds of one native vector-env step against a bare batched forward + backward of the same objective.

    Both run on the same ``num_envs`` problems; the bare one is ``f = family.loss(batch, θ, t)`` and
    ``torch.autograd.grad(f.sum(), θ)`` and nothing else — the least any optimizer step must compute. The
    two are timed *interleaved* (env step, bare, env step, …), so load on a shared machine affects both
    alike; the medians over ``reps`` and their ratio are returned (goal for the heavy families: ≤ 1.3×).
    """
    from l2o_gym.registry import env_family

    venv = gym.make_vec(env_id, num_envs, device=device, history=history, **family_kwargs)
    venv.reset(seed=seed)
    rng = np.random.default_rng(seed)
    shape = (num_envs,) + venv.single_action_space.shape
    actions = [torch.as_tensor(rng.uniform(-0.1, 0.1, shape).astype(np.float32), device=device) for _ in range(4)]
    family = env_family(env_id, **family_kwargs)
    batch = family.sample(num_envs, "train", seed, device)
    theta0 = batch.x0.clone()
    step = torch.zeros(num_envs, dtype=torch.int64, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def bare() -> None:
        theta = theta0.detach().requires_grad_(True)
        f = family.loss(batch, theta, step)
        torch.autograd.grad(f.sum(), theta)

    env_t, bare_t = [], []
    for i in range(warmup + reps):
        sync()
        t = time.perf_counter()
        venv.step(actions[i % 4])
        sync()
        t_env = time.perf_counter() - t
        t = time.perf_counter()
        bare()
        sync()
        t_bare = time.perf_counter() - t
        if i >= warmup:
            env_t.append(t_env)
            bare_t.append(t_bare)
    venv.close()
    env_med, bare_med = float(np.median(env_t)), float(np.median(bare_t))
    return {"env_step_s": env_med, "bare_forward_backward_s": bare_med, "ratio": env_med / bare_med,
            "num_envs": num_envs, "history": history, "reps": reps, "threads": torch.get_num_threads()}
