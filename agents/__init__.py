"""Optimizers as :class:`l2o_gym.policy.Policy` objects: hand-designed baselines and learned optimizers."""

from l2o_gym.agents.baselines import GradientDescent

__all__ = ["GradientDescent"]
