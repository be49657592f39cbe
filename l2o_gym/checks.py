"""Argument checks shared by every layer: splits, devices, dtypes, positive numbers.

Each raises ``ValueError`` naming the bad value. This module imports only torch and numpy, so the problem
families, the core, the env adapters and the agents can all use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

#: The instance streams of every problem family: disjoint seed streams (``l2o_gym.problems.base.stream_seed``).
SPLITS: tuple[str, ...] = ("train", "val", "test")

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class UnknownArgumentError(TypeError, ValueError):
    """An unknown keyword argument (e.g. ``gymnasium.make("l2o/Quadratic-v0", frameskip=4)``).

    A ``TypeError``, as Python raises for an unexpected keyword and as gymnasium/TorchRL expect when they
    probe optional keywords; also a ``ValueError`` so code that catches this package's usual bad-argument
    error keeps working. Bad *values* of known arguments stay plain ``ValueError``s."""


def check_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise ``ValueError`` naming it."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return split

def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32``/``torch.float64`` or their names; anything else raises ``ValueError``."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: expected one of {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"unsupported dtype {dtype!r}: expected torch.float32 or torch.float64")
    return dtype

def resolve_device(device: torch.device | str) -> torch.device:
    """Parse ``device`` and check that it is usable here (e.g. ``'cuda'`` needs CUDA)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: expected e.g. 'cpu', 'cuda', 'cuda:0'") from exc
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}: expected 'cpu', 'cuda', 'cuda:K' or 'mps'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} requested but MPS is not available in this torch build/machine")
    return dev

def check_positive_int(name: str, value: Any) -> int:
    """Raise ``ValueError`` naming ``value`` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)

def _check_number(name: str, value: Any, what: str, allowed: Callable[[float], bool]) -> float:
    """``float(value)`` if it is a real number (not a bool or a numeric string) that is finite and ``allowed``,
    else ``ValueError`` naming ``name``, ``value`` and ``what`` it must be."""
    try:
        if isinstance(value, (bool, np.bool_, str, bytes)):  # float() would take True as 1 and "1e-3" as a number
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a {what} number, got {value!r}") from None
    if not np.isfinite(v) or not allowed(v):
        raise ValueError(f"{name} must be a finite {what} number, got {value!r}")
    return v


def check_positive(name: str, value: Any) -> float:
    """Raise ``ValueError`` naming ``value`` unless it is a finite positive number."""
    return _check_number(name, value, "positive", lambda v: v > 0)


def check_nonnegative(name: str, value: Any) -> float:
    """Raise ``ValueError`` naming ``value`` unless it is a finite number ``>= 0``."""
    return _check_number(name, value, "non-negative", lambda v: v >= 0)


def check_seed(value: Any) -> int:
    """Raise ``ValueError`` unless ``value`` is a non-negative integer (a seed)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


class NestedValueError(ValueError):
    """A bad value inside a nested setting (e.g. a trainer's ``family_kwargs``): ``where`` names the setting in the
    outer config's field names (which a script may turn into its flags), ``detail`` is the inner object's own
    message, in its own names."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.where, self.detail = where, detail


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` on one line, its lines stripped and joined by spaces (torch's load errors, for one, span several
    lines: the last would name neither the flag nor the file); cut to ``limit`` characters with ``…`` if given."""
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if limit is None or len(line) <= limit else line[: limit - 1] + "…"
