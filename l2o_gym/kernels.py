"""Pinned CPU kernels: the same numbers on any x86-64 CPU with AVX2.

torch's own CPU kernels (ATen), MKL (torch's GEMMs), oneDNN (torch's convolutions) and the OpenBLAS of NumPy and
SciPy each choose their code by the CPU's instruction set, generation and vendor, with different vector widths and
so different summation orders; an optimizer's closed loop amplifies those last-bit differences (docs/threads.md),
so two machines with the same packages and seed disagree. :data:`PORTABLE_ENV` pins each library to its AVX2
code path. The libraries read these variables once, when they load, so only a fresh process can take them:
``scripts/compare.py`` starts its worker processes with them; the training and tuning scripts restart themselves
with them (:func:`reexec_pinned`) before any work. ``--no-portable`` keeps the machine's own, faster kernels.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

#: The environment that pins every kernel library an l2o-gym run reaches to its AVX2 code path. What each one
#: changed, measured at one thread on AVX-512 machines (docs/threads.md, docs/benchmarks.md session 10): the
#: shipped quadratic LSTM's mean over 20 problems at T = 100 0.033025 → 0.032954 (ATen) and → 0.032739 (MKL);
#: Adam on two ConvNet problems 1.08338 → 1.08973 (oneDNN); CG on LogisticRegression 0.0226513183 →
#: 0.0226513177 (OpenBLAS's SkylakeX kernels → its Haswell ones).
PORTABLE_ENV: dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                                "OPENBLAS_CORETYPE": "Haswell"}


def pinned() -> bool:
    """Whether this process was started with :data:`PORTABLE_ENV` (every variable set to its value)."""
    return all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items())


def can_pin() -> bool:
    """Whether this CPU has the AVX2 code paths to pin to (torch reports AVX2 or AVX-512)."""
    import torch

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def kernel_provenance() -> dict[str, object]:
    """What a training summary records of the kernels it ran with: ``{"pinned": bool, "capability": str}``
    (torch's CPU kernel set; ``"AVX2"`` when pinned on an AVX2 or AVX-512 CPU)."""
    import torch

    return {"pinned": pinned(), "capability": torch.backends.cpu.get_cpu_capability()}


def reexec_pinned() -> None:
    """Restart this process (same interpreter, same arguments: ``sys.orig_argv``) with :data:`PORTABLE_ENV` added
    to its environment, unless it already runs with it or the CPU has no AVX2 (then a warning: the numbers are
    this CPU's own). Call it before any work: nothing of this process survives the restart (the process id does,
    so ``torchrun`` keeps tracking its ranks)."""
    if pinned():
        return
    if not can_pin():
        log.warning("this CPU has no AVX2: the kernels cannot be pinned, so the numbers are this CPU's own")
        return
    argv = [sys.executable, *sys.orig_argv[1:]]
    log.debug("restarting with pinned kernels: %s", " ".join(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, {**os.environ, **PORTABLE_ENV})
