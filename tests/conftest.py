"""Shared fixtures and markers."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

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


@pytest.fixture(autouse=True)
def _no_tf32(request):
    """CUDA tests compare with the CPU in float32: cuDNN's default TF32 convolutions (Ampere and later) round
    inputs to 10 mantissa bits, about 1e-4 relative (measured on an H200: 1.7e-4 on the small ConvNet's loss), so
    they are switched off for the ``cuda`` tests; users keep PyTorch's defaults."""
    if request.node.get_closest_marker("cuda") is None or not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (to call its ``main(argv)`` in-process)."""
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def full_batch_losses(opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor], steps: int) -> list[float]:
    """``steps`` full-batch steps of ``opt`` on ``loss_fn()`` (the loss also reaches it through ``step``);
    returns the loss before each step."""
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step(lambda: loss)
        losses.append(loss.item())
    return losses
