"""Shared fixtures and markers."""

from __future__ import annotations

import pytest
import torch

import l2o_gym  # noqa: F401  (registers the environments)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


@pytest.fixture(autouse=True)
def _few_threads():
    # Small tensors: extra intra-op threads only add overhead and make timings noisy on 2 cores.
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
