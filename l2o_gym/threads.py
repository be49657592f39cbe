"""How many CPU threads torch uses for our work: the thread policy of l2o-gym.

Why this exists. torch runs its CPU kernels on an OpenMP pool of ``torch.get_num_threads()`` threads
(default: one per core). The kernels of a batched env step or of an evaluation rollout are small (a
``1024×10×10`` ``bmm``, a ``[1024, 275]`` feature buffer): with an idle machine a second thread buys little,
and when **any other CPU-bound process** shares the cores, every parallel region waits for a descheduled
pool thread. On a 2-core machine with one competing process the native ``l2o/Quadratic-v0`` env at
``N = 1024`` ran at 0.3–0.45× of its idle speed with 2 threads, against 1.0–1.15× with 1 thread (figures in
``docs/benchmarks.md``, "Throughput beside a competing process"). The thread count also changes the
floating-point summation order of some kernels (matrix products inside the LSTM on 159k coordinates), so
results that must reproduce on every machine fix it (``docs/threads.md``).

The policy (one place, every caller documents which rule it takes):

* **Envs** (:class:`~l2o_gym.envs.L2OEnv`, :class:`~l2o_gym.envs.L2OVectorEnv`): argument ``threads``,
  default ``"auto"``: run ``reset``/``step`` with :func:`auto_threads` of the batch's work (1 thread below
  :data:`SMALL_WORK`, the caller's setting above it). ``threads=None`` leaves torch's setting alone; an int
  fixes it.
* **Evaluation** (:func:`l2o_gym.experiments.evaluation.evaluate`): ``threads=1`` by default, so an
  evaluation gives the same numbers on every CPU machine; ``threads=None`` uses the caller's setting.
  ``scripts/compare.py`` runs its independent evaluations in ``--workers`` processes instead.
* **Trainers** (``scripts/train_*.py``, ``scripts/gps_policy_bound.py``): ``--threads N`` (default 1),
  set once for the process at start-up and logged.

Every temporary change goes through :func:`torch_threads`, which restores the caller's setting on exit (also
on exceptions), so the user's global ``torch.set_num_threads`` is never changed behind their back.
Switching costs ~0.1 µs per call (measured: 2,000 pairs of ``set_num_threads`` calls), negligible next to a
step (~10 µs at ``N = 1``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

#: Elements of work per step (``N·F``: envs × observation size) below which the envs run on one thread
#: (``threads="auto"``). Measured on the 2-core machine (docs/threads.md): at ``N = 16384`` quadratics
#: (``N·F`` = 4.5·10⁶) one thread was within 10% of two idle and 4.7× faster beside a competing process; at
#: ``N = 65536`` (1.8·10⁷) two threads were 1.33× faster idle, so above the threshold the caller decides.
SMALL_WORK = 8_000_000


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int | str | None, name: str = "threads") -> int | str | None:
    """Validate a ``threads`` argument: a positive int, ``"auto"`` or ``None``; returns it unchanged."""
    if threads is None or threads == "auto":
        return threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"{name} must be a positive integer, 'auto' or None, got {threads!r}")
    return threads


def auto_threads(work: int) -> int | None:
    """The ``"auto"`` rule: 1 thread for ``work`` (elements touched per step) below :data:`SMALL_WORK`,
    else ``None`` (keep the caller's setting)."""
    return 1 if work < SMALL_WORK else None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` and restore the previous count afterwards.

    ``threads=None`` changes nothing. Only torch's intra-op pool is touched (BLAS calls made by torch use the
    same count); the inter-op pool and other libraries' pools are left alone.
    """
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
