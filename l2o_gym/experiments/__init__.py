"""The top layer: evaluation harness, tuning protocol, comparisons, study presets, benchmarks, demo.

It may import everything below it (foundation, :mod:`l2o_gym.envs`, :mod:`l2o_gym.agents`); nothing below
imports it.
"""
