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
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor


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


def nn_step_time(
    n_problems: int = 100, steps: int = 50, warmup: int = 5, device: str = "cpu", **family_kwargs: Any
) -> dict[str, float]:
    """Seconds per step of the NN-classifier family (default MNIST-48: 48-48-10, batch 64) at ``n_problems``,
    measured in one run, median over ``steps`` (interleaved so contention hits every variant alike):

    * ``bare``: a plain batched forward + backward of the same ``N`` nets on a minibatch (gather, two ``bmm``,
      ReLU, cross-entropy, ``autograd.grad``) — the floor;
    * ``core_minibatch``: :func:`l2o_gym.core.step` with the true objective evaluated only at the horizon
      (``true_every`` = horizon), i.e. what the optimizer needs;
    * ``core_true_every_step``: :func:`l2o_gym.core.step` with the true objective (all ``M`` examples) every
      step (``true_every = 1``);
    * the ratios ``core_minibatch / bare`` and ``core_true_every_step / bare``.
    """
    import torch.nn.functional as F

    from l2o_gym import core
    from l2o_gym.core import CoreConfig
    from l2o_gym.registry import env_family

    family = env_family("l2o/NNClassifier-v0", **family_kwargs)
    problems = family.sample(n_problems, "test", 0, device)
    i, h, c = family.layer_sizes
    X, y, seeds = problems.data["X"], problems.data["y"], problems.seeds
    big = 10**9
    states = {
        "core_minibatch": core.reset(problems, CoreConfig(horizon=big, history=1, validate=False, true_every=big)),
        "core_true_every_step": core.reset(problems, CoreConfig(horizon=big, history=1, validate=False)),
    }
    sync = torch.cuda.synchronize if problems.device.type == "cuda" else (lambda: None)

    def bare(theta: Tensor, t: int) -> None:
        from l2o_gym.problems.base import counter_randint, gather_rows

        leaf = theta.detach().requires_grad_(True)
        pos = counter_randint(seeds, torch.full_like(seeds, t), family.batch_size, X.shape[1])
        xb, yb = gather_rows(pos, X, y)  # the fastest gather (an index_select), as the family's
        w1, b1, w2, b2 = torch.split(leaf, [i * h, h, h * c, c], dim=-1)
        hid = torch.relu(torch.baddbmm(b1.unsqueeze(1), xb, w1.reshape(-1, i, h)))
        z = torch.baddbmm(b2.unsqueeze(1), hid, w2.reshape(-1, h, c))
        loss = F.cross_entropy(z.reshape(-1, c), yb.reshape(-1), reduction="none").reshape(pos.shape).mean(-1)
        torch.autograd.grad(loss.sum(), leaf)

    times: dict[str, list[float]] = {"bare": [], **{k: [] for k in states}}
    with torch.no_grad():
        for k in range(warmup + steps):
            for name in times:
                sync()
                start = time.perf_counter()
                if name == "bare":
                    with torch.enable_grad():
                        bare(problems.x0, k + 1)
                else:
                    s = states[name]
                    states[name], *_ = core.step(s, -0.01 * s.grad)
                sync()
                if k >= warmup:
                    times[name].append(time.perf_counter() - start)
    out = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    out["ratio_minibatch"] = out["core_minibatch"] / out["bare"]
    out["ratio_true_every_step"] = out["core_true_every_step"] / out["bare"]
    return out


def nn_lstm_meta_iteration(n_problems: int = 4, unroll: int = 20, iters: int = 5, device: str = "cpu") -> dict[str, float]:
    """Seconds per LSTM meta-iteration on MNIST-48 (``n_problems`` problems, one truncated unroll of ``unroll``
    steps forward + backward + Adam step, true objective as the cost every step), median over ``iters``."""
    from l2o_gym import core
    from l2o_gym.agents.lstm.trainer import Trainer, TrainConfig

    cfg = TrainConfig(env_id="l2o/NNClassifier-v0", n_problems=n_problems, horizon=400, unroll=unroll,
                      val_every=0, val_problems=1, device=device, progress=False)
    trainer = Trainer(cfg)
    state = core.reset(trainer.family.sample(n_problems, "train", 0, trainer.device), trainer.core_config)
    memory = trainer.policy.reset(state)
    times = []
    for _ in range(iters + 1):
        start = time.perf_counter()
        state, memory, _, _ = trainer.meta_step(state, memory, 0)
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return {"median_s": times[len(times) // 2], "min_s": times[0], "max_s": times[-1], "iters": iters}

def conv_gps_iteration(
    iters: int = 2, conditions: int = 4, samples: int = 4, horizon: int = 400, hidden: int = 32,
    init_lr: float = 0.01, device: str = "cpu",
) -> dict[str, Any]:
    """Wall seconds per convolutional-GPS iteration on MNIST-48 (``l2o/NNClassifier-v0``), the configuration of the
    shipped checkpoint (docs/conv-gps.md), ``init_lr`` fixed so nothing is tuned first.

    Under ``torchrun`` (an initialised ``torch.distributed`` group) the trajectories are split over the processes
    exactly as in training; every rank returns the same numbers (the slowest rank's time per iteration).
    Returns ``{"iteration_s": [...], "median_s", "world_size", "env_steps_per_iteration"}``.
    """
    import torch.distributed as dist

    from l2o_gym.agents.gps.conv import ConvGPSConfig, ConvGPSTrainer
    from l2o_gym.checks import resolve_device
    from l2o_gym.distributed import world as process_world
    from l2o_gym.registry import env_family

    _, world = process_world()
    dev = resolve_device(device)
    problems = env_family("l2o/NNClassifier-v0").sample(conditions, "train", 0, dev, torch.float64)
    trainer = ConvGPSTrainer(problems, ConvGPSConfig(horizon=horizon, n_samples=samples, hidden=hidden, init_lr=init_lr,
                                                     init_std=0.01, kl_step=0.05, regression_epochs=3))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        trainer.iteration()
        elapsed = torch.tensor([time.perf_counter() - start], device=dev)  # nccl reduces CUDA tensors only
        if world > 1:
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        times.append(float(elapsed))
    return {"iteration_s": times, "median_s": sorted(times)[len(times) // 2], "world_size": world,
            "env_steps_per_iteration": conditions * samples * horizon}


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


def step_overhead(
    env_id: str,
    num_envs: int = 8,
    history: int = 25,
    reps: int = 20,
    warmup: int = 3,
    device: str = "cpu",
    seed: int = 0,
    threads: int | str | None = "auto",
    **family_kwargs,
) -> dict[str, float]:
    """Seconds of one native vector-env step against a bare batched forward + backward of the same objective.

    Both run on the same ``num_envs`` problems; the bare one is ``f = family.loss(batch, θ, t)`` and
    ``torch.autograd.grad(f.sum(), θ)`` and nothing else — the least any optimizer step must compute. The
    two are timed *interleaved* (env step, bare, env step, …), so load on a shared machine affects both
    alike; the medians over ``reps`` and their ratio are returned (goal for the heavy families: ≤ 1.3×).
    ``threads``: the env's thread argument (``None``: the caller's torch setting, as the bare pass runs with; the
    default ``"auto"`` policy may step on 1 thread while the bare pass uses the caller's count).
    """
    from l2o_gym.registry import env_family

    venv = gym.make_vec(env_id, num_envs, device=device, history=history, threads=threads, **family_kwargs)
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


def convnet_speed(
    n_problems: int = 8, reps: int = 5, unroll: int = 10, family_kwargs: dict | None = None,
    meta: bool = True, device: str = "cpu", threads: int | str | None = "auto",
) -> dict[str, float]:
    """Seconds per call (median of ``reps``, measured *interleaved* so that a contended machine slows every
    variant alike) of, for ``n_problems`` conv nets of :class:`l2o_gym.problems.ConvNet`:

    * ``bare_grouped``: one batched forward + backward (grouped convolutions) — ``autograd.grad`` of the
      summed minibatch losses w.r.t. θ ``[N, d]``, nothing else;
    * ``bare_vmap``: the same with ``method="vmap"``;
    * ``separate``: ``N`` separate ``nn.Sequential`` nets, one forward + backward each;
    * ``env_step``: one step of the native vector env ``gymnasium.make_vec("l2o/ConvNet-v0", N)`` (the
      batched core with Li & Malik's H = 25 history features and the gymnasium adapter);
    * ``core_step``: one :func:`l2o_gym.core.step` with history 1 (what the LSTM trainer runs);
    * ``meta_iteration`` (``meta``): one multi-LSTM (conv/fc/bn/bias) truncated-BPTT meta-iteration of
      ``unroll`` steps (forward, backward, Adam).

    Ratios ``env_step / bare_grouped`` etc. are added as ``*_ratio``. ``threads``: the env's thread argument
    (``None``: the caller's torch setting, which every other variant runs with).
    """
    import statistics

    import torch.nn.functional as F

    from l2o_gym import core
    from l2o_gym.problems import ConvNet

    kw = dict(family_kwargs or {})
    fam = ConvNet(**kw)
    fam_v = ConvNet(**{**kw, "method": "vmap"})
    batch = fam.sample(n_problems, "train", 0, device)
    batch_v = fam_v.sample(n_problems, "train", 0, device)
    theta = batch.x0.clone()
    step_t = torch.zeros(n_problems, dtype=torch.int64, device=device)

    def bare(b) -> None:
        leaf = theta.detach().requires_grad_(True)
        torch.autograd.grad(b.family.loss(b, leaf, step_t).sum(), leaf)

    X, y = fam.partition("train", torch.device(device), torch.float32)
    pos = fam.minibatch_positions(batch, step_t)
    nets = [fam.to_module(theta[i]) for i in range(n_problems)]

    def separate() -> None:
        for i, net in enumerate(nets):
            net.zero_grad()
            F.cross_entropy(net(X[pos[i]]), y[pos[i]]).backward()

    venv = gym.make_vec("l2o/ConvNet-v0", n_problems, device=device, threads=threads, **kw)
    venv.reset(seed=0)
    zero = torch.zeros((n_problems,) + venv.single_action_space.shape, device=device)
    cc = core.CoreConfig(horizon=10**6, history=1, validate=False)
    state = [core.reset(batch, cc)]

    def core_step() -> None:
        state[0] = core.step(state[0], torch.zeros_like(theta))[0]

    jobs = {"bare_grouped": lambda: bare(batch), "bare_vmap": lambda: bare(batch_v), "separate": separate,
            "env_step": lambda: venv.step(zero), "core_step": core_step}
    if meta:
        from l2o_gym.agents.lstm.trainer import TrainConfig, Trainer

        trainer = Trainer(TrainConfig(env_id="l2o/ConvNet-v0", family_kwargs=kw, n_problems=n_problems, unroll=unroll,
                                      val_every=0, val_problems=1, progress=False, device=device,
                                      kinds=("conv", "fc", "bn", "bias")))
        mstate = [core.reset(batch, trainer.core_config)]
        mem = [trainer.policy.reset(mstate[0])]

        def meta_it() -> None:
            mstate[0], mem[0], _, _ = trainer.meta_step(mstate[0], mem[0], 0)

        jobs["meta_iteration"] = meta_it
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(reps + 1):
        for k, fn in jobs.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            if r > 0:  # the first round is a warm-up
                times[k].append(time.perf_counter() - t)
    venv.close()
    out = {k: statistics.median(v) for k, v in times.items()}
    for k in ("bare_vmap", "separate", "env_step", "core_step"):
        out[f"{k}_ratio"] = out[k] / out["bare_grouped"]
    out.update({"n_problems": n_problems, "reps": reps, "unroll": unroll, "dim": fam.dim,
                "threads": torch.get_num_threads()})
    return out


#: The kernel check's jobs: ``(name, env, policy, horizon, problems, library it exercises)``. Each is a small
#: job of the comparison harness whose numbers depend on one kernel library (docs/threads.md).
KERNEL_JOBS: tuple[tuple[str, str, str, int, int, str], ...] = (
    ("quadratic-lstm", "l2o/Quadratic-v0", "lstm", 100, 20, "ATen + MKL"),
    ("logreg-cg", "l2o/LogisticRegression-v0", "cg", 30, 5, "OpenBLAS (SciPy)"),
    ("convnet-adam", "l2o/ConvNet-v0", "adam", 20, 2, "oneDNN"),
    ("mnist48-adagrad", "l2o/NNClassifier-v0", "adagrad", 100, 20, "MKL batched GEMM"),
)

#: ``mean f(θ_T)`` of :data:`KERNEL_JOBS` with every kernel library pinned (``portable``), measured 2026-12-01 on a
#: 2-core Intel Xeon VM (AVX-512), torch 2.13.0+cpu (``python scripts/bench.py kernels``): what any x86-64 CPU with
#: AVX2 should reproduce exactly with the same package versions.
KERNEL_REFERENCE: dict[str, float] = {
    "quadratic-lstm": 0.032182621897663924,
    "logreg-cg": 0.022651317669078706,
    "convnet-adam": 1.0897293090820312,
    "mnist48-adagrad": 0.2740450896158442,
}


def kernel_check(out: str, portable: bool = True) -> list[dict[str, Any]]:
    """Run :data:`KERNEL_JOBS` through the comparison harness (``portable``: the pinned kernels of
    ``compare.PORTABLE_ENV``, else this machine's) into ``out`` and compare with :data:`KERNEL_REFERENCE`:
    one dict per job with ``name``, ``library``, ``value`` (mean final objective), ``reference`` and ``same``
    (bitwise equal; ``None`` without a reference or unpinned)."""
    from l2o_gym.experiments.compare import CompareConfig, Section, run_jobs

    sections = [Section(env, [policy], horizon, n_problems=n, title=name)
                for name, env, policy, horizon, n, _ in KERNEL_JOBS]
    results = run_jobs(CompareConfig(sections=sections, out=out, workers=1, portable=portable), progress=False)
    rows = []
    for (name, _, _, _, _, library), res in zip(KERNEL_JOBS, results):
        ref = KERNEL_REFERENCE.get(name) if portable else None
        rows.append({"name": name, "library": library, "value": res.final_mean, "reference": ref,
                     "same": None if ref is None else res.final_mean == ref})
    return rows
