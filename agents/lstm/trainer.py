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
objective after ``horizon`` steps); the best one is written to ``<out>/best.safetensors`` and the full
training state (weights, Adam, counters, best value) to ``<out>/state.pt`` (atomic writes), from which
``train(..., resume=True)`` continues exactly.

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
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from l2o_gym import core
from l2o_gym.checkpoint import load_state, save_state
from l2o_gym.core import CoreConfig
from l2o_gym.policy import rollout, run_policy
from l2o_gym.registry import env_family

from l2o_gym.agents.lstm.multi import MultiLSTMPolicy, init_from_checkpoint
from l2o_gym.agents.lstm.policy import LSTMConfig, LSTMPolicy

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
        val_problems: number of fixed ``val`` problems.
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


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def episode_seed(cfg: TrainConfig, episode: int, rank: int = 0, world: int = 1) -> int:
    """Seed of the train meta-batch of ``episode`` on ``rank`` (rank 0 of 1 process = single process)."""
    return ((cfg.seed * 1_000_003 + episode) * world + rank) % (2**62)


def detach_memory(memory: Any) -> Any:
    """Cut the policy memory (tensors or nested tuples/lists of them) from the graph."""
    if isinstance(memory, Tensor):
        return memory.detach()
    if isinstance(memory, (tuple, list)):
        return type(memory)(detach_memory(h) for h in memory)
    return memory


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


class Trainer:
    """Truncated-BPTT meta-training of an :class:`LSTMPolicy` (see the module docstring).

    Attributes:
        policy: the policy being trained (its network is the meta-parameters).
        optimizer: Adam over the network parameters.
        episode: episodes completed.
        best_val: best validation objective so far (``inf`` before the first validation).
        history: one dict per episode (``episode``, ``meta_loss``, ``skipped``, optionally ``val``).
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.rank, self.world = _dist()
        self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.policy = make_policy(cfg).to(self.device)
        if cfg.init:
            init_from_checkpoint(self.policy, cfg.init)
        if self.world > 1:  # identical start on every rank
            for p in self.policy.net.parameters():
                dist.broadcast(p.data, 0)
        self.optimizer = torch.optim.Adam(self.policy.net.parameters(), lr=cfg.lr)
        self.family = env_family(cfg.env_id, **cfg.family_kwargs)
        self.core_config = CoreConfig(horizon=cfg.horizon, history=1, second_order=cfg.second_order, validate=False)
        self.val_set = self.family.sample(cfg.val_problems, "val", cfg.seed, self.device, cfg.dtype)
        self.episode = 0
        self.best_val = math.inf
        self.history: list[dict[str, Any]] = []
        self.out = Path(cfg.out) if cfg.out else None
        self.writer = None
        if self.out is not None and cfg.tensorboard and self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))

    # ---- one meta-iteration -----------------------------------------------------------------------
    def meta_step(self, state: core.State, memory: Any, t0: int) -> tuple[core.State, Any, float, bool]:
        """One truncation: unroll ``cfg.unroll`` steps, backpropagate, all-reduce, clip, Adam step.

        Returns ``(state, memory, meta_loss, updated)`` with state and memory detached.
        """
        cfg = self.cfg
        traj = rollout(self.policy, state, cfg.unroll, memory)
        loss = meta_loss(traj.costs, cfg, t0)
        self.optimizer.zero_grad(set_to_none=False)
        params = list(self.policy.net.parameters())
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
        flat = torch.cat([p.grad.reshape(-1) for p in params]) if finite else None
        if self.world > 1:  # every rank must join the collective, even one whose loss is NaN
            buf = flat if flat is not None else torch.full((sum(p.numel() for p in params),), float("nan"), device=self.device)
            dist.all_reduce(buf)
            buf /= self.world
            flat = buf
        ok = flat is not None and bool(torch.isfinite(flat).all())
        if ok:
            off = 0
            for p in params:
                p.grad.copy_(flat[off : off + p.numel()].view_as(p))
                off += p.numel()
            if cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            self.optimizer.step()
        else:
            log.warning("episode %d, t=%d: non-finite meta-loss or meta-gradient; update skipped", self.episode, t0)
        return traj.state.detach(), detach_memory(traj.memory), float(loss.detach()), ok

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
        rec = {"episode": self.episode, "meta_loss": sum(losses), "skipped": skipped,
               "final": float(state.loss.mean())}
        return rec

    # ---- validation and checkpoints --------------------------------------------------------------
    def validate(self) -> float:
        """Mean final objective of the policy on the fixed val problems after ``horizon`` steps."""
        traj = run_policy(self.policy, self.val_set, self.cfg.horizon, replace(self.core_config, second_order=False))
        return float(traj.losses[-1].mean())

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.policy.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "episode": self.episode,
            "best_val": self.best_val,
            "history": [{k: float(v) for k, v in h.items()} for h in self.history],
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.policy.net.load_state_dict(sd["net"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.episode = int(sd["episode"])
        self.best_val = float(sd["best_val"])
        self.history = [dict(h) for h in sd.get("history", [])]
        torch.set_rng_state(sd["torch_rng"])

    def save(self) -> None:
        """Write ``state.pt`` (resumable training state) atomically (rank 0 only)."""
        if self.out is None or self.rank != 0:
            return
        save_state(self.out / "state.pt", self.state_dict())

    def resume(self, path: str | Path | None = None, reset_best: bool = False) -> bool:
        """Load ``path`` (default ``<out>/state.pt``) if it exists; ``True`` if something was loaded.

        The network, Adam (its state *and* its learning rate), the episode counter and the RNG continue
        exactly. ``reset_best`` forgets the best validation value and the history — for fine-tuning on
        another family (e.g. digits → MNIST), whose validation objective is not comparable.
        """
        path = Path(path) if path else (self.out / "state.pt" if self.out else None)
        if path is None or not path.is_file():
            log.warning("nothing to resume from (%s does not exist): starting a new run", path)
            return False
        self.load_state_dict(load_state(path, self.device))
        if reset_best:
            self.best_val, self.history = math.inf, []
        log.info("resumed from %s at episode %d (best val %.4g)", path, self.episode, self.best_val)
        return True

    def train(self) -> LSTMPolicy:
        """Run until ``cfg.episodes`` episodes are done; return the policy (best-val weights if validated)."""
        cfg = self.cfg
        bar = tqdm(total=cfg.episodes, initial=self.episode, desc="meta-train", disable=not cfg.progress or self.rank != 0)
        while self.episode < cfg.episodes:
            try:
                rec = self.run_episode()
            except KeyboardInterrupt:
                bar.close()
                saved = self.out / "state.pt" if self.out is not None else None
                log.warning(
                    "interrupted during episode %d; %s", self.episode + 1,
                    f"the last saved training state {saved} is intact: continue with --resume"
                    if saved is not None and saved.is_file() else "no training state was saved yet",
                )
                raise
            if cfg.val_every and (self.episode % cfg.val_every == 0 or self.episode == cfg.episodes):
                val = self.validate()
                rec["val"] = val
                if val < self.best_val:
                    self.best_val = val
                    if self.out is not None and self.rank == 0:
                        self.policy.save(self.out / "best.safetensors", {"train": _jsonable(cfg), "episode": self.episode, "val": val})
                if self.writer:
                    self.writer.add_scalar("val/final_objective", val, self.episode)
                    self.writer.add_scalar("val/log10_final_objective", math.log10(max(val, 1e-30)), self.episode)
            self.history.append(rec)
            if self.writer:
                self.writer.add_scalar("train/meta_loss", rec["meta_loss"], self.episode)
                self.writer.add_scalar("train/final_objective", rec["final"], self.episode)
            bar.update(1)
            bar.set_postfix(meta_loss=f"{rec['meta_loss']:.3g}", best_val=f"{self.best_val:.3g}")
            if cfg.val_every and "val" in rec:
                self.save()
        bar.close()
        if self.writer:
            self.writer.flush()
        if self.out is not None and self.rank == 0:
            self.policy.save(self.out / "last.safetensors", {"train": _jsonable(cfg), "episode": self.episode})
            self.save()
            if (self.out / "best.safetensors").is_file():
                return type(self.policy).load(self.out / "best.safetensors", self.device)
        return self.policy

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.writer:
            self.writer.close()
            self.writer = None


def _jsonable(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.as_dict()
    d.pop("progress", None)
    return d


def train(cfg: TrainConfig, resume: bool = False, reset_best: bool = False) -> LSTMPolicy:
    """Meta-train an LSTM policy with ``cfg`` (continuing from ``<out>/state.pt`` when ``resume``;
    ``reset_best``: see :meth:`Trainer.resume`)."""
    trainer = Trainer(cfg)
    try:
        if resume:
            trainer.resume(reset_best=reset_best)
        return trainer.train()
    finally:
        trainer.close()


def init_distributed(device: str = "cpu") -> tuple[int, int]:
    """Initialise ``torch.distributed`` from torchrun's environment (gloo on CPU, NCCL on CUDA).

    Returns ``(rank, world_size)``; ``(0, 1)`` without torchrun's variables.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


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
