"""What the GPS global-policy class can reach when it is trained with exact meta-gradients.

GPS trains its global policy (a :class:`~l2o_gym.agents.gps.global_policy.GaussianMLP` on the observation
``o_t = core.features(state)``) *indirectly*, by regression onto LQR-improved local controllers. This module
trains the *same* model on the *same* observation *directly*: the mean objective over a ``T``-step unroll,
``L(φ) = (1/(T·N)) Σ_t Σ_n f_n(θ_{n,t+1})``, is minimised by Adam with gradients backpropagated through the
unroll (the features are cut from the graph, as in Andrychowicz et al.; the gradient flows through the
iterates θ) by the one BPTT trainer (:class:`l2o_gym.agents.bptt.BPTT`), in the common run lifecycle
(:func:`l2o_gym.agents.common.fit`). A fresh batch of ``train`` problems is drawn every episode and the best
policy on ``val`` is kept.

The result is a diagnostic, not a learned optimizer of its own: it tells how far the *policy class* is from a
target, independently of how well GPS optimises within it. It is not a strict bound (BPTT finds a local
optimum of ``L``), but a GPS policy that does much worse than it is limited by the GPS approximation, and a
target this one cannot reach is out of reach of the class. ``scripts/gps_policy_bound.py`` runs it; the
checkpoint is a :class:`~l2o_gym.agents.gps.policy.GPSPolicy` (``kind="gps"``), so
``scripts/train_gps.py --evaluate`` and ``compare.py --policies gps=CKPT`` take it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from l2o_gym import core
from l2o_gym.agents.baselines import GradientDescent
from l2o_gym.agents.bptt import BPTT, mean_cost
from l2o_gym.agents.common import Agent, fit
from l2o_gym.agents.gps.global_policy import GaussianMLP
from l2o_gym.agents.gps.policy import GPSPolicy
from l2o_gym.agents.tuning import final_objective, tuned_gd_step
from l2o_gym.checks import check_nonnegative, check_seed, resolve_device
from l2o_gym.core import CoreConfig, State
from l2o_gym.policy import Policy

log = logging.getLogger(__name__)

#: activations of the Gaussian MLP (:class:`~l2o_gym.agents.gps.global_policy.GaussianMLP`).
ACTIVATIONS: tuple[str, ...] = ("softplus", "tanh", "relu")


@dataclass
class BoundConfig:
    """Direct (BPTT) training of the GPS global-policy class.

    Attributes:
        env_id: registered env id (its problem family).
        horizon: unroll length ``T`` (the whole episode; no truncation).
        history: ``H`` of the features.
        include_steps: also feed the last ``H`` steps, as GPS's ``--include-steps``.
        hidden: hidden widths of the Gaussian MLP (GPS default: one layer of 50 softplus units).
        activation: its activation.
        episodes: Adam steps, each on a fresh batch of ``batch`` ``train`` problems.
        batch: problems per episode.
        lr: Adam learning rate.
        clip: global gradient-norm clip (0: none).
        n_val: ``val`` problems for model selection.
        val_every: validate every this many episodes.
        seed: seeds the model, the problem streams and the normalisation batch.
        device: torch device.
    """

    env_id: str = "l2o/LogisticRegression-v0"
    horizon: int = 20
    history: int = 5
    include_steps: bool = True
    hidden: tuple[int, ...] = (50,)
    activation: str = "softplus"
    episodes: int = 15000
    batch: int = 128
    lr: float = 1e-3
    clip: float = 1.0
    n_val: int = 100
    val_every: int = 100
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        from l2o_gym.registry import ENV_IDS

        self.hidden = tuple(self.hidden)
        if self.env_id not in ENV_IDS:
            raise ValueError(f"unknown env id {self.env_id!r}: expected one of {', '.join(ENV_IDS)}")
        for name in ("horizon", "history", "episodes", "batch", "n_val", "val_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be >= 1, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        check_nonnegative("clip", self.clip)
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be positive integer widths, got {self.hidden!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        check_seed(self.seed)
        resolve_device(self.device)


class _Differentiable(Policy):
    """The model's mean step with gradients (the checkpointed :class:`GPSPolicy` acts under ``no_grad``)."""

    def __init__(self, model: GaussianMLP) -> None:
        self.model = model

    def act(self, state: State, memory: Any) -> tuple[Tensor, Any]:
        return self.model(core.features(state)), memory


class BoundAgent(Agent):
    """The bound's part of the run lifecycle: one BPTT step (:class:`~l2o_gym.agents.bptt.BPTT`) over the whole
    horizon on a fresh ``train`` batch per iteration, validation on ``val`` every ``val_every`` episodes. Its
    checkpoints are GPS policies (``kind="gps"``) named ``bound_best`` / ``bound_last``."""

    kind = "bound"
    baselines = ("sgd",)
    structural = ("env_id", "horizon", "history", "include_steps", "hidden", "activation", "n_val", "seed")

    def __init__(self, cfg: BoundConfig) -> None:
        from l2o_gym.registry import env_family

        super().__init__()
        self.config = cfg
        self.val_every = cfg.val_every
        self.device = device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.family = family = env_family(cfg.env_id)
        self.cc = cc = CoreConfig(horizon=cfg.horizon, history=cfg.history, include_steps=cfg.include_steps, validate=False)
        self.val = family.sample(cfg.n_val, "val", cfg.seed, device=device)
        self.d = d = self.val.x0.shape[1]
        self.model = GaussianMLP(core.obs_dim(cc, d), d, cfg.hidden, cfg.activation).to(device)
        self.gd_lr, self.gd_val = tuned_gd_step(self.val, cfg.horizon)
        # Input/output scales from tuned gradient descent's trajectories on a train batch (not seen again).
        with torch.no_grad():
            probs = family.sample(256, "train", cfg.seed + 10**6, device=device)
            state, gd = core.reset(probs, cc), GradientDescent(self.gd_lr)
            obs, act = [], []
            for _ in range(cfg.horizon):
                u, _ = gd.act(state, None)
                obs.append(core.features(state))
                act.append(u)
                state, *_ = core.step(state, u)
            self.model.set_normalization(torch.cat(obs), torch.cat(act))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.bptt = BPTT(_Differentiable(self.model), self.model.parameters(), self.opt, mean_cost, cfg.clip)
        self.episode = 0
        self.best_state = {k: v.clone() for k, v in self.model.state_dict().items()}

    def policy(self) -> GPSPolicy:
        return _result(self.model, self.cc, self.d, self.config)

    def summary(self) -> dict[str, Any]:
        """``best_val``, ``best_episode`` (0: none), ``gd``, ``curve`` ([[episode, val_final], …]), ``config``."""
        cfg, rec = self.config, self.record
        per_episode = cfg.batch * cfg.horizon  # env steps of one episode: the curve's x-axis in episodes
        curve = [[int(s) // per_episode, float(v)] for s, v in rec.curve]
        best_ep = max(rec.best_iteration, 0)  # one iteration = one episode
        return {"best_val": rec.best_val, "best_episode": best_ep, "gd": {"lr": self.gd_lr, "val_final": self.gd_val},
                "curve": curve, "config": {**dataclasses.asdict(cfg), "hidden": list(cfg.hidden)}}

    # -- the Agent contract --------------------------------------------------------------------------
    def iteration(self) -> dict[str, float]:
        cfg = self.config
        problems = self.family.sample(cfg.batch, "train", cfg.seed + 1 + self.episode, device=self.device)
        r = self.bptt.step(core.reset(problems, self.cc), None, cfg.horizon, label=f"episode {self.episode + 1}")
        self.episode += 1
        return {"episode": self.episode, "meta_loss": r.loss, "skipped": float(not r.updated)}

    def validate(self) -> float:
        return final_objective(self.bptt.policy, self.val, self.config.horizon, self.cc)

    def on_best(self) -> None:
        self.best_state = {k: t.clone() for k, t in self.model.state_dict().items()}

    def save_policy(self, path: Path, extra: dict[str, Any]) -> Path:
        return self.policy().save(path, extra)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"bound": self.summary()}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "episode": self.episode,
                "best_state": self.best_state, "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.episode = int(state["episode"])
        self.best_state = dict(state["best_state"])
        torch.set_rng_state(state["torch_rng"])

    @property
    def iterations_done(self) -> int:
        return self.episode

    @property
    def iterations_total(self) -> int:
        return self.config.episodes

    @property
    def env_steps(self) -> int:
        return self.episode * self.config.batch * self.config.horizon

    def baseline_problems(self) -> tuple[Any, int]:
        return self.val, self.config.horizon


def train_bound(
    cfg: BoundConfig, out: str | Path | None = None, *, progress: bool = True, resume: bool = False,
    tensorboard: bool = True,
) -> tuple[GPSPolicy, dict[str, Any]]:
    """Train the global-policy class by BPTT through the common lifecycle; keep the best on ``val``.

    Returns:
        ``(policy, summary)``: the best policy (deterministic mean; the initial one with ``best_episode`` 0 if
        no validation was finite) and the lifecycle's summary with ``{"best_val", "best_episode",
        "gd": {"lr", "val_final"}, "curve": [[episode, val_final], ...]}``, ``gd`` being gradient descent tuned
        on the same ``val`` problems. With ``out``, the run folder holds ``bound_best.safetensors`` (a GPS policy
        checkpoint, this summary under ``"bound"`` in its config), ``bound_last.safetensors``, ``state.pt``
        (``resume``) and ``summary.json``.
    """
    agent = BoundAgent(cfg)
    summary = fit(agent, out, resume=resume, progress=progress, tensorboard=tensorboard, desc=f"bound {cfg.env_id}")
    agent.model.load_state_dict(agent.best_state)
    bound = agent.summary()
    log.info("%s: best val %.5g at episode %d (tuned GD %.5g)", cfg.env_id, bound["best_val"], bound["best_episode"],
             agent.gd_val)
    return agent.policy(), {**summary, **bound}


def _result(model: GaussianMLP, cc: CoreConfig, d: int, cfg: BoundConfig) -> GPSPolicy:
    return GPSPolicy(model, dataclasses.replace(cc, validate=True), d, cfg.env_id)
