"""One definition of "stable past the training horizon" (Open-L2O's test: run far beyond ``T``).

An optimizer trained for ``T`` steps is run to ``L > T`` steps on the same problems; with ``f_T`` the mean
objective at ``T`` and ``curve`` the mean objective at every step from ``T`` to ``L``:

* ``ratio = f_L / f_T`` and ``peak_ratio = max(curve) / f_T`` (``1`` for ``0/0``, ``inf`` for ``x/0``, ``x > 0``);
* the verdict is *diverges* if any problem diverged (or ``f_L`` is not finite), *stable* if ``peak_ratio ≤
  factor``, *recovers* if only ``ratio ≤ factor`` (the mean rose above ``factor·f_T`` in between and came back),
  else *grows*.

Used by GPS model selection (``--stable-factor``: only *stable* iterates can become ``gps_best``) and by the
study's long-horizon table (factor 1.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

VERDICTS: tuple[str, ...] = ("stable", "recovers", "grows", "diverges")


def ratio(value: float, reference: float) -> float:
    """``value / reference`` for objective ratios: ``1`` for ``0/0`` (or any ``value ≤ reference ≤ 0``), ``inf``
    for a positive value over a non-positive reference."""
    if reference > 0:
        return value / reference
    return 1.0 if value <= reference else math.inf


@dataclass(frozen=True)
class Stability:
    """The verdict of :func:`stability` and the numbers it rests on (see the module docstring)."""

    f_T: float
    f_long: float
    ratio: float
    peak_ratio: float
    diverged_fraction: float
    verdict: str

    @property
    def finite(self) -> bool:
        """No problem diverged and the final mean is finite."""
        return self.verdict != "diverges"

    @property
    def stable(self) -> bool:
        return self.verdict == "stable"


def stability(f_T: float, curve: Sequence[float], diverged_fraction: float, factor: float) -> Stability:
    """Classify a run past its horizon.

    Args:
        f_T: mean objective at the training horizon ``T``.
        curve: mean objective at every step from ``T`` to the long horizon ``L`` (inclusive; its first entry is
            the value at ``T`` and its last the value at ``L``).
        diverged_fraction: fraction of problems that diverged by ``L`` (a diverged problem keeps its last
            finite objective in the mean, so divergence is judged apart from the curve).
        factor: tolerance (``>= 1``): the study uses 1.1, GPS selection its ``stable_factor``.
    """
    if not len(curve):
        raise ValueError("curve must hold at least the value at the horizon")
    if not factor >= 1:
        raise ValueError(f"factor must be >= 1 (a peak ratio is never below 1), got {factor!r}")
    f_long, peak = float(curve[-1]), max(float(v) for v in curve)
    r, p = ratio(f_long, f_T), ratio(peak, f_T)
    if diverged_fraction > 0 or not math.isfinite(f_long):
        verdict = "diverges"
    elif p <= factor:
        verdict = "stable"
    elif r <= factor:
        verdict = "recovers"
    else:
        verdict = "grows"
    return Stability(float(f_T), f_long, r, p, float(diverged_fraction), verdict)
