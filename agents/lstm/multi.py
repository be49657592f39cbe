"""One coordinatewise LSTM per parameter kind (Andrychowicz et al., 2016, §3.3) as a :class:`~l2o_gym.policy.Policy`.

The paper's conv-net optimizer uses *separate* LSTMs for the convolutional and the fully connected layers:
the gradients of a conv kernel and of a fc weight matrix have different statistics, and one shared LSTM has
to compromise between them. :class:`MultiLSTMPolicy` holds one :class:`~l2o_gym.agents.lstm.policy.CoordinateLSTM`
per *LSTM name* and applies each to the coordinates of the parameter tensors assigned to it; all are trained
jointly by the same truncated BPTT (their parameters are one set of meta-parameters).

Which coordinates go to which LSTM:

* the parameter tensors and their kinds come from :meth:`l2o_gym.problems.ProblemFamily.param_specs` for env
  problems (``state.problems.family``), or from :meth:`bind` — which :class:`l2o_gym.optim.LearnedOptimizer`
  calls with the kinds of a user's parameters (``param_groups`` entries ``"kind"``, else the module type:
  ``nn.Conv*`` weight → ``"conv"``, ``nn.Linear`` weight → ``"fc"``, batch-norm weight/bias → ``"bn"``, any
  other bias → ``"bias"``);
* ``assign`` maps a parameter kind to an LSTM name (``"*"``: every kind not listed); the default is the identity,
  i.e. one LSTM per kind. The conv-net grouping shipped here is ``kinds = ("conv", "fc", "bn", "bias")``
  (one LSTM each). The paper's two-way split is ``kinds = ("conv", "fc"), assign = {"conv": "conv", "bn": "conv",
  "*": "fc"}``; one LSTM shared by everything is ``kinds = ("all",), assign = {"*": "all"}``, which computes
  exactly what :class:`~l2o_gym.agents.lstm.policy.LSTMPolicy` computes (tested step by step).

Global averaging cells, when configured, average over the coordinates of one LSTM's group (per problem).
The memory is one tuple per LSTM (``2·L`` tensors ``[N·d_k, hidden]``), in the order of ``kinds``.

A checkpoint (``kind = "mlstm"``) stores the LSTM names, the assignment and each LSTM's weights under
``{name}.…``. Using it on a model with a parameter kind that no LSTM is assigned to raises
:class:`~l2o_gym.checkpoint.CheckpointError` (a ``ValueError``) listing both sets of kinds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from l2o_gym.checkpoint import CheckpointError, check_compatible, check_shapes, keeps_rng_state, load_policy_file, save_policy
from l2o_gym.core import State
from l2o_gym.policy import Policy
from l2o_gym.problems.base import ParamSpec

from l2o_gym.agents.lstm.policy import PRETRAINED_DIR, CoordinateLSTM, LSTMConfig, expected_shapes

#: ``kind`` of multi-LSTM checkpoints.
KIND = "mlstm"
#: the default grouping for conv nets: one LSTM per parameter kind of :class:`l2o_gym.problems.ConvNet`.
CONV_KINDS: tuple[str, ...] = ("conv", "fc", "bn", "bias")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class KindMismatchError(CheckpointError):
    """The model has parameter kinds that no LSTM of the policy is assigned to."""


class MultiLSTMPolicy(Policy):
    """Several coordinatewise LSTMs, one per parameter kind (see the module docstring).

    Args:
        kinds: LSTM names, e.g. ``("conv", "fc", "bn", "bias")``; one :class:`CoordinateLSTM` each.
        config: the architecture shared by all LSTMs (:class:`LSTMConfig`).
        assign: parameter kind -> LSTM name (``"*"`` for the rest); default identity on ``kinds``.
        nets: existing networks ``{name: CoordinateLSTM}`` (e.g. one shared object for all names).
        env_id: env the policy is trained for (recorded in checkpoints).
    """

    reads_objective = False

    name = "mlstm"
    binds_layout = True
    needs_kinds = True

    def __init__(
        self,
        kinds: Sequence[str] = CONV_KINDS,
        config: LSTMConfig | None = None,
        assign: Mapping[str, str] | None = None,
        nets: Mapping[str, CoordinateLSTM] | None = None,
        env_id: str | None = None,
    ) -> None:
        kinds = tuple(kinds)
        if not kinds or len(set(kinds)) != len(kinds) or any(not isinstance(k, str) or not _NAME.match(k) for k in kinds):
            raise ValueError(f"kinds must be distinct identifiers, got {kinds!r}")
        assign = dict(assign or {})
        bad = {k: v for k, v in assign.items() if v not in kinds}
        if bad:
            raise ValueError(f"assign maps to unknown LSTMs {bad}: the LSTMs are {list(kinds)}")
        self.kinds = kinds
        self.assign = assign
        if nets is not None:
            if set(nets) != set(kinds):
                raise ValueError(f"nets are for {sorted(nets)}, kinds are {sorted(kinds)}")
            self.nets = nn.ModuleDict({k: nets[k] for k in kinds})
        else:
            self.nets = nn.ModuleDict({k: CoordinateLSTM(config or LSTMConfig()) for k in kinds})
        self.config = self.nets[kinds[0]].config
        if any(n.config != self.config for n in self.nets.values()):
            raise ValueError("all LSTMs must share one architecture")
        self.env_id = env_id
        self._bound: tuple[ParamSpec, ...] | None = None
        self._layout_cache: dict[Any, list[tuple[str, list[slice]]]] = {}

    # ---- kinds and layout -------------------------------------------------------------------------
    @property
    def net(self) -> nn.ModuleDict:
        """All LSTMs as one module (what the trainer optimizes)."""
        return self.nets

    def lstm_for(self, kind: str) -> str | None:
        """The LSTM name a parameter ``kind`` is assigned to (``None``: none)."""
        if kind in self.assign:
            return self.assign[kind]
        if kind in self.kinds:
            return kind
        return self.assign.get("*")

    def check_kinds(self, model_kinds: Iterable[str], where: str = "the model") -> None:
        """Raise :class:`KindMismatchError` if some parameter kind of the model has no LSTM."""
        model_kinds = sorted(set(model_kinds))
        missing = [k for k in model_kinds if self.lstm_for(k) is None]
        if missing:
            raise KindMismatchError(
                f"parameter kinds do not match: {where} has kinds {model_kinds}, the policy has LSTMs for kinds "
                f"{list(self.kinds)} (assign {self.assign or 'identity'}); no LSTM for {missing}"
            )

    def bind(self, specs: Sequence[ParamSpec] | None) -> None:
        """Fix the parameter layout used when a state carries no problem family (``LearnedOptimizer``)."""
        if specs is not None:
            specs = tuple(specs)
            self.check_kinds([s.kind for s in specs])
        self._bound = specs

    def _specs(self, state: State) -> tuple[ParamSpec, ...]:
        problems = getattr(state, "problems", None)
        if problems is not None:
            specs = problems.family.param_specs()
            where = f"family {problems.family.name!r}"
        elif self._bound is not None:
            specs, where = self._bound, "the bound parameters"
        else:
            raise ValueError(
                "MultiLSTMPolicy needs the parameter kinds: use it on an env/family problem batch or call bind(specs) "
                "(LearnedOptimizer does this)"
            )
        if sum(s.numel for s in specs) != state.dim:
            raise ValueError(f"param specs of {where} cover {sum(s.numel for s in specs)} coordinates, θ has {state.dim}")
        return specs

    def layout(self, specs: Sequence[ParamSpec]) -> list[tuple[str, list[slice]]]:
        """``[(lstm name, [θ slices of its coordinates])]`` for the LSTMs that have coordinates, in ``kinds`` order."""
        key = tuple((s.kind, s.offset, s.numel) for s in specs)
        if key not in self._layout_cache:
            self.check_kinds([s.kind for s in specs])
            groups: dict[str, list[slice]] = {k: [] for k in self.kinds}
            for s in specs:
                groups[self.lstm_for(s.kind)].append(s.slice)  # type: ignore[index]
            self._layout_cache[key] = [(k, sl) for k, sl in groups.items() if sl]
        return self._layout_cache[key]

    # ---- Policy interface -------------------------------------------------------------------------
    def reset(self, state: State) -> tuple[tuple[Tensor, ...], ...]:
        p = next(self.nets.parameters())
        out = []
        for name, slices in self.layout(self._specs(state)):
            d_k = sum(s.stop - s.start for s in slices)
            out.append(self.nets[name].initial_hidden(state.n * d_k, p.device, p.dtype))
        return tuple(out)

    def act(self, state: State, memory: tuple[tuple[Tensor, ...], ...]) -> tuple[Tensor, tuple[tuple[Tensor, ...], ...]]:
        n, d = state.grad.shape
        p = next(self.nets.parameters())
        g = state.grad.to(device=p.device, dtype=p.dtype)
        layout = self.layout(self._specs(state))
        pieces: dict[int, Tensor] = {}
        new_memory = []
        for (name, slices), mem in zip(layout, memory):
            gk = torch.cat([g[:, s] for s in slices], dim=1) if len(slices) > 1 else g[:, slices[0]]
            d_k = gk.shape[1]
            out, mem = self.nets[name](gk.reshape(-1), mem, n)
            out = (self.config.output_scale * out).view(n, d_k)
            off = 0
            for s in slices:
                w = s.stop - s.start
                if w:  # a zero-size parameter shares its offset with the next one: it must not replace that one's piece
                    pieces[s.start] = out[:, off : off + w]
                off += w
            new_memory.append(mem)
        step = torch.cat([pieces[k] for k in sorted(pieces)], dim=1)
        return step.to(device=state.theta.device, dtype=state.theta.dtype), tuple(new_memory)

    # ---- utilities --------------------------------------------------------------------------------
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MultiLSTMPolicy:
        self.nets.to(device=device, dtype=dtype)
        return self

    def parameters(self):  # noqa: ANN201
        return self.nets.parameters()

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write a safetensors checkpoint (``kind = "mlstm"``) storing the LSTM names and the assignment."""
        config = {"kind": KIND, "env_id": self.env_id, "dim": None, "arch": asdict(self.config),
                  "kinds": list(self.kinds), "assign": self.assign, **(extra or {})}
        # cloned: one network object shared by several names (``nets=``) must not reach safetensors as shared memory
        tensors = {k: v.detach().clone() for k, v in self.nets.state_dict().items()}
        return save_policy(path, tensors, config)

    @classmethod
    @keeps_rng_state
    def load(
        cls, path: str | Path, device: torch.device | str = "cpu", env_id: str | None = None,
        model_kinds: Iterable[str] | None = None,
    ) -> MultiLSTMPolicy:
        """Rebuild a policy from :meth:`save`'s checkpoint.

        Args:
            model_kinds: the parameter kinds of the model it will optimize; checked at load time.

        Raises:
            CheckpointError: not a multi-LSTM checkpoint, trained on another env (``env_id``), tensors that do
                not match the stored architecture; :class:`KindMismatchError` when ``model_kinds`` has a kind
                with no LSTM (the message lists both).
        """
        tensors, config = load_policy_file(path, kind=KIND, device=device)
        check_compatible(config, path, env_id=env_id)
        try:
            arch = LSTMConfig(**config["arch"])
            kinds = config["kinds"]
            if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
                raise ValueError(f"kinds must be a list of LSTM names, got {kinds!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} has an invalid multi-LSTM configuration: {exc}") from None
        # shapes first (as LSTMPolicy.load): an edited header must never allocate networks larger than the file
        expected = {f"{k}.{name}": shape for k in kinds for name, shape in expected_shapes(arch).items()}
        try:
            check_shapes(path, tensors, expected)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} (does not match its LSTMs {kinds} / {arch})") from None
        try:
            policy = cls(kinds, arch, assign=config.get("assign") or {}, env_id=config.get("env_id"))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} has an invalid multi-LSTM configuration: {exc}") from None
        try:
            policy.nets.load_state_dict(tensors)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} does not match its LSTMs {policy.kinds} / {arch}: {exc}") from None
        policy.nets.to(device)
        policy.checkpoint_config = config
        if model_kinds is not None:
            policy.check_kinds(model_kinds)
        return policy


#: (learned kind, env id) -> shipped checkpoint file name (``agents/pretrained``).
PRETRAINED_MULTI: dict[tuple[str, str], str] = {
    ("mlstm", "l2o/ConvNet-v0"): "mlstm_ConvNet.safetensors",
    ("mlstm-sub", "l2o/ConvNet-v0"): "mlstm-sub_ConvNet.safetensors",
    ("mlstm-shared", "l2o/ConvNet-v0"): "mlstm-shared_ConvNet.safetensors",
}


def load_pretrained_multi(kind: str = "mlstm", env_id: str = "l2o/ConvNet-v0", device: torch.device | str = "cpu") -> MultiLSTMPolicy:
    """A shipped multi-LSTM checkpoint (``docs/convnet.md`` has the commands that made them)."""
    if (kind, env_id) not in PRETRAINED_MULTI:
        raise ValueError(f"no pretrained {kind} for {env_id!r}: available {sorted(PRETRAINED_MULTI)}")
    return MultiLSTMPolicy.load(PRETRAINED_DIR / PRETRAINED_MULTI[(kind, env_id)], device=device)


def load_multi_policy(path: str | Path, env_id: str | None = None, device: torch.device | str = "cpu") -> MultiLSTMPolicy:
    """Loader used by :mod:`l2o_gym.experiments.compare` (``--policies mlstm[=CKPT]``).

    The checkpoint is checked against the parameter kinds of ``env_id``'s family. An LSTM-sub checkpoint
    trained on a label subset is used on other label sets of the same env, so the env id itself is not
    required to match (the kinds are what matter).
    """
    kinds = None
    if env_id is not None:
        from l2o_gym.registry import env_family

        kinds = [s.kind for s in env_family(env_id).param_specs()]
    return MultiLSTMPolicy.load(path, device=device, model_kinds=kinds)


def init_from_checkpoint(policy: Any, path: str | Path) -> None:
    """Initialise ``policy``'s weights (in place) from a checkpoint — a warm start for meta-training.

    An ``"lstm"`` checkpoint (one shared LSTM) is copied into the single LSTM of an :class:`LSTMPolicy` or into
    *every* LSTM of a :class:`MultiLSTMPolicy`; an ``"mlstm"`` checkpoint into a multi-LSTM with the same names.

    Raises:
        CheckpointError: unreadable checkpoint, another architecture, or other LSTM names (both listed).
    """
    from l2o_gym.checkpoint import read_policy_config

    kind = read_policy_config(path).get("kind")
    if kind == "lstm":
        from l2o_gym.agents.lstm.policy import LSTMPolicy

        src = LSTMPolicy.load(path)
        nets = list(policy.nets.values()) if isinstance(policy, MultiLSTMPolicy) else [policy.net]
        for net in nets:
            if net.config != src.config:
                raise CheckpointError(f"init checkpoint {str(path)!r} has architecture {src.config}, the policy {net.config}")
            net.load_state_dict(src.net.state_dict())
        return
    if kind == KIND and isinstance(policy, MultiLSTMPolicy):
        src = MultiLSTMPolicy.load(path)
        if src.kinds != policy.kinds or src.config != policy.config:
            raise KindMismatchError(
                f"init checkpoint {str(path)!r} has LSTMs {list(src.kinds)} ({src.config}), the policy has "
                f"{list(policy.kinds)} ({policy.config})"
            )
        policy.nets.load_state_dict(src.nets.state_dict())
        return
    raise CheckpointError(f"cannot initialise a {type(policy).__name__} from a {kind!r} checkpoint {str(path)!r}")
