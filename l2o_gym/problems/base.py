"""Problem families and batches of optimizees.

A :class:`ProblemFamily` is a *distribution* over objective functions (the optimizees); a
:class:`ProblemBatch` is ``N`` instances drawn from it, all of dimension ``d``, evaluated together:

    loss(theta[N, d], step[N]) -> f[N]

Instances are data (matrices, datasets, initial points, minibatch seeds), sampled from a
``torch.Generator`` on the CPU in float64 and then moved to the requested device and dtype, so a seed
gives the same instances on every device. ``split="train" | "val" | "test"`` draw from disjoint seed
streams (:func:`stream_seed`); generalization claims are only ever made on ``test``.
"""

from __future__ import annotations

import os
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from l2o_gym.checks import SPLITS, check_split, resolve_device, resolve_dtype








def physical_memory() -> int:
    """Bytes of physical memory of this machine (0 where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def check_memory(what: str, n_bytes: float, fix: str) -> None:
    """``ValueError`` if ``what`` would need more than half of this machine's memory (``n_bytes``), naming the
    setting to change (``fix``), instead of a crash deep in torch's allocator or the kernel's out-of-memory
    killer."""
    phys = physical_memory()
    if phys and n_bytes > phys / 2:
        raise ValueError(f"{what} would need {n_bytes / 2**30:.1f} GiB, more than half of this machine's "
                         f"{phys / 2**30:.1f} GiB: {fix}")


def stream_seed(family: str, split: str, seed: int) -> int:
    """The 63-bit torch seed of the instance stream for (family, split, seed).

    Built with :class:`numpy.random.SeedSequence` from the entropy ``(seed, split index, crc32(family))``, so
    the streams of different splits (and families) are independent and never coincide for any ``seed``.
    """
    check_split(split)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    ss = np.random.SeedSequence([int(seed), SPLITS.index(split), zlib.crc32(family.encode())])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer finalizer (xorshift-multiply), computed in int64 without overflow."""
    mask = 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & mask
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & mask
    return x ^ (x >> 16)


def counter_randint(seeds: Tensor, step: Tensor, count: int, high: int) -> Tensor:
    """Counter-based random integers in ``[0, high)``: a pure function of (seed, step, j).

    Stochastic families (minibatches) use it so that ``step(state, action)`` stays a pure function and
    a seed fixes a whole trajectory, on any device.

    Args:
        seeds: ``[N]`` int64 per-instance seeds in ``[0, 2**31)``.
        step: ``[N]`` int64 iteration counters.
        count: number of draws per instance.
        high: exclusive upper bound.

    Returns:
        ``[N, count]`` int64.
    """
    mask = 0xFFFFFFFF
    h = _mix32(seeds.to(torch.int64) & mask)
    # The step is hashed on its own before mixing in, so no two seeds give shifted copies of one stream.
    h = _mix32(h ^ _mix32((step.to(torch.int64) & mask) ^ 0x5BD1E99))
    j = torch.arange(count, device=seeds.device, dtype=torch.int64)
    h = _mix32(h[:, None] ^ _mix32(j + 0x9E3779B)[None, :])
    return h % high


def gather_rows(pos: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Per-instance examples: ``t[i, pos[i, j]]`` for each ``t[N, M, ...]`` and positions ``pos[N, B]`` →
    ``[N, B, ...]`` each — ``t[arange(N)[:, None], pos]`` as one ``index_select`` on the flattened ``N·M`` rows
    (a plain row copy, about 3× faster than advanced indexing on the CPU; the same values)."""
    n, m = tensors[0].shape[:2]
    flat = (torch.arange(n, device=pos.device)[:, None] * m + pos).reshape(-1)
    return tuple(t.reshape(n * m, *t.shape[2:]).index_select(0, flat).view(*pos.shape, *t.shape[2:]) for t in tensors)


@dataclass(eq=False)
class ProblemBatch:
    """``N`` optimizees of one family, all of dimension ``d``, on one device and dtype.

    Attributes:
        family: the family the instances were drawn from (it defines the objective).
        split: the split they were drawn from.
        data: per-instance tensors, each with leading dimension ``N`` (e.g. ``W[N, d, d]``).
        x0: ``[N, d]`` initial points θ₀.
        seeds: ``[N]`` int64 per-instance seeds for stochastic objectives (minibatch draws).
        n_evals: number of batched objective/gradient evaluations made so far (each evaluates all ``N``).
    """

    family: ProblemFamily
    split: str
    data: dict[str, Tensor]
    x0: Tensor
    seeds: Tensor
    n_evals: int = field(default=0, compare=False)

    @property
    def n(self) -> int:
        return self.x0.shape[0]

    @property
    def dim(self) -> int:
        return self.x0.shape[1]

    @property
    def device(self) -> torch.device:
        return self.x0.device

    @property
    def dtype(self) -> torch.dtype:
        return self.x0.dtype

    def _step(self, theta: Tensor, step: Tensor | int | None) -> Tensor:
        if step is None:
            step = 0
        if isinstance(step, int):
            return torch.full((theta.shape[0],), step, dtype=torch.int64, device=theta.device)
        return step

    def loss(self, theta: Tensor, step: Tensor | int | None = None) -> Tensor:
        """Objective values ``f[N]`` at ``theta[N, d]`` (differentiable); ``step[N]`` picks minibatches."""
        self.n_evals += 1
        return self.family.loss(self, theta, self._step(theta, step))

    @property
    def has_true_loss(self) -> bool:
        """Whether the family reports a true objective distinct from the (minibatch) loss."""
        return self.family.has_true_loss

    def true_loss(self, theta: Tensor) -> Tensor:
        """The true objective ``[N]`` at ``theta[N, d]`` (full data; not counted in ``n_evals``: the optimizer
        never sees it); the loss at step 0 for families without one (:meth:`ProblemFamily.true_loss`)."""
        out = self.family.true_loss(self, theta)
        return self.loss(theta, 0) if out is None else out

    def loss_and_grad(
        self, theta: Tensor, step: Tensor | int | None = None, create_graph: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Objective ``f[N]`` and gradient ``∇f[N, d]`` at ``theta[N, d]``.

        ``f`` keeps the autograd graph of ``theta`` when it has one. The gradient is detached unless
        ``create_graph`` (second-order meta-gradients), in which case it is differentiable too.
        Families with a closed-form gradient use it; the others use autograd.
        """
        self.n_evals += 1
        step_t = self._step(theta, step)
        analytic = self.family.loss_and_grad(self, theta, step_t)
        if analytic is not None:
            f, g = analytic
            return f, (g if create_graph else g.detach())
        if theta.requires_grad:
            f = self.family.loss(self, theta, step_t)
            (g,) = torch.autograd.grad(f.sum(), theta, create_graph=create_graph, retain_graph=True)
            return f, g
        with torch.enable_grad():
            leaf = theta.detach().requires_grad_(True)
            f = self.family.loss(self, leaf, step_t)
            (g,) = torch.autograd.grad(f.sum(), leaf, create_graph=create_graph)
        return (f if create_graph else f.detach()), (g if create_graph else g.detach())

    def index(self, idx: Tensor | slice) -> ProblemBatch:
        """The sub-batch of instances ``idx`` (a bool mask, index tensor or slice)."""
        return replace(
            self,
            data={k: v[idx] for k, v in self.data.items()},
            x0=self.x0[idx],
            seeds=self.seeds[idx],
            n_evals=0,
        )

    def scatter(self, idx: Tensor, other: ProblemBatch) -> ProblemBatch:
        """A new batch whose instances ``idx`` (``[k]`` indices) are replaced by ``other`` (``k`` instances)."""

        def put(a: Tensor, b: Tensor) -> Tensor:
            out = a.clone()
            out[idx] = b
            return out

        return replace(
            self,
            data={k: put(v, other.data[k]) for k, v in self.data.items()},
            x0=put(self.x0, other.x0),
            seeds=put(self.seeds, other.seeds),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ProblemBatch:
        """Move to ``device`` and cast floating tensors to ``dtype``."""

        def mv(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return replace(
            self,
            data={k: mv(v) for k, v in self.data.items()},
            x0=mv(self.x0),
            seeds=self.seeds.to(device),
        )


class ProblemSampler:
    """A seeded stream of instances of one family and split (used by resets and autoresets).

    Successive :meth:`sample` calls continue the same stream, so a vector env that replaces finished
    instances draws fresh ones deterministically.
    """

    def __init__(
        self,
        family: ProblemFamily,
        split: str = "train",
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> None:
        self.family = family
        self.split = check_split(split)
        self.seed = seed
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.generator = torch.Generator().manual_seed(stream_seed(family.name, split, seed))

    def sample(self, n: int) -> ProblemBatch:
        """The next ``n`` instances of the stream, on the sampler's device and dtype."""
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"number of problems must be a positive integer, got {n!r}")
        n = int(n)
        data, x0 = self.family.sample_instances(n, self.generator, self.split)
        seeds = torch.randint(0, 2**31 - 1, (n,), generator=self.generator, dtype=torch.int64)
        for k, v in data.items():
            if v.shape[0] != n:
                raise RuntimeError(f"{self.family.name}: data[{k!r}] has leading size {v.shape[0]}, expected {n}")
        if x0.shape != (n, self.family.dim):
            raise RuntimeError(f"{self.family.name}: x0 has shape {tuple(x0.shape)}, expected {(n, self.family.dim)}")
        batch = ProblemBatch(self.family, self.split, data, x0, seeds)
        return batch.to(self.device, self.dtype)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor inside the flat θ of a family: coordinates ``[offset, offset + numel)``.

    Attributes:
        name: e.g. ``"layer0.weight"``.
        shape: the tensor's shape, e.g. ``(48, 48)``; ``θ[:, offset:offset+numel].reshape(N, *shape)``.
        kind: the parameter kind that learned optimizers may treat alike, e.g. ``"weight"``, ``"bias"``,
            ``"conv"``, ``"fc"``, ``"bn"``, ``"pixels"``; ``"all"`` for families without structure.
        offset: first coordinate in θ.
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    offset: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.numel)


def param_specs_from(shapes: list[tuple[str, tuple[int, ...], str]]) -> tuple[ParamSpec, ...]:
    """Consecutive :class:`ParamSpec` s from ``(name, shape, kind)`` in θ order."""
    out, offset = [], 0
    for name, shape, kind in shapes:
        spec = ParamSpec(name, tuple(int(x) for x in shape), kind, offset)
        out.append(spec)
        offset += spec.numel
    return tuple(out)


class ProblemFamily(ABC):
    """A distribution over objective functions ``f: R^d -> R`` (see the module docstring).

    Subclasses are dataclasses whose fields are the family's sizes and constants; they implement
    :meth:`sample_instances` and :meth:`loss`, and may implement :meth:`loss_and_grad` in closed form.
    """

    #: registry name, e.g. ``"quadratic"``.
    name: str = ""
    #: whether the objective depends on ``step`` (minibatches).
    stochastic: bool = False
    #: whether :meth:`true_loss` reports a true (full-data) objective distinct from :meth:`loss`.
    has_true_loss: bool = False

    @property
    @abstractmethod
    def dim(self) -> int:
        """Dimension ``d`` of θ."""

    @abstractmethod
    def sample_instances(self, n: int, generator: torch.Generator, split: str) -> tuple[dict[str, Tensor], Tensor]:
        """Draw ``n`` instances on the CPU in float64: ``(data, x0[n, d])``."""

    @abstractmethod
    def loss(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> Tensor:
        """Objective ``f[N]`` at ``theta[N, d]``; ``step[N]`` (int64) selects minibatches if stochastic."""

    def loss_and_grad(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> tuple[Tensor, Tensor] | None:
        """Closed-form ``(f[N], ∇f[N, d])``, differentiable in ``theta``; ``None`` means use autograd."""
        return None

    def true_loss(self, batch: ProblemBatch, theta: Tensor) -> Tensor | None:
        """The true objective ``[N]`` at ``theta[N, d]`` (e.g. the loss over an instance's whole dataset, of which
        :meth:`loss` sees minibatches), differentiable; ``None`` (the default) means :meth:`loss` is exact.
        Families that override it set ``has_true_loss = True``."""
        return None

    def param_specs(self) -> tuple[ParamSpec, ...]:
        """How θ's ``d`` coordinates split into parameter tensors (coordinate groups, Li & Malik 2017: one
        weight matrix or bias vector each), in θ order and covering ``[0, d)``. Default: one group
        ``"theta"`` of kind ``"all"``. Families of neural nets override it."""
        return param_specs_from([("theta", (self.dim,), "all")])

    def sampler(
        self,
        split: str = "train",
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> ProblemSampler:
        """A seeded stream of instances (see :class:`ProblemSampler`)."""
        return ProblemSampler(self, split, seed, device, dtype)

    def sample(
        self,
        n: int,
        split: str = "train",
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> ProblemBatch:
        """The first ``n`` instances of the (split, seed) stream: ``sampler(split, seed).sample(n)``.

        Instance ``i`` depends on ``n`` (families draw each kind of data for all ``n`` instances at once), so
        ``sample(3)`` is *not* the first 3 instances of ``sample(5)``: compare results only at equal ``n``."""
        return self.sampler(split, seed, device, dtype).sample(n)

    def config(self) -> dict[str, Any]:
        """The family's constructor arguments (JSON-serialisable), for checkpoints and reports."""
        from dataclasses import asdict, is_dataclass

        return asdict(self) if is_dataclass(self) else {}



