"""GPS as an agent of the common run lifecycle (:func:`l2o_gym.agents.common.fit`): conditions, BADMM iterations,
validation with the optional stability-past-the-horizon selection.

:func:`train_gps` runs ``iterations`` BADMM iterations (:class:`GPSAgent`) on ``n_conditions`` problems of the
env's ``train`` split and evaluates the deterministic global policy on ``n_val`` ``val`` problems after each
iteration; the lifecycle keeps the best-on-val checkpoint (``gps_best.safetensors``), writes the resumable
training state (``state.pt``), TensorBoard scalars and the summary, and records how many env steps it took to
reach the best tuned baseline's ``val`` objective at the horizon (the sample-efficiency figure).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from l2o_gym.agents.common import Agent, Validation, fit, training_record
from l2o_gym.agents.gps.badmm import BADMMConfig, BADMMTrainer
from l2o_gym.agents.gps.global_policy import GaussianMLP, RegressionConfig
from l2o_gym.agents.gps.policy import KIND, GPSPolicy
from l2o_gym.agents.gps.task import OptimizationTask
from l2o_gym.agents.tuning import FIRST_ORDER, best_baseline, final_objective, tune_baselines, tuned_gd_step
from l2o_gym.checkpoint import CheckpointError, update_policy_config
from l2o_gym.checks import check_nonnegative, check_positive, check_positive_int, check_seed
from l2o_gym.core import CoreConfig
from l2o_gym.policy import Policy, run_policy
from l2o_gym.stability import stability

log = logging.getLogger(__name__)

#: the ``hessian`` options of the cost expansion (:mod:`~l2o_gym.agents.gps.cost`).
HESSIANS: tuple[str, ...] = ("exact", "psd", "none")

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
        from l2o_gym.agents.baselines import check_baseline_names
        from l2o_gym.registry import ENV_IDS

        if isinstance(self.badmm, dict):
            self.badmm = BADMMConfig(**self.badmm)
        self.hidden, self.baselines = tuple(self.hidden), check_baseline_names(self.baselines)
        if self.env_id not in ENV_IDS:
            raise ValueError(f"unknown env id {self.env_id!r}: expected one of {', '.join(ENV_IDS)}")
        for name in ("n_conditions", "horizon", "history", "iterations", "n_val"):
            check_positive_int(name, getattr(self, name))
        check_positive("init_std", self.init_std)
        if self.init_lr is not None:
            check_positive("init_lr", self.init_lr)
        for name in ("action_penalty", "max_step_factor", "stable_factor"):
            check_nonnegative(name, getattr(self, name))
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be positive integer widths, got {self.hidden!r}")
        if self.hessian not in HESSIANS:
            raise ValueError(f"unknown hessian {self.hessian!r}: expected one of {', '.join(HESSIANS)}")
        check_seed(self.seed)
        if self.stable_factor != 0 and not self.stable_factor >= 1:
            raise ValueError(f"stable_factor must be 0 (off) or >= 1 (a peak ratio is never below 1), got {self.stable_factor!r}")
        if isinstance(self.long_factor, bool) or not isinstance(self.long_factor, int) or self.long_factor < 1:
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


class SelectedGPSAgent(Agent):
    """What every GPS variant's agent shares (small-problem GPS, convolutional GPS): validation of the
    deterministic global policy on ``val`` with the optional stability selection (``stable_factor``: only iterates
    stable up to ``long_factor · T``, :func:`l2o_gym.stability.stability`, are eligible), the resume check of
    that rule, and the budget read from ``self.trainer`` (``iteration_count``, ``env_steps``).

    Subclasses set ``config`` (with ``stable_factor``, ``long_factor``, ``iterations``), ``trainer``, ``val`` and
    implement :meth:`policy` and :attr:`horizon`.
    """

    val_every = 1

    @property
    def horizon(self) -> int:
        raise NotImplementedError

    def policy(self) -> Policy:
        raise NotImplementedError

    def _extra_val_metrics(self, policy: Policy) -> dict[str, float]:
        return {}

    def validate(self) -> Validation:
        cfg, policy, t0, T = self.config, self.policy(), time.perf_counter(), self.horizon
        metrics: dict[str, float] = {}
        eligible = True
        if cfg.stable_factor > 0:
            traj = run_policy(policy, self.val, cfg.long_factor * T)
            mean_curve = traj.objectives[T:].mean(1)  # [long - T + 1]
            v = stability(float(mean_curve[0]), mean_curve.tolist(), float(traj.state.terminated.double().mean()),
                          cfg.stable_factor)
            value = v.f_T
            metrics.update(val_long_ratio=v.ratio, val_peak_ratio=v.peak_ratio, val_diverged_long=v.diverged_fraction)
            eligible = v.stable
        else:
            value = final_objective(policy, self.val, T)
        metrics.update(self._extra_val_metrics(policy))
        metrics["eval_s"] = time.perf_counter() - t0
        return Validation(value, eligible, metrics)

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        cfg, selection = self.config, state.get("selection")
        if not (isinstance(selection, (list, tuple)) and len(selection) == 2):
            raise CheckpointError(f"training state {str(path)!r}: entry 'selection' is missing or malformed")
        if [float(selection[0]), int(selection[1])] != [float(cfg.stable_factor), int(cfg.long_factor)]:
            raise CheckpointError(
                f"{path} was trained with stable_factor={selection[0]}, long_factor={selection[1]}; resuming with "
                f"stable_factor={cfg.stable_factor}, long_factor={cfg.long_factor} would mix two selection rules")

    def selection_state(self) -> list[float]:
        """The selection rule as stored in ``state.pt`` (checked by :meth:`check_resume`)."""
        return [float(self.config.stable_factor), int(self.config.long_factor)]

    @property
    def iterations_done(self) -> int:
        return self.trainer.iteration_count

    @property
    def iterations_total(self) -> int:
        return self.config.iterations

    @property
    def env_steps(self) -> int:
        return int(self.trainer.env_steps)

    def baseline_problems(self) -> tuple[Any, int]:
        return self.val, self.horizon

    def selection_rule(self) -> str:
        cfg = self.config
        if cfg.stable_factor > 0:
            return f"stayed within {cfg.stable_factor:g}× its val f(T) up to {cfg.long_factor}·T without divergence"
        return "had a finite val objective"


class GPSAgent(SelectedGPSAgent):
    """GPS's part of the run lifecycle (:func:`l2o_gym.agents.common.fit`): one BADMM iteration per
    iteration, validation of the deterministic global policy on the ``val`` problems after each one (with
    ``stable_factor``: only iterates stable past the horizon, :func:`l2o_gym.stability.stability`, are eligible).

    Args:
        cfg: the configuration.
        device: where the problems, dynamics fits and the global policy live.
    """

    kind = KIND
    structural = ("env_id", "n_conditions", "horizon", "history", "include_steps", "hidden", "hessian",
                  "action_penalty", "n_val", "seed")

    @property
    def horizon(self) -> int:
        return self.config.horizon

    def _extra_val_metrics(self, policy: Policy) -> dict[str, float]:
        return {"train_final_global": final_objective(policy, self.problems, self.config.horizon)}

    def __init__(self, cfg: GPSTrainConfig, device: str = "cpu") -> None:
        from l2o_gym.registry import env_family

        super().__init__()
        self.config = cfg
        self.baselines = tuple(cfg.baselines)
        torch.manual_seed(cfg.seed)
        family = env_family(cfg.env_id)
        dtype = torch.float64
        self.problems = family.sample(cfg.n_conditions, "train", cfg.seed, device=device, dtype=dtype)
        self.val = family.sample(cfg.n_val, "val", cfg.seed, device=device, dtype=dtype)
        self.core_config = CoreConfig(horizon=cfg.horizon, history=cfg.history, include_steps=cfg.include_steps)
        self.task = OptimizationTask(self.problems, self.core_config, cfg.action_penalty, cfg.hessian)
        init_lr = cfg.init_lr
        if init_lr is None:
            init_lr, _ = tuned_gd_step(self.problems, cfg.horizon)
            log.info("initial controller: gradient step lr=%g (best on the training conditions)", init_lr)
        self.init_lr = float(init_lr)
        self.model = GaussianMLP(self.task.obs_dim, self.task.du, cfg.hidden).to(device=device, dtype=dtype)
        self.trainer = BADMMTrainer(self.task, self.task.initial_policy(self.init_lr, cfg.init_std), self.model,
                                    cfg.badmm, seed=cfg.seed)
        self.max_action = 0.0

    def policy(self) -> GPSPolicy:
        """The current deterministic global policy (steps clipped to ``max_step_factor`` × the largest sampled action)."""
        return _make_policy(self.model, self.core_config, self.task.d, self.config, self.max_action)

    # -- the Agent contract --------------------------------------------------------------------------
    def iteration(self) -> dict[str, float]:
        metrics = self.trainer.iteration()
        self.max_action = max(self.max_action, metrics["max_action"])
        return metrics

    def save_policy(self, path: Path, extra: dict[str, Any]) -> Path:
        return self.policy().save(path, extra)

    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.trainer.state_dict(), "max_action": self.max_action,
                "selection": self.selection_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.max_action = float(state["max_action"])

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"init_lr": self.init_lr}

    def summary_extra(self) -> dict[str, Any]:
        return {"dropped_samples": self.trainer.n_dropped, "init_lr": self.init_lr,
                "mean_iteration_wall_s": sum(h["wall_s"] for h in self.history) / max(1, len(self.history))}


def train_gps(
    cfg: GPSTrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train GPS (module docstring) through the common lifecycle; returns the summary (also ``out_dir/summary.json``).

    Files in ``out_dir``: ``gps_best.safetensors`` (best on val), ``gps_last.safetensors``, ``state.pt``
    (resume with ``resume=True``), ``summary.json``, ``tb/`` (TensorBoard). A new (not resumed) run in a folder
    that holds a previous run's checkpoints first renames them to ``*.previous.safetensors``.

    Raises:
        CheckpointError: ``resume`` without a GPS ``state.pt`` in ``out_dir``, or one made with another
            selection rule (``stable_factor``, ``long_factor``).
    """
    return fit(GPSAgent(cfg, device), out_dir, resume=resume, progress=progress, tensorboard=tensorboard,
               desc=f"GPS {cfg.env_id}")


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
        # The reported objective (``Trajectory.objectives``): the true objective for families with one (minibatch
        # families such as NNClassifier), as ``val_final`` and the baselines' tuning; else the loss itself.
        losses = traj.objectives.double()  # [long+1, n]
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
