"""The one tuning protocol of the hand-designed baselines, on a batch of problems the caller already holds.

Used everywhere a "tuned baseline" appears: the report's tuned file (:mod:`l2o_gym.experiments.tuning`
samples the ``train`` problems of a setting, calls :func:`tune_baseline` and writes
``agents/tuned_baselines.json``), the initial GPS controller (:func:`tuned_gd_step`) and the
sample-efficiency reference of every training run (:func:`best_baseline` on the run's ``val`` problems,
:data:`FIRST_ORDER`).

**Grid** (:data:`GRIDS`, one line per baseline): the learning rate over ``10^(k/4)``, ``k = −20…4``
(``1e-5 … 10``, 25 values, :data:`LR_GRID`); momentum and NAG over learning rate × momentum *jointly*,
``μ ∈ {0, 0.5, 0.9, 0.95, 0.99}`` (:data:`MOMENTUM_GRID`; 125 pairs). ``μ = 0`` makes both plain gradient
descent, so their grids hold SGD's (their selection score is never worse than SGD's while SGD's selection lies
inside the grid; the edge extension walks only the selection's own scan, so an SGD selection beyond the grid can
beat them: ``l2o/NeuralArt-v0@T32``); 0.95 fills the gap
between 0.9 and 0.99 where the heavy-ball optimum ``((√κ−1)/(√κ+1))²`` of a quadratic with condition
number ``κ`` lies: over 1,000 ``l2o/Quadratic-v0`` train problems its 10/50/90 % quantiles are 0.90 / 0.95 /
0.99 (``log10 κ`` 3.1 / 3.9 / 5.4), and the tuner does pick μ = 0.95 there for both momentum and NAG. Adam and RMSprop keep torch's defaults for their other constants; CG and L-BFGS have no
step size (line search) and are run once.

**Penalized mean** (:func:`penalized_final`): the mean over the problems of the final objective ``f(θ_T)``,
where a problem whose episode diverged (:mod:`l2o_gym.core`: non-finite, or above ``blowup·(|f(θ₀)|+1)``)
counts the core's divergence penalty ``threshold = blowup·(|f(θ₀)|+1)`` — the cost the MDP charges a
terminated instance each step — instead of its last finite objective. A configuration that diverges on some
tuning problems is therefore scored, never dropped: one diverged problem ``j`` adds
``blowup·(|f_j(θ₀)|+1)/N`` to the mean, so it loses to any configuration that keeps every problem below its
starting objective whenever ``Σ_i f_i(θ₀) < blowup·(|f_j(θ₀)|+1)`` — always unless the starting objectives
differ by orders of magnitude across the problems — and among configurations that all diverge somewhere the one
with the fewest (and least costly) divergences wins.

**Selection score** (a margin of one learning-rate step at the edge of stability): a configuration is
*stable* on the tuning problems when no problem diverged and every problem ended at or below its starting
objective (``f(θ_T) ≤ f(θ₀)``). The selection score of a configuration is its penalized mean if the same
configuration at the next larger learning rate of the grid (×10^¼) is stable (or does not exist), and
otherwise the larger of the two penalized means. Plain minimization of the penalized mean picks the step size
right at the edge of stability of the *tuning* problems; test problems a little more curved than any tuning
one then blow up (on ``l2o/Quadratic-v0`` the largest Hessian eigenvalue over 1,000 test problems is 76.7,
over the first 100 train problems 67.7, over 1,000 train problems 68.8, so more tuning problems do not
close the gap: the tail is sampled, not bounded). With the margin the selection stays stable for curvatures
up to 1.78× the largest seen; where the next step is merely worse but stable nothing changes (the margin
does not shift a U-shaped curve's minimum). Measured on ``l2o/Quadratic-v0`` (1,000 test problems,
docs/benchmarks.md): NAG's edge choice (lr 0.0178, μ 0.95) reaches log10 mean f(θ_T) +1.12 because one
test problem slowly diverges.

**Selection**: the lowest selection score; ties go to the earlier configuration in grid order (smaller μ,
then smaller learning rate). Along the learning-rate axis (ascending, for each μ) the scan stops after two
consecutive values where *every* problem diverged: such a configuration has the largest possible penalized
mean (every problem pays the penalty), and larger steps are assumed to diverge too (``n_evaluated`` records
how many configurations ran).

**Edge extension** (protocol v2): a selection at the edge of what was evaluated is no selection — the best rate
may lie beyond it (neural art's SGD wanted more than the grid's 10). While the selected configuration's learning
rate is the largest (smallest) one evaluated for its other hyperparameters (its μ), the next larger (smaller)
rate of the quarter-decade ladder (:func:`lr_ladder`: the grid extended by :data:`EDGE_STEPS` steps each way,
``1e-8 … 1e4`` for :data:`LR_GRID`) is evaluated and the selection is made again, with the same score and
margin; the walk ends when the selection has evaluated neighbours on both sides, or at the ladder's end. Only
the selection's scan is extended, so wherever the selection already has evaluated neighbours on both sides
nothing is added. With the grid search that is whenever it lies inside the grid; with the coarse search a
selection at the smallest rate its refinement reached is extended too, and none of the shipped coarse entries is
there — so every ``joint-grid-penalized-v1`` entry of the shipped file whose selection is not at a grid edge is
also a v2 result.

**Search** (``search=``): ``"grid"`` (the default) evaluates every configuration of :data:`GRIDS` as above.
``"coarse"`` is for families where one run costs seconds to minutes (the conv nets, neural art): the same
grid, the same score, margin and selection, but along the learning-rate axis — for *every* point of the
other axes, so momentum and NAG are still tuned over μ jointly — only the decades ``k ∈`` :data:`COARSE_K`
(``1e-3 … 1``) are run first, then the half decades ``k* ± 2`` around the best so far, then the quarter
decades ``k* ± 1`` around the new best (:data:`COARSE_REFINE`): about 8 instead of 25 learning rates. The
``k* + 1`` neighbour of the selection is always evaluated, so the one-step margin still applies. The
selection is the grid search's whenever the score is unimodal in ``log lr`` with its minimum inside
``1e-3.5 … 10^0.5``; entries tuned this way record ``"search": "coarse"``.

The value reported for the selected configuration (:func:`tune_baselines`, the sample-efficiency targets) is
its penalized mean, i.e. its mean final objective when nothing diverged.

Rollouts use the one loop, :func:`l2o_gym.policy.run_policy`, with a history of one iterate (baselines
read only the gradient; the objectives do not depend on the history length) and the default divergence
factor of :class:`~l2o_gym.core.CoreConfig`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from l2o_gym.agents.baselines import BASELINES, FIRST_ORDER, make_baseline
from l2o_gym.core import CoreConfig
from l2o_gym.policy import Policy, Trajectory, run_policy
from l2o_gym.problems import ProblemBatch

log = logging.getLogger(__name__)

__all__ = [
    "COARSE_K", "COARSE_REFINE", "EDGE_STEPS", "FIRST_ORDER", "GRIDS", "LR_GRID", "LR_LADDER", "MOMENTUM_GRID", "SEARCHES", "Candidate",
    "TuneResult", "best_baseline", "final_objective", "grid_configs", "penalized_final", "score_config", "tune_baseline", "tune_baselines", "tuned_gd_step",
]

def _lr(k: int) -> float:
    """The learning rate ``10^(k/4)`` rounded to 6 significant digits (every lr of the protocol is one of these)."""
    return float(f"{10 ** (k / 4):.6g}")


#: learning rates ``10^(k/4)``, ``k = −20…4`` (``1e-5 … 10``; rounded to 6 significant digits).
LR_GRID: tuple[float, ...] = tuple(_lr(k) for k in range(-20, 5))
#: how far the edge extension may walk beyond a grid, in quarter decades: (below its smallest, above its largest).
EDGE_STEPS: tuple[int, int] = (12, 12)


def lr_ladder(lrs: tuple[float, ...]) -> tuple[float, ...]:
    """``lrs`` (ascending) extended by :data:`EDGE_STEPS` quarter-decade steps (×10^∓¼, 6 significant digits) below its
    smallest and above its largest value: the rates the edge extension may add."""
    below = tuple(float(f"{lrs[0] * 10 ** (-j / 4):.6g}") for j in range(EDGE_STEPS[0], 0, -1))
    above = tuple(float(f"{lrs[-1] * 10 ** (j / 4):.6g}") for j in range(1, EDGE_STEPS[1] + 1))
    return below + tuple(lrs) + above


#: :data:`LR_GRID`'s ladder: ``10^(k/4)``, ``k = −32…16`` (``1e-8 … 1e4``).
LR_LADDER: tuple[float, ...] = lr_ladder(LR_GRID)
#: momentum coefficients tried jointly with every learning rate (momentum, NAG).
MOMENTUM_GRID: tuple[float, ...] = (0.0, 0.5, 0.9, 0.95, 0.99)

#: the tuning grid of every baseline: ``{name: {hyperparameter: values}}``; ``{}``: nothing to tune (run once).
#: The product of the listed values is searched; ``lr`` is the innermost (scanned) axis.
GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "sgd": {"lr": LR_GRID},
    "momentum": {"momentum": MOMENTUM_GRID, "lr": LR_GRID},
    "nag": {"momentum": MOMENTUM_GRID, "lr": LR_GRID},
    "adam": {"lr": LR_GRID},
    "rmsprop": {"lr": LR_GRID},
    "adagrad": {"lr": LR_GRID},
    "cg": {},
    "lbfgs": {},
}

#: ``"coarse"`` search: exponents ``k`` (``lr = 10^(k/4)``) of the first pass along the learning-rate axis.
COARSE_K: tuple[int, ...] = (-12, -8, -4, 0)
#: ``"coarse"`` search: the steps (in quarter decades) of the refinement passes around the best so far.
COARSE_REFINE: tuple[int, ...] = (2, 1)
#: the search modes of :func:`tune_baseline`.
SEARCHES: tuple[str, ...] = ("grid", "coarse")

#: consecutive learning rates at which every problem diverged after which the scan along ``lr`` stops.
STOP_AFTER_ALL_DIVERGED = 2


@dataclass(frozen=True)
class Candidate:
    """One evaluated configuration.

    Attributes:
        hparams: the baseline's keyword arguments.
        penalized_mean: mean penalized final objective (:func:`penalized_final`).
        final_mean: mean final objective with diverged problems at their last finite value (the evaluation
            harness's convention, for comparison with reports).
        diverged_fraction: fraction of the problems whose episode diverged.
        stable: no problem diverged and every problem ended at or below its starting objective.
        score: the selection criterion (module docstring): ``penalized_mean``, raised to the ``penalized_mean`` of
            the same configuration at the next larger learning rate of the grid when that one is not stable.
    """

    hparams: dict[str, float]
    penalized_mean: float
    final_mean: float
    diverged_fraction: float
    stable: bool = True
    score: float = math.nan


@dataclass
class TuneResult:
    """The outcome of :func:`tune_baseline`: the selected :class:`Candidate` and every evaluated one (grid order)."""

    name: str
    best: Candidate
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def hparams(self) -> dict[str, float]:
        return dict(self.best.hparams)

    @property
    def value(self) -> float:
        """The selected configuration's mean penalized final objective on the tuning problems."""
        return self.best.penalized_mean

    @property
    def n_evaluated(self) -> int:
        return len(self.candidates)


def grid_configs(name: str) -> list[dict[str, float]]:
    """Every configuration of :data:`GRIDS` for ``name``, in grid order (``lr`` innermost)."""
    if name not in GRIDS:
        known = ", ".join(GRIDS)
        raise ValueError(f"no tuning grid for baseline {name!r}: expected one of {known} (add a line to GRIDS)")
    grid = GRIDS[name]
    configs: list[dict[str, float]] = [{}]
    for key, values in grid.items():
        configs = [{**c, key: float(v)} for c in configs for v in values]
    return configs


def _tuning_config(horizon: int) -> CoreConfig:
    # The score reads the objective at t = 0 and t = T only: a family's true objective (NN benchmark) is
    # evaluated there and nowhere else (true_every = horizon).
    return CoreConfig(horizon=horizon, history=1, true_every=horizon)


def penalized_final(traj: Trajectory) -> Tensor:
    """``[N]`` final objective of each problem (the true objective where the family has one), the core's divergence
    penalty ``threshold`` where it diverged."""
    state = traj.state
    return torch.where(state.terminated, state.threshold, state.objective).detach()


def score_config(policy: Policy, problems: ProblemBatch, horizon: int, hparams: dict[str, float] | None = None) -> Candidate:
    """Run ``policy`` on ``problems`` for ``horizon`` steps and score it (module docstring)."""
    traj = run_policy(policy, problems, horizon, _tuning_config(horizon))
    pen = penalized_final(traj).double()
    diverged = traj.state.terminated
    return Candidate(
        hparams=dict(hparams or {}),
        penalized_mean=float(pen.mean()),
        final_mean=float(traj.objectives[-1].double().mean()),
        diverged_fraction=float(diverged.double().mean()),
        stable=bool(not diverged.any() and (traj.objectives[-1] <= traj.objectives[0]).all()),
    )


def tune_baseline(name: str, problems: ProblemBatch, horizon: int, *, search: str = "grid") -> TuneResult:
    """Tune baseline ``name`` on ``problems`` at ``horizon`` with the protocol of the module docstring.

    Args:
        name: a baseline with a line in :data:`GRIDS`.
        problems: the ``N`` tuning problems (``train`` or ``val``; a ``test`` batch is refused).
        horizon: iterations ``T`` of each run.
        search: ``"grid"`` (every configuration) or ``"coarse"`` (coarse-to-fine along the learning rate).

    Raises:
        ValueError: unknown baseline or search, a horizon that is not a positive integer, or ``test`` problems.
    """
    if getattr(problems, "split", None) == "test":
        raise ValueError("tuning must not read the test split: use split='train' or 'val'")
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")
    if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    if search not in SEARCHES:
        raise ValueError(f"unknown search {search!r}: expected one of {', '.join(SEARCHES)}")
    lrs = tuple(GRIDS[name].get("lr", ()))
    # the points of the non-lr axes, in grid order, each with its lr scan
    scans: dict[tuple[tuple[str, float], ...], list[dict[str, float]]] = {}
    for hp in grid_configs(name):
        scans.setdefault(_point(hp), []).append(hp)
    candidates: list[Candidate] = []
    for scan in scans.values():
        if search == "coarse" and lrs:
            candidates += _coarse_scan(name, scan, problems, horizon, lrs)
        else:
            candidates += _full_scan(name, scan, problems, horizon)
    ladder = lr_ladder(lrs) if lrs else ()
    if lrs:
        candidates = _extend_edge(name, candidates, problems, horizon, ladder, list(scans))
    candidates = _with_margin(candidates, ladder)
    return TuneResult(name=name, best=_lowest(candidates), candidates=candidates)


def _lowest(candidates: list[Candidate]) -> Candidate:
    """The candidate with the lowest score; ties: the earliest in the list."""
    best = candidates[0]
    for cand in candidates[1:]:
        if cand.score < best.score:
            best = cand
    return best


def _point(hparams: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """The point of the non-lr axes (e.g. ``(("momentum", 0.9),)``) of a configuration: its lr scan."""
    return tuple((k, v) for k, v in hparams.items() if k != "lr")


def _extend_edge(
    name: str, candidates: list[Candidate], problems: ProblemBatch, horizon: int, ladder: tuple[float, ...],
    points: list[tuple[tuple[str, float], ...]],
) -> list[Candidate]:
    """The edge extension (module docstring): while the selection's learning rate is the largest (smallest) one
    evaluated for its other hyperparameters, evaluate the next larger (smaller) rate of ``ladder``
    (:func:`lr_ladder` of the grid), and select again. ``points``: the non-lr points (:func:`_point`) in grid
    order. Returns every candidate, each lr scan in ascending lr, scans in grid order."""
    rank = {p: k for k, p in enumerate(points)}
    while True:
        # each lr scan ascending, scans in grid order: ties go to the earliest in grid order, as in the final pick
        candidates = sorted(candidates, key=lambda c: (rank[_point(c.hparams)], c.hparams["lr"]))
        best = _lowest(_with_margin(candidates, ladder))
        scan = [c.hparams["lr"] for c in candidates if _point(c.hparams) == _point(best.hparams)]
        i = ladder.index(best.hparams["lr"])
        step = 1 if best.hparams["lr"] == scan[-1] else -1 if best.hparams["lr"] == scan[0] else 0
        if step == 0 or not 0 <= i + step < len(ladder):
            return candidates
        hp = {**best.hparams, "lr": ladder[i + step]}
        log.info("tuning %s: the selection %s is at the edge of its lr scan; evaluating lr %g", name, best.hparams,
                 hp["lr"])
        candidates = [*candidates, score_config(make_baseline(name, **hp), problems, horizon, hp)]


def _full_scan(name: str, scan: list[dict[str, float]], problems: ProblemBatch, horizon: int) -> list[Candidate]:
    """Every configuration of ``scan`` (ascending lr), stopping after :data:`STOP_AFTER_ALL_DIVERGED` consecutive
    configurations where every problem diverged."""
    out: list[Candidate] = []
    all_diverged_run = 0
    for hp in scan:
        if all_diverged_run >= STOP_AFTER_ALL_DIVERGED:
            break
        cand = score_config(make_baseline(name, **hp), problems, horizon, hp)
        out.append(cand)
        all_diverged_run = all_diverged_run + 1 if cand.diverged_fraction == 1.0 else 0
    return out


def _coarse_scan(
    name: str, scan: list[dict[str, float]], problems: ProblemBatch, horizon: int, lrs: tuple[float, ...]
) -> list[Candidate]:
    """Coarse-to-fine along the lr axis of ``scan`` (module docstring); returns the evaluated ones in grid order."""
    done: dict[int, Candidate] = {}

    def run(i: int) -> None:
        if 0 <= i < len(scan) and i not in done:
            done[i] = score_config(make_baseline(name, **scan[i]), problems, horizon, scan[i])

    def best() -> int:
        scored = _with_margin([done[i] for i in sorted(done)], lrs)
        pick = min(range(len(scored)), key=lambda j: scored[j].score)  # ties: the earliest (smaller lr)
        return sorted(done)[pick]

    for k in COARSE_K:
        run(min(range(len(lrs)), key=lambda i: abs(math.log10(lrs[i]) - k / 4)))  # the grid's lr nearest 10^(k/4)
    for delta in COARSE_REFINE:
        b = best()
        run(b - delta)
        run(b + delta)
    run(best() + 1)  # the margin's neighbour
    return [done[i] for i in sorted(done)]


def _with_margin(candidates: list[Candidate], lrs: tuple[float, ...]) -> list[Candidate]:
    """Each candidate with its selection ``score``: its penalized mean, or the worse of it and that of the same
    configuration at the next larger learning rate of ``lrs`` when that one was evaluated and is not stable."""
    index = {tuple(sorted(c.hparams.items())): c for c in candidates}
    out = []
    for c in candidates:
        score = c.penalized_mean
        lr = c.hparams.get("lr")
        if lr is not None and lr in lrs and lrs.index(lr) + 1 < len(lrs):
            up = index.get(tuple(sorted({**c.hparams, "lr": lrs[lrs.index(lr) + 1]}.items())))
            if up is not None and not up.stable:
                score = max(score, up.penalized_mean)
        out.append(dataclasses.replace(c, score=score))
    return out


def tune_baselines(names: tuple[str, ...], problems: ProblemBatch, horizon: int) -> dict[str, tuple[dict[str, float], float]]:
    """Each baseline tuned on ``problems`` (:func:`tune_baseline`): ``{name: (hparams, value)}``.

    ``value`` is the selected configuration's mean penalized final objective (finite: a diverged problem
    counts the core's penalty).
    """
    out: dict[str, tuple[dict[str, float], float]] = {}
    for name in names:
        res = tune_baseline(name, problems, horizon)
        out[name] = (res.hparams, res.value)
    return out


def final_objective(policy: Policy, problems: ProblemBatch, horizon: int, config: CoreConfig | None = None) -> float:
    """Mean objective after ``horizon`` steps of ``policy``, a diverged instance counting the core's divergence
    penalty ``threshold`` as in the protocol's score (:func:`penalized_final`), not its last finite objective: the
    ``val`` value every trainer selects its best policy by, comparable with the tuned baselines' targets. Equal to
    the plain mean when nothing diverged."""
    traj = run_policy(policy, problems, horizon, config)
    return float(torch.where(traj.state.terminated, traj.state.threshold, traj.objectives[-1]).mean())


def tuned_gd_step(problems: ProblemBatch, horizon: int) -> tuple[float, float]:
    """Gradient descent tuned on ``problems`` (:func:`tune_baseline`): ``(lr, mean penalized final objective)``."""
    res = tune_baseline("sgd", problems, horizon)
    return float(res.hparams["lr"]), res.value


def _best_of(tuned: dict[str, tuple[dict[str, float], float]], names: tuple[str, ...]) -> tuple[str, dict[str, float], float]:
    """The lowest-valued of ``names`` in ``tuned`` (:func:`tune_baselines`'s output); ties: the first listed."""
    best: tuple[str, dict[str, float], float] = ("", {}, math.inf)
    for name in names:
        hp, value = tuned[name]
        if value < best[2]:
            best = (name, hp, value)
    return best


def best_baseline(names: tuple[str, ...], problems: ProblemBatch, horizon: int) -> tuple[str, dict[str, float], float]:
    """Best tuned baseline on ``problems``: ``(name, hparams, value)`` (:func:`tune_baselines`)."""
    return _best_of(tune_baselines(tuple(names), problems, horizon), tuple(names))
