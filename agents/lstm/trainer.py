"""Meta-training the coordinatewise LSTM by truncated backpropagation through time (Andrychowicz et al.).

Read top to bottom, one episode is::

    problems = family.sample(n_problems, "train", seed=episode_seed(episode, rank))   # fresh meta-batch
    state, memory = core.reset(problems), policy.reset(state)
    for each of horizon / unroll truncations:
        traj = rollout(policy, state, unroll, memory)        # the one rollout loop, graph kept
        meta_loss = Σ_t w_t · mean_n traj.costs[t, n]         # (optionally weighted) sum of the objective
        meta_loss.backward(); all-reduce grads (DDP); clip; Adam step   (skipped with a warning if NaN)
        state, memory = traj.state.detach(), detach(traj.memory)   # carried across truncations

Every ``val_every`` episodes the policy is evaluated on a fixed set of ``val`` problems (mean final
objective after ``horizon`` steps). The run folder is the common lifecycle's
(:func:`l2o_gym.agents.common.fit`): the best policy is written to ``<out>/lstm_best.safetensors``, the last to
``lstm_last.safetensors`` and the full training state (weights, Adam, counters, best value, RNG) to
``<out>/state.pt`` (atomic writes), from which ``train(..., resume=True)`` continues exactly. Run folders of
l2o-gym versions before the lifecycle (``best.safetensors``, a ``state.pt`` without ``kind``) cannot be resumed:
``--resume`` stops with a clear error naming the file; their ``best.safetensors`` still loads as a policy.

First-order by default: the optimizee gradient fed to the LSTM is detached (``CoreConfig(second_order=
False)``), as in the paper; ``second_order=True`` keeps its graph.

Several processes (``torchrun --nproc_per_node K``): each rank draws its own problems (seed offset by
rank), gradients of the meta-parameters are averaged with ``all_reduce`` (gloo on CPU, NCCL on GPU) before
the identical Adam step on every rank — the data-parallel scheme of DDP, done explicitly because one
meta-iteration calls the network ``unroll`` times before a single backward. With ``K = 1`` it is exactly
single-process training.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from l2o_gym import core
from l2o_gym.agents.baselines import check_baseline_names
from l2o_gym.agents.bptt import BPTT
from l2o_gym.agents.common import Agent, RunFolder, fit, load_run_state, state_path
from l2o_gym.agents.lstm.policy import KIND, LSTMConfig, LSTMPolicy
from l2o_gym.agents.tuning import final_objective
from l2o_gym.checkpoint import CheckpointError
from l2o_gym.checks import NestedValueError, resolve_device
from l2o_gym.core import CoreConfig
from l2o_gym.distributed import world
from l2o_gym.registry import env_family

from l2o_gym.agents.lstm.multi import KIND as MULTI_KIND, MultiLSTMPolicy, init_from_checkpoint

log = logging.getLogger(__name__)

WEIGHTINGS: tuple[str, ...] = ("uniform", "linear")
OBJECTIVES: tuple[str, ...] = ("sum", "log")




@dataclass
class TrainConfig:
    """Meta-training settings; the defaults are the paper's quadratic set-up.

    Args:
        env_id: registered env whose family supplies the problems.
        family_kwargs: size overrides of the family (e.g. ``{"dim": 10}``).
        arch: the LSTM architecture.
        n_problems: meta-batch size (problems per episode per rank; paper: 128).
        horizon: episode length T (paper: 100).
        unroll: truncation length (paper: 20); must divide ``horizon``.
        episodes: number of episodes (each is ``horizon / unroll`` meta-iterations).
        lr: Adam learning rate of the meta-parameters (paper: 1e-3).
        clip: gradient-norm clipping of the meta-gradient (``0`` disables).
        weighting: ``"uniform"`` (paper) or ``"linear"`` (weight ``t/T`` on step ``t``) over the unroll.
        objective: ``"sum"`` of f (paper) or ``"log"``: sum of ``log(f + 1e-8)`` (scale-free).
        second_order: keep the optimizee gradient's graph.
        val_every: validate every this many episodes (0: never).
        val_problems: number of fixed ``val`` problems (CLI ``--n-val``).
        baselines: baselines tuned on the ``val`` problems as the sample-efficiency targets of the training record
            (empty: no targets, nothing tuned).
        seed: seeds the network initialisation and the problem streams.
        device: torch device.
        dtype: dtype of the problems (the network is float32).
        out: output folder (checkpoints, TensorBoard logs); ``None`` writes nothing.
        tensorboard: write TensorBoard scalars under ``out/tb``.
        progress: show a tqdm bar.
        kinds: LSTM names of a multi-LSTM policy (one coordinatewise LSTM per parameter kind,
            :class:`~l2o_gym.agents.lstm.multi.MultiLSTMPolicy`), e.g. ``("conv", "fc", "bn", "bias")``;
            empty (default): one shared :class:`LSTMPolicy`.
        assign: parameter kind -> LSTM name for a multi-LSTM (``"*"``: the rest); default identity.
        init: warm start: a checkpoint whose weights initialise the policy (an ``"lstm"`` checkpoint is
            copied into every LSTM of a multi-LSTM; :func:`~l2o_gym.agents.lstm.multi.init_from_checkpoint`).
    """

    env_id: str = "l2o/Quadratic-v0"
    family_kwargs: dict[str, Any] = field(default_factory=dict)
    arch: LSTMConfig = field(default_factory=LSTMConfig)
    n_problems: int = 128
    horizon: int = 100
    unroll: int = 20
    episodes: int = 100
    lr: float = 1e-3
    clip: float = 1.0
    weighting: str = "uniform"
    objective: str = "sum"
    second_order: bool = False
    val_every: int = 10
    val_problems: int = 256
    baselines: tuple[str, ...] = ("sgd", "momentum", "cg", "lbfgs")
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    out: str | None = None
    tensorboard: bool = True
    progress: bool = True
    kinds: tuple[str, ...] = ()
    assign: dict[str, str] = field(default_factory=dict)
    init: str | None = None

    def __post_init__(self) -> None:
        for name in ("n_problems", "horizon", "unroll", "episodes", "val_problems"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v > 0):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.horizon % self.unroll:
            raise ValueError(f"unroll ({self.unroll}) must divide horizon ({self.horizon})")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite positive number, got {self.lr!r}")
        if not (math.isfinite(self.clip) and self.clip >= 0):
            raise ValueError(f"clip must be finite and >= 0, got {self.clip!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}: expected one of {', '.join(WEIGHTINGS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}: expected one of {', '.join(OBJECTIVES)}")
        if self.val_every < 0:
            raise ValueError(f"val_every must be >= 0, got {self.val_every!r}")
        if isinstance(self.arch, dict):
            self.arch = LSTMConfig(**self.arch)
        self.baselines = check_baseline_names(self.baselines)
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.family_kwargs, dict):
            raise ValueError(f"family_kwargs must be a JSON object (dict), got {self.family_kwargs!r}")
        resolve_device(self.device)
        try:
            env_family(self.env_id, **self.family_kwargs)
        except (TypeError, ValueError, KeyError) as exc:
            raise NestedValueError(f"env_id {self.env_id!r} with family_kwargs {self.family_kwargs!r}", str(exc)) from None
        self.kinds = tuple(self.kinds)
        if self.assign and not self.kinds:
            raise ValueError("assign needs kinds (the LSTM names of a multi-LSTM policy)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_policy(cfg: TrainConfig) -> LSTMPolicy | MultiLSTMPolicy:
    """The policy a config trains: one shared :class:`LSTMPolicy`, or with ``cfg.kinds`` a
    :class:`~l2o_gym.agents.lstm.multi.MultiLSTMPolicy` (one LSTM per name in ``kinds``, ``cfg.assign`` mapping
    the family's parameter kinds to them), checked against the family's parameter kinds."""
    if not cfg.kinds:
        return LSTMPolicy(cfg.arch, env_id=cfg.env_id)
    policy = MultiLSTMPolicy(cfg.kinds, cfg.arch, assign=cfg.assign, env_id=cfg.env_id)
    family = env_family(cfg.env_id, **cfg.family_kwargs)
    policy.check_kinds([s.kind for s in family.param_specs()], where=f"env {cfg.env_id}")
    return policy


def episode_seed(cfg: TrainConfig, episode: int, rank: int = 0, world: int = 1) -> int:
    """Seed of the train meta-batch of ``episode`` on ``rank`` (rank 0 of 1 process = single process)."""
    return ((cfg.seed * 1_000_003 + episode) * world + rank) % (2**62)


def meta_loss(costs: Tensor, cfg: TrainConfig, t0: int) -> Tensor:
    """The meta-loss of one unroll: ``Σ_t w_t · mean_n c(costs[t, n])`` for ``costs[T_u, N]``.

    ``c`` is the identity (``objective="sum"``) or ``log(· + 1e-8)``; ``w_t = 1`` or ``(t0 + t + 1) / T``.
    """
    c = costs if cfg.objective == "sum" else torch.log(costs.clamp_min(0) + 1e-8)
    per_step = c.mean(1)
    if cfg.weighting == "linear":
        w = torch.arange(t0 + 1, t0 + costs.shape[0] + 1, device=costs.device, dtype=costs.dtype) / cfg.horizon
        per_step = per_step * w
    return per_step.sum()


class Trainer(Agent):
    """Truncated-BPTT meta-training of an :class:`LSTMPolicy` (see the module docstring): the LSTM's
    :class:`~l2o_gym.agents.common.Agent` — one episode per iteration, validation on the fixed ``val`` set.

    Attributes:
        policy: the policy being trained (its network is the meta-parameters).
        optimizer: Adam over the network parameters.
        episode: episodes completed.
        best_val: best validation objective so far (``inf`` before the first validation).
        history: one dict per episode (``episode``, ``meta_loss``, ``skipped``, ``final``, ``val_final`` when validated).
    """

    kind = KIND
    #: the val set and the horizon its objective is read at (refused to change on resume unless ``reset_best``)
    structural = ("horizon", "val_problems", "seed", "dtype")

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.cfg = self.config = cfg
        self.rank, self.world = world()
        self.writes = self.rank == 0
        self.val_every = cfg.val_every
        self.baselines = tuple(cfg.baselines)
        self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.policy = make_policy(cfg).to(self.device)
        self.kind = MULTI_KIND if cfg.kinds else KIND  # run-folder file names: {kind}_best.safetensors
        if cfg.init:
            init_from_checkpoint(self.policy, cfg.init)
        if self.world > 1:  # identical start on every rank
            for p in self.policy.net.parameters():
                dist.broadcast(p.data, 0)
        self.optimizer = torch.optim.Adam(self.policy.net.parameters(), lr=cfg.lr)
        self.bptt = BPTT(self.policy, self.policy.net.parameters(), self.optimizer,
                         lambda costs, t0: meta_loss(costs, self.cfg, t0), cfg.clip)
        self.family = env_family(cfg.env_id, **cfg.family_kwargs)
        self.core_config = CoreConfig(horizon=cfg.horizon, history=1, second_order=cfg.second_order, validate=False)
        self.val_set = self.family.sample(cfg.val_problems, "val", cfg.seed, self.device, cfg.dtype)
        self.episode = 0
        self._env_steps = 0

    # ---- one meta-iteration -----------------------------------------------------------------------
    def meta_step(self, state: core.State, memory: Any, t0: int) -> tuple[core.State, Any, float, bool]:
        """One truncation: unroll ``cfg.unroll`` steps, backpropagate, all-reduce, clip, Adam step
        (:class:`~l2o_gym.agents.bptt.BPTT`). Returns ``(state, memory, meta_loss, updated)``, detached."""
        r = self.bptt.step(state, memory, self.cfg.unroll, t0, label=f"episode {self.episode}")
        return r.state, r.memory, r.loss, r.updated

    def run_episode(self) -> dict[str, Any]:
        """One episode on a fresh meta-batch of train problems (``horizon / unroll`` meta-iterations)."""
        cfg = self.cfg
        seed = episode_seed(cfg, self.episode, self.rank, self.world)
        problems = self.family.sample(cfg.n_problems, "train", seed, self.device, cfg.dtype)
        state = core.reset(problems, self.core_config)
        memory = self.policy.reset(state)
        losses, skipped = [], 0
        for t0 in range(0, cfg.horizon, cfg.unroll):
            state, memory, loss, ok = self.meta_step(state, memory, t0)
            losses.append(loss)
            skipped += not ok
        self.episode += 1
        self._env_steps += cfg.n_problems * cfg.horizon * self.world  # every process's problems
        return {"episode": self.episode, "meta_loss": sum(losses), "skipped": skipped,
                "final": float(state.loss.mean())}

    # ---- the Agent contract --------------------------------------------------------------------------
    def iteration(self) -> dict[str, float]:
        return self.run_episode()

    def validate(self) -> float:
        """Mean final objective of the policy on the fixed val problems after ``horizon`` steps (a diverged problem
        counts the divergence penalty: :func:`~l2o_gym.agents.tuning.final_objective`)."""
        return final_objective(self.policy, self.val_set, self.cfg.horizon, replace(self.core_config, second_order=False))

    @property
    def iterations_done(self) -> int:
        return self.episode

    @property
    def iterations_total(self) -> int:
        return self.cfg.episodes

    @property
    def env_steps(self) -> int:
        """Optimizee steps of all processes so far (counted per episode: a run resumed on another number of
        processes keeps the steps it made before)."""
        return self._env_steps

    def baseline_problems(self) -> tuple[Any, int]:
        return self.val_set, self.cfg.horizon

    def config_dict(self) -> dict[str, Any]:
        d = self.cfg.as_dict()
        d.pop("progress", None)
        return d

    def save_policy(self, path: Path, extra: dict[str, Any]) -> Path:
        return self.policy.save(path, extra)

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.policy.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "episode": self.episode,
            "env_steps": self._env_steps,
            "best_val": self.record.best_val,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.policy.net.load_state_dict(sd["net"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.episode = int(sd["episode"])
        # states from before the counter: the steps as they were counted then
        self._env_steps = int(sd.get("env_steps", self.episode * self.cfg.n_problems * self.cfg.horizon * self.world))
        torch.set_rng_state(sd["torch_rng"])

    def resume(self, path: str | Path | None = None, reset_best: bool = False) -> bool:
        """Load ``path`` (default ``<out>/state.pt``): the network, Adam (its state *and* its learning rate),
        the episode counter and the RNG continue exactly. ``reset_best`` forgets the best validation value and
        the history — for fine-tuning on another family (e.g. digits → MNIST), whose validation objective is
        not comparable. Returns ``True``.

        Raises:
            CheckpointError: no ``state.pt`` there, or one that is not an LSTM run's.
        """
        if path is None:
            if self.cfg.out is None:
                raise CheckpointError("nothing to resume from: the config has no out folder")
            path = state_path(self.cfg.out)
        load_run_state(self, path, reset_best=reset_best)
        return True

    def train(self, resume: bool = False, reset_best: bool = False) -> LSTMPolicy:
        """Run until ``cfg.episodes`` episodes are done (:func:`~l2o_gym.agents.common.fit`); return the policy
        (best-val weights if validated and written)."""
        cfg = self.cfg
        self.summary = fit(self, cfg.out, resume=resume, reset_best=reset_best, progress=cfg.progress and self.rank == 0,
                           tensorboard=cfg.tensorboard, desc="meta-train")
        best = RunFolder(Path(cfg.out), self.kind).best if cfg.out is not None else None
        if best is not None and self.rank == 0 and best.is_file():
            return type(self.policy).load(best, self.device)
        return self.policy

    def close(self) -> None:
        """Nothing to release (the lifecycle owns the TensorBoard writer)."""


def train(cfg: TrainConfig, resume: bool = False, reset_best: bool = False) -> LSTMPolicy:
    """Meta-train an LSTM policy with ``cfg`` (continuing from ``<out>/state.pt`` when ``resume``;
    ``reset_best``: see :meth:`Trainer.resume`)."""
    return Trainer(cfg).train(resume=resume, reset_best=reset_best)



# ---- benchmark -----------------------------------------------------------------------------------
def time_meta_iteration(
    n_problems: int = 128, dim: int = 10, unroll: int = 20, iters: int = 20, warmup: int = 3,
    arch: LSTMConfig | None = None, device: str = "cpu",
) -> dict[str, float]:
    """Seconds per meta-iteration at the DeepMind configuration (``n_problems`` quadratics × ``dim``,
    one truncated unroll of ``unroll`` steps forward + backward + Adam step), median over ``iters``.
    """
    cfg = TrainConfig(family_kwargs={"dim": dim}, arch=arch or LSTMConfig(), n_problems=n_problems,
                      unroll=unroll, val_every=0, val_problems=1, device=device, progress=False)
    trainer = Trainer(cfg)
    problems = trainer.family.sample(n_problems, "train", 0, trainer.device)
    state = core.reset(problems, trainer.core_config)
    memory = trainer.policy.reset(state)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + iters):
        if i % (cfg.horizon // unroll) == 0:
            state = core.reset(problems, trainer.core_config)
            memory = trainer.policy.reset(state)
        sync()
        t = time.perf_counter()
        state, memory, _, _ = trainer.meta_step(state, memory, 0)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    return {"median_s": times[len(times) // 2], "min_s": times[0], "max_s": times[-1], "iters": iters,
            "threads": torch.get_num_threads()}
