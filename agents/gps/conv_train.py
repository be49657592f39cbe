"""Convolutional GPS in the common run lifecycle (:func:`l2o_gym.agents.common.fit`).

    python scripts/train_conv_gps.py --env l2o/MLP-v0 --iterations 10 --out runs/cgps

One :class:`~l2o_gym.agents.gps.conv.ConvGPSTrainer` iteration per lifecycle iteration; validation runs the
deterministic global policy on the ``val`` problems (optionally to ``long_factor · T``: only iterates stable
past the horizon are eligible, :func:`l2o_gym.stability.stability`). Checkpoints are ``gps_best`` /
``gps_last`` with the header kind ``"conv_gps"``; ``compare --policies gps`` loads them
(:func:`l2o_gym.agents.gps.load_policy` dispatches on the kind). Run with ``torchrun`` to sample on several
processes (gloo on CPU, nccl on GPU): every rank holds the same policy; rank 0 writes the run folder.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from l2o_gym.agents.common import fit
from l2o_gym.agents.gps.conv import ConvGPSConfig, ConvGPSTrainer
from l2o_gym.agents.gps.coord_policy import ConvGPSPolicy
from l2o_gym.agents.gps.train import SelectedGPSAgent
from l2o_gym.checkpoint import CheckpointError
from l2o_gym.checks import check_positive_int
from l2o_gym.distributed import world

log = logging.getLogger(__name__)

#: file prefix of the run's checkpoints (the ``gps`` policy kind of ``compare``).
FILE_KIND = "gps"

#: settings a resumed run must keep (dotted for :class:`ConvGPSConfig` fields): the training and ``val`` problems
#: (the best validation value is compared across the resume), what the controllers, the cost model and the
#: policy's features mean, and the shapes of the saved state.
STRUCTURAL: tuple[str, ...] = (
    "n_conditions", "n_val", "seed", "gps.horizon", "gps.step_unit", "gps.grad_average", "gps.cost",
    "gps.area_weight", "gps.cost_scale", "gps.action_penalty", "gps.share_conditions", "gps.hidden",
)


@dataclass
class ConvGPSTrainConfig:
    """Everything a convolutional-GPS run needs (stored in checkpoints and the state file).

    Args:
        env_id: registered env id whose family (with ``family_kwargs``) supplies the problems; its
            ``param_specs()`` are the coordinate groups.
        family_kwargs: family keyword overrides (e.g. a named variant's).
        n_conditions: ``M`` training problems (``train`` split, seed ``seed``).
        n_val: ``val`` problems for model selection.
        iterations: convolutional-GPS iterations.
        stable_factor: ``> 0``: an iterate is eligible as ``gps_best`` only if its mean val objective stays
            ≤ ``stable_factor × f(T)`` up to ``long_factor · T`` with no divergence; ``0``: select on ``f(T)``.
        long_factor: horizon multiple of that check.
        baselines: baselines whose tuned ``val`` objective is the sample-efficiency target.
        seed: seed of the conditions and val problems (the loop's own seed is ``gps.seed``).
        gps: the loop's hyperparameters (horizon ``T`` is ``gps.horizon``).
    """

    env_id: str = "l2o/MLP-v0"
    family_kwargs: dict[str, Any] = field(default_factory=dict)
    n_conditions: int = 4
    n_val: int = 32
    iterations: int = 10
    stable_factor: float = 0.0
    long_factor: int = 2
    baselines: tuple[str, ...] = ("sgd", "momentum", "nag", "adam", "rmsprop")
    seed: int = 0
    gps: ConvGPSConfig = field(default_factory=ConvGPSConfig)

    def __post_init__(self) -> None:
        from l2o_gym.agents.baselines import check_baseline_names
        from l2o_gym.registry import check_env_id

        if isinstance(self.gps, dict):
            self.gps = ConvGPSConfig(**self.gps)
        check_env_id(self.env_id)
        if not isinstance(self.family_kwargs, dict):
            raise ValueError(f"family_kwargs must be a dict, got {self.family_kwargs!r}")
        for name in ("n_conditions", "n_val", "iterations", "long_factor"):
            check_positive_int(name, getattr(self, name))
        if not (self.stable_factor == 0 or self.stable_factor >= 1):
            raise ValueError(f"stable_factor must be 0 or >= 1, got {self.stable_factor!r}")
        self.baselines = check_baseline_names(self.baselines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ConvGPSAgent(SelectedGPSAgent):
    """Convolutional GPS's part of the run lifecycle (module docstring)."""

    kind = FILE_KIND
    structural = STRUCTURAL

    @property
    def horizon(self) -> int:
        return self.config.gps.horizon

    def policy(self) -> ConvGPSPolicy:
        return self.trainer.policy()

    def __init__(self, cfg: ConvGPSTrainConfig, device: str = "cpu") -> None:
        from l2o_gym.registry import env_family

        super().__init__()
        self.config = cfg
        self.baselines = cfg.baselines
        family = env_family(cfg.env_id, **cfg.family_kwargs)
        self.problems = family.sample(cfg.n_conditions, "train", cfg.seed, device=device, dtype=torch.float64)
        self.val = family.sample(cfg.n_val, "val", cfg.seed, device=device, dtype=torch.float64)
        self.trainer = ConvGPSTrainer(self.problems, cfg.gps)
        self.writes = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0

    # -- the Agent contract --------------------------------------------------------------------------
    def iteration(self) -> dict[str, float]:
        return self.trainer.iteration()

    def save_policy(self, path: Path, extra: dict[str, Any]) -> Path:
        return self.trainer.policy_for(self.config.env_id).save(path, extra)

    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.trainer.state_dict(), "selection": self.selection_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state["trainer"])

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        super().check_resume(state, path)
        if "trainer" not in state or "local" not in state["trainer"]:
            raise CheckpointError(f"training state {str(path)!r} is not a convolutional-GPS state")

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"init_lr": self.trainer.init_lr}

    def summary_extra(self) -> dict[str, Any]:
        return {"dropped_samples": self.trainer.n_dropped, "init_lr": self.trainer.init_lr,
                "mean_iteration_wall_s": sum(h.get("wall_s", 0.0) for h in self.history) / max(1, len(self.history))}


def train_conv_gps(
    cfg: ConvGPSTrainConfig, out_dir: str | Path | None, *, resume: bool = False, progress: bool = True,
    tensorboard: bool = True, device: str = "cpu",
) -> dict[str, Any]:
    """Train convolutional GPS through the common lifecycle; returns the summary (``out_dir/summary.json``).
    Under ``torchrun`` only rank 0 shows the progress bar."""
    return fit(ConvGPSAgent(cfg, device), out_dir, resume=resume, progress=progress and world()[0] == 0,
               tensorboard=tensorboard,
               desc=f"conv GPS {cfg.env_id}")
