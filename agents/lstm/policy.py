"""The coordinatewise LSTM optimizer of Andrychowicz et al. (2016) as a :class:`~l2o_gym.policy.Policy`.

One small 2-layer LSTM (20 hidden units by default) is applied to every coordinate of every problem with
shared weights and separate hidden states. Its input is the coordinate's current gradient, preprocessed;
its output, times ``output_scale``, is the coordinate's step Δθ. It never reads θ, so it works for any
problem dimension ``d`` and is invariant to the order of the coordinates.

Input preprocessing (paper, appendix A), with ``p > 0``::

    "log":  g ↦ (log|g| / p, sign(g))   if |g| ≥ e^{−p}
            g ↦ (−1, e^{p} g)           otherwise
    "none": g ↦ g

Global averaging cells (paper, §3.1 "global averaging cells"): the first ``global_cells`` hidden units
of each layer are averaged across the coordinates of a problem after every step, which lets coordinates
share information (still order-invariant).

The LSTM step is fused: one ``addmm`` per layer over ``[x, h]`` and one ``sigmoid`` over the three
sigmoid gates, all ``N·d`` coordinates in one batch (no per-coordinate Python loop).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from l2o_gym.agents.common import pretrained_dir
from l2o_gym.checkpoint import (
    CheckpointError, check_compatible, check_shapes, config_field, keeps_rng_state, load_policy_file,
    save_policy,
)
from l2o_gym.core import State
from l2o_gym.policy import ROW_CHUNK, Chunked, Policy, join_rows, preprocess, rowwise_carry

#: ``kind`` of LSTM checkpoints.
KIND = "lstm"
PREPROCESSING: tuple[str, ...] = ("log", "none")

#: Largest preprocessing parameter ``p``: ``e^p`` (the small-gradient branch's factor) must be finite in float32.
MAX_P: float = math.log(torch.finfo(torch.float32).max)

#: LSTM memory: ``(h_1, c_1, …, h_L, c_L)``, each ``[N·d, hidden]``.
Hidden = tuple[Tensor, ...]


@dataclass(frozen=True)
class LSTMConfig:
    """Architecture of the coordinatewise LSTM.

    Args:
        hidden: hidden units per layer (paper: 20).
        layers: number of stacked LSTM layers (paper: 2).
        preprocessing: ``"log"`` (log/sign scheme with parameter ``p``) or ``"none"`` (raw gradient).
        p: the preprocessing parameter (PyTorch reproductions: 10); at most :data:`MAX_P` ≈ 88.7 with ``"log"``.
        output_scale: multiplier of the network output (DM: 0.01 on MNIST, reproductions: 0.1).
        global_cells: hidden units per layer averaged across coordinates each step (0 = none).
        input_scale: multiplier applied to the raw gradient before preprocessing.
    """

    hidden: int = 20
    layers: int = 2
    preprocessing: str = "log"
    p: float = 10.0
    output_scale: float = 0.1
    global_cells: int = 0
    input_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.hidden, int) and self.hidden > 0):
            raise ValueError(f"hidden must be a positive integer, got {self.hidden!r}")
        if not (isinstance(self.layers, int) and self.layers > 0):
            raise ValueError(f"layers must be a positive integer, got {self.layers!r}")
        if self.preprocessing not in PREPROCESSING:
            raise ValueError(f"unknown preprocessing {self.preprocessing!r}: expected one of {', '.join(PREPROCESSING)}")
        for name in ("p", "output_scale", "input_scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite positive number, got {v!r}")
        if self.preprocessing == "log" and self.p > MAX_P:
            # the small-gradient branch multiplies by e^p: above ~88.7 that is inf in float32 and 0·inf = NaN
            raise ValueError(f"p must be at most {MAX_P:.4g} (e^p must be finite in float32), got {self.p!r}")
        if not (isinstance(self.global_cells, int) and 0 <= self.global_cells <= self.hidden):
            raise ValueError(f"global_cells must be an integer in [0, hidden={self.hidden}], got {self.global_cells!r}")

    @property
    def input_dim(self) -> int:
        return 2 if self.preprocessing == "log" else 1


class CoordinateLSTM(nn.Module):
    """The shared network: ``L`` fused LSTM layers and a linear read-out, batched over coordinates.

    Parameters: ``weight_l [in_l + hidden, 4·hidden]`` and ``bias_l [4·hidden]`` per layer (gate order
    input, forget, output, cell), ``out.weight [1, hidden]``, ``out.bias [1]``.
    """

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        H = config.hidden
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer in range(config.layers):
            fan_in = (config.input_dim if layer == 0 else H) + H
            w = torch.empty(fan_in, 4 * H).uniform_(-1 / math.sqrt(H), 1 / math.sqrt(H))
            b = torch.zeros(4 * H)
            b[H : 2 * H] = 1.0  # forget-gate bias 1: remember by default
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))
        self.out = nn.Linear(H, 1)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def initial_hidden(self, m: int, device: torch.device, dtype: torch.dtype) -> Hidden:
        """Zero memory for ``m`` coordinates: ``2·L`` tensors ``[m, hidden]``."""
        z = torch.zeros(m, self.config.hidden, device=device, dtype=dtype)
        return tuple(z.clone() for _ in range(2 * self.config.layers))

    def forward(self, g: Tensor, memory: Hidden | Chunked, n: int) -> tuple[Tensor, Hidden | Chunked]:
        """One step for ``M = n·d`` coordinates.

        Args:
            g: ``[M]`` gradients (coordinate-major within each of the ``n`` problems).
            memory: ``2·L`` tensors ``[M, hidden]`` (:meth:`initial_hidden`), or the same rows in the chunks a
                previous call returned.
            n: number of problems (for the global averaging cells).

        Returns:
            ``(out[M], memory)``: the unscaled network output and the new memory. The coordinates run in the chunks
            of :func:`~l2o_gym.policy.rowwise_carry` (several without gradients on the CPU: the same result at less
            memory traffic) and the memory stays in them (:data:`~l2o_gym.policy.Chunked`), so a step never copies
            it into whole ``[M, hidden]`` blocks. With global averaging cells (not row-wise) it is ``2·L`` whole
            tensors.
        """
        if self.config.global_cells:  # averages over each problem's coordinates: not row-wise
            return self._step(g, join_rows(memory), n)

        def rows(g_: Tensor, *mem: Tensor) -> tuple[Tensor, ...]:
            out_, new_ = self._step(g_, mem, n)
            return (out_, *new_)

        (out,), new = rowwise_carry(rows, (g,), memory)
        return out, new

    def _scratch(self, x: Tensor, memory: Hidden) -> Callable[[str, int], Tensor | None]:
        """``buf(name, cols)``: a reusable ``[rows, cols]`` tensor for the step's temporaries, or ``None`` (a new one
        each call) when gradients are enabled (meta-training needs every temporary), the rows exceed one chunk
        (:data:`~l2o_gym.policy.ROW_CHUNK`: the global-cell path steps every row at once) or the input's, the
        memory's and the weights' dtypes differ (the ops' own result types then).

        Why: a wide-net evaluation steps ~2.2M coordinates in 272 chunks of ~10 MB of temporaries each; fresh
        allocations of that size come back from the OS as new pages, and on a VM a page fault can cost tens of µs —
        measured, the faults took up to half of an LSTM rollout's CPU time. The same kernels write into the reused
        tensors, so the numbers are bitwise those of fresh ones (tested). One step at a time per network: two threads
        stepping one network at once would share them."""
        rows, dtype = x.shape[0], self.weights[0].dtype
        if torch.is_grad_enabled() or rows > ROW_CHUNK or any(t.dtype != dtype for t in (x, *memory)):
            return lambda name, cols: None
        bufs = self.__dict__.setdefault("_scratch_bufs", {})

        def buf(name: str, cols: int) -> Tensor:
            key = (name, rows, cols, x.device, dtype)
            if key not in bufs:
                bufs[key] = torch.empty(rows, cols, device=x.device, dtype=dtype)
            return bufs[key]

        return buf

    def _step(self, g: Tensor, memory: Hidden, n: int) -> tuple[Tensor, Hidden]:
        """:meth:`forward` on all rows at once. The new memory tensors are always new; the temporaries reuse
        :meth:`_scratch` tensors where it allows."""
        cfg = self.config
        H, k = cfg.hidden, cfg.global_cells
        x = preprocess(g * cfg.input_scale if cfg.input_scale != 1.0 else g, cfg.preprocessing, cfg.p)
        buf = self._scratch(x, memory)
        new: list[Tensor] = []
        for layer in range(cfg.layers):
            h, c = memory[2 * layer], memory[2 * layer + 1]
            xh = torch.cat([x, h], dim=1, out=buf("xh", x.shape[1] + H))
            gates = torch.addmm(self.biases[layer], xh, self.weights[layer], out=buf("gates", 4 * H))
            sig = torch.sigmoid(gates[:, : 3 * H], out=buf("sig", 3 * H))
            cell = torch.tanh(gates[:, 3 * H :], out=buf("tanh", H))
            c = torch.add(torch.mul(sig[:, H : 2 * H], c, out=buf("keep", H)),
                          torch.mul(sig[:, :H], cell, out=buf("write", H)))
            h = torch.mul(sig[:, 2 * H :], torch.tanh(c, out=buf("tanh", H)))
            if k:
                hv = h.view(n, -1, H)
                h = torch.cat([hv[:, :, :k].mean(1, keepdim=True).expand(-1, hv.shape[1], -1), hv[:, :, k:]], 2)
                h = h.reshape(-1, H)
            new += [h, c]
            x = h
        return self.out(x).squeeze(1), tuple(new)


class LSTMPolicy(Policy):
    """Andrychowicz et al.'s coordinatewise LSTM optimizer.

    ``act`` reads only ``state.grad`` (``[N, d]``), never θ. Its memory is the ``2·L`` LSTM tensors ``[N·d, hidden]``
    (``h_1, c_1, …``), after the first step kept in row chunks (:meth:`CoordinateLSTM.forward`).
    The network runs in its own dtype (float32 by default); steps are cast to θ's dtype.

    Args:
        config: the architecture (:class:`LSTMConfig`); ignored when ``net`` is given.
        net: an existing :class:`CoordinateLSTM` (shared, e.g. by the trainer).
        env_id: env the policy is trained for (recorded in checkpoints; informative).
    """

    reads_objective = False

    name = "lstm"

    def __init__(self, config: LSTMConfig | None = None, net: CoordinateLSTM | None = None, env_id: str | None = None) -> None:
        self.net = net if net is not None else CoordinateLSTM(config or LSTMConfig())
        self.config = self.net.config
        self.env_id = env_id

    # ---- Policy interface -------------------------------------------------------------------------
    def reset(self, state: State) -> Hidden:
        p = next(self.net.parameters())
        return self.net.initial_hidden(state.n * state.dim, p.device, p.dtype)

    def act(self, state: State, memory: Hidden) -> tuple[Tensor, Hidden]:
        n, d = state.grad.shape
        p = next(self.net.parameters())
        g = state.grad.reshape(-1).to(device=p.device, dtype=p.dtype)
        out, memory = self.net(g, memory, n)
        step = (self.config.output_scale * out).view(n, d).to(device=state.theta.device, dtype=state.theta.dtype)
        return step, memory

    # ---- utilities --------------------------------------------------------------------------------
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LSTMPolicy:
        """Move the network (in place) and return ``self``."""
        self.net.to(device=device, dtype=dtype)
        return self

    def parameters(self):  # noqa: ANN201 - an iterator of nn.Parameter
        return self.net.parameters()

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write a safetensors checkpoint with the architecture in its config (``kind = "lstm"``)."""
        config = {"kind": KIND, "env_id": self.env_id, "dim": None, "arch": asdict(self.config), **(extra or {})}
        return save_policy(path, self.net.state_dict(), config)

    @classmethod
    @keeps_rng_state
    def load(
        cls, path: str | Path, device: torch.device | str = "cpu", env_id: str | None = None
    ) -> LSTMPolicy:
        """Rebuild a policy from :meth:`save`'s checkpoint.

        Raises:
            CheckpointError: not an LSTM checkpoint, trained on another env (when ``env_id`` is given), or
                its tensors do not match the architecture in its config.
        """
        tensors, config = load_policy_file(path, kind=KIND, device=device)
        check_compatible(config, path, env_id=env_id)
        arch_d = config_field(config, path, "arch", dict)
        try:
            arch = LSTMConfig(**arch_d)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} has an invalid LSTM architecture (field 'arch'): {exc}") from None
        try:  # shapes first: an edited arch must never allocate a network larger than the file
            check_shapes(path, tensors, expected_shapes(arch))
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} (does not match its LSTM architecture {arch})") from None
        policy = cls(arch, env_id=config.get("env_id"))
        policy.net.load_state_dict(tensors)
        policy.net.to(device)
        policy.checkpoint_config = config
        return policy


def expected_shapes(arch: LSTMConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a :class:`CoordinateLSTM` with ``arch`` (checked before one is built)."""
    H = arch.hidden
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(arch.layers):
        shapes[f"weights.{layer}"] = ((arch.input_dim if layer == 0 else H) + H, 4 * H)
        shapes[f"biases.{layer}"] = (4 * H,)
    shapes["out.weight"], shapes["out.bias"] = (1, H), (1,)
    return shapes


#: Folder of the shipped checkpoints (located through :func:`l2o_gym.agents.common.pretrained_dir`).
PRETRAINED_DIR = pretrained_dir()
#: env id -> shipped checkpoint file name.
PRETRAINED: dict[str, str] = {
    "l2o/Quadratic-v0": "lstm_Quadratic.safetensors",
    "l2o/MLP-v0": "lstm_MLP.safetensors",
    "l2o/LogisticRegression-v0": "lstm_LogisticRegression.safetensors",
    "l2o/RobustLinearRegression-v0": "lstm_RobustLinearRegression.safetensors",
    "l2o/NeuralNet-v0": "lstm_NeuralNet.safetensors",
    "l2o/NeuralArt-v0": "lstm_NeuralArt.safetensors",
    "l2o/NNClassifier-v0": "lstm_NNClassifier.safetensors",
}


def load_pretrained(env_id: str = "l2o/Quadratic-v0", device: torch.device | str = "cpu") -> LSTMPolicy:
    """The shipped checkpoint for ``env_id`` (see ``docs/lstm.md`` for the commands that made them)."""
    if env_id not in PRETRAINED:
        raise ValueError(f"no pretrained LSTM for {env_id!r}: available for {', '.join(PRETRAINED)}")
    return LSTMPolicy.load(PRETRAINED_DIR / PRETRAINED[env_id], device=device)


def load_policy(path: str | Path, *, env_id: str | None = None, device: torch.device | str = "cpu") -> LSTMPolicy:
    """The LSTM kind's loader (``compare --policies lstm[=CKPT]``): :meth:`LSTMPolicy.load`.

    Raises:
        CheckpointError: not an LSTM checkpoint (another kind is named), another env, a bad header or shapes.
    """
    return LSTMPolicy.load(path, device=device, env_id=env_id)
