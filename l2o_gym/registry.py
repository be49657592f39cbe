"""The registered environment ids: data about problems, not about gymnasium.

``ENV_TABLE`` maps each id to its problem family and default keyword arguments; :func:`env_family` builds
the family behind an id (the one place that does); :func:`register_envs` registers every id with gymnasium
using *string* entry points, so no env module (and no stable-baselines3) is imported until ``gymnasium.make``.
This module sits in the foundation layer: it imports only :mod:`l2o_gym.problems`.
"""

from __future__ import annotations

import re
from typing import Any

from l2o_gym.problems import ProblemFamily, make_family

#: id -> default kwargs of :class:`l2o_gym.envs.L2OEnv` / :class:`l2o_gym.envs.L2OVectorEnv`.
#: ``action_scale`` maps the policy's action in [-1, 1]^d to the raw step Δθ; chosen per family so that a
#: saturated action is a large but not absurd step at the scale of the family's typical iterates. Every
#: other key is a family keyword argument.
ENV_TABLE: dict[str, dict[str, Any]] = {
    "l2o/Quadratic-v0": {"family": "quadratic", "action_scale": 0.5},
    "l2o/LogisticRegression-v0": {"family": "logistic_regression", "action_scale": 1.0},
    "l2o/RobustLinearRegression-v0": {"family": "robust_linear_regression", "action_scale": 1.0},
    "l2o/NeuralNet-v0": {"family": "neural_net", "action_scale": 1.0},
    "l2o/MLP-v0": {"family": "mlp", "action_scale": 0.1},
    "l2o/Rosenbrock-v0": {"family": "rosenbrock", "action_scale": 0.1},
    "l2o/Rastrigin-v0": {"family": "rastrigin", "action_scale": 0.5},
    "l2o/NeuralArt-v0": {"family": "neural_art", "action_scale": 0.1},
    "l2o/ConvNet-v0": {"family": "convnet", "action_scale": 0.1},
    "l2o/NNClassifier-v0": {"family": "nn_classifier", "action_scale": 0.1},
}

ENV_IDS: tuple[str, ...] = tuple(ENV_TABLE)

#: keys of an :data:`ENV_TABLE` entry that are env arguments, not family arguments.
ENV_ONLY_KEYS: frozenset[str] = frozenset({"family", "action_scale"})

#: Named problem variants of an env (family keyword overrides), for transfer studies: the MLP runs of
#: Andrychowicz et al. §3.2 (a network trained on the 20-unit sigmoid MLP applied to wider, deeper and ReLU
#: nets). ``gymnasium.make("l2o/MLP-v0", **VARIANTS["l2o/MLP-v0"]["relu"])`` builds one as an env.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "l2o/MLP-v0": {
        "hidden40": {"hidden": (40,)},
        "2layers": {"hidden": (20, 20)},
        "relu": {"activation": "relu"},
    },
    # Andrychowicz et al. §3.4: the LSTM trained on 64×64 images with one style, tested on 128×128 images
    # (4× the pixels) and on a second style.
    "l2o/NeuralArt-v0": {
        "128": {"size": 128},
        "style2": {"style": "hubble_deep_field"},
        "128+style2": {"size": 128, "style": "hubble_deep_field"},
    },
    # Andrychowicz et al. §3.3: the conv net on the colour stand-in for CIFAR-10 (default: all 10 labels),
    # "5 of 10" / "2 of 10" label subsets (LSTM-sub is trained on "labels5"; the *_test sets are disjoint
    # from it, for testing on unseen labels), and MNIST as a dataset transfer.
    "l2o/ConvNet-v0": {
        "mnist": {"dataset": "mnist"},
        "labels5": {"labels": (0, 1, 2, 3, 4)},
        "labels2": {"labels": (0, 1)},
        "labels5_test": {"labels": (5, 6, 7, 8, 9)},
        "labels2_test": {"labels": (8, 9)},
    },
    "l2o/NNClassifier-v0": {},  # filled below: NN_SETTINGS x NN_DATASETS
}

#: Li & Malik (2017)'s test settings of the NN-classifier benchmark as family overrides (the 2T setting is
#: the "wide" net evaluated for 800 iterations: a horizon, not a variant).
NN_SETTINGS: dict[str, dict[str, Any]] = {
    "": {},  # same net as the training objective: 48-48, batch 64
    "wide": {"inputs": 100, "hidden": 200},
    "batch10": {"batch_size": 10},
    "wide-batch10": {"inputs": 100, "hidden": 200, "batch_size": 10},
}
#: datasets of the NN-classifier benchmark (mnist = held-out instances of the training objective).
NN_DATASETS: tuple[str, ...] = ("mnist", "digits", "lfw_subset", "breast_cancer", "photo_patches")
#: variant names ``"<dataset>"`` (same net) or ``"<dataset>-<setting>"``, e.g. ``"photo_patches-wide-batch10"``.
VARIANTS["l2o/NNClassifier-v0"] = {
    (ds + (f"-{name}" if name else "")): {"dataset": ds, **kw} for name, kw in NN_SETTINGS.items() for ds in NN_DATASETS
}


def check_env_id(env_id: str) -> str:
    """Return ``env_id`` if it is registered here, else raise ``ValueError`` listing the valid ids."""
    if env_id not in ENV_TABLE:
        raise ValueError(f"unknown env id {env_id!r}: expected one of {', '.join(ENV_TABLE)}")
    return env_id


def env_family(env_id: str, **overrides: Any) -> ProblemFamily:
    """The problem family behind a registered env id: its table defaults, then ``overrides`` (e.g.
    ``hidden=(40,)``). Raises ``ValueError`` for an unknown id or a bad family argument."""
    entry = ENV_TABLE[check_env_id(env_id)]
    kwargs = {k: v for k, v in entry.items() if k not in ENV_ONLY_KEYS}
    return make_family(entry["family"], **{**kwargs, **overrides})


def variant_kwargs(env_id: str, variant: str | None) -> dict[str, Any]:
    """Family keyword overrides of a named variant of ``env_id`` (``{}`` for ``None``)."""
    if not variant:
        return {}
    table = VARIANTS.get(env_id, {})
    if variant not in table:
        raise ValueError(f"unknown variant {variant!r} of {env_id}: expected one of {', '.join(table) or '(none)'}")
    return dict(table[variant])


def env_short_name(env_id: str) -> str:
    """``"l2o/Quadratic-v0"`` -> ``"Quadratic"`` (file names of plots and shipped checkpoints)."""
    return re.sub(r"-v\d+$", "", env_id.split("/")[-1])


def register_envs() -> None:
    """Register every id of :data:`ENV_TABLE` with gymnasium (idempotent; string entry points)."""
    import gymnasium as gym

    for env_id, kwargs in ENV_TABLE.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="l2o_gym.envs.env:L2OEnv",
            vector_entry_point="l2o_gym.envs.vector:L2OVectorEnv",
            kwargs=dict(kwargs),
        )
