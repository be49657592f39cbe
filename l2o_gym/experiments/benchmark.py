"""Throughput measurements (used by ``scripts/bench.py``), idle and beside competing processes."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
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
    env_id: str = "l2o/Quadratic-v0", n_problems: int = 1000, horizon: int = 100, device: str = "cpu",
    threads: int | None = 1,
) -> dict[str, float]:
    """Wall seconds of :func:`l2o_gym.experiments.evaluation.evaluate` for each first-order baseline (default
    settings; ``threads``: evaluate's argument, 1 by default as in the comparison, ``None``: torch's setting)."""
    from l2o_gym.agents.baselines import FIRST_ORDER, make_baseline
    from l2o_gym.experiments.evaluation import evaluate

    out = {}
    for name in FIRST_ORDER:
        start = time.perf_counter()
        evaluate(make_baseline(name), env_id, n_problems=n_problems, horizon=horizon, device=device, threads=threads)
        out[name] = time.perf_counter() - start
    return out


@contextlib.contextmanager
def cpu_competitors(n: int = 1) -> Iterator[list[subprocess.Popen]]:
    """Start ``n`` CPU-bound processes (a pure-Python busy loop each, no torch) and stop them on exit.

    They stand for "anything else running on the machine" (another seed, a browser, a second job) in
    :func:`busy_throughput`. They are killed (and reaped) even if the block raises.
    """
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
             for _ in range(n)]
    try:
        time.sleep(0.2)  # let them get scheduled before the measurement starts
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


#: ``busy_throughput`` modes -> the env's ``threads`` argument.
THREAD_MODES: dict[str, int | str | None] = {
    "auto": "auto",  # the envs' default: the thread policy of l2o_gym.threads
    "torch-default": None,  # as before the policy: torch's global setting (one thread per core by default)
    "1": 1,
}


def busy_throughput(
    env_id: str = "l2o/Quadratic-v0",
    num_envs: int = 1024,
    modes: tuple[str, ...] = ("auto", "torch-default"),
    rounds: int = 3,
    seconds: float = 1.0,
    competitors: int = 1,
    **env_kwargs,
) -> list[dict]:
    """Env-steps/s of the native vector env idle and beside ``competitors`` CPU-bound processes.

    The machine may be shared, so "idle" means "without *our* competitor": each round measures every mode
    idle, then starts the competitors and measures every mode again, then stops them; the rounds alternate
    idle and busy so slow drifts of the background load hit both. Returns one row per mode with the per-round
    figures, their medians and ``ratio`` = median over rounds of busy/idle (the issue's target: ≥ 0.4 with one
    competitor; the fair share is 0.5 on 2 cores), and the load average before and after.
    """
    unknown = [m for m in modes if m not in THREAD_MODES]
    if unknown:
        raise ValueError(f"unknown thread mode(s) {unknown}: expected some of {', '.join(THREAD_MODES)}")
    if rounds < 1 or competitors < 1 or not (0 < seconds < math.inf):
        raise ValueError(f"rounds and competitors must be positive integers and seconds a positive finite number, "
                         f"got {rounds}, {competitors}, {seconds}")
    load_before = os.getloadavg()
    figures: dict[str, dict[str, list[float]]] = {m: {"idle": [], "busy": []} for m in modes}
    for _ in range(rounds):
        for phase in ("idle", "busy"):
            ctx = cpu_competitors(competitors) if phase == "busy" else contextlib.nullcontext()
            with ctx:
                for m in modes:
                    r = env_throughput(env_id, num_envs, min_seconds=seconds, threads=THREAD_MODES[m], **env_kwargs)
                    figures[m][phase].append(r.steps_per_s)
    load_after = os.getloadavg()
    rows = []
    for m in modes:
        idle, busy = figures[m]["idle"], figures[m]["busy"]
        rows.append({
            "mode": m, "env_id": env_id, "num_envs": num_envs, "competitors": competitors,
            "torch_threads": torch.get_num_threads(), "idle": idle, "busy": busy,
            "idle_median": float(np.median(idle)), "busy_median": float(np.median(busy)),
            "ratio": float(np.median([b / i for b, i in zip(busy, idle)])),
            "load_before": load_before, "load_after": load_after,
        })
    return rows
