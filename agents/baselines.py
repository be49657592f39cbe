"""Hand-designed optimizers as batched :class:`~l2o_gym.policy.Policy` objects.

First-order methods (SGD, momentum, Nesterov, Adam, RMSprop, AdaGrad) are elementwise tensor updates over the
``N`` problems, with exactly ``torch.optim``'s update rules (tested against it). Their memory is the
``memory`` of the Policy interface. Each uses one gradient evaluation per iteration (the core's).

Li & Malik's second-order-ish baselines, nonlinear conjugate gradient (Polak–Ribière+, Wolfe line search)
and L-BFGS (strong-Wolfe line search), are ``scipy.optimize.minimize``'s ``"CG"`` and ``"L-BFGS-B"`` (no
bounds) run per problem in float64: rather than re-deriving well-kept code, the policy runs scipy for the
whole horizon at ``reset`` — iterate ``k`` of scipy is the policy's iterate ``k``, with that iteration's
minibatch for stochastic families — and ``act`` steps the core to it. Their gradient evaluations (all line
search trials) are counted per iteration and reported by :meth:`Policy.evals`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize
import torch
from torch import Tensor

from l2o_gym.core import State
from l2o_gym.policy import Policy

log = logging.getLogger(__name__)


def _is_real(value: Any) -> bool:
    """A real number (Python or NumPy, not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_lr(lr: float | Tensor) -> float | Tensor:
    if isinstance(lr, Tensor):
        return lr
    if not (_is_real(lr) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite positive number, got {lr!r}")
    return float(lr)


def _check_unit(name: str, value: float, allow_zero: bool = True) -> float:
    if not (_is_real(value) and (value >= 0 if allow_zero else value > 0) and value < 1):
        raise ValueError(f"{name} must be in {'[0, 1)' if allow_zero else '(0, 1)'}, got {value!r}")
    return float(value)


def _check_positive(name: str, value: float) -> float:
    if not (_is_real(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


class GradientDescent(Policy):
    """Plain gradient descent (``torch.optim.SGD``): ``Δθ = −lr · ∇f(θ_t)``.

    Args:
        lr: step size (a float, or a tensor — e.g. ``[N, 1]`` per problem, or one that requires grad to
            differentiate an unroll with respect to it).
    """

    reads_objective = False

    name = "sgd"
    hyperparameters = ("lr",)

    def __init__(self, lr: float | Tensor = 0.01) -> None:
        self.lr = _check_lr(lr)

    def act(self, state: State, memory: Any) -> tuple[Tensor, Any]:
        return -self.lr * state.grad, memory


class Momentum(Policy):
    """Heavy-ball momentum (``torch.optim.SGD(momentum=μ)``): ``b ← μ b + ∇f`` (``b₁ = ∇f``), ``Δθ = −lr · b``.

    With ``nesterov=True`` (``torch.optim.SGD(nesterov=True)``): ``Δθ = −lr · (∇f + μ b)``.

    Args:
        lr: step size.
        momentum: μ in [0, 1).
        nesterov: Nesterov's accelerated gradient.
    """

    reads_objective = False

    name = "momentum"
    hyperparameters = ("lr", "momentum")

    def __init__(self, lr: float = 0.01, momentum: float = 0.9, nesterov: bool = False) -> None:
        self.lr = _check_lr(lr)
        self.momentum = _check_unit("momentum", momentum)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise ValueError(f"nesterov must be True or False, got {nesterov!r}")
        self.nesterov = bool(nesterov)

    def reset(self, state: State) -> Tensor | None:
        return None

    def act(self, state: State, memory: Tensor | None) -> tuple[Tensor, Tensor]:
        g = state.grad
        buf = g.clone() if memory is None else self.momentum * memory + g
        direction = g + self.momentum * buf if self.nesterov else buf
        return -self.lr * direction, buf


class Nesterov(Momentum):
    """Nesterov's accelerated gradient, as ``torch.optim.SGD(momentum=μ, nesterov=True)``."""

    name = "nag"

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__(lr, momentum, nesterov=True)


@dataclass
class _AdamMemory:
    m: Tensor  # [N, d] first moment
    v: Tensor  # [N, d] second moment
    t: int  # steps taken


class Adam(Policy):
    """Adam (``torch.optim.Adam``): bias-corrected first and second moments.

    ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``, ``Δθ = −(lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + eps)``.
    """

    reads_objective = False

    name = "adam"
    hyperparameters = ("lr",)

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr = _check_lr(lr)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (_check_unit("beta1", beta1), _check_unit("beta2", beta2))
        self.eps = _check_positive("eps", eps)

    def reset(self, state: State) -> _AdamMemory:
        z = torch.zeros_like(state.theta)
        return _AdamMemory(z, z.clone(), 0)

    def act(self, state: State, memory: _AdamMemory) -> tuple[Tensor, _AdamMemory]:
        b1, b2 = self.betas
        g = state.grad
        t = memory.t + 1
        m = b1 * memory.m + (1 - b1) * g
        v = b2 * memory.v + (1 - b2) * g * g
        denom = v.sqrt() / math.sqrt(1 - b2**t) + self.eps
        return -(self.lr / (1 - b1**t)) * m / denom, _AdamMemory(m, v, t)


class RMSprop(Policy):
    """RMSprop (``torch.optim.RMSprop``, not centered): ``s ← αs + (1−α)g²``, ``Δθ = −lr · g / (√s + eps)``."""

    reads_objective = False

    name = "rmsprop"
    hyperparameters = ("lr",)

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8) -> None:
        self.lr = _check_lr(lr)
        self.alpha = _check_unit("alpha", alpha)
        self.eps = _check_positive("eps", eps)

    def reset(self, state: State) -> Tensor:
        return torch.zeros_like(state.theta)

    def act(self, state: State, memory: Tensor) -> tuple[Tensor, Tensor]:
        g = state.grad
        s = self.alpha * memory + (1 - self.alpha) * g * g
        return -self.lr * g / (s.sqrt() + self.eps), s


class Adagrad(Policy):
    """AdaGrad (``torch.optim.Adagrad``, no learning-rate decay or weight decay):
    ``s ← s + g²`` (``s₀ = initial_accumulator_value``), ``Δθ = −lr · g / (√s + eps)``.
    """

    reads_objective = False

    name = "adagrad"
    hyperparameters = ("lr",)

    def __init__(self, lr: float = 1e-2, eps: float = 1e-10, initial_accumulator_value: float = 0.0) -> None:
        self.lr = _check_lr(lr)
        self.eps = _check_positive("eps", eps)
        iav = initial_accumulator_value
        if not (_is_real(iav) and math.isfinite(iav) and iav >= 0):
            raise ValueError(f"initial_accumulator_value must be a finite number >= 0, got {iav!r}")
        self.initial_accumulator_value = float(iav)

    def reset(self, state: State) -> Tensor:
        return torch.full_like(state.theta, self.initial_accumulator_value)

    def act(self, state: State, memory: Tensor) -> tuple[Tensor, Tensor]:
        g = state.grad
        s = memory + g * g
        return -self.lr * g / (s.sqrt() + self.eps), s


@dataclass
class _PathMemory:
    path: Tensor  # [T+1, N, d] iterates θ_0..θ_T computed by scipy (held at the last one if it stopped)
    evals: Tensor  # [T+1, N] cumulative objective+gradient evaluations up to each iterate
    k: int  # next iterate to step to


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """One thread for torch and for the BLAS scipy calls while solving many tiny problems one by one.

    The per-problem solves alternate tiny torch evaluations with scipy's Fortran (BLAS) line searches; with
    several threads each, the two thread pools spin against each other (measured on 2 cores: 2 ms per
    evaluation instead of 0.05 ms, 40× slower)."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(n)


class _ScipyPath(Policy):
    """Runs ``scipy.optimize.minimize(method=...)`` per problem at reset and replays its iterates."""

    method = ""
    hyperparameters: tuple[str, ...] = ()
    needs_problems = True  # scipy evaluates state.problems along each line search

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    def _solve_one(self, state: State, i: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        problem = state.problems.index(slice(i, i + 1)).to("cpu", torch.float64)
        d = problem.dim
        k = [int(state.t[i])]  # minibatch index of the current iteration (stochastic families)
        count = [-1]  # scipy's first evaluation, at the start point, is the one the core makes too: not counted

        def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
            count[0] += 1
            theta = torch.from_numpy(x).reshape(1, d)
            f, g = problem.loss_and_grad(theta, k[0])
            fv = float(f[0])
            if not math.isfinite(fv):  # let the line search backtrack instead of crashing
                return float("inf"), np.zeros(d)
            return fv, g[0].numpy().astype(np.float64)

        xs = [problem.x0[0].numpy().copy() if int(state.t[i]) == 0 else state.theta[i].detach().cpu().double().numpy()]
        evals = [0]

        def callback(intermediate_result: scipy.optimize.OptimizeResult) -> None:
            xs.append(np.array(intermediate_result.x, dtype=np.float64))
            evals.append(count[0])
            k[0] += 1

        opts = {"maxiter": horizon, **self._default_options(), **self.options}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            scipy.optimize.minimize(fun, xs[0], jac=True, method=self.method, callback=callback, options=opts)
        xs, evals = xs[: horizon + 1], evals[: horizon + 1]
        while len(xs) < horizon + 1:  # stopped early (converged or line search failed): stay put
            xs.append(xs[-1])
            evals.append(evals[-1])
        return np.stack(xs), np.asarray(evals)

    def _default_options(self) -> dict[str, Any]:
        return {}

    def reset(self, state: State) -> _PathMemory:
        horizon = int(state.config.horizon)
        # Each problem's path goes straight into one [T+1, N, d] tensor of θ's dtype: never all N float64 paths at
        # once (100 wide nets at 2T held 14 GB twice over, in the list and in its np.stack). Same values.
        path = torch.empty(horizon + 1, state.n, state.dim, dtype=state.theta.dtype)
        evals = []
        with _single_threaded():
            for i in range(state.n):
                xs, ev_i = self._solve_one(state, i, horizon)
                path[:, i] = torch.from_numpy(xs).to(state.theta.dtype)
                evals.append(ev_i)
                del xs
        ev = torch.from_numpy(np.stack(evals, axis=1)).to(state.theta.device)
        return _PathMemory(path.to(state.theta.device), ev, 1)

    def act(self, state: State, memory: _PathMemory) -> tuple[Tensor, _PathMemory]:
        k = min(memory.k, memory.path.shape[0] - 1)
        step = memory.path[k] - state.theta
        return step, _PathMemory(memory.path, memory.evals, memory.k + 1)

    def evals(self, memory: _PathMemory, steps: int) -> Tensor:
        """Objective+gradient evaluations used for the first ``steps`` iterations, ``[N]``."""
        return memory.evals[min(steps, memory.evals.shape[0] - 1)].to(torch.float64)


class ConjugateGradient(_ScipyPath):
    """Nonlinear conjugate gradient, Polak–Ribière+ with a Wolfe line search (``scipy.optimize``, ``"CG"``)."""

    name = "cg"
    method = "CG"

    def _default_options(self) -> dict[str, Any]:
        return {"gtol": 0.0}


class LBFGS(_ScipyPath):
    """L-BFGS with a strong-Wolfe (Moré–Thuente) line search (``scipy.optimize``, ``"L-BFGS-B"`` unbounded).

    Args:
        history: number of stored curvature pairs (scipy's ``maxcor``).
    """

    name = "lbfgs"

    method = "L-BFGS-B"

    def __init__(self, history: int = 10, options: dict[str, Any] | None = None) -> None:
        if not (isinstance(history, numbers.Integral) and not isinstance(history, (bool, np.bool_)) and history >= 1):
            raise ValueError(f"history must be a positive integer, got {history!r}")
        super().__init__({"maxcor": int(history), **(options or {})})

    def _default_options(self) -> dict[str, Any]:
        return {"gtol": 0.0, "ftol": 0.0, "maxfun": 10**9}


#: name -> class of every baseline, in report order.
BASELINES: dict[str, type[Policy]] = {
    "sgd": GradientDescent,
    "momentum": Momentum,
    "nag": Nesterov,
    "adam": Adam,
    "rmsprop": RMSprop,
    "adagrad": Adagrad,
    "cg": ConjugateGradient,
    "lbfgs": LBFGS,
}

#: AdaGrad is a first-order baseline too, but tuned only for the NN benchmark (l2o/NNClassifier-v0), so the
#: studies of the other families (which list this tuple) do not include it.
FIRST_ORDER: tuple[str, ...] = ("sgd", "momentum", "nag", "adam", "rmsprop")


def check_baseline_names(names: Any) -> tuple[str, ...]:
    """``names`` as a tuple of baseline names (empty is allowed: a training run without sample-efficiency targets);
    ``ValueError`` listing the unknown ones and the valid names."""
    names = tuple(names)
    bad = [b for b in names if b not in BASELINES]
    if bad:
        raise ValueError(f"unknown baselines {bad}: expected names of {', '.join(BASELINES)}")
    return names


def make_baseline(name: str, **hparams: Any) -> Policy:
    """Build a baseline by name with the given hyperparameters (``lr``, ``momentum``, …)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")
    return BASELINES[name](**hparams)
