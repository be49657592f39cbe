"""What the GPS global-policy class can reach when it is trained with exact meta-gradients.

GPS trains its global policy (a :class:`~l2o_gym.agents.gps.global_policy.GaussianMLP` on the observation
``o_t = core.features(state)``) *indirectly*, by regression onto LQR-improved local controllers. This module
trains the *same* model on the *same* observation *directly*: the mean objective over a ``T``-step unroll,
``L(φ) = (1/(T·N)) Σ_t Σ_n f_n(θ_{n,t+1})``, is minimised by Adam with gradients backpropagated through the
unroll (the features are cut from the graph, as in Andrychowicz et al.; the gradient flows through the
iterates θ). A fresh batch of ``train`` problems is drawn every episode and the best policy on ``val`` is kept.

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
from tqdm.auto import tqdm

from l2o_gym import core
from l2o_gym.agents.gps.global_policy import GaussianMLP
from l2o_gym.agents.gps.policy import GPSPolicy
from l2o_gym.agents.tuning import final_objective, tuned_gd_step
from l2o_gym.agents.baselines import GradientDescent
from l2o_gym.core import CoreConfig, State
from l2o_gym.policy import Policy, rollout

log = logging.getLogger(__name__)


@dataclass
class BoundConfig:
    """Direct (BPTT) training of the GPS global-policy class.

    Attributes:
        env_id: registered env id (its problem family).
        horizon: unroll length ``T`` (the whole episode; no truncation).
        history: ``H`` of the features; ``include_steps`` as in GPS (``--include-steps``).
        hidden, activation: the Gaussian MLP (GPS default: one layer of 50 softplus units).
        episodes: Adam steps, each on a fresh batch of ``batch`` ``train`` problems.
        lr: Adam learning rate; clip: global gradient-norm clip (0: none).
        n_val: ``val`` problems for model selection, evaluated every ``val_every`` episodes.
        seed: seeds the model, the problem streams and the normalisation batch.
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
        for name in ("horizon", "history", "episodes", "batch", "n_val", "val_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")


class _Differentiable(Policy):
    """The model's mean step with gradients (the checkpointed :class:`GPSPolicy` acts under ``no_grad``)."""

    def __init__(self, model: GaussianMLP) -> None:
        self.model = model

    def act(self, state: State, memory: Any) -> tuple[Tensor, Any]:
        return self.model(core.features(state)), memory


def train_bound(cfg: BoundConfig, out: str | Path | None = None, *, progress: bool = True) -> tuple[GPSPolicy, dict[str, Any]]:
    """Train the global-policy class by BPTT; keep the best on ``val``.

    Returns:
        ``(policy, summary)``: the best policy (deterministic mean; the initial one with ``best_episode`` 0 if
        no validation was finite) and ``{"best_val", "best_episode",
        "gd": {"lr", "val_final"}, "curve": [[episode, val_final], ...]}``, ``gd`` being gradient descent tuned
        on the same ``val`` problems. With ``out``, the best policy is written to ``out/bound_best.safetensors``
        (atomically) whenever it improves, and the summary to its config.
    """
    from l2o_gym.registry import env_family

    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    family = env_family(cfg.env_id)
    cc = CoreConfig(horizon=cfg.horizon, history=cfg.history, include_steps=cfg.include_steps, validate=False)
    val = family.sample(cfg.n_val, "val", cfg.seed, device=device)
    d = val.x0.shape[1]
    model = GaussianMLP(core.obs_dim(cc, d), d, cfg.hidden, cfg.activation).to(device)
    gd_lr, gd_val = tuned_gd_step(val, cfg.horizon)
    # Input/output scales from tuned gradient descent's trajectories on a train batch (not seen again).
    with torch.no_grad():
        probs = family.sample(256, "train", cfg.seed + 10**6, device=device)
        state, gd = core.reset(probs, cc), GradientDescent(gd_lr)
        obs, act = [], []
        for _ in range(cfg.horizon):
            u, _ = gd.act(state, None)
            obs.append(core.features(state))
            act.append(u)
            state, *_ = core.step(state, u)
        model.set_normalization(torch.cat(obs), torch.cat(act))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    policy, path = _Differentiable(model), (Path(out) / "bound_best.safetensors" if out is not None else None)
    best, best_ep, curve = math.inf, 0, []
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    bar = tqdm(range(cfg.episodes), desc=f"bound {cfg.env_id}", disable=not progress)
    for ep in bar:
        problems = family.sample(cfg.batch, "train", cfg.seed + 1 + ep, device=device)
        loss = rollout(policy, core.reset(problems, cc), cfg.horizon, None).costs.mean()
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            if cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
        else:
            log.warning("episode %d: non-finite meta-loss %s; update skipped", ep + 1, float(loss))
        if (ep + 1) % cfg.val_every == 0 or ep + 1 == cfg.episodes:
            v = final_objective(policy, val, cfg.horizon, cc)
            curve.append([ep + 1, v])
            if v < best:
                best, best_ep = v, ep + 1
                best_state = {k: t.clone() for k, t in model.state_dict().items()}
                if path is not None:
                    _result(model, cc, d, cfg).save(path, {"bound": _summary(cfg, best, best_ep, gd_lr, gd_val, curve)})
            bar.set_postfix(val=f"{v:.4f}", best=f"{best:.4f}")
    model.load_state_dict(best_state)
    summary = _summary(cfg, best, best_ep, gd_lr, gd_val, curve)
    if path is not None and best_ep:
        _result(model, cc, d, cfg).save(path, {"bound": summary})
    log.info("%s: best val %.5g at episode %d (tuned GD %.5g)", cfg.env_id, best, best_ep, gd_val)
    return _result(model, cc, d, cfg), summary


def _result(model: GaussianMLP, cc: CoreConfig, d: int, cfg: BoundConfig) -> GPSPolicy:
    return GPSPolicy(model, dataclasses.replace(cc, validate=True), d, cfg.env_id)


def _summary(cfg: BoundConfig, best: float, best_ep: int, gd_lr: float, gd_val: float, curve: list) -> dict[str, Any]:
    return {"best_val": best, "best_episode": best_ep, "gd": {"lr": gd_lr, "val_final": gd_val},
            "curve": [list(c) for c in curve], "config": {**dataclasses.asdict(cfg), "hidden": list(cfg.hidden)}}
