"""Any :class:`~l2o_gym.policy.Policy` as a drop-in ``torch.optim.Optimizer`` for your own models.

    policy = load_pretrained("l2o/MLP-v0")                  # or any Policy: GPS, SB3, baselines
    opt = LearnedOptimizer(model.parameters(), policy)
    for x, y in loader:
        opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()

The parameters that require gradients are flattened into one iterate ``θ [1, P]`` (a single "problem" of
dimension ``P``, parameter after parameter in ``param_groups`` order). Each :meth:`LearnedOptimizer.step`
builds the MDP state from the user's loss and gradients with :func:`l2o_gym.core.initial_state` (first
call) or :func:`l2o_gym.core.transition` (later calls, with the actual displacement of θ since the last
step as the action), asks the policy for a step ``Δθ [1, P]``, and adds ``lr · Δθ`` to each parameter, where
``lr`` is the group's multiplier (1 by default), so ``torch.optim.lr_scheduler`` schedules work unchanged.

Which policies: every policy that reads the state it is given — the LSTM, GPS, SB3 policies and the
first-order baselines. Line-search methods that evaluate the objective themselves (CG, L-BFGS; policies
with ``needs_problems``) are refused at construction: use ``torch.optim.LBFGS(..., line_search_fn=
"strong_wolfe")``. A policy restricted to one problem dimension (``policy.dim``: GPS and SB3 policies fit only
the ``d`` they were trained on) must get exactly that many optimized entries, checked at construction.

Precision: the MDP state and the policy run in the parameters' dtype (with mixed dtypes: the first optimized
parameter's, so put a float64 parameter first to keep float64 gradients and steps), but in float32 for
float16/bfloat16 parameters (their ``eps`` and feature ranges underflow/overflow in half precision); the step is
cast back to the parameter's dtype. An update that would overflow a parameter's dtype (e.g. a large ``lr`` on
float16 weights) is skipped for that parameter with a ``RuntimeWarning``, like a non-finite gradient.

Conventions, as in ``torch.optim``: parameters with ``requires_grad=False`` are not optimized; one whose
``grad`` is ``None`` at a step is left unchanged (its gradient is fed to the policy as zero); sparse
gradients raise ``RuntimeError``, complex parameters ``TypeError``. A parameter with a non-finite gradient is
skipped at that step with a warning (its gradient is fed as zero), so weights never become NaN. Without a
closure the objective is unknown to the policy and is recorded as the last known value (0 at first); policies
that read only the gradient (the first-order baselines, the LSTMs: ``Policy.reads_objective`` false) do not need
it, and the others (GPS, conv GPS, PPO) warn once when stepped without one. When the number of optimized entries
changes (``add_param_group``, a parameter's ``requires_grad`` toggled), the policy memory and history restart,
with a warning.

Policies with one network per parameter kind (the multi-LSTM of ``l2o_gym.agents.lstm.multi``) need each
parameter's kind: give param groups with a ``"kind"`` key — :func:`param_groups_by_kind` builds them from a
model's module types (``nn.Conv*`` weight → ``"conv"``, ``nn.Linear`` weight → ``"fc"``, normalisation-layer
weight/bias → ``"bn"``, any other bias → ``"bias"``, anything else → ``"other"``)::

    opt = LearnedOptimizer(param_groups_by_kind(model), load_pretrained_multi())

Such a policy exposes ``bind(specs)``; the optimizer calls it with one :class:`~l2o_gym.problems.ParamSpec` per
parameter (shape, kind, offset in θ) before the first step. A param group without ``"kind"`` then raises
``ValueError``; a kind the policy has no network for raises its error listing both sets of kinds.

``state_dict()`` holds, besides ``torch.optim``'s entries, the policy memory (tensors, numbers, tuples/lists
and dataclasses of them, e.g. the Adam baseline's moments, and objects with ``memory_state()``, e.g. conv GPS's
feature tracker) and the MDP history, so training resumes exactly
after ``load_state_dict``; it loads with ``torch.load(weights_only=True)``. It records the policy's class: loading
it into an optimizer that runs another kind of policy (e.g. conv GPS's state into an LSTM optimizer) is a
``ValueError``. ``copy.deepcopy`` and pickling
keep the policy, its memory and the history (torch optimizers deep-copy; the copy's parameters are copies).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from l2o_gym import core
from l2o_gym.core import CoreConfig, State
from l2o_gym.policy import Policy
from l2o_gym.problems.base import ParamSpec

#: parameter kinds assigned by :func:`param_kind`.
PARAM_KINDS: tuple[str, ...] = ("conv", "fc", "bn", "bias", "other")


def param_kind(module: torch.nn.Module, name: str) -> str:
    """The kind of parameter ``name`` of ``module`` (its own, not a child's): see the module docstring."""
    nn = torch.nn
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    if isinstance(module, norms):
        return "bn"
    if name.startswith("bias") or name.endswith("_bias"):  # bias, bias_ih_l0 (RNNs), in_proj_bias
        return "bias"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return "fc"
    return "other"


def param_groups_by_kind(model: torch.nn.Module, **options: Any) -> list[dict[str, Any]]:
    """``model``'s trainable parameters as one param group per kind (:func:`param_kind`), each with a ``"kind"``
    key and the given group ``options`` (e.g. ``lr``); shared parameters appear once."""
    groups: dict[str, list[Tensor]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            groups.setdefault(param_kind(module, name), []).append(p)
    return [{"params": ps, "kind": kind, **options} for kind, ps in groups.items()]



#: dataclass memories are saved by name and rebuilt only from modules of this package (nothing is unpickled).
_DATACLASS_PREFIX = "l2o_gym."


def _pack_memory(memory: Any) -> Any:
    if memory is None or isinstance(memory, (Tensor, bool, int, float, str)):
        return memory
    if isinstance(memory, (tuple, list)):
        return {"__seq__": [_pack_memory(h) for h in memory], "tuple": isinstance(memory, tuple)}
    cls = type(memory)
    if cls.__module__.startswith(_DATACLASS_PREFIX):
        name = f"{cls.__module__}:{cls.__qualname__}"
        if dataclasses.is_dataclass(memory):
            return {"__dataclass__": name,
                    "fields": {f.name: _pack_memory(getattr(memory, f.name)) for f in dataclasses.fields(memory)}}
        if hasattr(memory, "memory_state") and hasattr(cls, "from_memory_state"):
            return {"__object__": name, "state": {k: _pack_memory(v) for k, v in memory.memory_state().items()}}
    raise TypeError(
        f"LearnedOptimizer.state_dict() supports policy memories made of tensors, numbers, strings, tuples/lists, "
        f"l2o_gym dataclasses of them and l2o_gym objects with memory_state()/from_memory_state(); this policy's "
        f"memory is a {cls.__module__}.{cls.__qualname__}"
    )


def _resolve_class(name: str, kind: str) -> type:
    """The l2o_gym class ``module:qualname`` of a packed memory: a dataclass (``kind="dataclass"``) or a class with
    ``from_memory_state`` (``kind="object"``); anything else is refused (nothing is unpickled)."""
    module, _, qualname = name.partition(":")
    if not module.startswith(_DATACLASS_PREFIX):
        raise ValueError(f"optimizer state names memory class {name!r}, outside {_DATACLASS_PREFIX}*")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    ok = isinstance(obj, type) and (dataclasses.is_dataclass(obj) if kind == "dataclass"
                                    else hasattr(obj, "from_memory_state"))
    if not ok:
        what = "a dataclass" if kind == "dataclass" else "a class with from_memory_state"
        raise ValueError(f"optimizer state names memory class {name!r}, which is not {what} of l2o_gym")
    return obj


def _unpack_memory(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict) and "__seq__" in obj:
        seq = [_unpack_memory(h, device) for h in obj["__seq__"]]
        return tuple(seq) if obj.get("tuple", True) else seq
    if isinstance(obj, dict) and "__dataclass__" in obj:
        cls = _resolve_class(obj["__dataclass__"], "dataclass")
        return cls(**{k: _unpack_memory(v, device) for k, v in obj["fields"].items()})
    if isinstance(obj, dict) and "__object__" in obj:
        cls = _resolve_class(obj["__object__"], "object")
        return cls.from_memory_state({k: _unpack_memory(v, device) for k, v in obj["state"].items()})
    return obj


def _check_lr(lr: Any, what: str) -> None:
    """``ValueError`` naming ``what`` and the value unless ``lr`` is a finite real number ``>= 0`` (not a bool), or a
    0-d real tensor holding one (what a scheduler sets when its factor is a tensor, e.g. a ``LambdaLR``
    lambda written with torch ops; ``torch.add(..., alpha=lr)`` takes it)."""
    v = lr.item() if isinstance(lr, Tensor) and lr.dim() == 0 and not lr.is_complex() and lr.dtype != torch.bool else lr
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{what} must be a finite non-negative number, got {lr!r}")


#: ``stacklevel`` of a warning issued in :meth:`LearnedOptimizer.step` that names the caller's line (``step`` is
#: wrapped by ``torch.no_grad`` and by ``torch.optim.Optimizer``'s step hooks); helpers of ``step`` add one.
_CALLER = 4

#: parameter dtypes whose MDP state and policy run in float32 (``eps``, feature ranges underflow/overflow).
_LOW_PRECISION = (torch.float16, torch.bfloat16)


class LearnedOptimizer(torch.optim.Optimizer):
    """A :class:`~l2o_gym.policy.Policy` as a ``torch.optim.Optimizer`` (see the module docstring).

    Args:
        params: an iterable of parameters or of param-group dicts, as for any torch optimizer.
        policy: the optimizer's brain; moved to the parameters' device when it has a ``to`` method. A model
            spread over several devices works: θ, the policy and its memory live on the first parameter's device
            and each parameter's share of the step is moved to that parameter's device.
        lr: multiplier of the policy's step (per group; what learning-rate schedulers change): a finite number
            ``>= 0``, checked for every group at construction, in ``add_param_group`` and at each step
            (``ValueError`` naming the group).
        config: the MDP constants of the internal state. The default keeps a history of 1 iterate
            (memory ``O(P)``), no action validation; there is never a divergence termination (``blowup`` is
            ignored: no episode is ever reset here); give a longer ``history``
            for policies that read :func:`l2o_gym.core.features`.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        policy: Policy,
        lr: float = 1.0,
        config: CoreConfig | None = None,
    ) -> None:
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be an l2o_gym Policy, got {type(policy).__name__}")
        if policy.needs_problems:
            raise TypeError(
                f"the {policy.name!r} policy runs line searches that evaluate the objective itself, which "
                "LearnedOptimizer cannot do on a user's model; use torch.optim.LBFGS(params, "
                "line_search_fn='strong_wolfe') (L-BFGS) or a first-order or learned policy"
            )
        _check_lr(lr, "lr")
        super().__init__(params, {"lr": float(lr)})  # add_param_group checks each group's own "lr"
        if policy.dim is not None:
            size = sum(p.numel() for _, p in self._params())
            if size != policy.dim:
                raise ValueError(
                    f"the {policy.name!r} policy was trained on problems of dimension {policy.dim}, but these "
                    f"parameters have {size} entries that require grad; a policy that reads whole gradient "
                    "vectors only fits models with exactly that many optimized entries"
                )
        self.policy = policy
        self.core_config = config or CoreConfig(horizon=10**9, history=1, blowup=1e30, validate=False)
        self._mdp: State | None = None
        self._memory: Any = None
        self._moved = False
        self._warned_objective = False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """``torch.optim.Optimizer.add_param_group``, with the group's ``"lr"`` checked (a finite number >= 0)."""
        if isinstance(param_group, dict):  # checked first: a refused group is not added
            _check_lr(param_group.get("lr", self.defaults["lr"]), f"the lr of param group {len(self.param_groups)}")
        super().add_param_group(param_group)

    # ---- helpers ---------------------------------------------------------------------------------
    def _params(self) -> list[tuple[dict[str, Any], Tensor]]:
        return [(g, p) for g in self.param_groups for p in g["params"] if p.requires_grad]

    def _flat(self, params: list[tuple[dict[str, Any], Tensor]]) -> tuple[Tensor, Tensor, list[bool]]:
        first = params[0][1]
        dtype = first.dtype if first.is_floating_point() and first.dtype not in _LOW_PRECISION else torch.float32
        device = first.device
        thetas, grads, usable = [], [], []
        for _, p in params:
            if p.is_complex():
                raise TypeError(
                    f"LearnedOptimizer does not support complex parameters (shape {tuple(p.shape)}): the policy steps "
                    "a real θ; optimize torch.view_as_real(p) as a real parameter instead"
                )
            thetas.append(p.detach().reshape(-1).to(device=device, dtype=dtype))
            g = p.grad
            if g is None:
                grads.append(torch.zeros(p.numel(), device=device, dtype=dtype))
                usable.append(False)
                continue
            if g.is_sparse:
                raise RuntimeError("LearnedOptimizer does not support sparse gradients")
            g = g.detach().reshape(-1).to(device=device, dtype=dtype)
            if not bool(torch.isfinite(g).all()):
                warnings.warn(
                    f"LearnedOptimizer: non-finite gradient in a parameter of shape {tuple(p.shape)}; "
                    "that parameter is skipped at this step",
                    RuntimeWarning,
                    stacklevel=_CALLER + 1,
                )
                g = torch.zeros_like(g)
                usable.append(False)
            else:
                usable.append(True)
            grads.append(g)
        return torch.cat(thetas)[None], torch.cat(grads)[None], usable

    def _param_specs(self, params: list[tuple[dict[str, Any], Tensor]]) -> tuple[ParamSpec, ...]:
        """One :class:`ParamSpec` per optimized parameter (θ order), its kind from its group's ``"kind"``."""
        specs, offset = [], 0
        for i, (group, p) in enumerate(params):
            kind = group.get("kind")
            if kind is None and not self.policy.needs_kinds:
                kind = "weight" if p.dim() >= 2 else "bias"
            if not isinstance(kind, str) or not kind:
                raise ValueError(
                    f"policy {type(self.policy).__name__} needs each parameter's kind: give param groups with a "
                    "'kind' key, e.g. LearnedOptimizer(param_groups_by_kind(model), policy)"
                )
            specs.append(ParamSpec(f"param{i}", tuple(p.shape), kind, offset))
            offset += p.numel()
        return tuple(specs)

    # ---- the step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One optimizer step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._params()
        if not params:
            return loss
        for i, group in enumerate(self.param_groups):  # a scheduler or the user may have set it since
            _check_lr(group["lr"], f"the lr of param group {i}")
        theta, grad, usable = self._flat(params)
        if not self._moved:
            self.policy.to(theta.device)
            self._moved = True
        prev = self._mdp
        if prev is not None and prev.theta.shape != theta.shape:
            warnings.warn("LearnedOptimizer: the set of parameters changed; the policy memory is reset", stacklevel=_CALLER)
            prev = None
        if self.policy.binds_layout:  # at every step: another optimizer may share the policy object
            self.policy.bind(self._param_specs(params))
        f_val = float(loss.detach()) if isinstance(loss, Tensor) and loss.numel() == 1 else None
        if f_val is None and self.policy.reads_objective and not getattr(self, "_warned_objective", False):
            self._warned_objective = True
            got = ("no closure" if closure is None else
                   f"a closure that returned {type(loss).__name__}{tuple(loss.shape) if isinstance(loss, Tensor) else ''}, "
                   "not a one-element loss tensor")
            warnings.warn(f"LearnedOptimizer: the policy {self.policy.name!r} reads the objective, but step() got {got}; "
                          "it sees the last known value (0 at first). Call opt.step(closure) with a closure that "
                          "re-evaluates the model and returns the loss.", RuntimeWarning, stacklevel=_CALLER)
        if f_val is None or not math.isfinite(f_val):
            f_val = float(prev.loss[0]) if prev is not None else 0.0
        f = torch.full((1,), f_val, device=theta.device, dtype=theta.dtype)
        if prev is None:
            state = core.initial_state(theta, f, grad, self.core_config)
            # No divergence termination inside a user's training loop (nothing would ever reset it): a loss
            # above the core's capped threshold must not freeze the policy's features.
            state = dataclasses.replace(state, threshold=torch.full_like(state.threshold, math.inf))
            memory = self.policy.reset(state)
        else:
            state, _, _, _ = core.transition(prev, theta - prev.theta, f, grad)
            state = _replace_theta(state, theta)
            memory = self._memory
        step, memory = self.policy.act(state, memory)
        step = step.detach()
        if not bool(torch.isfinite(step).all()):
            warnings.warn("LearnedOptimizer: the policy proposed a non-finite step; it is skipped", RuntimeWarning, stacklevel=_CALLER)
            step = torch.zeros_like(step)
        self._apply(params, usable, step)
        self._mdp, self._memory = state, memory
        return loss

    def _apply(self, params: list[tuple[dict[str, Any], Tensor]], usable: list[bool], step: Tensor) -> None:
        """``p += lr · step`` for every usable parameter whose result stays finite in its dtype (one sync)."""
        updates: list[tuple[Tensor, Tensor]] = []
        off = 0
        for (group, p), ok in zip(params, usable):
            n = p.numel()
            if ok and group["lr"] != 0:
                delta = step[0, off : off + n].view_as(p)
                if p.dtype in _LOW_PRECISION:  # add in float32, round once
                    new = torch.add(p.float(), delta.to(p.device, torch.float32), alpha=group["lr"]).to(p.dtype)
                else:
                    new = torch.add(p, delta.to(p.device, p.dtype), alpha=group["lr"])
                updates.append((p, new))
            off += n
        if not updates:
            return
        here = step.device  # a model spread over devices: the checks meet on θ's device (one sync)
        finite = torch.stack([torch.isfinite(new).all().to(here) for _, new in updates]).tolist()
        for (p, new), ok in zip(updates, finite):
            if ok:
                p.copy_(new)
            else:
                warnings.warn(
                    f"LearnedOptimizer: the update of a {p.dtype} parameter of shape {tuple(p.shape)} overflows "
                    "its dtype (lr too large for it?); that parameter is skipped at this step",
                    RuntimeWarning,
                    stacklevel=_CALLER + 1,
                )

    # ---- copy and pickle -------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # torch.optim.Optimizer.__getstate__ keeps only defaults, state and param_groups, which would drop the
        # policy (the copy then crashes at its first step).
        state = super().__getstate__()
        for k in ("policy", "core_config", "_mdp", "_memory", "_moved", "_warned_objective"):
            state[k] = self.__dict__.get(k, False)
        return state

    # ---- state dict ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        # A memory for another set of entries (add_param_group or requires_grad toggled since the last step) is
        # reset at the next step anyway: it is not saved, so the state loads into an optimizer built with the
        # current param groups and continues exactly as this one would.
        if self._mdp is not None and self._mdp.theta.shape[1] == sum(p.numel() for _, p in self._params()):
            sd["l2o"] = {
                "mdp": {k: getattr(self._mdp, k) for k in core.STATE_TENSORS},
                "memory": _pack_memory(self._memory),
                "shapes": [list(p.shape) for _, p in self._params()],
                "policy": _policy_class(self.policy),
            }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("l2o", None)
        if extra is None:
            super().load_state_dict(state_dict)
            self._mdp, self._memory = None, None
            return
        params = self._params()  # the checks come first: a refused state leaves this optimizer as it was
        device = params[0][1].device if params else torch.device("cpu")
        mdp = {k: tuple(x.to(device) for x in v) if isinstance(v, (tuple, list)) else v.to(device)
               for k, v in extra["mdp"].items()}
        expected = sum(p.numel() for _, p in params)
        if mdp["theta"].shape[1] != expected:
            raise ValueError(
                f"optimizer state is for {mdp['theta'].shape[1]} optimized parameter entries, this optimizer has "
                f"{expected}"
            )
        shapes = [list(p.shape) for _, p in params]
        if "shapes" in extra and [list(s) for s in extra["shapes"]] != shapes:  # absent from older states
            raise ValueError(
                f"optimizer state is for parameter shapes {[list(s) for s in extra['shapes']]}, this optimizer's "
                f"are {shapes} (another model, or the parameters in another order)"
            )
        try:  # the earlier layout (one flat "obs") is converted
            mdp_state = core.state_from_tensors(mdp, self.core_config)
        except core.HistoryMismatch as exc:
            raise ValueError(f"optimizer state was saved with another CoreConfig (history/include_steps): {exc}") from None
        except ValueError as exc:
            raise ValueError(f"optimizer state is incomplete: {exc}") from None
        saved_policy, policy = extra.get("policy"), _policy_class(self.policy)  # absent from older states
        # compared by class name: the same class imported under another module path (e.g. ``agents.lstm.policy``
        # from the repository root, or ``__main__``) is the same policy
        if saved_policy is not None and saved_policy.rpartition(":")[2] != policy.rpartition(":")[2]:
            raise ValueError(
                f"optimizer state was saved with a {saved_policy} policy, this optimizer runs a {policy} policy: "
                "its memory cannot continue in another kind of policy (load the state into an optimizer with the "
                "same kind of policy, or start this one afresh)"
            )
        memory = _unpack_memory(extra["memory"] if "memory" in extra else extra.get("hidden"), device)  # "hidden": before 0.2
        super().load_state_dict(state_dict)
        self._mdp = mdp_state
        if self.policy.binds_layout:
            self.policy.bind(self._param_specs(self._params()))  # the loaded groups (their "kind")
        self._memory = memory


def _policy_class(policy: Policy) -> str:
    """``module:qualname`` of ``policy``'s class: which policy an optimizer state's memory belongs to."""
    cls = type(policy)
    return f"{cls.__module__}:{cls.__qualname__}"


def _replace_theta(state: State, theta: Tensor) -> State:
    from dataclasses import replace

    return replace(state, theta=theta)
