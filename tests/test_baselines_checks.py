"""Baseline hyperparameter checks: every bad value is refused at construction with a ValueError naming it."""

from __future__ import annotations

import numpy as np
import pytest

from l2o_gym.agents import LBFGS, Adagrad, Adam, GradientDescent, Momentum, RMSprop


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Momentum(0.1, "0.9"), "momentum must be in \\[0, 1\\), got '0.9'"),
        (lambda: Momentum(0.1, None), "momentum must be in \\[0, 1\\), got None"),
        (lambda: RMSprop(0.1, alpha="0.9"), "alpha must be in \\[0, 1\\), got '0.9'"),
        (lambda: Adam(0.1, (0.9,)), "betas must be a pair"),
        (lambda: Adam(0.1, 0.9), "betas must be a pair"),
        (lambda: Adam(0.1, eps="1e-8"), "eps must be a finite positive number, got '1e-8'"),
        (lambda: Adam(0.1, eps=float("inf")), "eps must be a finite positive number, got inf"),
        (lambda: RMSprop(0.1, eps=None), "eps must be a finite positive number, got None"),
        (lambda: Adagrad(0.1, eps=float("inf")), "eps must be a finite positive number, got inf"),
        (lambda: Adagrad(0.1, initial_accumulator_value=float("inf")), "initial_accumulator_value .* got inf"),
        (lambda: GradientDescent(True), "lr must be a finite positive number, got True"),
        (lambda: LBFGS(0), "history must be a positive integer, got 0"),
        (lambda: LBFGS(-1), "history must be a positive integer, got -1"),
        (lambda: LBFGS(2.7), "history must be a positive integer, got 2.7"),
        (lambda: Momentum(0.1, 0.9, nesterov="no"), "nesterov must be True or False, got 'no'"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_numpy_numbers_are_accepted_as_numbers():
    # a finite positive NumPy float32 is a valid step size (it was refused as "not a finite positive number")
    assert GradientDescent(np.float32(0.5)).lr == 0.5
    assert Adam(np.float32(0.5), (np.float32(0.5), 0.75)).betas == (0.5, 0.75)
    assert LBFGS(np.int64(5)).options["maxcor"] == 5

