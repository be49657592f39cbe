"""Regression tests from a review of the neural-net problem families, the offline datasets and the core."""

from __future__ import annotations

import builtins

import pytest

from l2o_gym import data
from l2o_gym.problems import NeuralArt


@pytest.mark.parametrize("dataset", ["digits", "breast_cancer"])
def test_missing_sklearn_dataset_is_data_unavailable(monkeypatch, dataset):
    """``load_dataset`` documents ``DataUnavailableError`` naming the package when the wheel is missing; the two
    scikit-learn sets raised a bare ``ModuleNotFoundError``."""
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("sklearn"):
            raise ImportError("no sklearn")
        return real(name, *a, **k)

    data.load_dataset.cache_clear()
    monkeypatch.setattr(builtins, "__import__", fake)
    try:
        with pytest.raises(data.DataUnavailableError, match=f"{dataset}.*scikit-learn"):
            data.load_dataset(dataset)
    finally:
        monkeypatch.undo()
        data.load_dataset.cache_clear()


def test_neural_art_huge_size_is_a_value_error_before_allocating():
    """A size above the smallest content photo is a ``ValueError`` naming it, raised before the style image is
    resized to that size (which asked the allocator for 24 TB at size 10**6 and failed with a RuntimeError)."""
    with pytest.raises(ValueError, match="size 1000000 exceeds the smallest content photo side 300"):
        NeuralArt(size=10**6)
