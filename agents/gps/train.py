"""Training driver for GPS on an l2o-gym env: conditions, baselines, BADMM iterations, logging, checkpoints.

:func:`train_gps` runs ``iterations`` BADMM iterations on ``n_conditions`` problems of the env's ``train``
split, evaluates the deterministic global policy on ``n_val`` ``val`` problems after each iteration, keeps the
best-on-val checkpoint (``gps_best.safetensors``), writes the resumable training state (``state.pt``) and
TensorBoard scalars, and reports how many env steps it took to reach the best tuned baseline's ``val``
objective at the horizon (the sample-efficiency figure).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from l2o_gym.agents.gps.badmm import BADMMConfig, BADMMTrainer
from l2o_gym.agents.gps.global_policy import GaussianMLP, RegressionConfig
from l2o_gym.agents.gps.policy import GPSPolicy
from l2o_gym.agents.gps.task import OptimizationTask
from l2o_gym.checkpoint import load_state, save_state
from l2o_gym.core import CoreConfig
from l2o_gym.policy import Policy, run_policy
from l2o_gym.problems import ProblemBatch

log = logging.getLogger(__name__)

#: learning rates tried for the initial gradient-step controller and the first-order baselines.
LR_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass
class GPSTrainConfig:
    """Everything :func:`train_gps` needs (stored in checkpoints and the state file).

    Args:
        env_id: registered env id (its family supplies the problems).
        n_conditions: ``M`` training problems (``train`` split, seed ``seed``).
        horizon: GPS horizon ``T``.
        history: ``H`` of the features (the global policy's observation).
        iterations: BADMM iterations.
        init_lr: step of the initial gradient controller (``None``: best of :data:`LR_GRID` on the conditions).
        init_std: exploration standard deviation of the initial controller.
        hidden: global-policy hidden widths (Li & Malik: ``(50,)``).
        action_penalty, hessian: cost options (:mod:`~l2o_gym.agents.gps.cost`).
        n_val: ``val`` problems for model selection.
        max_step_factor: at test time steps are clipped to this multiple of the largest action in the
            training samples (a safety net far past the horizon; 0 disables).
        baselines: baselines whose tuned ``val`` objective defines the sample-efficiency target.
        seed: seed of the conditions, the val problems, the noise.
        badmm: loop hyperparameters.
    """

    env_id: str = "l2o/LogisticRegression-v0"
    n_conditions: int = 20
    horizon: int = 20
    history: int = 5
    iterations: int = 10
    init_lr: float | None = None
    init_std: float = 0.1
    hidden: tuple[int, ...] = (50,)
    action_penalty: float = 0.0
    hessian: str = "exact"
    n_val: int = 100
    max_step_factor: float = 2.0
    baselines: tuple[str, ...] = ("sgd", "momentum", "cg", "lbfgs")
    seed: int = 0
    badmm: BADMMConfig = field(default_factory=BADMMConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> GPSTrainConfig:
        d = dict(d)
        b = dict(d.pop("badmm"))
        b["regression"] = RegressionConfig(**b["regression"])
        d["hidden"] = tuple(d["hidden"])
        d["baselines"] = tuple(d["baselines"])
        return GPSTrainConfig(**d, badmm=BADMMConfig(**b))


def final_objective(policy: Policy, problems: ProblemBatch, horizon: int, config: CoreConfig | None = None) -> float:
    """Mean objective after ``horizon`` steps of ``policy`` (diverged instances count their penalty)."""
    traj = run_policy(policy, problems, horizon, config)
    return float(traj.losses[-1].mean())


def best_baseline(names: tuple[str, ...], problems: ProblemBatch, horizon: int) -> tuple[str, dict[str, float], float]:
    """Best tuned baseline on ``problems``: ``(name, hparams, mean objective at horizon)``.

    First-order methods are tuned over :data:`LR_GRID` (momentum 0.9); CG and L-BFGS have no step size.
    """
    from l2o_gym.agents.baselines import make_baseline

    best: tuple[str, dict[str, float], float] = ("", {}, math.inf)
    for name in names:
        grid: list[dict[str, float]] = [{}] if name in ("cg", "lbfgs") else [{"lr": lr} for lr in LR_GRID]
        for hp in grid:
            value = final_objective(make_baseline(name, **hp), problems, horizon)
            if math.isfinite(value) and value < best[2]:
                best = (name, hp, value)
    return best


def _writer(log_dir: Path | None) -> Any:
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dev extra
        log.warning("tensorboard is not installed: no TensorBoard scalars")
        return None
    return SummaryWriter(str(log_dir))


def train_gps(
    cfg: GPSTrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train GPS (module docstring). Returns a summary (also written to ``out_dir/summary.json``).

    Files in ``out_dir``: ``gps_best.safetensors`` (best on val), ``gps_last.safetensors``, ``state.pt``
    (resume with ``resume=True``), ``summary.json``, ``tb/`` (TensorBoard).
    """
    from l2o_gym.evaluation import env_family

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    family = env_family(cfg.env_id)
    dtype = torch.float64
    problems = family.sample(cfg.n_conditions, "train", cfg.seed, device=device, dtype=dtype)
    val = family.sample(cfg.n_val, "val", cfg.seed, device=device, dtype=dtype)
    core_config = CoreConfig(horizon=cfg.horizon, history=cfg.history)
    task = OptimizationTask(problems, core_config, cfg.action_penalty, cfg.hessian)

    base_name, base_hp, base_val = best_baseline(cfg.baselines, val, cfg.horizon)
    log.info("best tuned baseline on val at T=%d: %s %s -> %.5g", cfg.horizon, base_name, base_hp, base_val)
    init_lr = cfg.init_lr
    if init_lr is None:
        from l2o_gym.agents.baselines import GradientDescent

        scores = {lr: final_objective(GradientDescent(lr), problems, cfg.horizon) for lr in LR_GRID}
        init_lr = min(scores, key=lambda k: scores[k] if math.isfinite(scores[k]) else math.inf)
        log.info("initial controller: gradient step lr=%g (best on the training conditions)", init_lr)

    model = GaussianMLP(task.obs_dim, task.du, cfg.hidden).to(device=device, dtype=dtype)
    trainer = BADMMTrainer(task, task.initial_policy(init_lr, cfg.init_std), model, cfg.badmm, seed=cfg.seed)
    history: list[dict[str, float]] = []
    best_val, best_iter, reached_at, max_action = math.inf, -1, None, 0.0
    state_path = out / "state.pt"
    if resume and state_path.is_file():
        st = load_state(state_path, device)
        trainer.load_state_dict(st["trainer"])
        history, best_val, best_iter = st["history"], float(st["best_val"]), int(st["best_iter"])
        reached_at, max_action = st["reached_at"], float(st["max_action"])
        log.info("resumed from %s at iteration %d", state_path, trainer.iteration_count)
    writer = _writer(out / "tb") if tensorboard else None
    summary_extra = {"train_config": cfg.to_dict(), "init_lr": init_lr}
    bar = tqdm(range(trainer.iteration_count, cfg.iterations), desc=f"GPS {cfg.env_id}", disable=not progress)
    for it in bar:
        metrics = trainer.iteration()
        max_action = max(max_action, metrics["max_action"])
        policy = _make_policy(model, core_config, task.d, cfg, max_action)
        t0 = time.perf_counter()
        metrics["val_final"] = final_objective(policy, val, cfg.horizon)
        metrics["train_final_global"] = final_objective(policy, problems, cfg.horizon)
        metrics["eval_s"] = time.perf_counter() - t0
        history.append(metrics)
        if reached_at is None and metrics["val_final"] <= base_val:
            reached_at = int(metrics["env_steps"])
            log.info("GPS reached the best baseline's val objective after %d env steps", reached_at)
        if metrics["val_final"] < best_val:
            best_val, best_iter = metrics["val_final"], it + 1
            policy.save(out / "gps_best.safetensors", {**summary_extra, "iteration": best_iter, "val_final": best_val})
        policy.save(out / "gps_last.safetensors", {**summary_extra, "iteration": it + 1})
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"gps/{k}", v, it + 1)
            writer.flush()
        bar.set_postfix(val=f"{metrics['val_final']:.4g}", best=f"{best_val:.4g}", kl=f"{metrics['kl_local_global']:.3g}")
        save_state(state_path, {
            "trainer": trainer.state_dict(), "history": history, "best_val": best_val, "best_iter": best_iter,
            "reached_at": reached_at, "max_action": max_action,
        })
    if writer is not None:
        writer.close()
    summary = {
        "env_id": cfg.env_id,
        "best_val": best_val,
        "best_iteration": best_iter,
        "baseline": {"name": base_name, "hparams": base_hp, "val_final": base_val},
        "env_steps_to_reach_baseline": reached_at,
        "env_steps_total": trainer.env_steps,
        "dropped_samples": trainer.n_dropped,
        "mean_iteration_wall_s": sum(h["wall_s"] for h in history) / max(1, len(history)),
        "history": history,
        **summary_extra,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _make_policy(model: GaussianMLP, core_config: CoreConfig, d: int, cfg: GPSTrainConfig, max_action: float) -> GPSPolicy:
    max_step = cfg.max_step_factor * max_action if cfg.max_step_factor > 0 and max_action > 0 else None
    return GPSPolicy(model, core_config, d, cfg.env_id, max_step)
