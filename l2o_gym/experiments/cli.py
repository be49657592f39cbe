"""The scripts' command lines, generated from the config dataclasses, and their one exit-code wrapper.

A script declares no flag of its own for a config field: :func:`add_config_args` makes ``--field-name`` for
every field of a config dataclass (type, default and help text from the field and the ``Args:``/``Attributes:``
section of the class docstring), :func:`config_from_args` builds the config back — its ``__post_init__`` is
the only validation, and a ``ValueError`` it raises becomes a usage error naming the flag. :func:`add_run_args`
adds the flags every training script shares (``--out``, ``--resume``, ``--threads``, ``--quiet``,
``--export``), and :func:`run` is the ``main`` wrapper:

* exit 2: usage errors — a bad flag or value, a config the config class rejects, ``--resume`` without a
  fitting ``state.pt``, an unusable ``--out``, a ``CheckpointError``, any ``ValueError`` or ``OSError`` (a bad
  value or path that reached the library) — one line naming the flag or value, no traceback;
* exit 130: Ctrl-C (``KeyboardInterrupt``), after the training lifecycle has saved what it can;
* exit 1: any other runtime failure, one line (``--debug``-free: the traceback goes to the log at DEBUG level).

Flag names shared by every script: ``--env``, ``--out``, ``--resume``, ``--seed``, ``--device``, ``--threads``,
``--quiet``, ``--n-val``, ``--export``, ``--n-problems``, ``--horizon``. Old names still work with a
:class:`DeprecationWarning` (``--no-progress`` → ``--quiet``, ``--save`` → ``--export``, ``--val``/
``--val-problems`` → ``--n-val``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import sys
import tempfile
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from l2o_gym.checks import NestedValueError, one_line

log = logging.getLogger(__name__)

#: old flag -> new flag (they keep working, with a DeprecationWarning).
DEPRECATED: dict[str, str] = {"--no-progress": "--quiet", "--save": "--export", "--val": "--n-val",
                              "--val-problems": "--n-val"}


class UsageError(ValueError):
    """A bad command-line value found after parsing (exit 2, the message names the flag or value)."""


# ====================================================================================== value parsers
def _number(kind: type, text: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer ``>= 1``."""
    v = _number(int, text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def nonnegative_int(text: str) -> int:
    """An integer ``>= 0`` (seeds, counts that may be zero)."""
    v = _number(int, text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return v


def finite_float(text: str) -> float:
    """A finite number (``nan``/``inf`` are refused)."""
    v = _number(float, text)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def positive_float(text: str) -> float:
    """A finite number ``> 0``."""
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
    return v


def json_object(text: str) -> dict[str, Any]:
    """A JSON object, e.g. ``'{"dim": 10}'``."""
    try:
        v = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"dim\": 10}}', got {text!r} ({exc.msg})") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"dim\": 10}}', got {text!r} (not a JSON object)")
    return v


def device(text: str) -> str:
    """A torch device usable on this machine (``cuda`` needs CUDA)."""
    from l2o_gym.checks import resolve_device

    try:
        resolve_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def out_path(text: str) -> str:
    """A path that can be created: no existing component of it (but the last) is a regular file, and files can be
    created in its nearest existing folder (checked now, not after hours of work, e.g. ``/proc/x`` or a read-only
    folder)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got ''")
    p = Path(text)
    for parent in list(p.parents)[::-1]:
        if parent.exists() and not parent.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is not usable: {str(parent)!r} is a file, not a folder")
    folder = p if p.is_dir() else next((q for q in p.parents if q.exists()), Path("."))
    try:  # an anonymous temporary file: nothing is left behind
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not usable: cannot create files in {str(folder)!r} "
                                         f"({exc.strerror or exc})") from None
    return text


def out_file(text: str) -> str:
    """A file that can be written (:func:`out_path`, and not an existing folder)."""
    out_path(text)
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    return text


def out_dir(text: str) -> str:
    """A folder that exists or can be created (:func:`out_path`, and not itself a regular file)."""
    out_path(text)
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    return text


# ====================================================================================== dataclass -> flags
def field_docs(cls: type) -> dict[str, str]:
    """Per-field help texts from the ``Args:``/``Attributes:`` section of ``cls``'s docstring (``a, b: text``
    documents both)."""
    doc = cls.__doc__ or ""
    m = re.search(r"^\s*(Args|Attributes):\s*$", doc, re.M)
    if not m:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    indent = None
    for line in doc[m.end():].splitlines():
        if not line.strip():
            continue
        ind = len(line) - len(line.lstrip())
        if indent is None:
            indent = ind
        if ind < indent:
            break
        hit = re.match(r"^([\w, ]+):\s*(.*)$", line.strip()) if ind == indent else None
        if hit:
            names = [n.strip() for n in hit.group(1).split(",")]
            for n in names:
                out[n] = hit.group(2)
        else:
            for n in names:
                out[n] += " " + line.strip()
    return {k: re.sub(r"``|:\w+:`~?([^`]*)`", lambda mm: mm.group(1) or "", v).replace("%", "%%") for k, v in out.items()}


def flag_name(field_name: str) -> str:
    """``n_problems`` -> ``--n-problems``."""
    return "--" + field_name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _parser_for(tp: Any, name: str) -> tuple[Callable[[str], Any], str | None]:
    """``(type=, nargs=)`` for a field type."""
    origin = typing.get_origin(tp)
    if origin is tuple or origin is list:
        inner = typing.get_args(tp)[0]
        return _parser_for(inner, name)[0], "+"
    if tp is int:
        return (nonnegative_int if name == "seed" else int_value), None
    if tp is float:
        return finite_float, None
    if origin is dict or tp is dict:
        return json_object, None
    if name == "device":
        return device, None
    return str, None


def int_value(text: str) -> int:
    """Any integer."""
    return _number(int, text)


@dataclasses.dataclass
class _Arg:
    field: str
    dest: str
    flag: str
    path: tuple[str, ...]  # nested config path (e.g. ("badmm", "regression"))


class ConfigArgs:
    """The flags :func:`add_config_args` made for a config class, to build it back with :meth:`build`."""

    def __init__(self, cls: type, args: list[_Arg]) -> None:
        self.cls, self.args = cls, args

    def flag_of(self, field: str) -> str | None:
        for a in self.args:
            if a.field == field:
                return a.flag
        return None

    def build(self, ns: argparse.Namespace, **overrides: Any) -> Any:
        """The config from the parsed flags (``overrides`` win). A ``ValueError``/``TypeError`` of the config
        becomes :class:`UsageError` naming the flag of the field its message mentions."""
        values: dict[tuple[str, ...], dict[str, Any]] = {}
        for a in self.args:
            v = getattr(ns, a.dest)
            if v is _UNSET:
                continue
            values.setdefault(a.path, {})[a.field] = tuple(v) if isinstance(v, list) else v
        try:
            return _instantiate(self.cls, (), values, overrides)
        except (ValueError, TypeError) as exc:
            nested = isinstance(exc, NestedValueError)  # its detail is in the inner object's names: kept
            msg = exc.where if nested else str(exc)
            for a in self.args:  # name the flags, not the fields
                msg = re.sub(rf"(?<![\w'\"-]){re.escape(a.field)}(?![\w'\"-])", a.flag, msg, count=1)  # not a quoted key
            raise UsageError(f"{msg}: {exc.detail}" if nested else msg) from None


_UNSET = object()


def _instantiate(cls: type, path: tuple[str, ...], values: dict[tuple[str, ...], dict[str, Any]],
                 overrides: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = dict(values.get(path, {}))
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp) and f.name not in kwargs:
            sub = path + (f.name,)
            if any(k[: len(sub)] == sub for k in values):
                kwargs[f.name] = _instantiate(tp, sub, values, {})
    if not path:
        kwargs.update(overrides)
    return cls(**kwargs)


def add_config_args(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    rename: dict[str, str] | None = None,
    skip: Sequence[str] = (),
    choices: dict[str, Sequence[Any]] | None = None,
    types_: dict[str, Callable[[str], Any]] | None = None,
    nested: bool = True,
    title: str | None = None,
    _path: tuple[str, ...] = (),
    _defaults: Any = None,
) -> ConfigArgs:
    """Add one flag per field of the dataclass ``cls`` (nested dataclass fields flattened, by their own names).

    Args:
        parser: the parser.
        cls: the config dataclass (its defaults are the flags' defaults; its docstring gives the help).
        rename: field (or dotted path of a nested field, e.g. ``"badmm.regression.lr"``) -> flag, e.g.
            ``{"env_id": "--env"}``.
        skip: fields without a flag (set by the script, e.g. ``out``).
        choices: field -> allowed values.
        types_: field -> value parser overriding the one derived from the type.
        nested: flatten nested dataclass fields (``badmm.kl_step`` -> ``--kl-step``).
        title: an argument group title.
    """
    rename, choices, types_ = rename or {}, choices or {}, types_ or {}
    group = parser.add_argument_group(title or f"{cls.__name__} (config)")
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    defaults = _defaults if _defaults is not None else cls()
    out: list[_Arg] = []
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_"):
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        default = getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            if nested:
                sub = add_config_args(parser, tp, rename=rename, skip=skip, choices=choices, types_=types_,
                                      title=f"{tp.__name__} (config.{'.'.join(_path + (f.name,))})",
                                      _path=_path + (f.name,), _defaults=default)
                out += sub.args
            continue
        dotted = ".".join(_path + (f.name,))
        flag = rename.get(dotted, rename.get(f.name, flag_name(f.name)))
        dest = "cfg__" + "__".join(_path + (f.name,))
        help_ = docs.get(f.name, "")
        if tp is bool:
            if default:
                neg = "--no-" + flag[2:]
                group.add_argument(neg, dest=dest, action="store_false", default=_UNSET,
                                   help=f"{help_} (turns it off)")
            else:
                group.add_argument(flag, dest=dest, action="store_true", default=_UNSET, help=help_)
            out.append(_Arg(f.name, dest, flag, _path))
            continue
        conv, nargs = _parser_for(tp, f.name)
        conv = types_.get(f.name, conv)
        if _defaults is None and f.default is None:
            default = None  # a field declared None and resolved by __post_init__ (e.g. from the env): say None
        shown = list(default) if isinstance(default, tuple) else default
        kw: dict[str, Any] = {"dest": dest, "type": conv, "default": _UNSET, "metavar": flag[2:].replace("-", "_").upper(),
                              "help": f"{help_} (default: {json.dumps(shown) if isinstance(shown, dict) else shown})"}
        if nargs:
            # "--baselines" alone: no sample-efficiency targets (skips tuning them on val, which can cost an hour)
            kw["nargs"] = ("*" if typing.get_origin(tp) is tuple and default == () or f.name in ("hidden", "baselines")
                           else nargs)
        if f.name in choices:
            kw["choices"] = list(choices[f.name])
            kw["help"] += "; one of: " + ", ".join(map(str, choices[f.name]))
        if optional and tp is not str:
            kw["help"] += "; 'none' for None"
            base = conv
            kw["type"] = lambda s, base=base: None if s.lower() == "none" else base(s)
        group.add_argument(flag, **kw)
        out.append(_Arg(f.name, dest, flag, _path))
    return ConfigArgs(cls, out)


# ====================================================================================== shared flags
class _Deprecated(argparse.Action):
    """An old flag: stores like the new one and warns."""

    def __init__(self, option_strings: list[str], dest: str, new: str, store_const: Any = None, **kw: Any) -> None:
        self.new, self.store_const = new, store_const
        super().__init__(option_strings, dest, nargs=0 if store_const is not None else None, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        msg = f"{option_string} is deprecated: use {self.new}"
        warnings.warn(msg, DeprecationWarning, stacklevel=2)
        print(f"warning: {msg}", file=sys.stderr)
        setattr(namespace, self.dest, self.store_const if self.store_const is not None else values)


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str, *, store_const: Any = None,
                     type: Callable[[str], Any] | None = None) -> None:
    """``old`` works like ``new`` (same ``dest``) with a :class:`DeprecationWarning`; hidden from ``--help``."""
    kw: dict[str, Any] = {"dest": dest, "new": new, "help": argparse.SUPPRESS, "store_const": store_const,
                          "default": argparse.SUPPRESS}
    if store_const is None:
        kw["type"] = type
    parser.add_argument(old, action=_Deprecated, **kw)


def add_run_args(
    parser: argparse.ArgumentParser,
    *,
    out_default: str | None = None,
    out_required: bool = False,
    resume: bool = True,
    export: bool = True,
    threads: bool = True,
    quiet: bool = True,
    tensorboard: bool = False,
    portable: bool = True,
) -> None:
    """The flags every training script shares: ``--out``, ``--resume``, ``--export``, ``--threads``, ``--quiet``,
    ``--portable/--no-portable`` (and the deprecated ``--save``/``--no-progress``); ``--no-tensorboard`` when the
    config has no such field."""
    g = parser.add_argument_group("run")
    g.add_argument("--out", type=out_dir, default=out_default, required=out_required,
                   help="run folder (checkpoints, state.pt, summary.json, tb/)"
                        + (f" (default: {out_default})" if out_default else ""))
    if resume:
        g.add_argument("--resume", action="store_true",
                       help="continue from OUT/state.pt (refused if there is none, or it is another kind of run's)")
    if export:
        g.add_argument("--export", type=out_file, default=None, metavar="PATH",
                       help="copy the best checkpoint here when done (e.g. agents/pretrained/...)")
        deprecated_alias(parser, "--save", "--export", "export", type=out_file)
    if threads:
        g.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads (default: 1)")
    if quiet:
        g.add_argument("--quiet", action="store_true", help="no progress bar, warnings-only logging")
        deprecated_alias(parser, "--no-progress", "--quiet", "quiet", store_const=True)
    if tensorboard:
        g.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard scalars")
    if portable:
        add_portable_flag(g)


#: ``--portable``'s help in the scripts that restart themselves pinned (:func:`setup`).
PORTABLE_HELP = ("pin torch's, MKL's, oneDNN's and OpenBLAS's kernels to their AVX2 code paths (the script restarts "
                 "itself with them): the same numbers on any x86-64 CPU with AVX2, for the same seed (the default); "
                 "--no-portable: this machine's fastest kernels, its own numbers (docs/threads.md)")


def add_portable_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str = PORTABLE_HELP) -> None:
    """``--portable/--no-portable`` (default on): run with every kernel library pinned to its AVX2 code path
    (:mod:`l2o_gym.kernels`). ``help`` says how the script pins: by default it restarts itself with them in
    :func:`setup`; ``scripts/compare.py`` instead pins the workers it spawns."""
    parser.add_argument("--portable", action=argparse.BooleanOptionalAction, default=True, help=help)


def prepare(args: argparse.Namespace, cfg_args: ConfigArgs, **overrides: Any) -> Any:
    """The config from the flags (:meth:`ConfigArgs.build`), the ``--resume`` check (:func:`check_resume`), then
    logging and threads (:func:`setup`): the start of every training script."""
    cfg = cfg_args.build(args, **overrides)
    check_resume(args)
    setup(args)
    return cfg


def check_resume(args: argparse.Namespace) -> None:
    """``--resume`` needs ``--out`` holding a ``state.pt`` (the one behaviour of every script)."""
    if getattr(args, "resume", False):
        if not args.out:
            raise UsageError("--resume needs --out")
        state = Path(args.out) / "state.pt"
        if not state.is_file():
            raise UsageError(f"--resume: no training state {str(state)!r} to continue from")


def pin_kernels(args: argparse.Namespace) -> None:
    """With ``--portable`` in a script run from the command line, restart the process with pinned kernels
    (:func:`l2o_gym.kernels.reexec_pinned`; nothing before this call survives, so call it before any work)."""
    if getattr(args, "portable", False) and getattr(args, "command_line", False):
        from l2o_gym.kernels import reexec_pinned

        reexec_pinned()


def setup(args: argparse.Namespace) -> None:
    """Pinned kernels (``--portable``, from the command line: the process restarts itself with
    :data:`l2o_gym.kernels.PORTABLE_ENV` unless it already runs with it; a call of ``main(argv)`` inside another
    program keeps that program's kernels), logging (``--quiet``: warnings only) and torch threads (``--threads``)."""
    pin_kernels(args)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")
    threads = getattr(args, "threads", None)
    if threads:
        import torch

        torch.set_num_threads(threads)


# ====================================================================================== main wrapper
@contextlib.contextmanager
def torchrun_group(device: str) -> Iterator[bool]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) a ``torch.distributed`` process group for the block — nccl on CUDA,
    gloo on CPU — destroyed afterwards; yields whether there is one. Also :func:`is_rank0` for printing."""
    import torch.distributed as dist

    from l2o_gym.distributed import init_group, launched

    # WORLD_SIZE > 1 without torchrun's RANK (another launcher's variable) makes no group: nothing to wait for or
    # destroy then (a barrier would fail after the work is done)
    distributed = launched() and init_group(device)[1] > 1
    try:
        yield distributed
        if distributed:  # every rank finished (rank 0 may still be writing files) before the group is torn down
            dist.barrier()
    finally:
        if distributed:
            dist.destroy_process_group()


def is_rank0() -> bool:
    """Whether this process is rank 0 of a ``torchrun`` job (or not under ``torchrun``)."""
    return int(os.environ.get("RANK", "0")) == 0


def run(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int], argv: Sequence[str] | None,
        *, interrupted: str = "interrupted") -> int:
    """Parse ``argv`` and run ``body(args)`` with the exit codes of the module docstring.

    Usage errors call ``parser.error`` (``SystemExit(2)``, usage line and message on stderr); Ctrl-C prints
    ``interrupted`` (e.g. where the checkpoint is) and returns 130; other failures print one line, return 1.
    """
    from l2o_gym.checkpoint import CheckpointError

    args = parser.parse_args(argv)
    args.command_line = argv is None  # a script run from the shell (may restart itself: setup), not main(argv)
    try:
        return int(body(args) or 0)
    except (UsageError, CheckpointError) as exc:
        parser.error(one_line(str(exc)))
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # a bad value or path reaching the library: still the user's input
        parser.error(one_line(str(exc)))
    except Exception as exc:  # noqa: BLE001 - the runtime-failure exit code
        log.debug("runtime failure", exc_info=True)
        print(f"{parser.prog}: error: {type(exc).__name__}: {one_line(str(exc))}", file=sys.stderr)
        return 1
    return 0  # pragma: no cover - parser.error exits


def finite_check(name: str, value: float) -> None:
    """Raise :class:`UsageError` naming ``name`` unless ``value`` is finite."""
    if not math.isfinite(value):
        raise UsageError(f"{name} must be finite, got {value!r}")


def export_best(summary: dict[str, Any], export: str | None, script: str, kind: str, out: str | None) -> int:
    """The end of a training script: copy the run's best checkpoint to ``export`` (atomically) and print the
    summary's scalars as JSON. Returns 1 (an error on stderr) if ``export`` is given and no iteration was selected
    as best; without ``export`` that case returns 0 (the warning was logged by the training lifecycle)."""
    import shutil

    from l2o_gym.checkpoint import atomic_write

    if export:
        if summary["best_iteration"] < 0:
            print(f"{script}: error: no iteration was selected as best (see the warning above): nothing exported to "
                  f"{export} ({out}/{kind}_last.safetensors is the last iterate)", file=sys.stderr)
            return 1
        atomic_write(export, lambda tmp: shutil.copyfile(summary["best_checkpoint"], tmp))
        print(f"exported {export}")
    print(json.dumps({k: v for k, v in summary.items()
                      if k not in ("history", "train_config", "training", "tuned_baselines")}, default=str))
    return 0


def target_lines(summary: dict[str, Any]) -> list[str]:
    """The training summary's sample-efficiency targets in words, one line each (best baseline, best first-order
    baseline): value on ``val`` and the env steps at which the policy first reached it, or that there was none."""
    out = []
    for key, steps_key, what in (("baseline", "env_steps_to_reach_baseline", "best baseline"),
                                 ("first_order_baseline", "env_steps_to_reach_first_order", "best first-order baseline")):
        b = summary.get(key) or {}
        if not b.get("name") or b.get("val_final") is None:
            out.append(f"{what}: none (no baselines tuned: --baselines was empty)")
            continue
        steps = summary.get(steps_key)
        out.append(f"{what} {b['name']} {b.get('hparams', {})} on val {b['val_final']:.5g}: "
                   + ("not reached" if steps is None else f"reached after {steps:,} env steps"))
    return out
