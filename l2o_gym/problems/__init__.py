"""Problem families: one module each, all batched over ``N`` instances (see :mod:`l2o_gym.problems.base`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from l2o_gym.checks import SPLITS, UnknownArgumentError, check_split
from l2o_gym.problems.base import ParamSpec, ProblemBatch, ProblemFamily, ProblemSampler, param_specs_from, stream_seed
from l2o_gym.problems.convnet import ConvNet
from l2o_gym.problems.logistic_regression import LogisticRegression
from l2o_gym.problems.mlp import MLP
from l2o_gym.problems.neural_art import NeuralArt
from l2o_gym.problems.neural_net import NeuralNet
from l2o_gym.problems.nn_classifier import NNClassifier
from l2o_gym.problems.quadratic import Quadratic
from l2o_gym.problems.rastrigin import Rastrigin
from l2o_gym.problems.robust_linear_regression import RobustLinearRegression
from l2o_gym.problems.rosenbrock import Rosenbrock

#: registry name -> family class; :func:`make_family` is the one entry point.
FAMILIES: dict[str, type[ProblemFamily]] = {
    cls.name: cls
    for cls in (Quadratic, LogisticRegression, RobustLinearRegression, NeuralNet, MLP, Rosenbrock, Rastrigin, NeuralArt,
                ConvNet, NNClassifier)
}


def make_family(family: str | ProblemFamily, **kwargs: Any) -> ProblemFamily:
    """Build a family from its registry name and size arguments (or pass an instance through).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones) or a bad size argument.
        UnknownArgumentError: (a ``TypeError`` and a ``ValueError``) for an unknown keyword argument.
    """
    if isinstance(family, ProblemFamily):
        if kwargs:
            raise ValueError(f"family arguments {sorted(kwargs)} given with an already-built family {family!r}")
        return family
    if family not in FAMILIES:
        raise ValueError(f"unknown problem family {family!r}: expected one of {', '.join(sorted(FAMILIES))}")
    cls = FAMILIES[family]
    valid = [f.name for f in dataclasses.fields(cls) if f.init] if dataclasses.is_dataclass(cls) else []
    unknown = sorted(k for k in kwargs if valid and k not in valid)
    if unknown:
        # Python's own wording ("unexpected keyword argument 'x'"), which TorchRL's GymEnv matches.
        raise UnknownArgumentError(
            f"family {family!r} got an unexpected keyword argument {unknown[0]!r} (unknown: {unknown}; valid: {valid})"
        )
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments {sorted(kwargs)} for family {family!r} (valid: {valid}): {exc}") from None


__all__ = [
    "FAMILIES",
    "ConvNet",
    "SPLITS",
    "ProblemBatch",
    "ProblemFamily",
    "ProblemSampler",
    "LogisticRegression",
    "MLP",
    "ParamSpec",
    "NeuralArt",
    "NeuralNet",
    "NNClassifier",
    "Quadratic",
    "Rastrigin",
    "RobustLinearRegression",
    "Rosenbrock",
    "check_split",
    "make_family",
    "param_specs_from",
    "stream_seed",
]
