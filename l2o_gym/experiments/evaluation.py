"""Evaluation of any :class:`~l2o_gym.policy.Policy` on held-out problems, with the one rollout loop.

    result = evaluate(policy, "l2o/Quadratic-v0", n_problems=100, horizon=100, seed=0)   # split="test"

Metrics (all over the ``n`` problems):

* ``curve_mean[t]`` — mean objective ``f(θ_t)`` for ``t = 0…T`` with a 95% bootstrap confidence interval
  (``curve_ci_low``/``curve_ci_high``; 1000 resamples of the problems, percentile method, seeded);
* ``final_mean``, ``final_median``, ``log10_final_mean`` — of ``f(θ_T)``;
* ``auc_mean`` — mean over problems of the trapezoidal area under ``f(θ_t)`` divided by ``T`` (the
  average objective over the run, comparable across horizons);
* ``diverged_fraction`` — problems whose episode terminated by divergence. A diverged problem keeps its last
  finite objective in every curve and mean (never NaN), so divergence shows up in the means *and* is
  reported separately;
* ``grad_evals`` — mean objective+gradient evaluations per problem: ``T`` for methods that take one per
  iteration, the counted line-search evaluations for CG and L-BFGS;
* ``wall_s`` — wall-clock seconds of the rollout (reset included). It is the one field that differs between
  two runs of the same evaluation; :mod:`l2o_gym.experiments.compare` writes it to ``timings.json``, not to
  ``results.json``.

Threads: ``evaluate`` runs on **one torch thread** by default (``threads=1``; the caller's setting is restored
afterwards). Some kernels (the LSTM's matrix products over 159k coordinates on the MLP) sum in an order that
depends on the thread count, so a fixed count is what makes the numbers identical on every CPU machine;
independent evaluations run in parallel processes instead (``scripts/compare.py --workers``).
``threads=None`` uses the caller's setting. See :mod:`l2o_gym.threads` and ``docs/threads.md``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from l2o_gym.core import CoreConfig
from l2o_gym.policy import Policy, rollout
from l2o_gym import core
from l2o_gym.registry import env_family
from l2o_gym.checks import check_split, resolve_device, resolve_dtype
from l2o_gym.threads import check_threads, torch_threads




@dataclass
class EvalResult:
    """One (env, policy, horizon) evaluation; :meth:`as_dict` is the ``results.json`` entry."""

    env: str
    policy: str
    horizon: int
    n_problems: int
    seed: int
    final_mean: float
    final_median: float
    log10_final_mean: float
    auc_mean: float
    diverged_fraction: float
    grad_evals: float
    wall_s: float
    curve_mean: list[float]
    curve_ci_low: list[float]
    curve_ci_high: list[float]
    split: str = "test"
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the mean over axis 1 of ``values`` ``[T, n]``; returns ``(low[T], high[T])``."""
    t, n = values.shape
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # [B, n]
    means = counts @ values.T / n  # [B, T]
    alpha = (1 - level) / 2
    return np.quantile(means, alpha, axis=0), np.quantile(means, 1 - alpha, axis=0)


def evaluation_config(policy: Policy, horizon: int) -> CoreConfig:
    """The core config to evaluate ``policy`` with, horizon set.

    A policy that reads :func:`l2o_gym.core.features` exposes the config it was trained with as
    ``policy.core_config`` (GPS, SB3); that one is used. Policies without it read only the current gradient
    (baselines, the coordinatewise LSTM): they get a history of one iterate, which keeps the per-step cost
    at ``O(N·d)`` instead of copying an ``[N, H·d]`` feature buffer every step (the costs and the returned
    objectives do not depend on the history length).
    """
    base = policy.core_config
    if isinstance(base, CoreConfig):
        return dataclasses.replace(base, horizon=horizon)
    return CoreConfig(horizon=horizon, history=1)


def evaluate(
    policy: Policy,
    env_id: str,
    *,
    n_problems: int = 100,
    horizon: int = 100,
    seed: int = 0,
    split: str = "test",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    family_kwargs: dict[str, Any] | None = None,
    label: str | None = None,
    progress: bool = False,
    n_boot: int = 1000,
    threads: int | None = 1,
) -> EvalResult:
    """Run ``policy`` on the first ``n_problems`` instances of the ``(split, seed)`` stream of ``env_id``.

    Args:
        policy: any Policy.
        env_id: a registered id; its family (with ``family_kwargs`` overrides) supplies the problems.
        n_problems: number of problems ``n``, run as one batch.
        horizon: number of iterations ``T``.
        seed: instance seed (same seed → same problems → same result).
        split: ``"test"`` for claims; tuning uses ``"train"``/``"val"``.
        device, dtype: where and in what precision the problems run.
        family_kwargs: size overrides, e.g. ``{"hidden": (40,)}`` for the MLP transfer runs.
        label: the policy name in the result (default ``policy.name``).
        progress: tqdm bar over iterations.
        n_boot: bootstrap resamples for the confidence band.
        threads: torch CPU threads for sampling and the rollout (default 1: machine-independent results;
            ``None``: the caller's ``torch.get_num_threads()``). Restored afterwards.
    """
    check_split(split)
    if check_threads(threads) == "auto":
        raise ValueError("threads must be a positive integer or None for evaluate, got 'auto'")
    with torch_threads(threads):  # type: ignore[arg-type]
        return _evaluate(policy, env_id, n_problems, horizon, seed, split, device, dtype, family_kwargs, label,
                         progress, n_boot)


def _evaluate(
    policy: Policy, env_id: str, n_problems: int, horizon: int, seed: int, split: str, device: torch.device | str,
    dtype: torch.dtype | str, family_kwargs: dict[str, Any] | None, label: str | None, progress: bool, n_boot: int,
) -> EvalResult:
    family = env_family(env_id, **(family_kwargs or {}))
    problems = family.sample(n_problems, split, seed, resolve_device(device), resolve_dtype(dtype))
    config = evaluation_config(policy, horizon)
    start = time.perf_counter()
    with torch.no_grad():
        state = core.reset(problems, config)
        traj = rollout(policy, state, horizon, progress=progress, desc=f"{label or policy.name} {env_id}")
    if problems.device.type == "cuda":
        torch.cuda.synchronize(problems.device)
    wall = time.perf_counter() - start
    losses = traj.losses.double().cpu().numpy()  # [T+1, n]
    evals = policy.evals(traj.memory, horizon)
    grad_evals = float(evals.double().mean()) if evals is not None else float(horizon)
    final = losses[-1]
    final_mean = float(final.mean())
    low, high = bootstrap_mean_ci(losses, n_boot=n_boot, seed=seed)
    auc = float(np.trapezoid(losses, axis=0).mean() / horizon)
    return EvalResult(
        env=env_id,
        policy=label or policy.name,
        horizon=horizon,
        n_problems=n_problems,
        seed=seed,
        final_mean=final_mean,
        final_median=float(np.median(final)),
        log10_final_mean=math.log10(max(final_mean, 1e-300)),
        auc_mean=auc,
        diverged_fraction=float(traj.state.terminated.double().mean()),
        grad_evals=grad_evals,
        wall_s=wall,
        curve_mean=losses.mean(axis=1).tolist(),
        curve_ci_low=low.tolist(),
        curve_ci_high=high.tolist(),
        split=split,
    )
