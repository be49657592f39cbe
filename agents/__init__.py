"""Optimizers as :class:`l2o_gym.policy.Policy` objects: hand-designed baselines and learned optimizers."""

from l2o_gym.agents.baselines import (
    BASELINES,
    LBFGS,
    Adam,
    ConjugateGradient,
    GradientDescent,
    Momentum,
    Nesterov,
    RMSprop,
    make_baseline,
)

__all__ = [
    "BASELINES",
    "LBFGS",
    "Adam",
    "ConjugateGradient",
    "GradientDescent",
    "Momentum",
    "Nesterov",
    "RMSprop",
    "make_baseline",
]
