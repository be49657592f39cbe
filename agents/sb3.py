"""Model-free RL learned optimizers through stable-baselines3: PPO, SAC and RecurrentPPO (sb3-contrib).

The agent is an ordinary SB3 algorithm on the registered l2o env, seen through the adapter
:class:`l2o_gym.envs.sb3.SB3VecEnv` (one native torch vector env of ``n_envs`` optimizees):

    train:  VecNormalize(VecMonitor(SB3VecEnv(env_id, split="train", horizon=T, history=H, ...)))
    eval:   VecNormalize(VecMonitor(SB3VecEnv(env_id, split="val", ...)), training=False, norm_reward=False)

observations and rewards are normalised by ``VecNormalize`` (its observation statistics are part of the
checkpoint); SB3's :class:`~stable_baselines3.common.callbacks.EvalCallback` runs on the ``val`` env (mean
episode return, with the statistics synced), and the **validation metric** — the same one GPS uses — is the
deterministic policy's mean final objective ``f(θ_T)`` on a fixed set of ``n_val`` ``val`` problems at the
training horizon, computed with the library's rollout (:func:`l2o_gym.policy.run_policy`) every
``eval_every`` env steps. The best tuned baseline's ``val`` objective (any of ``baselines``) and the best
first-order one (:data:`~l2o_gym.agents.baselines.FIRST_ORDER`) are the sample-efficiency targets: the run records the env steps at which
the policy first reaches each (``"training"`` record, :func:`l2o_gym.agents.common.training_record`).

Training runs through the common lifecycle (:func:`l2o_gym.agents.common.fit`, :class:`SB3Agent`); files written
by :func:`train_sb3` in ``out_dir``:

* ``{algo}_best.safetensors`` (best ``val`` objective) and ``{algo}_last.safetensors``: the policy network
  (``policy.state_dict()``), the observation statistics (tensors ``vecnormalize.obs_mean``/``obs_var``) and a
  JSON config (kind, env id, dimension, env kwargs, core config, policy kwargs, normalisation constants,
  training record) — loaded by :func:`load_policy` without unpickling anything;
* ``state.pt``: the resumable training state (every network and optimizer state dict, ``num_timesteps``,
  VecNormalize statistics, RNG states, the validation curve), ``torch.save`` of tensors and primitives,
  loaded with ``weights_only=True``. SB3's own ``.zip`` format (cloudpickle) is never written nor read;
* ``summary.json``, ``tb/`` (TensorBoard: SB3's scalars plus ``val/val_final``), ``eval/`` (EvalCallback).

Every write is atomic (:func:`l2o_gym.checkpoint.atomic_write`); a ``KeyboardInterrupt`` writes a final
checkpoint and the summary, then is re-raised.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from l2o_gym import core
from l2o_gym.agents.common import Agent, fit
from l2o_gym.agents.tuning import final_objective
from l2o_gym.checkpoint import CheckpointError, check_compatible, config_field, keeps_rng_state, load_policy_file, save_policy
from l2o_gym.core import CoreConfig, State
from l2o_gym.policy import FeatureView, Policy, preprocess, run_policy

log = logging.getLogger(__name__)

#: the algorithms this module trains; also the ``kind`` of their checkpoints.
ALGOS: tuple[str, ...] = ("ppo", "sac", "recurrent_ppo", "coord_ppo")
#: the algorithms whose policy is coordinatewise (:class:`CoordinateActorCriticPolicy`): any problem dimension.
COORDINATEWISE: tuple[str, ...] = ("coord_ppo",)

#: activation names accepted in ``SB3TrainConfig.activation`` (stored by name in checkpoints).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU, "gelu": nn.GELU,
}

_OBS_MEAN, _OBS_VAR = "vecnormalize.obs_mean", "vecnormalize.obs_var"
CONTRIB_HINT = (
    'recurrent_ppo needs the optional extra "contrib" (sb3-contrib): '
    'pip install -c constraints.txt -e ".[contrib]"  (or: pip install -c constraints.txt "sb3-contrib>=2.3,<3")'
)


def _contrib() -> Any:
    try:
        import sb3_contrib
    except ImportError:
        raise ImportError(CONTRIB_HINT) from None
    return sb3_contrib


# ====================================================================================== configuration
@dataclass
class SB3TrainConfig:
    """Everything :func:`train_sb3` needs (stored in checkpoints and in the training state).

    Args:
        algo: ``"ppo"``, ``"sac"``, ``"recurrent_ppo"`` (needs the ``contrib`` extra) or ``"coord_ppo"`` (PPO with
            :class:`CoordinateActorCriticPolicy`: one small actor and critic shared by every coordinate, so the
            policy runs on problems of any dimension, like the LSTM and convolutional GPS).
        env_id: registered env id (``l2o_gym.registry.ENV_TABLE``).
        total_timesteps: env steps (sampled transitions, summed over the ``n_envs`` optimizees) to train for.
            On-policy algorithms stop at the first full rollout at or past it.
        n_envs: parallel optimizees of the training vector env.
        horizon: episode length ``T`` (the env's truncation, and the horizon of the validation metric).
        history: ``H`` of the observation features.
        include_steps: also put the last ``H`` steps into the observation.
        action_scale: step per unit action (``Δθ = action_scale · clip(a, −1, 1)``); ``None``: the env's
            default from ``ENV_TABLE``.
        reward_mode: ``"objective"``, ``"log_objective"`` or ``"improvement"`` (:mod:`l2o_gym.envs.common`).
        net_arch: hidden widths of the policy (and value/critic) MLPs.
        activation: hidden activation, a key of :data:`ACTIVATIONS`.
        log_std_init: initial log standard deviation of the (Recurrent)PPO Gaussian policy (``None``: SB3's
            default 0, i.e. a std of 1 — exploration noise as large as a saturated step, which made PPO's
            val objective drift upwards after 100k steps in a pilot; −1.5 gave steady progress). SAC learns a
            state-dependent std and ignores it.
        learning_rate: Adam step size of every network.
        gamma: discount factor (also the horizon of VecNormalize's return statistics).
        n_steps: (Recurrent)PPO rollout length per env; one update per ``n_steps · n_envs`` env steps.
        batch_size: (Recurrent)PPO minibatch size.
        n_epochs: (Recurrent)PPO epochs per rollout.
        gae_lambda: (Recurrent)PPO GAE λ.
        clip_range: (Recurrent)PPO clipping ε.
        ent_coef: (Recurrent)PPO entropy bonus.
        max_grad_norm: (Recurrent)PPO gradient clipping.
        lstm_hidden_size: RecurrentPPO LSTM width.
        buffer_size: SAC replay buffer size.
        learning_starts: SAC env steps of random actions before updates.
        sac_batch_size: SAC minibatch size.
        tau: SAC target-network averaging.
        train_freq: SAC vector-env steps between updates.
        gradient_steps: SAC gradient steps per update (−1: as many as env steps collected).
        norm_obs: normalise observations with VecNormalize (statistics saved with the policy). Ignored by
            ``coord_ppo``: VecNormalize's statistics are per entry of the flat observation, tied to one
            dimension; the coordinatewise policy makes its inputs scale-free itself (log/sign gradients).
        norm_reward: normalise rewards with VecNormalize (training only).
        clip_obs: VecNormalize clip of normalised observations.
        n_val: ``val`` problems of the validation metric (float64, seed ``seed``).
        n_eval_envs: episodes (= parallel envs) of SB3's ``EvalCallback`` on the ``val`` split.
        eval_every: env steps between validations (``EvalCallback`` and the final-objective metric).
        checkpoint_every: env steps between writes of ``state.pt`` and ``{algo}_last.safetensors``.
        baselines: baselines whose tuned ``val`` objective is the sample-efficiency target.
        seed: seed of SB3, the training instance stream and the val problems.
        device: torch device of the SB3 networks (the optimizees run on the CPU).
    """

    algo: str = "ppo"
    env_id: str = "l2o/LogisticRegression-v0"
    total_timesteps: int = 1_000_000
    n_envs: int = 64
    horizon: int = 20
    history: int = 5
    include_steps: bool = False
    action_scale: float | None = None
    reward_mode: str = "log_objective"
    net_arch: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    log_std_init: float | None = -1.5
    learning_rate: float = 3e-4
    gamma: float = 0.99
    n_steps: int = 64
    batch_size: int = 1024
    n_epochs: int = 5
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    lstm_hidden_size: int = 64
    buffer_size: int = 300_000
    learning_starts: int = 5_000
    sac_batch_size: int = 256
    tau: float = 0.005
    train_freq: int = 1
    gradient_steps: int = 1
    norm_obs: bool = True
    norm_reward: bool = True
    clip_obs: float = 10.0
    n_val: int = 100
    n_eval_envs: int = 20
    eval_every: int = 20_000
    checkpoint_every: int = 100_000
    baselines: tuple[str, ...] = ("sgd", "momentum", "cg", "lbfgs")
    seed: int = 0
    device: str = "cpu"

    #: fields that must not change when a run is resumed.
    STRUCTURAL = (
        "algo", "env_id", "n_envs", "horizon", "history", "include_steps", "action_scale", "reward_mode",
        "net_arch", "activation", "norm_obs", "norm_reward", "lstm_hidden_size",
        "seed", "n_val",  # the val problems: the best value so far is compared across the resume
    )

    def __post_init__(self) -> None:
        """Every value check (``ValueError`` naming the field and the value); sb3-contrib is checked by :meth:`validate`."""
        from l2o_gym.agents.baselines import check_baseline_names
        from l2o_gym.checks import check_nonnegative, check_positive, check_seed, resolve_device
        from l2o_gym.envs.common import REWARD_MODES

        self.net_arch = tuple(self.net_arch)
        self.baselines = check_baseline_names(self.baselines)
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}: expected one of {', '.join(ALGOS)}")
        if self.env_id not in _env_table():
            raise ValueError(f"unknown env id {self.env_id!r}: expected one of {', '.join(_env_table())}")
        if self.action_scale is None:
            self.action_scale = float(_env_table()[self.env_id].get("action_scale", 1.0))
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"unknown reward_mode {self.reward_mode!r}: expected one of {', '.join(REWARD_MODES)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        for name in ("total_timesteps", "n_envs", "horizon", "history", "n_steps", "batch_size", "n_epochs",
                     "lstm_hidden_size", "buffer_size", "sac_batch_size", "train_freq", "n_val", "n_eval_envs",
                     "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("learning_rate", "clip_obs", "action_scale", "clip_range", "max_grad_norm"):
            check_positive(name, getattr(self, name))
        check_nonnegative("ent_coef", self.ent_coef)
        if not 0 < self.gamma <= 1 or not 0 < self.gae_lambda <= 1 or not 0 < self.tau <= 1:
            raise ValueError(f"gamma, gae_lambda and tau must lie in (0, 1], got {self.gamma}, {self.gae_lambda}, {self.tau}")
        if self.log_std_init is not None and not math.isfinite(self.log_std_init):
            raise ValueError(f"log_std_init must be finite or None, got {self.log_std_init!r}")
        if isinstance(self.learning_starts, bool) or not isinstance(self.learning_starts, int) or self.learning_starts < 0:
            raise ValueError(f"learning_starts must be a non-negative integer, got {self.learning_starts!r}")
        if self.algo != "sac":  # SB3's PPO asserts both (advantages are normalised per minibatch)
            if self.batch_size < 2:
                raise ValueError(f"batch_size must be at least 2 for {self.algo} (SB3 normalises advantages per "
                                 f"minibatch), got {self.batch_size!r}")
            if self.n_steps * self.n_envs < 2:
                raise ValueError(f"n_steps * n_envs must be at least 2 for {self.algo}, got n_steps={self.n_steps!r}, "
                                 f"n_envs={self.n_envs!r}")
        if self.gradient_steps < 1 and self.gradient_steps != -1:
            raise ValueError(f"gradient_steps must be >= 1 or -1, got {self.gradient_steps!r}")
        if not self.net_arch or any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1
                                    for w in self.net_arch):
            raise ValueError(f"net_arch needs positive integer widths, got {self.net_arch}")
        self.net_arch = tuple(int(w) for w in self.net_arch)
        check_seed(self.seed)
        resolve_device(self.device)

    def validate(self) -> SB3TrainConfig:
        """Check what ``__post_init__`` cannot: ``recurrent_ppo`` needs sb3-contrib (``ImportError`` naming the extra)."""
        if self.algo == "recurrent_ppo":
            _contrib()
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["net_arch"], d["baselines"] = list(self.net_arch), list(self.baselines)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SB3TrainConfig:
        names = {f.name for f in dataclasses.fields(SB3TrainConfig)}
        return SB3TrainConfig(**{k: v for k, v in d.items() if k in names})

    # -- derived ---------------------------------------------------------------------------------------
    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the env (``gymnasium.make_vec(env_id, **env_kwargs)``)."""
        return {
            "horizon": self.horizon, "history": self.history, "include_steps": self.include_steps,
            "action_scale": self.action_scale, "reward_mode": self.reward_mode,
        }

    def core_config(self) -> CoreConfig:
        """The core config whose features the policy reads (the env's, with validation on)."""
        return CoreConfig(horizon=self.horizon, history=self.history, include_steps=self.include_steps)

    @property
    def obs_normalized(self) -> bool:
        """Whether VecNormalize normalises observations (``norm_obs``, never for a coordinatewise policy)."""
        return self.norm_obs and self.algo not in COORDINATEWISE

    def policy_kwargs(self) -> dict[str, Any]:
        """JSON form of the SB3 ``policy_kwargs`` (activation by name), stored in checkpoints."""
        kw: dict[str, Any] = {"net_arch": list(self.net_arch), "activation": self.activation}
        if self.log_std_init is not None:
            kw["log_std_init"] = float(self.log_std_init)
        if self.algo == "recurrent_ppo":
            kw["lstm_hidden_size"] = int(self.lstm_hidden_size)
        if self.algo in COORDINATEWISE:
            kw.update(history=int(self.history), include_steps=bool(self.include_steps),
                      action_scale=float(self.action_scale))  # type: ignore[arg-type]
        return kw


def _env_table() -> dict[str, dict[str, Any]]:
    from l2o_gym.registry import ENV_TABLE

    return ENV_TABLE


def _sb3_policy_kwargs(json_kwargs: dict[str, Any]) -> dict[str, Any]:
    kw = dict(json_kwargs)
    name = kw.pop("activation", "tanh")
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}")
    kw["activation_fn"] = ACTIVATIONS[name]
    return kw


def _policy_class(kind: str) -> type:
    if kind == "coord_ppo":
        return _coordinate_policy_class()
    if kind == "ppo":
        from stable_baselines3.common.policies import ActorCriticPolicy

        return ActorCriticPolicy
    if kind == "sac":
        from stable_baselines3.sac.policies import SACPolicy

        return SACPolicy
    if kind == "recurrent_ppo":
        _contrib()
        from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

        return RecurrentActorCriticPolicy
    raise ValueError(f"unknown SB3 kind {kind!r}: expected one of {', '.join(ALGOS)}")


class CoordinateNets(nn.Module):
    """The shared per-coordinate actor and critic of :class:`CoordinateActorCriticPolicy` (SB3's
    ``mlp_extractor`` slot).

    The flat observation ``[B, F]`` (layout: :mod:`l2o_gym.core`) is read as ``d = (F − H) / (k·H)``
    coordinates (``k = 2`` with ``include_steps``), each with the input (``in_dim = 3H``, or ``4H`` with steps):
    its last ``H`` gradients as ``(log|g|/p, sign g)`` pairs (:func:`l2o_gym.policy.preprocess`, scale-free),
    the ``H`` shared relative objective changes and, with ``include_steps``, its last ``H`` steps divided by
    ``action_scale`` (in ``[−1, 1]``). The actor MLP maps each coordinate's input to a latent ``[B, d, W]``
    (the action head reads one step per coordinate from it); the critic MLP's per-coordinate latents are
    averaged over the coordinates, ``[B, W]`` (a value that does not depend on ``d`` or on the order of the
    coordinates). Both are permutation-equivariant/invariant in the coordinates and work for any ``d``.
    """

    def __init__(self, history: int, include_steps: bool, action_scale: float, p: float,
                 net_arch: list[int], activation_fn: type[nn.Module]) -> None:
        super().__init__()
        self.history, self.include_steps, self.action_scale, self.p = history, include_steps, action_scale, p
        self.in_dim = history * (4 if include_steps else 3)

        def mlp() -> nn.Sequential:
            layers: list[nn.Module] = []
            width = self.in_dim
            for w in net_arch:
                layers += [nn.Linear(width, w), activation_fn()]
                width = w
            return nn.Sequential(*layers)

        self.policy_net, self.value_net = mlp(), mlp()
        self.latent_dim_pi = self.latent_dim_vf = net_arch[-1]

    def coordinates(self, obs: Tensor) -> Tensor:
        """Per-coordinate inputs ``[B, d, in_dim]`` of flat observations ``[B, F]``."""
        H, k = self.history, 2 if self.include_steps else 1
        B, F = obs.shape
        d = (F - H) // (k * H)
        if d < 1 or H + k * H * d != F:
            raise ValueError(f"observation length {F} is not H + {k}·H·d for history H={H}")
        g = obs[:, H : H + H * d].reshape(B, H, d).transpose(1, 2)  # [B, d, H]
        parts = [preprocess(g.reshape(-1), "log", self.p).reshape(B, d, 2 * H),
                 obs[:, None, :H].expand(B, d, H)]
        if self.include_steps:
            parts.append(obs[:, H + H * d :].reshape(B, H, d).transpose(1, 2) / self.action_scale)
        return torch.cat(parts, dim=2)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        x = self.coordinates(features)
        return self.policy_net(x), self.value_net(x).mean(1)

    def forward_actor(self, features: Tensor) -> Tensor:
        return self.policy_net(self.coordinates(features))

    def forward_critic(self, features: Tensor) -> Tensor:
        return self.value_net(self.coordinates(features)).mean(1)


class CoordinateHead(nn.Module):
    """One mean step per coordinate: ``[B, d, W] → [B, d]`` with a single shared ``Linear(W, 1)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, 1)

    def forward(self, latent: Tensor) -> Tensor:
        return self.linear(latent).squeeze(-1)


_COORDINATE_POLICY: type | None = None


def _coordinate_policy_class() -> type:
    """:class:`CoordinateActorCriticPolicy`, defined on first use (SB3 is imported only when an SB3 agent is used)."""
    global _COORDINATE_POLICY
    if _COORDINATE_POLICY is not None:
        return _COORDINATE_POLICY
    from stable_baselines3.common.policies import ActorCriticPolicy

    class CoordinateActorCriticPolicy(ActorCriticPolicy):
        """SB3 PPO's actor-critic made coordinatewise: :class:`CoordinateNets` in place of the MLPs, one
        ``Linear(W, 1)`` head shared by every coordinate (:class:`CoordinateHead`) and **one** log standard
        deviation for all coordinates (a ``[1]`` parameter that broadcasts over the ``d`` action entries), so
        every parameter is shared across coordinates and the policy is the same function on any problem
        dimension. PPO itself is unchanged: the action is the vector of the ``d`` steps and its log-probability
        the sum over coordinates.

        Extra keyword arguments: ``history``, ``include_steps``, ``action_scale`` (of the env: the layout and
        scale of the observation) and ``p`` (gradient preprocessing, default 10).
        """

        def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, lr_schedule: Any, *,
                     history: int, include_steps: bool, action_scale: float, p: float = 10.0,
                     **kwargs: Any) -> None:
            self._coord = {"history": int(history), "include_steps": bool(include_steps),
                           "action_scale": float(action_scale), "p": float(p)}
            super().__init__(observation_space, action_space, lr_schedule, **kwargs)

        def _build_mlp_extractor(self) -> None:
            arch = list(self.net_arch) if isinstance(self.net_arch, (list, tuple)) else [64, 64]
            self.mlp_extractor = CoordinateNets(**self._coord, net_arch=arch, activation_fn=self.activation_fn)

        def _build(self, lr_schedule: Any) -> None:
            self._build_mlp_extractor()
            width = self.mlp_extractor.latent_dim_pi
            self.action_net = CoordinateHead(width)
            self.log_std = nn.Parameter(torch.full((1,), float(self.log_std_init)))
            self.value_net = nn.Linear(width, 1)
            if self.ortho_init:  # SB3's gains: hidden √2, action head 0.01, value head 1
                for module, gain in ((self.mlp_extractor, math.sqrt(2)), (self.action_net, 0.01), (self.value_net, 1.0)):
                    module.apply(lambda m, gain=gain: self.init_weights(m, gain=gain))
            self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    CoordinateActorCriticPolicy.__module__ = __name__
    _COORDINATE_POLICY = CoordinateActorCriticPolicy
    return CoordinateActorCriticPolicy


def _spaces(obs_dim: int, dim: int) -> tuple[spaces.Box, spaces.Box]:
    return (
        spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32),
        spaces.Box(-1.0, 1.0, shape=(dim,), dtype=np.float32),
    )


def build_sb3_policy(kind: str, obs_dim: int, dim: int, policy_kwargs: dict[str, Any]) -> nn.Module:
    """An untrained SB3 policy module of ``kind`` from JSON ``policy_kwargs`` (what :func:`load_policy` fills)."""
    obs_space, act_space = _spaces(obs_dim, dim)
    cls = _policy_class(kind)
    return cls(obs_space, act_space, lambda _: 0.0, **_sb3_policy_kwargs(policy_kwargs))


# ====================================================================================== the Policy
class SB3Policy(Policy):
    """A trained SB3 policy as an l2o-gym :class:`~l2o_gym.policy.Policy` (deterministic).

    ``Δθ = action_scale · clip(μ(normalise(features(state))), −1, 1)`` where ``μ`` is the mean action of
    the SB3 policy (PPO: Gaussian mean; SAC: ``tanh`` of the mean; RecurrentPPO: mean given the LSTM state,
    kept in ``memory``) and ``normalise`` is VecNormalize's ``clip((o − mean)/sqrt(var + eps), ±clip_obs)``.

    The observation is built with :attr:`core_config`, the config the model was trained with (the evaluation
    resets problems with it). On a state built with another config (e.g. inside
    :class:`l2o_gym.optim.LearnedOptimizer`, history 1 by default) the policy keeps a *shadow* state with its
    own config, advanced from the state's objective, gradient and actual displacement (no extra
    evaluations). ``memory`` is ``None`` (feed-forward, same config) or a tuple of tensors
    ``(shadow, lstm)`` so ``LearnedOptimizer.state_dict()`` can save it.

    Args:
        module: the SB3 policy (``ActorCriticPolicy``, ``SACPolicy`` or ``RecurrentActorCriticPolicy``).
        kind: ``"ppo"``, ``"sac"``, ``"recurrent_ppo"`` or ``"coord_ppo"``.
        core_config: the features' config (``history``, ``include_steps`` …).
        dim: problem dimension ``d`` trained on (a ``coord_ppo`` policy runs on any: its :attr:`dim` is ``None``).
        action_scale: step per unit action.
        obs_mean, obs_var: VecNormalize observation statistics ``[F]`` (``None``: no normalisation).
        clip_obs, epsilon: VecNormalize constants.
        env_id: the env trained on (compatibility checks), optional.
        train_config: the training config (what :meth:`save` writes; set by :func:`load_policy` and training).
    """

    def __init__(
        self,
        module: nn.Module,
        kind: str,
        core_config: CoreConfig,
        dim: int,
        action_scale: float,
        obs_mean: Tensor | None = None,
        obs_var: Tensor | None = None,
        clip_obs: float = 10.0,
        epsilon: float = 1e-8,
        env_id: str | None = None,
        train_config: SB3TrainConfig | None = None,
    ) -> None:
        if kind not in ALGOS:
            raise ValueError(f"unknown SB3 kind {kind!r}: expected one of {', '.join(ALGOS)}")
        self.module = module
        self.kind = kind
        self.name = kind
        self.core_config = core_config
        self.view = FeatureView(core_config)
        self.coordinatewise = kind in COORDINATEWISE
        self.dim = None if self.coordinatewise else int(dim)
        self.train_dim = int(dim)
        self.action_scale = float(action_scale)
        self.env_id = env_id
        self.clip_obs = float(clip_obs)
        self.epsilon = float(epsilon)
        self.obs_dim = core.obs_dim(core_config, self.train_dim)
        self.device = next(module.parameters()).device
        self.obs_mean = None if obs_mean is None else obs_mean.detach().to(self.device, torch.float32).clone()
        self.obs_std = None
        self.obs_var = None if obs_var is None else obs_var.detach().double().cpu().clone()
        self.train_config = train_config
        if obs_var is not None:
            self.obs_std = torch.sqrt(obs_var.detach().double() + self.epsilon).to(self.device, torch.float32)
        if self.obs_mean is not None and self.obs_mean.shape != (self.obs_dim,):
            raise ValueError(f"observation statistics have shape {tuple(self.obs_mean.shape)}, expected ({self.obs_dim},)")

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the policy checkpoint (:func:`save_sb3_policy`) that :func:`load_policy` reads back."""
        if self.train_config is None:
            raise ValueError("this SB3Policy has no train_config to write into its checkpoint")
        mean = None if self.obs_mean is None else self.obs_mean.double().cpu()
        return save_sb3_policy(path, self.module, self.train_config, self.train_dim, mean, self.obs_var, self.epsilon,
                               extra)

    @property
    def recurrent(self) -> bool:
        return self.kind == "recurrent_ppo"

    def to(self, device: torch.device | str) -> SB3Policy:
        """Move the network and the statistics to ``device`` (``LearnedOptimizer`` calls this)."""
        device = torch.device(device)
        self.module.to(device)
        self.device = device
        if self.obs_mean is not None:
            self.obs_mean, self.obs_std = self.obs_mean.to(device), self.obs_std.to(device)  # type: ignore[union-attr]
        return self

    # -- the interface ----------------------------------------------------------------------------------
    def reset(self, state: State) -> Any:
        if self.dim is not None and state.dim != self.dim:
            raise ValueError(f"{self.kind} policy trained for dimension {self.dim}, the problems have {state.dim}")
        shadow = self.view.start(state)
        lstm = None
        if self.recurrent:
            net = self.module.lstm_actor  # type: ignore[attr-defined]
            shape = (net.num_layers, state.n, net.hidden_size)
            lstm = (torch.zeros(shape, device=self.device), torch.zeros(shape, device=self.device))
        return None if shadow is None and lstm is None else (shadow, lstm)

    def normalize(self, obs: Tensor) -> Tensor:
        """VecNormalize's observation transform, in torch (float32, on the policy's device)."""
        x = obs.detach()
        if x.dtype == torch.float64:  # as SB3VecEnv: values beyond float32's range saturate instead of becoming inf
            big = float(torch.finfo(torch.float32).max)
            x = x.clamp(-big, big)
        x = x.to(self.device, torch.float32)
        if self.obs_mean is None:
            return x
        return ((x - self.obs_mean) / self.obs_std).clamp(-self.clip_obs, self.clip_obs)

    def act(self, state: State, memory: Any) -> tuple[Tensor, Any]:
        shadow, lstm = memory if memory is not None else (None, None)
        obs, shadow = self.view.observe(state, shadow)
        x = self.normalize(obs)
        with torch.no_grad():
            if self.recurrent:
                starts = torch.zeros(x.shape[0], device=self.device)
                action, lstm = self.module._predict(x, lstm, starts, deterministic=True)  # type: ignore[operator]
                lstm = tuple(lstm)
            else:
                action = self.module._predict(x, deterministic=True)  # type: ignore[operator]
        step = action.clamp(-1.0, 1.0).to(device=state.theta.device, dtype=state.theta.dtype) * self.action_scale
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
        return step, (None if shadow is None and lstm is None else (shadow, lstm))


def save_sb3_policy(
    path: str | Path,
    module: nn.Module,
    cfg: SB3TrainConfig,
    dim: int,
    obs_mean: Tensor | None,
    obs_var: Tensor | None,
    epsilon: float,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the ``.safetensors`` policy checkpoint of a trained SB3 policy (module docstring)."""
    import stable_baselines3

    tensors = {k: v for k, v in module.state_dict().items()}
    if obs_mean is not None and obs_var is not None:
        tensors[_OBS_MEAN] = obs_mean.detach().double().cpu()
        tensors[_OBS_VAR] = obs_var.detach().double().cpu()
    config = {
        "kind": cfg.algo,
        "env_id": cfg.env_id,
        # coordinatewise policies fit any dimension (l2o_gym.checkpoint.check_compatible): "dim" is None
        "dim": None if cfg.algo in COORDINATEWISE else int(dim),
        "train_dim": int(dim),
        "obs_dim": core.obs_dim(cfg.core_config(), dim),
        "env_kwargs": cfg.env_kwargs(),
        "action_scale": float(cfg.action_scale),  # type: ignore[arg-type]
        "core_config": dataclasses.asdict(cfg.core_config()),
        "policy_kwargs": cfg.policy_kwargs(),
        "obs_norm": {
            "enabled": obs_mean is not None, "clip_obs": float(cfg.clip_obs), "epsilon": float(epsilon),
            "tensors": [_OBS_MEAN, _OBS_VAR] if obs_mean is not None else [],
        },
        "sb3_version": stable_baselines3.__version__,
        "train_config": cfg.to_dict(),
        **(extra or {}),
    }
    return save_policy(path, tensors, config)


@keeps_rng_state
def load_policy(
    path: str | Path,
    *,
    env_id: str | None = None,
    device: str | torch.device = "cpu",
    kind: str | None = None,
    dim: int | None = None,
) -> SB3Policy:
    """The SB3 kinds' loader: a ``.safetensors`` checkpoint written by :func:`train_sb3` as an :class:`SB3Policy`.

    ``l2o_gym.experiments.compare`` uses it for ``--policies ppo|sac|recurrent_ppo[=CKPT]`` (after checking the
    checkpoint's kind is the one named). The SB3 policy object is rebuilt from the JSON config and its weights
    loaded with ``load_state_dict``; nothing is unpickled. The config's widths are checked against the file's
    tensor shapes before any network is built.

    Args:
        path: the checkpoint.
        env_id: if given, the env the policy must have been trained on.
        device: where the network runs.
        kind: if given, the required kind (one of :data:`ALGOS`); by default any of them.
        dim: if given, the required problem dimension.

    Raises:
        CheckpointError: missing/corrupt file, not an SB3 policy (e.g. a GPS or LSTM checkpoint), another
            kind, env id or dimension, a missing or ill-typed config field, or weights that do not fit the
            stored architecture — naming the file (and the field).
    """
    tensors, cfg = load_policy_file(path, device=device)
    found = cfg.get("kind")
    if found not in ALGOS:
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {found!r} policy, not an SB3 one ({', '.join(ALGOS)})")
    if kind is not None and found != kind:
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {found!r} policy, expected {kind!r}")
    check_compatible(cfg, path, env_id=env_id, dim=dim)
    obs_dim = config_field(cfg, path, "obs_dim", int)
    d = config_field(cfg, path, "train_dim" if found in COORDINATEWISE else "dim", int)
    policy_kwargs = config_field(cfg, path, "policy_kwargs", dict)
    core_d = config_field(cfg, path, "core_config", dict)
    action_scale = config_field(cfg, path, "action_scale", float)
    norm = config_field(cfg, path, "obs_norm", dict, optional=True) or {}
    train_d = config_field(cfg, path, "train_config", dict, optional=True)
    mean, var = tensors.pop(_OBS_MEAN, None), tensors.pop(_OBS_VAR, None)
    # Every width the config asks for must be a dimension of some stored tensor: an edited config never
    # builds a network larger than the file.
    dims = {int(n) for t in tensors.values() for n in t.shape}
    widths = list(policy_kwargs.get("net_arch", []))
    if found not in COORDINATEWISE:  # coordinatewise weights have no dimension-sized tensor
        widths += [policy_kwargs.get("lstm_hidden_size", d), obs_dim, d]
    bad = [w for w in widths if not (isinstance(w, int) and not isinstance(w, bool) and w > 0 and w in dims)]
    if bad:
        raise CheckpointError(f"checkpoint {str(path)!r}: config fields 'policy_kwargs'/'obs_dim'/'dim' ask for widths "
                              f"{bad} that no stored tensor has")
    try:
        module = build_sb3_policy(found, obs_dim, d, policy_kwargs)
        core_config = CoreConfig(**core_d)
        clip_obs, eps = float(norm.get("clip_obs", 10.0)), float(norm.get("epsilon", 1e-8))
        train_config = SB3TrainConfig.from_dict(train_d) if train_d is not None else None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} has an incomplete or invalid SB3 config: {exc}") from None
    module = module.to(device)
    try:
        module.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match its stored architecture: {exc}") from None
    module.set_training_mode(False)  # type: ignore[operator]
    if core.obs_dim(core_config, d) != obs_dim:
        raise CheckpointError(f"checkpoint {str(path)!r}: its 'core_config' gives observations of length "
                              f"{core.obs_dim(core_config, d)} for d = {d}, its 'obs_dim' is {obs_dim}")
    try:
        policy = SB3Policy(module, found, core_config, d, float(action_scale), mean, var, clip_obs, eps,
                           cfg.get("env_id"), train_config=train_config)
    except ValueError as exc:  # e.g. observation statistics of another length
        raise CheckpointError(f"checkpoint {str(path)!r} does not match its stored architecture: {exc}") from None
    policy.checkpoint_config = cfg
    return policy


# ====================================================================================== training
def _build_model(cfg: SB3TrainConfig, venv: Any, tensorboard_log: str | None) -> Any:
    common: dict[str, Any] = {
        "learning_rate": cfg.learning_rate, "gamma": cfg.gamma, "seed": cfg.seed, "device": cfg.device,
        "verbose": 0, "tensorboard_log": tensorboard_log,
        "policy_kwargs": _sb3_policy_kwargs(cfg.policy_kwargs()),
    }
    on_policy = {
        "n_steps": cfg.n_steps, "batch_size": cfg.batch_size, "n_epochs": cfg.n_epochs, "gae_lambda": cfg.gae_lambda,
        "clip_range": cfg.clip_range, "ent_coef": cfg.ent_coef, "max_grad_norm": cfg.max_grad_norm,
    }
    if cfg.algo in ("ppo", "coord_ppo"):
        from stable_baselines3 import PPO

        return PPO(_policy_class(cfg.algo) if cfg.algo == "coord_ppo" else "MlpPolicy", venv, **on_policy, **common)
    if cfg.algo == "recurrent_ppo":
        return _contrib().RecurrentPPO("MlpLstmPolicy", venv, **on_policy, **common)
    from stable_baselines3 import SAC

    return SAC(
        "MlpPolicy", venv, buffer_size=cfg.buffer_size, learning_starts=cfg.learning_starts,
        batch_size=cfg.sac_batch_size, tau=cfg.tau, train_freq=cfg.train_freq, gradient_steps=cfg.gradient_steps,
        **common,
    )


def make_vec_env(cfg: SB3TrainConfig, split: str, n_envs: int, *, training: bool = True) -> Any:
    """``VecNormalize(VecMonitor(SB3VecEnv(...)))`` on ``split`` (``training=False``: frozen stats, raw rewards)."""
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    from l2o_gym.envs.sb3 import SB3VecEnv

    venv = VecMonitor(SB3VecEnv(cfg.env_id, num_envs=n_envs, split=split, **cfg.env_kwargs()))
    return VecNormalize(
        venv, training=training, norm_obs=cfg.obs_normalized, norm_reward=cfg.norm_reward and training,
        clip_obs=cfg.clip_obs, gamma=cfg.gamma,
    )


def _rms_state(rms: Any) -> dict[str, Any]:
    return {"mean": torch.as_tensor(np.asarray(rms.mean, dtype=np.float64)),
            "var": torch.as_tensor(np.asarray(rms.var, dtype=np.float64)), "count": float(rms.count)}


def _set_rms(rms: Any, st: dict[str, Any]) -> None:
    rms.mean = st["mean"].double().numpy().copy().reshape(np.shape(rms.mean))
    rms.var = st["var"].double().numpy().copy().reshape(np.shape(rms.var))
    rms.count = float(st["count"])


def _rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.as_tensor(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
    }


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = st["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


class SB3Agent(Agent):
    """SB3's part of the run lifecycle (:func:`l2o_gym.agents.common.fit`): SB3's own ``learn()`` runs the
    algorithm in chunks of ``eval_every`` env steps (one chunk = one iteration; ``reset_num_timesteps=False``,
    so rollouts, counters and the TensorBoard run continue across chunks), with SB3's
    :class:`~stable_baselines3.common.callbacks.EvalCallback` on the ``val`` env; after each chunk the
    lifecycle validates the deterministic policy on the fixed ``val`` problems (the final-objective metric, also
    at 0 env steps) and keeps the best, EvalCallback-style.

    Args:
        cfg: the configuration (validated here).
        out: the run folder (for SB3's TensorBoard logs and EvalCallback's ``eval/``); ``None``: no logs.
        tensorboard: SB3's TensorBoard scalars in ``out/tb``.
    """

    structural = SB3TrainConfig.STRUCTURAL  # refused to change on resume (agents.common.load_run_state)

    validate_first = True
    interrupt_safe = True  # SB3's state is consistent between any two env steps

    def __init__(self, cfg: SB3TrainConfig, out: str | Path | None = None, *, tensorboard: bool = True) -> None:
        from l2o_gym.registry import env_family

        super().__init__()
        cfg.validate()
        self.config = self.cfg = cfg
        self.kind = cfg.algo
        self.baselines = tuple(cfg.baselines)
        family = env_family(cfg.env_id)
        self.dim = family.dim
        self.val = family.sample(cfg.n_val, "val", cfg.seed, dtype=torch.float64)
        self.venv = make_vec_env(cfg, "train", cfg.n_envs)
        self.eval_env = make_vec_env(cfg, "val", cfg.n_eval_envs, training=False)
        self.out = Path(out) if out is not None else None
        tb = str(self.out / "tb") if self.out is not None and tensorboard else None
        self.model = _build_model(cfg, self.venv, tb)
        self.eval_env.seed(cfg.seed)
        self.checkpoint_every = max(1, round(cfg.checkpoint_every / cfg.eval_every))
        self.chunks = 0
        self._callback: Any = None

    def _obs_stats(self) -> tuple[Tensor | None, Tensor | None]:
        if not self.cfg.obs_normalized:
            return None, None
        rms = self.venv.obs_rms
        return torch.as_tensor(np.array(rms.mean, dtype=np.float64)), torch.as_tensor(np.array(rms.var, dtype=np.float64))

    def policy(self) -> SB3Policy:
        """An :class:`SB3Policy` over the live model, with a copy of the current observation statistics."""
        mean, var = self._obs_stats()
        cfg = self.cfg
        return SB3Policy(self.model.policy, cfg.algo, cfg.core_config(), self.dim, float(cfg.action_scale or 1.0),
                         mean, var, cfg.clip_obs, self.venv.epsilon, cfg.env_id, train_config=cfg)

    # -- the Agent contract --------------------------------------------------------------------------
    def iteration(self) -> dict[str, float]:
        from stable_baselines3.common.callbacks import EvalCallback

        cfg, model = self.cfg, self.model
        if self._callback is None:
            self._callback = EvalCallback(
                self.eval_env, n_eval_episodes=cfg.n_eval_envs, eval_freq=max(1, cfg.eval_every // cfg.n_envs),
                log_path=str(self.out / "eval") if self.out is not None else None, deterministic=True, verbose=0,
                warn=False)
            self._continue_eval_log()
        start = int(model.num_timesteps)
        chunk = min(cfg.eval_every, cfg.total_timesteps - start)
        t0 = time.perf_counter()
        try:
            model.learn(chunk, callback=self._callback, reset_num_timesteps=False, tb_log_name=cfg.algo,
                        progress_bar=False)
        except ValueError:  # e.g. torch's Normal refusing a NaN mean: name the cause when it is the weights
            self._check_finite_weights()
            raise
        self._check_finite_weights()
        self.chunks += 1
        wall = time.perf_counter() - t0
        return {"env_steps": float(model.num_timesteps), "env_steps_per_s": (model.num_timesteps - start) / wall if wall > 0 else 0.0}

    def _continue_eval_log(self) -> None:
        """On a resumed run, start EvalCallback's record from ``out/eval/evaluations.npz`` (it rewrites the whole
        file at each evaluation: a fresh callback would drop the evaluations made before the resume)."""
        path = self.out / "eval" / "evaluations.npz" if self.out is not None else None
        if self.chunks == 0 or path is None or not path.is_file():
            return
        try:
            with np.load(path, allow_pickle=False) as old:
                steps, results, lengths = old["timesteps"], old["results"], old["ep_lengths"]
        except (OSError, ValueError, KeyError) as exc:
            log.warning("could not read %s (%s): EvalCallback's record restarts at this resume", path, exc)
            return
        keep = steps <= self.model.num_timesteps  # evaluations after the saved state's steps were not resumed
        cb = self._callback
        cb.evaluations_timesteps = [int(t) for t in steps[keep]]
        cb.evaluations_results = [list(map(float, r)) for r in results[keep]]
        cb.evaluations_length = [list(map(int, n)) for n in lengths[keep]]

    def _check_finite_weights(self) -> None:
        """Raise a clear ``FloatingPointError`` if an update made the policy's weights non-finite (the best
        checkpoint so far stays in the run folder)."""
        bad = [name for name, p in self.model.policy.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            algo = self.cfg.algo
            hint = "; or --algo coord_ppo (one small policy shared by the coordinates)" if algo != "coord_ppo" else ""
            raise FloatingPointError(
                f"{algo}: an update made the policy's weights non-finite ({', '.join(bad[:3])}"
                f"{', …' if len(bad) > 3 else ''}) at {self.model.num_timesteps} env steps on {self.dim}-dimensional "
                f"problems: lower --lr{'' if algo == 'sac' else ' or --max-grad-norm'}{hint}. The best checkpoint "
                "so far is kept")

    def validate(self) -> float:
        """Mean final objective of the deterministic policy on the ``val`` problems (``inf`` if not finite)."""
        was_training = self.model.policy.training
        self.model.policy.set_training_mode(False)
        policy = self.policy()
        t0 = time.perf_counter()
        config = dataclasses.replace(policy.core_config, horizon=self.cfg.horizon)
        value = final_objective(policy, self.val, self.cfg.horizon, config)  # a diverged problem: the penalty
        self.model.policy.set_training_mode(was_training)
        log.info("%d env steps: val final objective %.5g, %.2f s", self.model.num_timesteps, value,
                 time.perf_counter() - t0)
        return value if math.isfinite(value) else math.inf

    def save_policy(self, path: Path, extra: dict[str, Any]) -> Path:
        mean, var = self._obs_stats()
        return save_sb3_policy(path, self.model.policy, self.cfg, self.dim, mean, var, self.venv.epsilon,
                               {"num_timesteps": int(self.model.num_timesteps), **extra})

    def state_dict(self) -> dict[str, Any]:
        from stable_baselines3.common.utils import get_device

        model = self.model
        _, variables = model._get_torch_save_params()
        return {
            "config": self.cfg.to_dict(),
            "num_timesteps": int(model.num_timesteps),
            "chunks": self.chunks,
            "params": {k: v for k, v in model.get_parameters().items()},
            "variables": {name: _getattr(model, name).detach().cpu() for name in variables},
            "obs_rms": _rms_state(self.venv.obs_rms) if self.cfg.obs_normalized else None,
            "ret_rms": _rms_state(self.venv.ret_rms),
            "rng": _rng_state(),
            "device": str(get_device(self.cfg.device)),
        }

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        try:
            saved = SB3TrainConfig.from_dict(state["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"training state {str(path)!r}: entry 'config' is missing or invalid: {exc}") from None
        del saved  # valid; the settings a resume must keep are compared by the lifecycle (``structural``)

    def load_state_dict(self, st: dict[str, Any]) -> None:
        model = self.model
        model.set_parameters(st["params"], exact_match=True, device=model.device)
        with torch.no_grad():
            for name, value in st["variables"].items():
                _getattr(model, name).copy_(value.to(model.device))
        model.num_timesteps = int(st["num_timesteps"])
        self.chunks = int(st["chunks"])
        if self.cfg.obs_normalized:  # VecNormalize keeps no observation statistics otherwise
            _set_rms(self.venv.obs_rms, st["obs_rms"])
        _set_rms(self.venv.ret_rms, st["ret_rms"])
        _set_rng_state(st["rng"])
        self.venv.seed(self.cfg.seed + model.num_timesteps)  # a fresh training instance stream from here

    @property
    def iterations_done(self) -> int:
        return self.chunks

    def done(self) -> bool:
        return self.model.num_timesteps >= self.cfg.total_timesteps

    def progress(self) -> tuple[int, int]:
        return int(self.model.num_timesteps), self.cfg.total_timesteps

    @property
    def env_steps(self) -> int:
        return int(self.model.num_timesteps)

    def baseline_problems(self) -> tuple[Any, int]:
        return self.val, self.cfg.horizon

    def summary_extra(self) -> dict[str, Any]:
        return {"algo": self.cfg.algo}

    def close(self) -> None:
        self.venv.close()
        self.eval_env.close()


def _getattr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def train_sb3(
    cfg: SB3TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress_bar: bool = True,
    tensorboard: bool = True,
) -> dict[str, Any]:
    """Train ``cfg.algo`` on ``cfg.env_id`` through the common lifecycle (module docstring). Returns the summary
    (also ``out_dir/summary.json``).

    Args:
        cfg: the configuration.
        out_dir: run folder.
        resume: continue from ``out_dir/state.pt`` (``num_timesteps``, networks, optimizers, VecNormalize
            statistics, RNG states and the validation curve are restored; the training instance stream is
            re-seeded with ``seed + num_timesteps``; SAC restarts with an empty replay buffer).
        progress_bar: a progress bar over env steps.
        tensorboard: write TensorBoard scalars to ``out_dir/tb``.

    Raises:
        ValueError: bad configuration.
        CheckpointError: ``resume`` without a fitting ``state.pt`` (missing, another kind, another configuration).
        KeyboardInterrupt: re-raised after writing a final checkpoint.
    """
    agent = SB3Agent(cfg, out_dir, tensorboard=tensorboard)
    return fit(agent, out_dir, resume=resume, progress=progress_bar, tensorboard=tensorboard,
               desc=f"{cfg.algo} {cfg.env_id}")
