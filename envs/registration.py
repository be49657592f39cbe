"""Registration of the env ids with gymnasium. The id table itself is data about problems and lives in the
foundation, :mod:`l2o_gym.registry`; this module re-exports it for the adapter package."""

from l2o_gym.registry import ENV_IDS, ENV_TABLE, VARIANTS, register_envs

__all__ = ["ENV_IDS", "ENV_TABLE", "VARIANTS", "register_envs"]
