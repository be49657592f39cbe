"""Evaluation of any :class:`~l2o_gym.policy.Policy` on held-out problems, with the one rollout loop.

    result = evaluate(policy, "l2o/Quadratic-v0", n_problems=100, horizon=100, seed=0)   # split="test"

Metrics (all over the ``n`` problems). For families with a true objective (``ProblemFamily.has_true_loss``,
e.g. the NN-classifier benchmark: the loss over each instance's whole dataset, while the optimizer sees
minibatches) every curve and figure below is of the *true* objective, evaluated every ``true_every`` steps
and at ``T`` (held in between); ``extra["objective"] = "true"`` and ``extra["minibatch_final_mean"]`` record it.

* ``curve_mean[t]`` — mean objective ``f(θ_t)`` for ``t = 0…T`` with a 95% bootstrap confidence interval
  (``curve_ci_low``/``curve_ci_high``; 1000 resamples of the problems, percentile method, seeded);
* ``final_mean``, ``final_median``, ``log10_final_mean`` — of ``f(θ_T)``; ``final_values`` — ``f(θ_T)`` of each
  problem (in instance order, so two policies' values pair up problem by problem: the study's paired table);
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
from l2o_gym.checks import check_positive_int, check_split, resolve_device, resolve_dtype
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
    final_values: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the mean over axis 1 of ``values`` ``[T, n]``; returns ``(low[T], high[T])``."""
    check_positive_int("n_boot", n_boot)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    t, n = values.shape
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # [B, n]
    means = counts @ values.T / n  # [B, T]
    alpha = (1 - level) / 2
    return np.quantile(means, alpha, axis=0), np.quantile(means, 1 - alpha, axis=0)


def evaluation_config(policy: Policy, horizon: int, true_every: int = 1) -> CoreConfig:
    """The core config to evaluate ``policy`` with, horizon set.

    A policy that reads :func:`l2o_gym.core.features` exposes the config it was trained with as
    ``policy.core_config`` (GPS, SB3); that one is used. Policies without it read only the current gradient
    (baselines, the coordinatewise LSTM): they get a history of one iterate, which keeps the per-step cost
    at ``O(N·d)`` instead of copying an ``[N, H·d]`` feature buffer every step (the costs and the returned
    objectives do not depend on the history length).
    """
    base = policy.core_config
    if isinstance(base, CoreConfig):
        return dataclasses.replace(base, horizon=horizon, true_every=true_every)
    return CoreConfig(horizon=horizon, history=1, true_every=true_every)


def evaluate(policy: Policy, env_id: str, *, horizon: int = 100, **kwargs: Any) -> EvalResult:
    """Run ``policy`` on the ``n_problems`` instances of one draw from the ``(split, seed)`` stream of ``env_id`` for
    ``horizon`` iterations ``T``: :func:`evaluate_horizons` at the one horizon, with the same keyword arguments
    (``n_problems=100``, ``seed=0``, ``split="test"``, ``device``, ``dtype``, ``family_kwargs``, ``label``,
    ``progress``, ``n_boot``, ``threads=1``, ``true_every=1``)."""
    return evaluate_horizons(policy, env_id, horizons=(horizon,), **kwargs)[0]


def evaluate_horizons(
    policy: Policy,
    env_id: str,
    *,
    horizons: tuple[int, ...],
    n_problems: int = 100,
    seed: int = 0,
    split: str = "test",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    family_kwargs: dict[str, Any] | None = None,
    label: str | None = None,
    progress: bool = False,
    n_boot: int = 1000,
    threads: int | None = 1,
    true_every: int = 1,
    record_cpu: bool = False,
) -> list[EvalResult]:
    """Run ``policy`` on the ``n_problems`` instances that one draw of that size from the ``(split, seed)`` stream of
    ``env_id`` gives (instance ``i`` depends on the size: the 10 problems of ``n_problems=10`` are not the first 10
    of ``n_problems=100``), and report it at several horizons from **one** rollout: one :class:`EvalResult` per
    distinct horizon (ascending), each equal to ``evaluate(..., horizon=h)`` — the study's T and 10·T jobs cost one
    run of 10·T, not 11·T.

    The rollout is run in segments ending at each horizon (the memory carried on, :func:`~l2o_gym.policy.rollout`),
    so the state, memory, evaluation count and wall time at ``h`` are those of a run of ``h`` steps. In the core
    the configured horizon sets only the truncation flag and the true objective's evaluation at ``T`` (exact there,
    held in between): a shorter horizon must therefore be a multiple of ``true_every``. CG and L-BFGS solve the
    whole path at reset with scipy's ``maxiter`` = the horizon; their first ``h`` iterates do not depend on it.
    Tested equal, field by field, to separate runs for every baseline and learned policy kind. Repeated horizons
    are reported once.

    Args:
        policy: any Policy.
        env_id: a registered id; its family (with ``family_kwargs`` overrides) supplies the problems.
        horizons: the numbers of iterations ``T`` to report at.
        n_problems: number of problems ``n``, run as one batch.
        seed: instance seed (same seed → same problems → same result).
        split: ``"test"`` for claims; tuning uses ``"train"``/``"val"``.
        device, dtype: where and in what precision the problems run.
        family_kwargs: size overrides, e.g. ``{"hidden": (40,)}`` for the MLP transfer runs.
        label: the policy name in the result (default ``policy.name``).
        progress: tqdm bar over iterations.
        n_boot: bootstrap resamples for the confidence band.
        threads: torch CPU threads for sampling and the rollout (default 1: machine-independent results;
            ``None``: the caller's ``torch.get_num_threads()``). Restored afterwards.
        true_every: evaluate the true objective (families that have one) every this many steps and at the last
            horizon (:class:`~l2o_gym.core.CoreConfig`); the curve holds the last value in between.
        record_cpu: also store in ``extra["cpu_s"]`` the CPU seconds of this process from the call to the end of
            each result's segment (the comparison harness moves it to ``timings.json``).

    Raises:
        ValueError: no horizons, a horizon, ``true_every`` or ``n_boot`` that is not a positive integer, or a
            shorter horizon that is not a multiple of ``true_every``.
    """
    check_split(split)
    if check_threads(threads) == "auto":
        raise ValueError("threads must be a positive integer or None for evaluate, got 'auto'")
    hs = sorted(set(horizons))
    if not hs or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hs):
        raise ValueError(f"horizons must be positive integers, got {horizons!r}")
    check_positive_int("true_every", true_every)
    check_positive_int("n_boot", n_boot)  # before the rollout, not after it
    bad = [h for h in hs[:-1] if h % true_every]
    if bad:
        raise ValueError(f"horizons {bad} are not multiples of true_every={true_every}: the true objective is exact "
                         "only at multiples of it before the last horizon; evaluate them separately")
    with torch_threads(threads):  # type: ignore[arg-type]
        return _evaluate(policy, env_id, n_problems, hs, seed, split, device, dtype, family_kwargs, label,
                         progress, n_boot, true_every, record_cpu)


def _evaluate(
    policy: Policy, env_id: str, n_problems: int, horizons: list[int], seed: int, split: str,
    device: torch.device | str, dtype: torch.dtype | str, family_kwargs: dict[str, Any] | None, label: str | None,
    progress: bool, n_boot: int, true_every: int = 1, record_cpu: bool = False,
) -> list[EvalResult]:
    cpu0 = time.process_time()
    family = env_family(env_id, **(family_kwargs or {}))
    problems = family.sample(n_problems, split, seed, resolve_device(device), resolve_dtype(dtype))
    config = evaluation_config(policy, horizons[-1], true_every)
    start = time.perf_counter()
    # at each segment's end: (horizon, evaluations per problem, wall s, cpu s) and its curves; the count is read
    # there and only the curves are kept, so that no segment's memory (an LSTM's: [N·d, hidden] per layer) outlives it
    segments: list[tuple[int, float, float, float]] = []
    objectives, minibatch, terminated = [], [], []
    with torch.no_grad():
        state = core.reset(problems, config)
        memory: Any = policy.reset(state)
        done = 0
        for h in horizons:
            part = rollout(policy, state, h - done, memory, progress=progress, desc=f"{label or policy.name} {env_id}")
            state, memory, done = part.state, part.memory, h
            first = 0 if not objectives else 1  # a segment's first row is the previous one's last
            objectives.append(part.objectives[first:])
            minibatch.append(part.losses[first:])
            terminated.append(part.terminated)
            has_true = part.true_losses is not None
            del part
            if problems.device.type == "cuda":
                torch.cuda.synchronize(problems.device)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
            evals = policy.evals(memory, h)
            segments.append((h, float(evals.double().mean()) if evals is not None else float(h), wall, cpu))
    # [T+1, n] over the whole run
    all_losses = torch.cat(objectives).double().cpu().numpy()  # the true objective where there is one
    mb, term = torch.cat(minibatch), torch.cat(terminated)
    out = []
    for h, grad_evals, wall, cpu in segments:
        losses = all_losses[: h + 1]
        extra: dict[str, Any] = {}
        if has_true:
            extra = {"objective": "true", "true_every": true_every, "minibatch_final_mean": float(mb[h].double().mean())}
        if record_cpu:
            extra["cpu_s"] = cpu
        final = losses[-1]
        final_mean = float(final.mean())
        low, high = bootstrap_mean_ci(losses, n_boot=n_boot, seed=seed)
        out.append(EvalResult(
            env=env_id,
            policy=label or policy.name,
            horizon=h,
            n_problems=n_problems,
            seed=seed,
            final_mean=final_mean,
            final_median=float(np.median(final)),
            log10_final_mean=math.log10(max(final_mean, 1e-300)),
            auc_mean=float(np.trapezoid(losses, axis=0).mean() / h),
            diverged_fraction=float(term[h - 1].double().mean()),
            grad_evals=grad_evals,
            wall_s=wall,
            curve_mean=losses.mean(axis=1).tolist(),
            curve_ci_low=low.tolist(),
            curve_ci_high=high.tolist(),
            split=split,
            extra=extra,
            final_values=final.tolist(),
        ))
    return out
