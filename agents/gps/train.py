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

from l2o_gym.agents.common import training_record
from l2o_gym.agents.gps.badmm import BADMMConfig, BADMMTrainer
from l2o_gym.agents.gps.global_policy import GaussianMLP, RegressionConfig
from l2o_gym.agents.gps.policy import KIND, GPSPolicy
from l2o_gym.agents.gps.task import OptimizationTask
from l2o_gym.agents.tuning import FIRST_ORDER, _best_of, best_baseline, final_objective, tune_baselines, tuned_gd_step
from l2o_gym.checkpoint import load_state, save_state, update_policy_config
from l2o_gym.core import CoreConfig
from l2o_gym.policy import Policy, run_policy

log = logging.getLogger(__name__)

@dataclass
class GPSTrainConfig:
    """Everything :func:`train_gps` needs (stored in checkpoints and the state file).

    Args:
        env_id: registered env id (its family supplies the problems).
        n_conditions: ``M`` training problems (``train`` split, seed ``seed``).
        horizon: GPS horizon ``T``.
        history: ``H`` of the features (the global policy's observation).
        include_steps: also put the last ``H`` steps Δθ into the features (secant information: with the
            gradient history the policy sees the pairs ``(s_k, y_k)`` L-BFGS builds its curvature model from).
        iterations: BADMM iterations.
        init_lr: step of the initial gradient controller (``None``: best of :data:`LR_GRID` on the conditions).
        init_std: exploration standard deviation of the initial controller.
        hidden: global-policy hidden widths (Li & Malik: ``(50,)``).
        action_penalty, hessian: cost options (:mod:`~l2o_gym.agents.gps.cost`).
        n_val: ``val`` problems for model selection.
        max_step_factor: at test time steps are clipped to this multiple of the largest action in the
            training samples (a safety net far past the horizon; 0 disables).
        baselines: baselines whose tuned ``val`` objective defines the sample-efficiency target.
        stable_factor: if positive, model selection also runs the ``val`` problems to ``long_factor · T``
            and an iteration can only become ``gps_best`` if its mean ``val`` objective stays at most
            ``stable_factor`` times its value at ``T`` at *every* step from ``T`` to ``long_factor · T``
            and no ``val`` problem diverges (``val_peak_ratio``, ``val_diverged_long``; Li & Malik's stability
            past the horizon, chosen on ``val``; the end-point ratio is recorded as ``val_long_ratio``); ``0``
            selects on ``f(T)`` alone. Must be 0 or ``>= 1``. If no iteration qualifies there is no
            ``gps_best`` and the summary's ``best_val`` is ``None``. A resumed run must use the same rule.
        long_factor: the horizon multiple of that check.
        seed: seed of the conditions, the val problems, the noise.
        badmm: loop hyperparameters.
    """

    env_id: str = "l2o/LogisticRegression-v0"
    n_conditions: int = 20
    horizon: int = 20
    history: int = 5
    include_steps: bool = False
    iterations: int = 10
    init_lr: float | None = None
    init_std: float = 0.1
    hidden: tuple[int, ...] = (50,)
    action_penalty: float = 0.0
    hessian: str = "exact"
    n_val: int = 100
    max_step_factor: float = 2.0
    baselines: tuple[str, ...] = ("sgd", "momentum", "cg", "lbfgs")
    stable_factor: float = 0.0
    long_factor: int = 10
    seed: int = 0
    badmm: BADMMConfig = field(default_factory=BADMMConfig)

    def __post_init__(self) -> None:
        if self.stable_factor != 0 and not self.stable_factor >= 1:
            raise ValueError(f"stable_factor must be 0 (off) or >= 1 (a peak ratio is never below 1), got {self.stable_factor!r}")
        if int(self.long_factor) < 1:
            raise ValueError(f"long_factor must be >= 1, got {self.long_factor!r}")

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


def training_record_from_summary(summary_path: str | Path) -> dict[str, Any]:
    """:func:`training_record` rebuilt from a run's ``summary.json`` (for runs made before it was stored).

    The first-order baseline is re-tuned on the run's ``val`` problems (:data:`FIRST_ORDER`) when the
    summary lacks it.
    """
    from l2o_gym.registry import env_family

    s = json.loads(Path(summary_path).read_text())
    cfg = s["train_config"]
    if "first_order_baseline" in s:
        fo = (s["first_order_baseline"]["name"], s["first_order_baseline"]["val_final"])
    else:
        val = env_family(cfg["env_id"]).sample(cfg["n_val"], "val", cfg["seed"], dtype=torch.float64)
        name, _, value = best_baseline(FIRST_ORDER, val, cfg["horizon"])
        fo = (name, value)
    curve = [[int(h["env_steps"]), float(h["val_final"])] for h in s["history"]]
    return training_record(curve, int(s["env_steps_total"]), (s["baseline"]["name"], s["baseline"]["val_final"]), fo)


def add_training_metadata(path: str | Path, training: dict[str, Any]) -> Path:
    """Rewrite the checkpoint ``path`` with the same tensors and ``training`` under the config key ``"training"``."""
    return update_policy_config(path, {"training": training}, kind=KIND)


def _writer(log_dir: Path | None) -> Any:
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # a broken install: tensorboard is a dependency
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
    (resume with ``resume=True``), ``summary.json``, ``tb/`` (TensorBoard). A new (not resumed) run in a folder
    that holds a previous run's checkpoints first renames them to ``*.previous.safetensors``.
    """
    from l2o_gym.registry import env_family

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    family = env_family(cfg.env_id)
    dtype = torch.float64
    problems = family.sample(cfg.n_conditions, "train", cfg.seed, device=device, dtype=dtype)
    val = family.sample(cfg.n_val, "val", cfg.seed, device=device, dtype=dtype)
    core_config = CoreConfig(horizon=cfg.horizon, history=cfg.history, include_steps=cfg.include_steps)
    task = OptimizationTask(problems, core_config, cfg.action_penalty, cfg.hessian)

    tuned = tune_baselines(tuple(dict.fromkeys(cfg.baselines + FIRST_ORDER)), val, cfg.horizon)
    base_name, base_hp, base_val = _best_of(tuned, cfg.baselines)
    fo_name, fo_hp, fo_val = _best_of(tuned, FIRST_ORDER)
    log.info("tuned baselines on val at T=%d: %s", cfg.horizon, {k: (hp, round(v, 6)) for k, (hp, v) in tuned.items()})
    log.info("best tuned baseline on val at T=%d: %s %s -> %.5g", cfg.horizon, base_name, base_hp, base_val)
    init_lr = cfg.init_lr
    if init_lr is None:
        init_lr, _ = tuned_gd_step(problems, cfg.horizon)
        log.info("initial controller: gradient step lr=%g (best on the training conditions)", init_lr)

    model = GaussianMLP(task.obs_dim, task.du, cfg.hidden).to(device=device, dtype=dtype)
    trainer = BADMMTrainer(task, task.initial_policy(init_lr, cfg.init_std), model, cfg.badmm, seed=cfg.seed)
    history: list[dict[str, float]] = []
    best_val, best_iter, max_action = math.inf, -1, 0.0
    state_path = out / "state.pt"
    if resume and state_path.is_file():
        st = load_state(state_path, device)
        selection = st.get("selection", [0.0, 10])
        if [float(selection[0]), int(selection[1])] != [float(cfg.stable_factor), int(cfg.long_factor)]:
            raise ValueError(
                f"{state_path} was trained with stable_factor={selection[0]}, long_factor={selection[1]}; resuming with "
                f"stable_factor={cfg.stable_factor}, long_factor={cfg.long_factor} would mix two selection rules")
        trainer.load_state_dict(st["trainer"])
        history, best_val, best_iter = st["history"], float(st["best_val"]), int(st["best_iter"])
        max_action = float(st["max_action"])
        log.info("resumed from %s at iteration %d", state_path, trainer.iteration_count)
    else:
        for name in ("gps_best.safetensors", "gps_last.safetensors"):
            if (out / name).is_file():  # a previous run's: keep it aside, never relabel it with this run's record
                kept = out / name.replace(".safetensors", ".previous.safetensors")
                log.warning("new run in %s: the previous run's %s is moved to %s", out, name, kept.name)
                (out / name).replace(kept)
    writer = _writer(out / "tb") if tensorboard else None
    summary_extra = {"train_config": cfg.to_dict(), "init_lr": init_lr}
    bar = tqdm(range(trainer.iteration_count, cfg.iterations), desc=f"GPS {cfg.env_id}", disable=not progress)
    for it in bar:
        metrics = trainer.iteration()
        max_action = max(max_action, metrics["max_action"])
        policy = _make_policy(model, core_config, task.d, cfg, max_action)
        t0 = time.perf_counter()
        eligible = True
        if cfg.stable_factor > 0:
            traj = run_policy(policy, val, cfg.long_factor * cfg.horizon)
            mean_curve = traj.losses[cfg.horizon :].mean(1)  # [long - T + 1]
            f_t, peak = float(mean_curve[0]), float(mean_curve.max())
            metrics["val_final"] = f_t
            metrics["val_long_ratio"] = _ratio(float(mean_curve[-1]), f_t)
            metrics["val_peak_ratio"] = _ratio(peak, f_t)
            # A diverged problem keeps its last finite objective in the curve, so divergence is checked apart.
            metrics["val_diverged_long"] = float(traj.state.terminated.double().mean())
            eligible = peak <= cfg.stable_factor * f_t and metrics["val_diverged_long"] == 0.0
        else:
            metrics["val_final"] = final_objective(policy, val, cfg.horizon)
        metrics["train_final_global"] = final_objective(policy, problems, cfg.horizon)
        metrics["eval_s"] = time.perf_counter() - t0
        if metrics["val_final"] <= base_val and all(h["val_final"] > base_val for h in history):
            log.info("GPS reached the best baseline's val objective after %d env steps", int(metrics["env_steps"]))
        history.append(metrics)
        if eligible and metrics["val_final"] < best_val:
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
            "max_action": max_action,
            "selection": [float(cfg.stable_factor), int(cfg.long_factor)],
        })
    if writer is not None:
        writer.close()
    if best_iter < 0 and history:
        why = (f"stayed within {cfg.stable_factor:g}× its val f(T) up to {cfg.long_factor}·T without divergence"
               if cfg.stable_factor > 0 else "had a finite val objective")
        log.warning("no iteration %s: no gps_best checkpoint (gps_last is the last iterate)", why)
    curve = [[int(h["env_steps"]), float(h["val_final"])] for h in history]
    training = training_record(curve, trainer.env_steps, (base_name, base_val), (fo_name, fo_val))
    for name in ("gps_best.safetensors", "gps_last.safetensors"):
        if (out / name).is_file():
            add_training_metadata(out / name, training)
    summary = {
        "env_id": cfg.env_id,
        "best_val": best_val if best_iter >= 0 else None,
        "best_iteration": best_iter,
        "baseline": {"name": base_name, "hparams": base_hp, "val_final": base_val},
        "env_steps_to_reach_baseline": training["env_steps_to_reach_baseline"],
        "first_order_baseline": {"name": fo_name, "hparams": fo_hp, "val_final": fo_val},
        "env_steps_to_reach_first_order": training["env_steps_to_reach_first_order"],
        "tuned_baselines": {k: {"hparams": hp, "val_final": v} for k, (hp, v) in tuned.items()},
        "training": training,
        "env_steps_total": trainer.env_steps,
        "dropped_samples": trainer.n_dropped,
        "mean_iteration_wall_s": sum(h["wall_s"] for h in history) / max(1, len(history)),
        "history": history,
        **summary_extra,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _ratio(value: float, reference: float) -> float:
    """``value / reference`` for the stability ratios (1 for 0/0, inf for x/0 with x > 0)."""
    if reference > 0:
        return value / reference
    return 1.0 if value <= reference else math.inf


def _make_policy(model: GaussianMLP, core_config: CoreConfig, d: int, cfg: GPSTrainConfig, max_action: float) -> GPSPolicy:
    max_step = cfg.max_step_factor * max_action if cfg.max_step_factor > 0 and max_action > 0 else None
    return GPSPolicy(model, core_config, d, cfg.env_id, max_step)


def evaluate_on_test(
    checkpoint: str | Path,
    env_id: str,
    horizon: int = 20,
    long_factor: int = 10,
    n_test: int = 100,
    n_val: int = 100,
    seed: int = 0,
    baselines: tuple[str, ...] = ("sgd", "momentum", "cg", "lbfgs"),
) -> dict[str, dict[str, float]]:
    """The table of ``docs/gps.md``: a GPS checkpoint against baselines tuned on ``val`` at ``horizon``.

    Baselines are tuned on ``n_val`` ``val`` problems (float64, :func:`tune_baselines`); everything is then
    run on ``n_test`` ``test`` problems (seed ``seed``, float32) for ``horizon`` and ``long_factor · horizon``
    iterations. Per policy: ``f_T``, ``f_long``, gradient evaluations at ``T`` (``evals_T``) and the mean
    objective at the last iterate that used at most ``T`` evaluations (``f_at_T_evals``; equal to ``f_T``
    for one-evaluation-per-iteration methods). Convergence diagnostics: ``gap_T``, the mean over problems of
    ``f_T − f_ref`` with ``f_ref`` the lowest objective any listed policy reached on that problem within
    ``long_factor · horizon`` iterations, and ``settled_T``, the fraction of problems whose objective at ``T``
    is already within ``1e-5·(1 + |f|)`` of its value at ``long_factor · horizon``.
    """
    from l2o_gym.agents.baselines import make_baseline
    from l2o_gym.agents.gps.policy import load_gps_policy
    from l2o_gym.registry import env_family

    family = env_family(env_id)
    val = family.sample(n_val, "val", seed, dtype=torch.float64)
    tuned = tune_baselines(baselines, val, horizon)
    test = family.sample(n_test, "test", seed, dtype=torch.float32)
    gps = load_gps_policy(checkpoint, env_id=env_id)
    policies: dict[str, tuple[Policy, dict[str, float]]] = {"gps": (gps, {})}
    for name in baselines:
        policies[name] = (make_baseline(name, **tuned[name][0]), tuned[name][0])
    long = long_factor * horizon
    rows: dict[str, dict[str, Any]] = {}
    curves: dict[str, torch.Tensor] = {}
    for name, (pol, hp) in policies.items():
        cfg = gps.core_config if name == "gps" else None
        traj = run_policy(pol, test, long, cfg)
        losses = traj.losses.double()  # [long+1, n]
        if pol.evals(traj.memory, long) is None:  # one evaluation per iteration
            f_evals, evals_t = losses[horizon].mean(), float(horizon)
        else:
            per_t = torch.stack([pol.evals(traj.memory, t) for t in range(long + 1)])  # [long+1, n], nondecreasing
            last = ((per_t <= horizon).long().sum(0) - 1).clamp_min(0)  # last iterate within the budget
            f_evals = losses.gather(0, last[None]).mean()
            evals_t = float(per_t[horizon].mean())
        rows[name] = {
            "hparams": hp, "val_final": tuned[name][1] if name != "gps" else final_objective(gps, val, horizon, gps.core_config),
            "f_T": float(losses[horizon].mean()), "f_long": float(losses[-1].mean()),
            "ratio_long": float(losses[-1].mean() / losses[horizon].mean()),
            "diverged_long": float(traj.state.terminated.double().mean()),
            "evals_T": evals_t, "f_at_T_evals": float(f_evals),
        }
        curves[name] = losses
    # Per problem, the lowest objective any of the policies reached at any iteration up to 10T: the reference
    # f_ref of the gap columns. A baseline with gap_T ≈ 0 and settled_T ≈ 1 has converged at T, so matching
    # it requires converging exactly on every problem (the mean is at or below f_ref only if each one is).
    f_ref = torch.stack([c.min(0).values for c in curves.values()]).min(0).values  # [n]
    for name, losses in curves.items():
        f_t, f_l = losses[horizon], losses[-1]
        rows[name]["gap_T"] = float((f_t - f_ref).mean())
        rows[name]["settled_T"] = float(((f_t - f_l).abs() <= 1e-5 * (1.0 + f_l.abs())).double().mean())
    return rows
