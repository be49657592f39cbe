"""Offline datasets and photos from installed wheels (l2o_gym.data)."""

import numpy as np
import pytest

from l2o_gym import data


@pytest.mark.parametrize("name", list(data.DATASETS))
def test_datasets_have_documented_shapes(name):
    X, y = data.load_dataset(name)
    features, classes = data.DATASETS[name]
    assert X.shape[1] == features and X.dtype == np.float64 and y.dtype == np.int64
    assert len(X) == len(y) and set(np.unique(y)) == set(range(classes))
    assert np.isfinite(X).all() and not X.flags.writeable


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'.*mnist"):
        data.load_dataset("cifar10")


def test_photo_patches_deterministic_and_labelled_by_photo():
    X1, y1 = data.photo_patches(per_class=4, size=8)
    X2, y2 = data.photo_patches(per_class=4, size=8)
    assert X1.shape == (40, 8, 8, 3) and np.array_equal(X1, X2) and np.array_equal(y1, y2)
    assert np.array_equal(y1, np.repeat(np.arange(10), 4))
    # patch 0 of class 0 is a window of the first photo
    img = data.photo(data.PATCH_PHOTOS[0])
    hits = [(t, s) for t in range(img.shape[0] - 7) for s in range(img.shape[1] - 7) if np.array_equal(img[t:t + 8, s:s + 8], X1[0])]
    assert hits


def test_photos_are_rgb_unit_range():
    for name in data.PHOTOS:
        img = data.photo(name)
        assert img.ndim == 3 and img.shape[2] == 3 and 0.0 <= img.min() and img.max() <= 1.0


@pytest.mark.parametrize("package, load, cache, name", [
    ("skimage", lambda: data.photo("coffee"), data.photo, "scikit-image"),
    ("sklearn", lambda: data.load_dataset("digits"), data.load_dataset, "digits.*scikit-learn"),
    ("sklearn", lambda: data.load_dataset("breast_cancer"), data.load_dataset, "breast_cancer.*scikit-learn"),
])
def test_missing_package_is_a_clear_error(monkeypatch, package, load, cache, name):
    """A missing wheel is a ``DataUnavailableError`` naming the package (the scikit-learn sets once raised a bare
    ``ModuleNotFoundError``)."""
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith(package):
            raise ImportError(f"no {package}")
        return real(name, *a, **k)

    cache.cache_clear()
    monkeypatch.setattr(builtins, "__import__", fake)
    try:
        with pytest.raises(data.DataUnavailableError, match=name):
            load()
    finally:
        monkeypatch.undo()
        cache.cache_clear()


def test_unknown_photo_lists_choices():
    with pytest.raises(ValueError, match="unknown photo 'lena'.*astronaut"):
        data.photo("lena")
