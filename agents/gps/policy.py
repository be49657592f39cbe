"""The trained GPS global policy as a :class:`~l2o_gym.policy.Policy`, and its checkpoints.

At test time the policy is deterministic: ``Δθ = μ_φ(o_t)``, the mean of the Gaussian MLP, on the
observation ``o_t = core.features(state)`` built with the :class:`~l2o_gym.core.CoreConfig` it was trained
with (history length ``H`` …), exposed as :attr:`GPSPolicy.core_config` (the evaluation resets problems with
it). If it is run on a state built with another config, the policy keeps its own *shadow* state with its
config, advanced from the same objective values and gradients (no extra evaluations), so the features are
always the trained ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from l2o_gym import core
from l2o_gym.agents.gps.global_policy import GaussianMLP
from l2o_gym.checkpoint import (
    CheckpointError, check_compatible, check_shapes, config_field, keeps_rng_state, load_policy_file,
    save_policy,
)
from l2o_gym.core import CoreConfig, State
from l2o_gym.policy import FeatureView, Policy

KIND = "gps"


class GPSPolicy(Policy):
    """Deterministic GPS global policy ``Δθ = μ_φ(features(state))``.

    Args:
        model: the trained :class:`GaussianMLP`.
        core_config: the core config whose features the model reads (``history``, ``include_steps``, …).
        dim: problem dimension ``d`` it was trained for.
        env_id: the env it was trained on (for compatibility checks), optional.
        max_step: optional clip on each step's entries (``None``: none), a safety net far past the horizon.
    """

    name = "gps"

    def __init__(
        self,
        model: GaussianMLP,
        core_config: CoreConfig,
        dim: int,
        env_id: str | None = None,
        max_step: float | None = None,
    ) -> None:
        self.model = model.eval()
        self.core_config = core_config
        self.view = FeatureView(core_config)
        self.dim = dim
        self.env_id = env_id
        if max_step is not None and not max_step > 0:  # a negative clip would make every step -|max_step|
            raise ValueError(f"max_step must be None or a positive number, got {max_step!r}")
        self.max_step = max_step
        expect = core.obs_dim(core_config, dim)
        if model.obs_dim != expect:
            raise ValueError(f"model reads {model.obs_dim} features, the core config gives {expect} for d={dim}")

    def reset(self, state: State) -> Any:
        if state.dim != self.dim:
            raise ValueError(f"GPS policy trained for dimension {self.dim}, the problems have {state.dim}")
        return self.view.start(state)

    def act(self, state: State, memory: Any) -> tuple[Tensor, Any]:
        obs, memory = self.view.observe(state, memory)
        dtype = self.model.in_mean.dtype
        with torch.no_grad():
            step = self.model(obs.to(dtype)).to(state.theta.dtype)
        if self.max_step is not None:
            step = step.clamp(-self.max_step, self.max_step)
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
        return step, memory

    # ------------------------------------------------------------------ checkpoints
    def config_dict(self) -> dict[str, Any]:
        cc = dataclasses.asdict(self.core_config)
        return {
            "kind": KIND,
            "env_id": self.env_id,
            "dim": self.dim,
            "obs_dim": self.model.obs_dim,
            "hidden": list(self.model.hidden),
            "activation": self.model.activation,
            "core_config": cc,
            "max_step": self.max_step,
        }

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write a safetensors checkpoint (weights + JSON config, ``extra`` merged into the config)."""
        return save_policy(path, dict(self.model.state_dict()), {**self.config_dict(), **(extra or {})})


@keeps_rng_state
def load_gps_policy(
    path: str | Path, *, env_id: str | None = None, dim: int | None = None, device: str | torch.device = "cpu"
) -> GPSPolicy:
    """Load a :class:`GPSPolicy` checkpoint.

    Raises:
        CheckpointError: wrong kind (a convolutional-GPS checkpoint names :func:`load_policy`, which loads both),
            env id or dimension, or weights that do not fit the stored architecture.
    """
    from l2o_gym.agents.gps.coord_policy import KIND as CONV_KIND
    from l2o_gym.checkpoint import read_policy_config

    try:
        tensors, cfg = load_policy_file(path, kind=KIND, device=device)
    except CheckpointError:
        if Path(path).is_file() and read_policy_config(path).get("kind") == CONV_KIND:  # the other GPS kind
            raise CheckpointError(f"checkpoint {str(path)!r} is a convolutional-GPS policy (kind {CONV_KIND!r}): load "
                                  "it with l2o_gym.agents.gps.load_policy (either GPS kind) or ConvGPSPolicy.load") from None
        raise
    check_compatible(cfg, path, env_id=env_id, dim=dim)
    obs_dim, d = config_field(cfg, path, "obs_dim", int), config_field(cfg, path, "dim", int)
    hidden = config_field(cfg, path, "hidden", list)
    activation = config_field(cfg, path, "activation", str)
    core_d = config_field(cfg, path, "core_config", dict)
    max_step = config_field(cfg, path, "max_step", float, optional=True)
    if max_step is not None and not max_step > 0:
        raise CheckpointError(f"checkpoint {str(path)!r}: config field 'max_step' must be null or a positive number, "
                              f"got {max_step!r}")
    if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden) or obs_dim < 1 or d < 1:
        raise CheckpointError(f"checkpoint {str(path)!r}: config fields 'obs_dim', 'dim', 'hidden' must be positive "
                              f"integers, got {obs_dim!r}, {d!r}, {hidden!r}")
    check_shapes(path, tensors, expected_shapes(obs_dim, d, tuple(hidden)))  # before building anything
    try:
        core_config = CoreConfig(**core_d)
        model = GaussianMLP(obs_dim, d, tuple(hidden), activation)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} has an invalid 'core_config' or 'activation': {exc}") from None
    model = model.to(device=device, dtype=next(iter(tensors.values())).dtype)
    model.load_state_dict(tensors)
    policy = GPSPolicy(model, core_config, d, cfg.get("env_id"), max_step)
    policy.checkpoint_config = cfg
    return policy


def expected_shapes(obs_dim: int, dim: int, hidden: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a :class:`GaussianMLP` (checked before one is built from a checkpoint)."""
    shapes: dict[str, tuple[int, ...]] = {"in_mean": (obs_dim,), "in_std": (obs_dim,), "out_mean": (dim,),
                                          "out_std": (dim,), "cov": (dim, dim)}
    width = obs_dim
    for i, h in enumerate((*hidden, dim)):
        shapes[f"net.{2 * i}.weight"], shapes[f"net.{2 * i}.bias"] = (h, width), (h,)
        width = h
    return shapes


def load_policy(path: str | Path, *, env_id: str | None = None, device: str | torch.device = "cpu") -> Policy:
    """The GPS kind's loader (``compare --policies gps[=CKPT]``): a small-problem GPS checkpoint
    (:func:`load_gps_policy`) or a convolutional-GPS one (header kind ``"conv_gps"``,
    :class:`~l2o_gym.agents.gps.coord_policy.ConvGPSPolicy`), by the kind in its header."""
    from l2o_gym.agents.gps.coord_policy import KIND as CONV_KIND, ConvGPSPolicy
    from l2o_gym.checkpoint import read_policy_config

    if read_policy_config(path).get("kind") == CONV_KIND:
        return ConvGPSPolicy.load(path, device=device, env_id=env_id)
    return load_gps_policy(path, env_id=env_id, device=device)
