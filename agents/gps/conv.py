"""Convolutional guided policy search (Li & Malik 2017, "Learning to Optimize Neural Nets"), readable top to
bottom in :meth:`ConvGPSTrainer.iteration`.

Conditions are ``M`` training problems (instances of one family: initialisation, minibatch stream). The
local controllers are per coordinate group, shared by every coordinate of the group
(:mod:`~l2o_gym.agents.gps.coord`) and, by default, by every condition (``share_conditions``): ``G`` (or
``M·G``) small linear-Gaussian controllers of state dimension ``dS = STATE_DIM`` and one action. The global policy is the coordinatewise LSTM of
:mod:`~l2o_gym.agents.gps.coord_policy`. One iteration:

1. **Sample** ``n_samples`` trajectories per condition from the local controllers. Trajectory ``k`` draws its
   exploration noise from its own generator (seeded by ``(seed, iteration, k)``), so the samples do not
   depend on how trajectories are split over processes. While they run, every coordinate's transition
   ``(s_t, a_t, s_{t+1})`` is added to the per-(condition, group, t) moments; for the global step a fixed
   random subset of ``regression_coords`` coordinates per group and trajectory keeps its observation and
   local-state sequences. Diverged trajectories and non-finite entries are dropped and counted.
2. **Reduce** (``torch.distributed``): the moments are summed (``all_reduce``) and the regression subsets and
   sample costs gathered, ordered by trajectory index: every process then holds the same data and computes
   the same controllers and the same policy (the same seed gives the same policy with 1 or 2 processes, to
   float tolerance: only the order of the moment sums differs).
3. **Fit** per-group dynamics with the pooled prior and the per-coordinate quadratic cost model
   (:class:`~l2o_gym.agents.gps.coord.CostMoments`), and **adapt the KL step** per (condition, group) from
   predicted vs. actual improvement of the last update.
4. Inner loop: **local update** — LQR with the BADMM terms under the per-coordinate KL trust region
   (:func:`~l2o_gym.agents.gps.lqr.solve_kl_step`, ``M·G`` conditions), the global policy linearised in the
   local state by regression of its mean steps on the stored local states; **global update** — the LSTM
   trained by backpropagation through time on the stored observation sequences to the new controllers'
   precision-weighted means shifted by ``−Σλ/ν``, and its per-group variance in closed form; **dual update**
   of ``λ`` and ``ν`` per (condition, group, t).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from l2o_gym import core
from l2o_gym.checks import check_nonnegative, check_positive, check_positive_int
from l2o_gym.agents.gps.badmm import BADMMLoopConfig, Prediction, adapt_multiplier, adjust_nu
from l2o_gym.agents.gps.coord import (
    STATE_DIM,
    CoordinateController,
    CoordinateFeatures,
    DynamicsMoments,
    CostMoments,
    check_grad_average,
    check_step_unit,
    initial_controller,
    obs_dim,
)
from l2o_gym.agents.gps.coord_policy import ControllerPolicy, CoordinateLSTMNet, ConvGPSPolicy
from l2o_gym.agents.gps.dynamics import GaussianPrior, GPSFitError, dynamics_from_moments
from l2o_gym.agents.gps.lingauss import LinearGaussianPolicy
from l2o_gym.agents.gps.lqr import solve_kl_step
from l2o_gym.core import CoreConfig
from l2o_gym.distributed import world
from l2o_gym.policy import run_policy
from l2o_gym.problems.base import ProblemBatch

log = logging.getLogger(__name__)


#: what the per-coordinate cost models (``ConvGPSConfig.cost``).
COSTS: tuple[str, ...] = ("area", "log", "mixed")

@dataclass
class ConvGPSConfig(BADMMLoopConfig):
    """Hyperparameters of convolutional GPS: the BADMM loop's (:class:`~l2o_gym.agents.gps.badmm.BADMMLoopConfig`:
    ``n_samples``, ``inner_iterations``, ``kl_step`` — here per coordinate and time step —, ``min_mult``,
    ``max_mult``, ``prior_strength`` — of the pooled dynamics prior —, ``dyn_reg``, ``init_nu``, ``nu_min``,
    ``nu_max``, ``kl_target``, ``dual_step``; defaults below where they differ) plus

    Args:
        horizon: ``T`` (Li & Malik 2017: 400).
        init_lr, init_std: the initial controllers ``a = −init_lr · ĝ + N(0, init_std²)`` (``ĝ`` the
            normalised averaged gradient of Φ, an RMSprop-like step). ``init_lr = None``: tuned on the training
            conditions over :data:`INIT_LR_GRID` (the lowest mean objective over the run), the way GPS starts
            from a tuned hand-designed optimizer.
        action_penalty: ``w_u`` added to the fitted curvature of the per-coordinate cost.
        cost_scale: the per-coordinate cost is multiplied by this (``None``: the number of coordinates ``d``, so
            that a coordinate's cost is the whole net's modelled change of ``Σ_t f_t / (T |f_0|)`` if every
            coordinate behaved like it — O(1), comparable to the KL terms whatever the size of the net).
        grad_average: ``"ema"`` (the default: an exponential moving average, Adam's first moment; Ψ gains the
            normalised momentum) or ``"last3"`` (Li & Malik's average of the last 3 gradients): how Φ's averaged
            gradient is formed (:mod:`~l2o_gym.agents.gps.coord`, *Averaged gradient*); recorded in the checkpoint.
        step_unit: ``"sign"`` (``Δθ = σ a'``), ``"sqrt"`` or ``"decay"`` (``Δθ = σ ρ a'``, ``ρ`` the square root
            of, or, the gradient's RMS relative to its largest so far: steps shrink as the gradient vanishes;
            :mod:`~l2o_gym.agents.gps.coord`, *Step unit*). Used by the controllers, the cost model and the
            global policy alike, and recorded in the checkpoint.
        cost: what the per-coordinate cost models (docs/conv-gps.md, *Cost*): ``"area"`` — ``Σ_t f_t / (T |f_0|)``,
            the area under the objective's curve (Li & Malik's ``Σ_t f(x_t)``; its expansion divides by ``|f_0|``);
            ``"log"`` — ``Σ_t log f_t / T`` (the expansion divides by the samples' geometric-mean objective at
            ``t``), so a tenfold decrease late in the run counts as much as one early, as for the LSTM's
            ``--objective log``; ``"mixed"`` — ``Σ_t (log f_t + area_weight · f_t / f̂_0) / T``, the log cost
            with the early descent weighted more (the expansion divides by ``1 / (1/f̂_t + area_weight/f̂_0)``).
        area_weight: the weight of the area term of the ``"mixed"`` cost (unused otherwise).
        hidden: LSTM cells per group (paper: 128).
        regression_coords: coordinates per group and trajectory kept for the global step.
        regression_epochs: passes over the stored sequences per global step; bptt: truncation window;
            regression_lr: Adam learning rate.
        share_conditions: one set of group controllers for all conditions (every trajectory of every
            training problem is a sample of the same per-group LQG, as with Li & Malik's single training
            objective), or one set per condition.
        seed: seed of noise, subsets and the LSTM's initialisation.
    """

    n_samples: int = 4
    inner_iterations: int = 1
    kl_step: float = 0.02
    horizon: int = 400
    init_lr: float | None = None
    init_std: float = 0.002
    action_penalty: float = 1e-4
    cost_scale: float | None = None
    step_unit: str = "sqrt"
    grad_average: str = "ema"
    cost: str = "log"
    area_weight: float = 10.0
    hidden: int = 128
    regression_coords: int = 16
    regression_epochs: int = 4
    bptt: int = 25
    regression_lr: float = 1e-2
    share_conditions: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("horizon", "hidden", "regression_coords", "regression_epochs", "bptt"):
            check_positive_int(name, getattr(self, name))
        if self.init_lr is not None:
            check_positive("init_lr", self.init_lr)
        if self.cost_scale is not None:
            check_positive("cost_scale", self.cost_scale)
        check_positive("regression_lr", self.regression_lr)
        check_step_unit(self.step_unit)
        check_grad_average(self.grad_average)
        if self.cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {self.cost!r}")
        for name in ("init_std", "action_penalty", "area_weight"):
            check_nonnegative(name, getattr(self, name))


#: learning rates tried for the initial controller when ``init_lr`` is None.
INIT_LR_GRID: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


def _objective(state: core.State) -> Tensor:
    """The true (full-data) objective of the state's iterates where the family defines one, else the loss."""
    if state.problems.family.has_true_loss:
        with torch.no_grad():
            return state.problems.true_loss(state.theta)
    return state.loss


@dataclass
class _Regression:
    """Stored sequences of the regression subset, for the whole batch (gathered over processes).

    obs ``[S, T, n_obs]``, local ``[S, T, dS]`` (float32), cond_group ``[S]`` (moment index ``m·G + g``),
    group ``[S]`` (index into the specs), valid ``[S, T]`` bool.
    """

    obs: Tensor
    local: Tensor
    cond_group: Tensor
    group: Tensor
    valid: Tensor


class ConvGPSTrainer:
    """State of convolutional GPS: local controllers ``[M·G, T, 1, dS]``, the global LSTM, ``λ``, ``ν``.

    Args:
        problems: the ``M`` training conditions (one family; its :meth:`param_specs` are the groups).
        cfg: hyperparameters.
    """

    def __init__(self, problems: ProblemBatch, cfg: ConvGPSConfig) -> None:
        self.problems, self.cfg = problems, cfg
        # the true objective is read only at 0 and T (``_objective``) and for val selection (its own runs): the
        # core evaluates it at T alone, not at every step (same samples and fits, less time on NNClassifier).
        self.core_config = CoreConfig(horizon=cfg.horizon, history=1, validate=False, true_every=cfg.horizon)
        self.specs = problems.family.param_specs()
        self.G, self.M, self.T = len(self.specs), problems.n, cfg.horizon
        #: controller sets: one per condition, or one shared by all conditions (``share_conditions``).
        self.C = 1 if cfg.share_conditions else self.M
        self.MG = self.C * self.G
        opts = {"dtype": torch.float64, "device": problems.device}
        self.init_lr = cfg.init_lr if cfg.init_lr is not None else self.tune_init_lr()
        self.local = initial_controller(self.MG, self.T, self.init_lr, cfg.init_std, **opts)
        self.local_new = self.local
        self.lam = torch.zeros(self.MG, self.T, 1, **opts)
        self.nu = torch.full((self.MG, self.T), cfg.init_nu, **opts)
        self.mult = torch.ones(self.MG, **opts)
        self.eta = torch.ones(self.MG, **opts)
        torch.manual_seed(cfg.seed)
        self.net = CoordinateLSTMNet([(s.name, s.kind) for s in self.specs], cfg.hidden,
                                     obs_dim(cfg.grad_average)).to(problems.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.regression_lr)
        self.iteration_count = 0
        self.env_steps = 0
        self.n_dropped = 0
        self._pred: Prediction | None = None
        self._fitted = False

    def _controller_losses(self, controller: LinearGaussianPolicy, problems: ProblemBatch) -> Tensor:
        """Objectives ``[T+1, N]`` of the controllers' mean steps (set ``c = 0``) on ``problems``."""
        pol = ControllerPolicy(LinearGaussianPolicy(controller.K[: self.G], controller.k[: self.G], controller.cov[: self.G]),
                               self.specs, self.cfg.step_unit, self.cfg.grad_average)
        return run_policy(pol, problems, self.T, self.core_config).losses

    def controller_objective(self, controller: LinearGaussianPolicy, problems: ProblemBatch) -> tuple[float, float]:
        """``(mean f at T, mean f over the run)`` of the controllers' mean steps (set ``c = 0``) on ``problems``."""
        losses = self._controller_losses(controller, problems)
        return float(losses[-1].mean()), float(losses.mean())

    def _cost_of_curve(self, curve: Tensor, start: float) -> float:
        """What ``cfg.cost`` models, of a mean objective curve ``[T]`` (``start``: its value at 0)."""
        area = float(curve.mean())
        if self.cfg.cost == "area":
            return area
        score = float(curve.clamp_min(1e-300).log().mean())
        if self.cfg.cost == "mixed":
            score += self.cfg.area_weight * area / max(abs(start), 1e-30)
        return score

    def tune_init_lr(self) -> float:
        """The initial controller's step size: the best of :data:`INIT_LR_GRID` on the training conditions by
        the quantity the cost models (``cfg.cost``: over the run, the mean objective, its mean log, or the mean
        log plus ``area_weight`` times the mean objective relative to its start);
        non-finite results lose."""
        best = (math.inf, INIT_LR_GRID[0])
        for lr in INIT_LR_GRID:
            ctrl = initial_controller(self.G, self.T, lr, 0.0, dtype=torch.float64, device=self.problems.device)
            losses = self._controller_losses(ctrl, self.problems).mean(1)  # [T+1] mean over the conditions
            score = self._cost_of_curve(losses[1:], float(losses[0]))
            if math.isfinite(score) and score < best[0]:
                best = (score, lr)
        log.info("conv GPS: initial controller step size %g (%s over the run %.4g)", best[1],
                 {"area": "mean objective", "log": "mean log objective"}.get(self.cfg.cost, "mixed cost"), best[0])
        return best[1]

    # ------------------------------------------------------------------ sampling
    def _trajectory_generator(self, k: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + self.iteration_count) * 1_000_033 + k)

    def sample(self, controller: LinearGaussianPolicy) -> tuple[DynamicsMoments, CostMoments, _Regression, Tensor, Tensor]:
        """Run this process's share of the ``M·n_samples`` trajectories (module docstring, step 1).

        Returns the dynamics and cost moments (this process's sums), the regression subset, the per-step
        objectives ``[K_r, T+1]`` (the true objective at 0 and T where the family has one, the minibatch one in
        between) and the trajectory indices ``[K_r]`` of this process.
        """
        cfg, T, G = self.cfg, self.T, self.G
        rank, size = world()
        n_traj = self.M * cfg.n_samples
        if n_traj < size:  # checked alike on every rank: an empty rank would fail alone, the others wait in all_reduce
            raise ValueError(f"{self.M} conditions x {cfg.n_samples} samples = {n_traj} trajectories cannot be split "
                             f"over {size} processes: every process needs at least one (use at most {n_traj})")
        ids = torch.arange(n_traj)[rank::size]
        cond = ids // cfg.n_samples
        ccond = torch.zeros_like(cond) if cfg.share_conditions else cond  # controller set of each trajectory
        B = len(ids)
        problems = self.problems.index(cond.to(self.problems.device))
        dev, dt = problems.device, problems.dtype
        state = core.reset(problems, self.core_config)
        feats = CoordinateFeatures(cfg.step_unit, cfg.grad_average)
        feats.reset(state.theta, state.loss, state.grad)
        gens = [self._trajectory_generator(int(k)) for k in ids]
        # regression subset: R coordinates per group per trajectory
        R = cfg.regression_coords
        cols = []
        for spec in self.specs:
            picks = [spec.offset + torch.randperm(spec.numel, generator=g)[: min(R, spec.numel)] for g in gens]
            cols.append(torch.stack(picks))  # [B, r]
        sub = torch.cat(cols, 1).to(dev)  # [B, S_b]
        sub_group = torch.cat([torch.full((c.shape[1],), j) for j, c in enumerate(cols)])  # [S_b]
        moments = DynamicsMoments(self.MG, T, STATE_DIM, device=dev)
        cmoments = CostMoments(self.MG, T, STATE_DIM, device=dev)
        segments = []
        for m in ccond.unique().tolist():
            rows = (ccond == m).nonzero().flatten().to(dev)
            segments += [(rows, spec.slice, m * G + j) for j, spec in enumerate(self.specs)]
        obs_seq, loc_seq, objs = [], [], [_objective(state).double()]
        f0 = state.loss.abs().clamp_min(1e-12)[:, None]  # [B, 1]
        alive = torch.ones(B, dtype=torch.bool, device=dev)
        cg_rows = ccond[:, None].to(dev) * G + sub_group[None].to(dev)  # [B, S_b]
        groups = torch.cat([torch.full((s.numel,), j, dtype=torch.int64) for j, s in enumerate(self.specs)]).to(dev)
        local = CoordinateController(  # the controller of every coordinate of every row: condition · G + group
            LinearGaussianPolicy(controller.K.to(dt), controller.k.to(dt), controller.cov.to(dt)),
            ccond.to(dev)[:, None] * G + groups[None],
        )
        with torch.no_grad():
            for t in range(T):
                s = feats.state
                noise = torch.stack([torch.randn(problems.dim, generator=g, dtype=torch.float64) for g in gens]).to(dev, dt)
                a = local.sample(s, t, noise)  # frame step a'
                a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
                scale = feats.scale
                obs_seq.append(torch.gather(feats.obs, 1, sub[..., None].expand(-1, -1, feats.obs.shape[-1])).float())
                loc_seq.append(torch.gather(s, 1, sub[..., None].expand(-1, -1, STATE_DIM)).float())
                g_t, step = state.grad, feats.unit * a
                norm = f0 if cfg.cost == "area" else 1.0  # "log", "mixed": divided by the reference in the fit
                state, _, term, _ = core.step(state, step)
                feats.update(state.theta, state.loss, state.grad)
                alive = alive & ~term
                moments.add_segments(t, s, a, feats.state, segments, alive)
                cmoments.add_segments(t, s, g_t.abs() * scale / norm, (state.grad - g_t) * step / norm, a * a,
                                      segments, alive)
                objs.append(_objective(state).double() if t == T - 1 else state.loss.double())
        obs = torch.stack(obs_seq, 2)  # [B, S_b, T, F]
        loc = torch.stack(loc_seq, 2)
        S_b = sub.shape[1]
        reg = _Regression(
            obs.reshape(B * S_b, T, -1), loc.reshape(B * S_b, T, -1), cg_rows.reshape(-1),
            sub_group.to(dev).repeat(B), alive[:, None].expand(B, S_b).reshape(-1, 1).expand(-1, T).clone(),
        )
        self.env_steps += self.M * cfg.n_samples * T  # every process's trajectories (this one ran B of them)
        return moments, cmoments, reg, torch.stack(objs, 1), ids

    def _gather(self, reg: _Regression, objs: Tensor, ids: Tensor) -> tuple[_Regression, Tensor]:
        """All processes' regression subsets and objectives, ordered by trajectory index (step 2)."""
        rank, size = world()
        if size == 1:
            return reg, objs
        per = [None] * size
        dist.all_gather_object(per, {"reg": {k: getattr(reg, k).cpu() for k in reg.__dataclass_fields__},
                                     "objs": objs.cpu(), "ids": ids.cpu()})
        ids_all = torch.cat([p["ids"] for p in per])
        order = torch.argsort(ids_all)
        n_traj = len(ids_all)
        dev = objs.device

        def merge(key: str) -> Tensor:
            parts = [p["reg"][key] for p in per]
            x = torch.cat([q.view(len(p["ids"]), -1, *q.shape[1:]) for q, p in zip(parts, per)])  # [K, S_b, ...]
            return x[order].reshape(-1, *x.shape[2:]).to(dev)

        reg_all = _Regression(*(merge(k) for k in ("obs", "local", "cond_group", "group", "valid")))
        objs_all = torch.cat([p["objs"] for p in per])[order].to(dev)
        assert n_traj == objs_all.shape[0]
        return reg_all, objs_all

    # ------------------------------------------------------------------ global policy
    def _targets(self, reg: _Regression, pol: LinearGaussianPolicy) -> tuple[Tensor, Tensor, Tensor]:
        """Regression targets ``[S, T]`` (``K s + k − Σλ/ν``), precisions and weights ``ν`` of the subset."""
        c = reg.cond_group
        K = pol.K[c, :, 0].float()  # [S, T, dS]
        mean = torch.einsum("sti,sti->st", reg.local, K) + pol.k[c, :, 0].float()
        var = pol.cov[c, :, 0, 0].float()
        shift = var * self.lam[c, :, 0].float() / self.nu[c].float()
        return mean - shift, 1.0 / var, self.nu[c].float()

    def _global_step(self, reg: _Regression) -> float:
        """BPTT regression of the LSTM onto the local controllers (module docstring, step 4)."""
        cfg, T = self.cfg, self.T
        target, prec, weight = self._targets(reg, self.local_new)
        valid = reg.valid.float()
        if not self._fitted:
            # Output scale per group: the spread of the targets, so the heads regress O(1) numbers.
            with torch.no_grad():
                for j in range(self.G):
                    sel = reg.group == j
                    tj = target[sel][reg.valid[sel]]
                    self.net.out_scale[j] = float(tj.std().clamp_min(1e-8)) if tj.numel() > 1 else 1.0
        wp = weight * prec
        wp = wp / (wp * valid).sum().clamp_min(1e-12) * valid.sum()  # O(1) loss scale
        loss_val = float("nan")
        gen = torch.Generator().manual_seed(self.cfg.seed + 7919 * self.iteration_count)
        for _ in range(cfg.regression_epochs):
            total, count = 0.0, 0
            for j in range(self.G):
                sel = (reg.group == j).nonzero().flatten()
                if sel.numel() == 0:
                    continue
                sel = sel[torch.randperm(sel.numel(), generator=gen).to(sel.device)]
                obs, tgt, w, v = reg.obs[sel], target[sel], wp[sel], valid[sel]
                h = torch.zeros(sel.numel(), self.net.hidden, device=obs.device)
                c = torch.zeros_like(h)
                for t0 in range(0, T, cfg.bptt):
                    h, c = h.detach(), c.detach()
                    loss = obs.new_zeros(())
                    for t in range(t0, min(T, t0 + cfg.bptt)):
                        h, c = self.net.cells[j](obs[:, t], (h, c))
                        mu = self.net.out_scale[j] * self.net.heads[j](h).squeeze(-1)
                        loss = loss + 0.5 * (w[:, t] * v[:, t] * (mu - tgt[:, t]) ** 2).sum()
                    n_terms = float(v[:, t0 : t0 + cfg.bptt].sum().clamp_min(1.0))
                    self.opt.zero_grad()
                    (loss / n_terms).backward()
                    self.opt.step()
                    total, count = total + float(loss.detach()), count + n_terms
            loss_val = total / max(count, 1.0)
        # Closed-form per-group variance: the inverse of the ν-weighted mean precision.
        with torch.no_grad():
            for j in range(self.G):
                sel = reg.group == j
                wj, pj, vj = weight[sel], prec[sel], valid[sel]
                mean_prec = (wj * pj * vj).sum() / (wj * vj).sum().clamp_min(1e-12)
                self.net.var[j] = 1.0 / mean_prec
        self._fitted = True
        return loss_val

    def _global_means(self, reg: _Regression) -> Tensor:
        """The LSTM's mean steps ``[S, T]`` on the stored observation sequences."""
        out = torch.zeros(reg.obs.shape[:2], device=reg.obs.device)
        with torch.no_grad():
            for j in range(self.G):
                sel = (reg.group == j).nonzero().flatten()
                if sel.numel() == 0:
                    continue
                h = torch.zeros(sel.numel(), self.net.hidden, device=reg.obs.device)
                c = torch.zeros_like(h)
                for t in range(self.T):
                    h, c = self.net.cells[j](reg.obs[sel, t], (h, c))
                    out[sel, t] = self.net.out_scale[j] * self.net.heads[j](h).squeeze(-1)
        return out

    def _linearize(self, reg: _Regression, mu_pi: Tensor) -> LinearGaussianPolicy:
        """The global policy as group-shared linear-Gaussian controllers in the local state: per (condition,
        group, t) the regression of its mean steps on the local states (pooled prior, ridge), variance σ_g²."""
        S, T, dS = reg.local.shape
        z = torch.cat([reg.local.double(), mu_pi.double()[..., None]], -1)  # [S, T, dS+1]
        ok = reg.valid & torch.isfinite(z).all(-1)
        z = torch.where(ok[..., None], z, torch.zeros((), dtype=z.dtype, device=z.device))
        w = ok.double()
        dz = dS + 1
        cnt = z.new_zeros(self.MG, T)
        mean = z.new_zeros(self.MG, T, dz)
        outer = z.new_zeros(self.MG, T, dz, dz)
        for c in reg.cond_group.unique().tolist():
            sel = reg.cond_group == c
            zc, wc = z[sel], w[sel]  # [S_c, T, dz], [S_c, T]
            cnt[c] = wc.sum(0)
            mean[c] = torch.einsum("st,sti->ti", wc, zc)
            outer[c] = torch.einsum("sti,stj->tij", zc * wc[..., None], zc)
        pooled_n = cnt.sum().clamp_min(1e-12)
        pm = mean.sum((0, 1)) / pooled_n
        pc = outer.sum((0, 1)) / pooled_n - torch.outer(pm, pm)
        cnt = cnt.clamp_min(1e-12)
        mean = mean / cnt[..., None]
        emp = outer / cnt[..., None, None] - torch.einsum("cti,ctj->ctij", mean, mean)
        prior = GaussianPrior(pm, pc + 1e-6 * torch.eye(dS + 1, dtype=pc.dtype, device=pc.device), 1.0)
        x0 = torch.zeros(self.MG, 1, dtype=z.dtype, device=z.device)
        x0_cov = torch.zeros(self.MG, 1, 1, dtype=z.dtype, device=z.device)
        fit = dynamics_from_moments(cnt.min(1).values, mean, emp, x0, x0_cov, 1, prior, self.cfg.dyn_reg)
        K = fit.F[..., :, :dS]  # [MG, T, 1, dS]
        k = fit.f  # [MG, T, 1]
        g_of = torch.arange(self.MG) % self.G
        var = self.net.var.double()[g_of.to(self.net.var.device)].to(K.device)
        cov = var[:, None, None, None].expand(self.MG, T, 1, 1).clone()
        return LinearGaussianPolicy(K, k, cov)

    def _dual_step(self, reg: _Regression, mu_pi: Tensor) -> Tensor:
        """``λ ← λ + α ν (E[μ_π] − E[μ_p])`` and the ν adjustment, per (condition, group, t); returns KL(p‖π)."""
        pol = self.local_new
        c = reg.cond_group
        mu_p = (torch.einsum("sti,sti->st", reg.local.double(), pol.K[c, :, 0]) + pol.k[c, :, 0])
        w = reg.valid.double()
        one = torch.nn.functional.one_hot(c, self.MG).double()
        cnt = torch.einsum("sc,st->ct", one, w).clamp_min(1.0)
        diff = torch.einsum("sc,st->ct", one, w * (mu_pi.double() - mu_p)) / cnt
        self.lam = self.lam + self.cfg.dual_step * (self.nu * diff)[..., None]
        g_of = (torch.arange(self.MG) % self.G).to(self.net.var.device)
        var_pi = self.net.var.double()[g_of][:, None]  # [MG, 1]
        var_p = pol.cov[..., 0, 0]  # [MG, T]
        sq = torch.einsum("sc,st->ct", one, w * (mu_pi.double() - mu_p) ** 2) / cnt
        kl = 0.5 * (var_p / var_pi - 1 + torch.log(var_pi / var_p) + sq / var_pi)
        self.nu = adjust_nu(self.nu, kl, self.cfg.kl_target, self.cfg.nu_min, self.cfg.nu_max)
        return kl

    def _cost_reference(self, objs: Tensor) -> Tensor:
        """The per-step reference ``[T]`` of the ``"log"`` and ``"mixed"`` costs. ``"log"``: ``f̂_t``, the geometric
        mean over all trajectories of the objective at ``t`` (``objs[K, T+1]``); :meth:`CostMoments.fit` divides
        the expansion of ``f`` (unnormalised moments) by it at every step, so that the cost models
        ``Σ_t log f_t / T`` around the samples. A per-step constant rather than each sample's own minibatch value
        keeps one lucky near-zero minibatch from dominating a step's cost. ``"mixed"``:
        ``1 / (1/f̂_t + area_weight/f̂_0)``."""
        ref = objs[:, : self.T].double().abs().clamp_min(1e-30).log().mean(0).exp()
        if self.cfg.cost == "mixed":  # Σ (log f_t + w f_t / f̂_0): the expansion divides by 1 / (1/f̂_t + w/f̂_0)
            ref = 1.0 / (1.0 / ref + self.cfg.area_weight / ref[0])
        return ref

    # ------------------------------------------------------------------ one iteration
    def iteration(self) -> dict[str, float]:
        """One convolutional-GPS iteration (module docstring); returns scalar metrics."""
        t0 = time.perf_counter()
        cfg = self.cfg
        moments, cmoments, reg, objs, ids = self.sample(self.local)
        moments.all_reduce()
        cmoments.all_reduce()
        reg, objs = self._gather(reg, objs, ids)
        self.n_dropped += moments.dropped
        prior = moments.prior(cfg.prior_strength) if cfg.prior_strength > 0 else None
        try:
            dyn = moments.fit(prior, cfg.dyn_reg)
        except GPSFitError as exc:
            raise GPSFitError(f"conv GPS iteration {self.iteration_count}: {exc} (condition·G + group indexing)") from None
        cost = cmoments.fit(action_penalty=cfg.action_penalty,
                            reference=self._cost_reference(objs) if cfg.cost != "area" else None)
        scale = float(self.problems.dim) if cfg.cost_scale is None else cfg.cost_scale
        cost = type(cost)(cost.C * scale, cost.c * scale, cost.c0 * scale)
        self.mult = adapt_multiplier(self._pred, dyn, cost, self.mult, cfg.min_mult, cfg.max_mult)
        eps = cfg.kl_step * self.T * self.mult
        if not self._fitted:
            self.local_new = self.local
            self._global_step(reg)
        mu_pi = self._global_means(reg)
        glob = self._linearize(reg, mu_pi)
        reg_loss, kl = float("nan"), torch.zeros(())
        for _ in range(cfg.inner_iterations):
            res = solve_kl_step(dyn, cost, self.local, eps, self.nu, glob, self.lam)
            self.local_new, self.eta = res.policy, res.eta
            reg_loss = self._global_step(reg)
            mu_pi = self._global_means(reg)
            glob = self._linearize(reg, mu_pi)
            kl = self._dual_step(reg, mu_pi)
        self._pred = Prediction(dyn, cost, self.local, self.local_new)
        self.local = self.local_new
        self.iteration_count += 1
        metrics = {
            "sample_final": float(objs[:, -1].mean()),
            "sample_mean": float(objs[:, 1:].mean()),
            "kl_local_global": float(kl.mean()),
            "kl_step_achieved": float(res.kl.mean()),
            "eta_log10": float(torch.log10(self.eta).mean()),
            "step_mult": float(self.mult.mean()),
            "nu_log10": float(torch.log10(self.nu).mean()),
            "regression_loss": reg_loss,
            "dropped": float(moments.dropped),
            "env_steps": float(self.env_steps),
            "wall_s": time.perf_counter() - t0,
        }
        log.info("conv GPS iter %d: %s", self.iteration_count, {k: round(v, 4) for k, v in metrics.items()})
        return metrics

    def policy(self) -> ConvGPSPolicy:
        """The global policy (deterministic means) as a :class:`~l2o_gym.policy.Policy`."""
        return ConvGPSPolicy(self.net, step_unit=self.cfg.step_unit, grad_average=self.cfg.grad_average)

    def policy_for(self, env_id: str | None) -> ConvGPSPolicy:
        """:meth:`policy` recording the env it was trained on (checkpoints)."""
        return ConvGPSPolicy(self.net, env_id=env_id, step_unit=self.cfg.step_unit, grad_average=self.cfg.grad_average)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly (tensors and primitives: loads with ``weights_only=True``)."""
        out: dict[str, Any] = {
            "local": {"K": self.local.K, "k": self.local.k, "cov": self.local.cov},
            "lam": self.lam, "nu": self.nu, "mult": self.mult, "eta": self.eta,
            "net": self.net.state_dict(), "opt": self.opt.state_dict(),
            "iteration": self.iteration_count, "env_steps": self.env_steps, "n_dropped": self.n_dropped,
            "fitted": self._fitted, "init_lr": float(self.init_lr),
        }
        if self._pred is not None:
            out["pred"] = self._pred.state_dict()
        return out

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        loc = sd["local"]
        if tuple(loc["K"].shape) != tuple(self.local.K.shape):
            raise ValueError(f"controllers of shape {tuple(loc['K'].shape)} do not fit this run's "
                             f"{tuple(self.local.K.shape)} (groups, horizon or share_conditions differ)")
        # state.pt is read onto the CPU (l2o_gym.checkpoint.load_state): the controllers, multipliers and the
        # prediction go where this run's problems are (a CUDA run resumes on CUDA).
        dev = self.problems.device
        self.local = self.local_new = LinearGaussianPolicy(*(loc[k].to(dev) for k in ("K", "k", "cov")))
        self.lam, self.nu, self.mult, self.eta = (sd[k].to(dev) for k in ("lam", "nu", "mult", "eta"))
        self.net.load_state_dict(sd["net"])
        self.opt.load_state_dict(sd["opt"])
        self.iteration_count, self.env_steps = int(sd["iteration"]), int(sd["env_steps"])
        self.n_dropped, self._fitted, self.init_lr = int(sd["n_dropped"]), bool(sd["fitted"]), float(sd["init_lr"])
        p = sd.get("pred")
        self._pred = None if p is None else Prediction.from_state_dict({k: v.to(dev) for k, v in p.items()})

