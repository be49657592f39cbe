"""Problem families: one module each, all batched over ``N`` instances (see :mod:`l2o_gym.problems.base`)."""

from __future__ import annotations

from typing import Any

from l2o_gym.problems.base import (
    SPLITS,
    ProblemBatch,
    ProblemFamily,
    ProblemSampler,
    check_split,
    stream_seed,
)
from l2o_gym.problems.quadratic import Quadratic

FAMILIES: dict[str, type[ProblemFamily]] = {
    "quadratic": Quadratic,
}


def _register_optional() -> None:
    # Families live in their own modules; importing them here keeps `make_family` the one entry point.
    from l2o_gym.problems import logistic_regression, mlp, neural_net, rastrigin, robust_linear_regression, rosenbrock

    for mod, cls in (
        (logistic_regression, "LogisticRegression"),
        (robust_linear_regression, "RobustLinearRegression"),
        (neural_net, "NeuralNet"),
        (mlp, "MLP"),
        (rosenbrock, "Rosenbrock"),
        (rastrigin, "Rastrigin"),
    ):
        family = getattr(mod, cls)
        FAMILIES[family.name] = family


try:
    _register_optional()
except ImportError:  # pragma: no cover - only while a family module is being written
    pass


def make_family(family: str | ProblemFamily, **kwargs: Any) -> ProblemFamily:
    """Build a family from its registry name and size arguments (or pass an instance through).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones) or a bad size argument.
    """
    if isinstance(family, ProblemFamily):
        if kwargs:
            raise ValueError(f"family arguments {sorted(kwargs)} given with an already-built family {family!r}")
        return family
    if family not in FAMILIES:
        raise ValueError(f"unknown problem family {family!r}: expected one of {', '.join(sorted(FAMILIES))}")
    cls = FAMILIES[family]
    try:
        return cls(**kwargs)
    except TypeError as exc:
        import dataclasses

        valid = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        raise ValueError(f"bad arguments {sorted(kwargs)} for family {family!r} (valid: {valid}): {exc}") from None


__all__ = [
    "FAMILIES",
    "SPLITS",
    "ProblemBatch",
    "ProblemFamily",
    "ProblemSampler",
    "Quadratic",
    "check_split",
    "make_family",
    "stream_seed",
]
