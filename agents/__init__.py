"""Optimizers as :class:`l2o_gym.policy.Policy` objects: hand-designed baselines and learned optimizers."""

from l2o_gym.agents.baselines import (
    BASELINES,
    LBFGS,
    Adagrad,
    Adam,
    ConjugateGradient,
    GradientDescent,
    Momentum,
    Nesterov,
    RMSprop,
    make_baseline,
)
from l2o_gym.agents.gps import GPSPolicy, load_gps_policy  # GPS learned optimizer
from l2o_gym.agents.lstm import LSTMPolicy, load_pretrained  # coordinatewise LSTM optimizer

__all__ = [
    "BASELINES",
    "LBFGS",
    "Adagrad",
    "Adam",
    "ConjugateGradient",
    "GradientDescent",
    "Momentum",
    "Nesterov",
    "RMSprop",
    "make_baseline",
    "GPSPolicy",
    "load_gps_policy",
    "LSTMPolicy",
    "load_pretrained",
]
