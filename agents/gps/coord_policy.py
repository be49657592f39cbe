"""The global policy of convolutional GPS: a coordinatewise LSTM whose parameters are shared within a group.

For every coordinate ``i`` of group ``g`` the policy reads the observation ``Ψ^i_t``
(:data:`~l2o_gym.agents.gps.coord.OBS_DIM` numbers: one-step relative objective change, normalised gradient
magnitude, log step ratio, sign agreement of the gradient with the last step; with ``grad_average="ema"`` also
the normalised momentum ``σ ḡ / rms``) and its own memory, and outputs
a Gaussian step in the gradient-sign frame (:mod:`~l2o_gym.agents.gps.coord`)::

    (h^i_t, c^i_t) = LSTM_g(Ψ^i_t, (h^i_{t−1}, c^i_{t−1}))       a'^i_t ~ N(s_g · (w_gᵀ h^i_t + b_g), σ_g²),   Δθ^i = σ^i_t ρ^i_t a'^i_t

(Li & Malik 2017: one layer of 128 LSTM cells shared within a group). The LSTMs of different groups are
separate (``ρ``: the step unit, :mod:`~l2o_gym.agents.gps.coord`); every coordinate of a group uses the same weights, so permuting coordinates within a group
permutes the steps (tested). ``s_g`` is a fixed output scale (set from the local controllers' actions when
training starts), ``σ_g²`` the group's action variance (set in closed form by the BADMM global step).

**Other models.** A policy trained on a family with parameter tensors ``specs`` is applied to another
model's tensors by name (same name → same LSTM), else by kind in order of appearance (the ``j``-th weight
tensor of the new model uses the ``j``-th weight LSTM, the last one past the end; kinds without a trained group
of their own go through :data:`KIND_ALIASES`), else it raises
:class:`~l2o_gym.checkpoint.CheckpointError` naming the tensor and the trained groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from l2o_gym.agents.gps.coord import (
    OBS_DIM,
    CoordinateController,
    CoordinateFeatures,
    check_grad_average,
    check_step_unit,
    obs_dim,
)
from l2o_gym.agents.gps.lingauss import LinearGaussianPolicy
from l2o_gym.checkpoint import CheckpointError, keeps_rng_state, load_policy_file, save_policy
from l2o_gym.core import State
from l2o_gym.policy import Chunked, Policy, rowwise_carry
from l2o_gym.problems.base import ParamSpec

#: LSTM memory of :class:`CoordinateLSTMNet`: per parameter tensor (θ order) its ``(h, c)`` rows, ``[N·numel, hidden]``
#: each, in the chunks of :func:`~l2o_gym.policy.rowwise_carry` (:meth:`CoordinateLSTMNet.step`).
GroupMemory = tuple[Chunked, ...]

KIND = "conv_gps"

#: parameter kinds of other layouts served by a trained kind when the policy has no group of their own kind
#: (``LearnedOptimizer``'s module-type kinds: conv/fc/other weights → "weight", normalisation parameters → "bias").
KIND_ALIASES: dict[str, str] = {"conv": "weight", "fc": "weight", "other": "weight", "bn": "bias", "all": "weight"}


class CoordinateLSTMNet(nn.Module):
    """One ``nn.LSTMCell(n_obs, hidden)`` + linear head per trained group (module docstring).

    Args:
        groups: ``(name, kind)`` of the trained groups, in θ order.
        hidden: LSTM cells per group.
        n_obs: entries of Ψ per coordinate (:func:`~l2o_gym.agents.gps.coord.obs_dim`).
    """

    def __init__(self, groups: list[tuple[str, str]], hidden: int = 128, n_obs: int = OBS_DIM) -> None:
        super().__init__()
        if not groups:
            raise ValueError("a coordinate LSTM needs at least one group")
        if not (isinstance(hidden, int) and hidden > 0):
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        self.groups = list(groups)
        self.hidden = hidden
        self.n_obs = n_obs
        self.cells = nn.ModuleList(nn.LSTMCell(n_obs, hidden) for _ in groups)
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in groups)
        for head in self.heads:
            nn.init.zeros_(head.bias)
            nn.init.normal_(head.weight, std=0.01)
        g = len(groups)
        self.register_buffer("out_scale", torch.ones(g))
        self.register_buffer("var", torch.ones(g))

    def group_map(self, specs: tuple[ParamSpec, ...]) -> list[int]:
        """The trained group (index) that serves each of ``specs`` (module docstring)."""
        names = [n for n, _ in self.groups]
        by_kind: dict[str, list[int]] = {}
        for j, (_, k) in enumerate(self.groups):
            by_kind.setdefault(k, []).append(j)
        seen: dict[str, int] = {}
        out = []
        for spec in specs:
            kind = spec.kind if spec.kind in by_kind else KIND_ALIASES.get(spec.kind, spec.kind)
            if spec.name in names:
                out.append(names.index(spec.name))
            elif kind in by_kind:
                j = seen.get(kind, 0)
                out.append(by_kind[kind][min(j, len(by_kind[kind]) - 1)])
            else:
                raise CheckpointError(
                    f"parameter tensor {spec.name!r} (kind {spec.kind!r}) matches none of the trained groups "
                    f"{[f'{n} ({k})' for n, k in self.groups]}"
                )
            seen[kind] = seen.get(kind, 0) + 1
        return out

    def step(
        self, obs: Tensor, memory: GroupMemory, specs: tuple[ParamSpec, ...], gmap: list[int]
    ) -> tuple[Tensor, GroupMemory]:
        """Mean steps ``[N, d]`` for observations ``obs[N, d, n_obs]`` and the memory of :meth:`zero_memory`.

        The memory is kept per parameter tensor — the ``N·numel`` rows (problem-major) its group's LSTM reads — and
        within a tensor in the chunks :func:`~l2o_gym.policy.rowwise_carry` evaluates it in, so a step copies no
        memory (the same numbers as one ``[N, d, hidden]`` block evaluated by :func:`~l2o_gym.policy.rowwise`).
        """
        if obs.shape[-1] != self.n_obs:
            raise ValueError(f"the net reads {self.n_obs} observation entries per coordinate, got {obs.shape[-1]}")
        if len(memory) != len(specs):
            raise ValueError(f"memory holds {len(memory)} parameter tensors, the layout has {len(specs)}")
        n = obs.shape[0]
        means, new = [], []
        for spec, j, carry in zip(specs, gmap, memory):

            def rows(x: Tensor, h0: Tensor, c0: Tensor, j: int = j) -> tuple[Tensor, Tensor, Tensor]:
                h1, c1 = self.cells[j](x, (h0, c0))
                return self.out_scale[j] * self.heads[j](h1), h1, c1

            (mean,), carry = rowwise_carry(rows, (obs[:, spec.slice].reshape(-1, self.n_obs),), carry)
            means.append(mean.view(n, -1))
            new.append(carry)
        return torch.cat(means, 1), tuple(new)

    def zero_memory(self, n: int, specs: tuple[ParamSpec, ...], device: torch.device, dtype: torch.dtype) -> GroupMemory:
        """The initial memory of ``n`` problems with parameter layout ``specs`` (see :meth:`step`)."""
        return tuple(((torch.zeros(n * s.numel, self.hidden, device=device, dtype=dtype),
                       torch.zeros(n * s.numel, self.hidden, device=device, dtype=dtype)),) for s in specs)


def _per_tensor(memory: Any, specs: tuple[ParamSpec, ...]) -> GroupMemory:
    """``memory`` in :meth:`CoordinateLSTMNet.step`'s layout; an optimizer state saved before that layout holds one
    ``(h, c)`` pair of ``[N, d, hidden]`` blocks, split here into the per-tensor rows (one chunk each)."""
    if (isinstance(memory, (tuple, list)) and len(memory) == 2 and all(isinstance(m, Tensor) and m.dim() == 3
                                                                        for m in memory)):
        h, c = memory
        return tuple(((h[:, s.slice].reshape(-1, h.shape[-1]), c[:, s.slice].reshape(-1, c.shape[-1])),)
                     for s in specs)
    return tuple(memory)  # per tensor: chunks, or whole (h, c) rows (rowwise_carry splits them)


def _check_tracker(features: CoordinateFeatures, step_unit: str, grad_average: str) -> None:
    """A memory restored from another policy's state (``LearnedOptimizer.load_state_dict``) must track the
    features this policy was trained with."""
    if (features.step_unit, features.grad_average) != (step_unit, grad_average):
        raise ValueError(f"the policy memory tracks step_unit={features.step_unit!r}, grad_average="
                         f"{features.grad_average!r}, but the policy was trained with step_unit={step_unit!r}, "
                         f"grad_average={grad_average!r}: load an optimizer state saved with this policy")


@dataclass
class _Memory:
    features: CoordinateFeatures
    lstm: GroupMemory | tuple[Tensor, Tensor]  # ControllerPolicy: an unused pair of empty tensors
    started: bool


class ControllerPolicy(Policy):
    """Group-shared linear-Gaussian controllers (:class:`~l2o_gym.agents.gps.coord.CoordinateController`) run
    as a deterministic :class:`~l2o_gym.policy.Policy` (their mean steps), e.g. to evaluate the initial or the
    local controllers on validation problems. Time steps past the controllers' horizon reuse the last one.

    Args:
        policy: ``K[G, T, 1, dS]``, … for the ``G`` parameter tensors of ``specs``.
        specs: the parameter layout the controllers were built for.
        step_unit: the frame step's unit (:mod:`~l2o_gym.agents.gps.coord`, *Step unit*).
        grad_average: how Φ's averaged gradient is formed (:mod:`~l2o_gym.agents.gps.coord`, *Averaged gradient*).
    """

    name = "gps_local"

    def __init__(self, policy: LinearGaussianPolicy, specs: tuple[ParamSpec, ...], step_unit: str = "sign",
                 grad_average: str = "last3") -> None:
        self.policy, self.specs = policy, specs
        self.step_unit = check_step_unit(step_unit)
        self.grad_average = check_grad_average(grad_average)
        self.groups = torch.cat([torch.full((s.numel,), j, dtype=torch.int64) for j, s in enumerate(specs)])

    def reset(self, state: State) -> _Memory:
        if state.dim != len(self.groups):
            raise ValueError(f"controllers built for {len(self.groups)} coordinates, the state has {state.dim}")
        return _Memory(CoordinateFeatures(self.step_unit, self.grad_average),
                       (state.theta.new_zeros(0), state.theta.new_zeros(0)), False)

    def act(self, state: State, memory: _Memory) -> tuple[Tensor, _Memory]:
        _check_tracker(memory.features, self.step_unit, self.grad_average)
        theta, loss, grad = state.theta.detach(), state.loss.detach(), state.grad.detach()
        if memory.started:
            memory.features.update(theta, loss, grad)
        else:
            memory.features.reset(theta, loss, grad)
        t = min(int(state.t.max()), self.policy.K.shape[1] - 1)
        ctrl = CoordinateController(self.policy, self.groups.to(theta.device))
        mean = ctrl.mean(memory.features.state.to(self.policy.K.dtype), t).to(theta.dtype)
        return memory.features.unit * mean, _Memory(memory.features, memory.lstm, True)


class ConvGPSPolicy(Policy):
    """The trained global policy as a :class:`~l2o_gym.policy.Policy` (deterministic mean steps).

    Its memory is the feature tracker (:class:`~l2o_gym.agents.gps.coord.CoordinateFeatures`) and the LSTM
    states. The parameter layout comes from ``state.problems.family.param_specs()`` or from ``specs`` (for
    :class:`~l2o_gym.optim.LearnedOptimizer`, one spec per parameter tensor).

    Args:
        net: the trained :class:`CoordinateLSTMNet`.
        specs: parameter layout to use when the state carries no problems (optional).
        env_id: env it was trained on (recorded in checkpoints).
        step_unit: the frame step's unit it was trained with (:mod:`~l2o_gym.agents.gps.coord`, *Step unit*;
            recorded in checkpoints; checkpoints without the field are ``"sign"``).
        grad_average: the averaged gradient of its features (:mod:`~l2o_gym.agents.gps.coord`, *Averaged
            gradient*; must match the net's input size; recorded in checkpoints, ``"last3"`` when absent).
    """

    name = "conv_gps"
    binds_layout = True

    def __init__(
        self, net: CoordinateLSTMNet, specs: tuple[ParamSpec, ...] | None = None, env_id: str | None = None,
        step_unit: str = "sign", grad_average: str = "last3",
    ) -> None:
        self.net = net
        self.specs = specs
        self.env_id = env_id
        self.step_unit = check_step_unit(step_unit)
        self.grad_average = check_grad_average(grad_average)
        if obs_dim(grad_average) != net.n_obs:
            raise ValueError(f"grad_average={grad_average!r} gives {obs_dim(grad_average)} observation entries, "
                             f"the net reads {net.n_obs}")

    def bind(self, specs: Any) -> None:
        """Use ``specs`` (one :class:`ParamSpec` per parameter tensor) when the state carries no problem family
        (``LearnedOptimizer``: one group per parameter tensor; tensors map to trained groups as in
        :meth:`CoordinateLSTMNet.group_map`, checked here)."""
        specs = tuple(specs)
        self.net.group_map(specs)
        self.specs = specs

    def _specs(self, state: State) -> tuple[ParamSpec, ...]:
        if state.problems is not None:
            specs = state.problems.family.param_specs()
        elif self.specs is not None:
            specs = self.specs
        else:
            raise ValueError("ConvGPSPolicy needs the parameter layout: pass specs= (one ParamSpec per tensor)")
        if sum(s.numel for s in specs) != state.dim:
            raise ValueError(f"parameter layout covers {sum(s.numel for s in specs)} coordinates, the state has {state.dim}")
        return specs

    def reset(self, state: State) -> _Memory:
        specs = self._specs(state)
        p = next(self.net.parameters())
        return _Memory(CoordinateFeatures(self.step_unit, self.grad_average),
                       self.net.zero_memory(state.n, specs, p.device, p.dtype), False)

    def act(self, state: State, memory: _Memory) -> tuple[Tensor, _Memory]:
        specs = self._specs(state)
        _check_tracker(memory.features, self.step_unit, self.grad_average)
        gmap = self.net.group_map(specs)
        theta, loss, grad = state.theta.detach(), state.loss.detach(), state.grad.detach()
        if memory.started:
            memory.features.update(theta, loss, grad)
        else:
            memory.features.reset(theta, loss, grad)
        p = next(self.net.parameters())
        with torch.no_grad():
            mean, lstm = self.net.step(memory.features.obs.to(p.dtype), _per_tensor(memory.lstm, specs), specs, gmap)
        step = memory.features.unit * mean.to(state.theta.dtype)  # frame step -> step (coord module docstring)
        return step, _Memory(memory.features, lstm, True)

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        config = {"kind": KIND, "env_id": self.env_id, "groups": [list(g) for g in self.net.groups],
                  "hidden": self.net.hidden, "step_unit": self.step_unit, "grad_average": self.grad_average,
                  **(extra or {})}
        return save_policy(path, self.net.state_dict(), config)

    @classmethod
    @keeps_rng_state
    def load(cls, path: str | Path, device: torch.device | str = "cpu", env_id: str | None = None) -> ConvGPSPolicy:
        """Rebuild the policy of :meth:`save`. It is coordinatewise, so it runs on any env whose parameter
        tensors map to its groups (``env_id`` is not required to match the training env; a tensor that maps
        to no group is refused at the first step, naming it)."""
        tensors, config = load_policy_file(path, kind=KIND, device=device)
        try:
            groups = [(str(n), str(k)) for n, k in config["groups"]]
            hidden = int(config["hidden"])
            step_unit = check_step_unit(str(config.get("step_unit", "sign")))
            grad_average = check_grad_average(str(config.get("grad_average", "last3")))
            net = CoordinateLSTMNet(groups, hidden, obs_dim(grad_average))  # no groups, hidden ≤ 0: ValueError
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad conv-GPS header field ({exc})") from None
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if expected != got:
            raise CheckpointError(f"{path}: tensors do not match a conv-GPS net with groups {groups} and hidden {hidden}")
        net.load_state_dict(tensors)
        policy = cls(net.to(device), env_id=config.get("env_id"), step_unit=step_unit, grad_average=grad_average)
        policy.checkpoint_config = config
        return policy
