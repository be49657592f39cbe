"""Checkpoints: plain tensors plus a JSON config, written atomically, loaded without unpickling code.

* :func:`save_policy` / :func:`load_policy_file` (:func:`read_policy_config`: the config alone) — a trained policy: a ``.safetensors`` file whose
  metadata holds the JSON config (``kind``, ``env_id``, ``dim``, architecture, …). Nothing is pickled.
* :func:`save_state` / :func:`load_state` — training state for resuming (optimizer state dicts, counters,
  RNG states): ``torch.save`` of tensors/containers of primitives, loaded with ``weights_only=True``.

Writes go to a temporary file in the same folder, are flushed to disk, then ``os.replace``-d over the
target, so an interrupted write never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from l2o_gym.checks import resolve_device

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_META_KEY = "l2o_gym"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or made for something else (another kind, env or dimension)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or unknown: keep its file
    return True


#: what follows ``.{name}.`` in a temporary file of :func:`atomic_write`: ``{pid}.{mkstemp's random part}.tmp``.
_TMP_TAIL = re.compile(r"(\d+)\.[a-z0-9_]+\.tmp")


def _remove_stale_temps(path: Path) -> list[Path]:
    """Delete temporary files ``.{name}.{pid}.*.tmp`` of ``path`` left by writers that no longer run (a
    SIGKILL or power loss during :func:`atomic_write`); files of live processes are kept. Returns the removed."""
    prefix = f".{path.name}."
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        m = _TMP_TAIL.fullmatch(tmp.name[len(prefix):])  # not a temporary of another file ".{name}.{digits}…"
        if m is None or int(m[1]) == os.getpid() or _pid_alive(int(m[1])):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    if removed:
        logger.info("removed %d stale temporary file(s) of %s left by interrupted writes", len(removed), path)
    return removed


def keeps_rng_state(load: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for policy loaders: restore torch's global random state (the CPU generator, and every CUDA
    device's when CUDA is initialised) after ``load``. A loader builds its modules, whose default initialisation
    draws from those generators, before overwriting every weight with the checkpoint's; without this, loading a
    policy would shift the random stream of the user's script (``torch.manual_seed(0)``; load; ``torch.randn``
    would not give what it gives without the load)."""

    @functools.wraps(load)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=cuda):
            return load(*args, **kwargs)

    return wrapper


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result over ``path`` atomically (same filesystem).

    The temporary file is ``.{name}.{pid}.{random}.tmp`` beside ``path``; one left behind by a killed
    writer (its process no longer exists) is deleted by the next write of the same ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_policy(path: str | Path, tensors: dict[str, Tensor], config: dict[str, Any]) -> Path:
    """Write a policy checkpoint (safetensors + JSON config in its metadata) atomically.

    Args:
        path: target file (``.safetensors``).
        tensors: e.g. ``module.state_dict()``; moved to CPU and made contiguous.
        config: JSON-serialisable; should hold ``kind`` and whatever is needed to rebuild the policy.
    """
    from safetensors.torch import save_file

    bad = [k for k, v in tensors.items() if not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"checkpoint entries {bad} are not tensors")
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {_META_KEY: json.dumps({"format_version": FORMAT_VERSION, **config}, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=meta))


def load_policy_file(
    path: str | Path, kind: str | None = None, device: torch.device | str = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read ``(tensors, config)`` from a checkpoint written by :func:`save_policy`.

    Raises:
        CheckpointError: if the file is missing or unreadable, lacks the l2o-gym config, or its ``kind``
            differs from ``kind`` (when given).
        ValueError: if ``device`` is unknown or not available on this machine (:func:`l2o_gym.checks.resolve_device`).
    """
    return _read_policy_file(path, kind, device, with_tensors=True)


def read_policy_config(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The JSON config of a :func:`save_policy` checkpoint (``kind``, ``env_id``, a ``"training"`` summary
    …), read from the safetensors header without loading the weights. Errors as :func:`load_policy_file`."""
    return _read_policy_file(path, kind, "cpu", with_tensors=False)[1]


def _read_policy_file(
    path: str | Path, kind: str | None, device: torch.device | str, with_tensors: bool
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import safe_open

    device = resolve_device(device)  # a bad or absent device is named, not blamed on the file
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} " + ("is a folder, not a checkpoint file" if path.is_dir()
                                                              else "does not exist"))
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()} if with_tensors else {}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable safetensors file: {exc}") from None
    if _META_KEY not in meta:
        raise CheckpointError(f"checkpoint {str(path)!r} has no l2o-gym config (not written by l2o-gym?)")
    try:
        config = json.loads(meta[_META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} has a corrupt config: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: its config is a JSON {type(config).__name__}, not an object")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r}: field 'format_version' is {version!r}, this l2o-gym reads "
                              f"format {FORMAT_VERSION}")
    if kind is not None and config.get("kind") != kind:
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {config.get('kind')!r} policy, expected {kind!r}")
    return tensors, config


def update_policy_config(path: str | Path, updates: dict[str, Any], kind: str | None = None) -> Path:
    """Rewrite the checkpoint ``path`` (atomically) with the same tensors and ``updates`` merged into its config,
    e.g. ``{"training": summary}`` once a run has finished."""
    tensors, config = load_policy_file(path, kind=kind)
    config.pop("format_version", None)
    return save_policy(path, tensors, {**config, **updates})


_TYPES: dict[type, tuple[type, ...]] = {int: (int,), float: (int, float), str: (str,), bool: (bool,),
                                      dict: (dict,), list: (list,)}


def config_field(config: dict[str, Any], path: str | Path, name: str, typ: type, *, optional: bool = False) -> Any:
    """``config[name]``, checked to be a ``typ`` (``float`` accepts integers; ``bool`` is never an ``int``).

    Raises:
        CheckpointError: naming the file and the field, if it is missing (and not ``optional``) or ill-typed.
    """
    if name not in config or (optional and config[name] is None):
        if optional:
            return None
        raise CheckpointError(f"checkpoint {str(path)!r}: config field {name!r} is missing")
    value = config[name]
    ok = isinstance(value, _TYPES.get(typ, (typ,))) and not (typ in (int, float) and isinstance(value, bool))
    if not ok:
        raise CheckpointError(f"checkpoint {str(path)!r}: config field {name!r} should be {typ.__name__}, "
                              f"got {type(value).__name__} {value!r}")
    return value


def check_shapes(path: str | Path, tensors: dict[str, Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    """Raise :class:`CheckpointError` (naming the file and the tensor) unless ``tensors`` has exactly the keys
    of ``expected`` with those shapes — called *before* a network is built from a checkpoint's config, so an
    edited config never allocates more than the file holds."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match its stored architecture: missing tensors "
                              f"{missing}, unexpected tensors {extra}")
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != tuple(shape):
            raise CheckpointError(f"checkpoint {str(path)!r} does not match its stored architecture: tensor {k!r} "
                                  f"has shape {tuple(tensors[k].shape)}, the config implies {tuple(shape)}")


def check_compatible(config: dict[str, Any], path: str | Path, *, env_id: str | None = None, dim: int | None = None) -> None:
    """Raise :class:`CheckpointError` if a checkpoint was made for another env id or problem dimension.

    Coordinatewise policies (``config["dim"]`` is ``None``) fit any dimension.
    """
    if env_id is not None and config.get("env_id") not in (None, env_id):
        raise CheckpointError(f"checkpoint {str(path)!r} was trained on {config.get('env_id')!r}, not {env_id!r}")
    if dim is not None and config.get("dim") not in (None, dim):
        raise CheckpointError(f"checkpoint {str(path)!r} is for dimension {config.get('dim')}, the problems have {dim}")


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write training state (tensors, numbers, strings, lists/dicts of them) atomically with ``torch.save``."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load training state with ``torch.load(weights_only=True)`` (no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state {str(path)!r} " + ("is a folder, not a state file" if path.is_dir()
                                                                  else "does not exist"))
    if path.stat().st_size == 0:
        raise CheckpointError(f"training state {str(path)!r} is empty (0 bytes)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"training state {str(path)!r} could not be loaded safely: "
                              f"{str(exc).strip() or type(exc).__name__}") from None
