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
from l2o_gym.agents.gps import GPSPolicy, load_gps_policy  # noqa: E402,F401  (GPS learned optimizer)
from l2o_gym.agents.lstm import LSTMPolicy, load_pretrained  # noqa: E402,F401  (coordinatewise LSTM optimizer)
