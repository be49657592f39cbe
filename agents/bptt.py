"""Truncated backpropagation through time for any differentiable policy (an ``nn.Module`` behind a
:class:`~l2o_gym.policy.Policy`): the one meta-gradient trainer of l2o-gym.

One :meth:`BPTT.step` is::

    traj = rollout(policy, state, n_steps, memory)     # the one rollout loop, autograd graph kept
    loss = loss_fn(traj.costs, t0)                      # e.g. Σ_t mean_n f (Andrychowicz) or mean f (GPS bound)
    loss.backward(); all-reduce the gradients (torch.distributed, if initialised); clip; optimizer step
    return traj.state.detach(), detach(traj.memory)     # carried across truncations

A non-finite loss or meta-gradient skips the update with a warning (every rank still joins the collective,
so data-parallel training never deadlocks). The LSTM trainer (:mod:`l2o_gym.agents.lstm.trainer`) calls it
``horizon / unroll`` times per episode; the GPS policy-class bound (:mod:`l2o_gym.agents.gps.bound`) once per
episode over the whole horizon.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from l2o_gym.core import State
from l2o_gym.distributed import world
from l2o_gym.policy import Policy, rollout

log = logging.getLogger(__name__)


def detach_memory(memory: Any) -> Any:
    """Cut the policy memory (tensors or nested tuples/lists of them) from the graph."""
    if isinstance(memory, Tensor):
        return memory.detach()
    if isinstance(memory, (tuple, list)):
        return type(memory)(detach_memory(h) for h in memory)
    return memory


def mean_cost(costs: Tensor, t0: int) -> Tensor:
    """``(1/(T·N)) Σ_t Σ_n costs[t, n]`` (the GPS bound's loss; ``t0`` unused)."""
    return costs.mean()


@dataclass
class BPTTStep:
    """Result of :meth:`BPTT.step`: the detached state and memory to continue from, the loss, whether the
    parameters were updated (``False``: non-finite loss or gradient, update skipped)."""

    state: State
    memory: Any
    loss: float
    updated: bool


class BPTT:
    """Meta-gradient steps of ``policy`` by backpropagation through its unroll (module docstring).

    Args:
        policy: the policy (its ``act`` must be differentiable in ``params``).
        params: the meta-parameters (e.g. ``module.parameters()``).
        optimizer: a torch optimizer over ``params``.
        loss_fn: ``(costs[T_u, N], t0) -> scalar`` meta-loss of one unroll starting at step ``t0``.
        clip: global gradient-norm clip (``0``: none).
    """

    def __init__(
        self,
        policy: Policy,
        params: Iterable[nn.Parameter],
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Tensor, int], Tensor] = mean_cost,
        clip: float = 0.0,
    ) -> None:
        self.policy = policy
        self.params = list(params)
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.clip = float(clip)

    def step(self, state: State, memory: Any, n_steps: int, t0: int = 0, *, label: str = "") -> BPTTStep:
        """One truncation of ``n_steps`` from ``(state, memory)``: unroll, backpropagate, all-reduce, clip, step."""
        traj = rollout(self.policy, state, n_steps, memory)
        loss = self.loss_fn(traj.costs, t0)
        self.optimizer.zero_grad(set_to_none=False)
        params = [p for p in self.params if p.requires_grad]
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
        with_grad = [p for p in params if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in with_grad]) if finite and with_grad else None
        rank, size = world()
        if size > 1:  # every rank must join the collective, even one whose loss is NaN, with a buffer laid out over
            # every parameter (zeros where this rank's loss did not reach one: another rank's may have), followed by
            # one flag per parameter: 1 where this rank has a gradient. A parameter with a gradient on no rank is
            # left out of the step, as with one process (Adam neither creates its state nor advances its counter)
            dtype = functools.reduce(torch.promote_types, (p.dtype for p in params))
            n = sum(p.numel() for p in params)
            has = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device, dtype=dtype)
            buf = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params] + [has]) \
                if flat is not None else torch.full((n + len(params),), float("nan"), device=params[0].device, dtype=dtype)
            dist.all_reduce(buf)
            buf /= size
            keep = [f != 0 for f in buf[n:].tolist()]  # NaN (a rank's non-finite loss) keeps all: the step is skipped
            pieces = buf[:n].split([p.numel() for p in params])
            with_grad = [p for p, k in zip(params, keep) if k]
            flat = torch.cat([g for g, k in zip(pieces, keep) if k]) if with_grad else None  # none: as one process
        ok = flat is not None and bool(torch.isfinite(flat).all())
        if ok:
            off = 0
            for p in with_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.copy_(flat[off : off + p.numel()].view_as(p))  # type: ignore[index]
                off += p.numel()
            if self.clip > 0:
                torch.nn.utils.clip_grad_norm_(with_grad, self.clip)
            self.optimizer.step()
        else:
            log.warning("%s t=%d: non-finite meta-loss or meta-gradient, or no parameter reached; update skipped",
                        label or "BPTT", t0)
        return BPTTStep(traj.state.detach(), detach_memory(traj.memory), float(loss.detach()), ok)
