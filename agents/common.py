"""The one training-run lifecycle every agent kind uses, and what runs share (training record, package data).

Modelled on stable-baselines3's ``learn()``: :func:`fit` owns the loop, an :class:`Agent` fills in one
training iteration and one validation. Read top to bottom, a run is::

    resume ? load OUT/state.pt (kind checked) : move a previous run's {kind}_best/_last aside (*.previous.*)
    tune the agent's baselines on its val problems (the sample-efficiency targets)
    until agent.done():
        metrics = agent.iteration()                               # one meta-episode / BADMM iteration / SB3 chunk
        every val_every iterations (and at the last):
            v = agent.validate()                                  # mean final val objective (+ eligibility)
            if v.eligible and v.value < best: write {kind}_best.safetensors
            write {kind}_last.safetensors and state.pt            # atomic; state.pt loads with weights_only=True
        TensorBoard scalars train/* and val/* against env steps
    write the training record into {kind}_best/_last and OUT/summary.json

``KeyboardInterrupt`` (Ctrl-C) ends the loop: an agent whose state is consistent mid-iteration
(``interrupt_safe``, SB3) writes ``{kind}_last`` and ``state.pt`` at once; otherwise the ones of the last
completed validation stay (an iteration half done is never saved). ``summary.json`` records
``"interrupted": true`` and the interrupt is re-raised (scripts exit 130, see ``l2o_gym.experiments.cli``).

Run folder ``OUT``: ``{kind}_best.safetensors``, ``{kind}_last.safetensors`` (policy checkpoints, loaded by
the kind's ``load_policy``), ``state.pt`` (``{"kind", "run_format", "problem", "train_config", <agent state>, <run record>}``;
``problem`` is the config's ``env_id`` and ``family_kwargs``: resuming on other problems is refused unless
``reset_best``), ``summary.json``, ``tb/``. Every checkpoint's config holds ``train_config``, ``iteration``, ``env_steps`` and,
once the run ends, the same ``"training"`` record (:func:`training_record`) for every kind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from l2o_gym.checks import one_line
from l2o_gym.checkpoint import CheckpointError, atomic_write, load_state, save_state, update_policy_config
from l2o_gym.kernels import kernel_provenance
from l2o_gym.problems import ProblemBatch

log = logging.getLogger(__name__)

#: version of the ``state.pt`` layout written by :func:`fit` (state files without it predate the lifecycle).
RUN_FORMAT = 2


# ====================================================================================== package data
def package_file(*parts: str) -> Path:
    """A file shipped inside the ``l2o_gym.agents`` package, e.g. ``package_file("pretrained", "lstm_MLP.safetensors")``
    or ``package_file("tuned_baselines.json")`` (located with :mod:`importlib.resources`; the one locator of
    package data)."""
    return Path(str(resources.files(__package__ or "l2o_gym.agents").joinpath(*parts)))


def pretrained_dir() -> Path:
    """Folder of the shipped checkpoints (``agents/pretrained/``)."""
    return package_file("pretrained")


# ====================================================================================== training record
def steps_to_reach(curve: list[list[float]], target: float) -> int | None:
    """Env steps of the first point of ``curve`` (``[[env_steps, val_final], …]``) at or below ``target``
    (``None``: never, or no finite target — a run without baselines)."""
    if not math.isfinite(target):
        return None
    for steps, value in curve:
        if value <= target:
            return int(steps)
    return None


def _finite_or_none(x: float) -> float | None:
    """``x`` as a float, or ``None`` (JSON ``null``) for a missing target (``inf``: nothing was tuned)."""
    return float(x) if math.isfinite(x) else None


def training_record(
    curve: list[list[float]], env_steps_total: int, baseline: tuple[str, float], first_order: tuple[str, float]
) -> dict[str, Any]:
    """The training summary stored in every checkpoint under ``"training"`` (the same schema for every kind).

    Args:
        curve: ``[[env_steps, val_final], …]`` at every validation (deterministic policy on ``val``).
        env_steps_total: env steps (optimizee iterations, summed over problems) of the whole run.
        baseline: ``(name, val_final)`` of the best tuned baseline of the run (any of its ``baselines``).
        first_order: ``(name, val_final)`` of the best tuned first-order baseline (``FIRST_ORDER``).
    """
    return {
        "env_steps_total": int(env_steps_total),
        "baseline": {"name": baseline[0], "val_final": _finite_or_none(baseline[1])},
        "env_steps_to_reach_baseline": steps_to_reach(curve, baseline[1]),
        "first_order_baseline": {"name": first_order[0], "val_final": _finite_or_none(first_order[1])},
        "env_steps_to_reach_first_order": steps_to_reach(curve, first_order[1]),
        "curve": [[int(s), float(v)] for s, v in curve],
    }


# ====================================================================================== the agent contract
@dataclass
class Validation:
    """What :meth:`Agent.validate` returns.

    Attributes:
        value: the validation metric (mean final objective on the ``val`` problems; lower is better).
        eligible: whether this iterate may become ``{kind}_best`` (GPS ``--stable-factor``: stable past ``T``).
        metrics: extra scalars recorded in the history and TensorBoard (``val/<name>``).
    """

    value: float
    eligible: bool = True
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RunRecord:
    """What the lifecycle keeps about a run (saved in ``state.pt`` beside the agent's state).

    Attributes:
        curve: ``[[env_steps, val_final], …]`` at every validation.
        history: one dict of scalars per iteration (the agent's metrics, ``env_steps``, ``val_final`` when
            validated).
        best_val, best_iteration, best_env_steps: the best eligible validation (``inf``, ``-1``, ``-1`` before one).
    """

    curve: list[list[float]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = math.inf
    best_iteration: int = -1
    best_env_steps: int = -1

    def state_dict(self) -> dict[str, Any]:
        return {"curve": [[int(s), float(v)] for s, v in self.curve], "history": [dict(h) for h in self.history],
                "best_val": float(self.best_val), "best_iteration": int(self.best_iteration),
                "best_env_steps": int(self.best_env_steps)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.curve = [[int(s), float(v)] for s, v in sd["curve"]]
        self.history = [dict(h) for h in sd["history"]]
        self.best_val = float(sd["best_val"])
        self.best_iteration, self.best_env_steps = int(sd["best_iteration"]), int(sd["best_env_steps"])


class Agent(ABC):
    """One agent kind's part of a training run: a config, an iteration, a validation (see :func:`fit`).

    Subclasses set :attr:`kind` and :attr:`config` and implement the abstract methods; everything else (run
    folder, checkpoints, resume, TensorBoard, summary, Ctrl-C) is :func:`fit`'s. ``docs/adding-an-agent.md``
    walks through the LSTM as the example.
    """

    #: file prefix of the run's checkpoints (``{kind}_best.safetensors``) and the ``kind`` in ``state.pt``.
    kind: str = "agent"
    #: the agent's config dataclass (``to_dict()`` or :func:`dataclasses.asdict` gives ``train_config``).
    config: Any = None
    #: validate every this many iterations and after the last one (``0``: never).
    val_every: int = 1
    #: write ``{kind}_last`` and ``state.pt`` at every this-many-th validation (and after the last iteration).
    checkpoint_every: int = 1
    #: validate once before the first iteration (the curve then starts at 0 env steps).
    validate_first: bool = False
    #: the agent's state is consistent in the middle of an iteration (Ctrl-C then saves it).
    interrupt_safe: bool = False
    #: this process writes the run folder (``False`` on data-parallel ranks other than 0).
    writes: bool = True
    #: baselines whose tuned ``val`` objective is the sample-efficiency target (``()``: none).
    baselines: tuple[str, ...] = ("sgd", "momentum", "cg", "lbfgs")
    #: ``train_config`` fields (dotted for nested ones) a resumed run must keep: its training and ``val`` problems
    #: (the best value so far is compared across the resume) and what its state means (:func:`load_run_state`).
    structural: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.record = RunRecord()

    # -- what an agent kind supplies ---------------------------------------------------------------
    @abstractmethod
    def iteration(self) -> dict[str, float]:
        """One training iteration; returns its scalar metrics (TensorBoard ``train/*`` and the history)."""

    @abstractmethod
    def validate(self) -> Validation | float:
        """Validate the current policy (no side effects on training): a :class:`Validation`, or just its value."""

    @abstractmethod
    def save_policy(self, path: Path, extra: dict[str, Any]) -> Path:
        """Write the current policy to ``path`` (a ``.safetensors`` file) with ``extra`` in its config."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors and primitives only: ``torch.load(weights_only=True)``)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (may raise ``KeyError``/``TypeError``/``ValueError`` on a wrong state)."""

    @property
    @abstractmethod
    def iterations_done(self) -> int:
        """Iterations completed (restored by :meth:`load_state_dict`)."""

    @property
    def iterations_total(self) -> int | None:
        """The run's budget in iterations (``None``: :meth:`done` and :meth:`progress` are overridden, e.g. a
        budget in env steps)."""
        return None

    def done(self) -> bool:
        """Whether the run's budget is used up (default: :attr:`iterations_total` iterations)."""
        if self.iterations_total is None:
            raise NotImplementedError(f"{type(self).__name__} must define iterations_total or override done()")
        return self.iterations_done >= self.iterations_total

    @property
    @abstractmethod
    def env_steps(self) -> int:
        """Env steps (optimizee iterations summed over problems) used so far."""

    # -- optional hooks ------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """JSON form of the agent's config (``train_config`` in checkpoints and the summary)."""
        if self.config is None:
            return {}
        if hasattr(self.config, "to_dict"):
            return self.config.to_dict()
        return dataclasses.asdict(self.config)

    def baseline_problems(self) -> tuple[ProblemBatch, int] | None:
        """``(val problems, horizon)`` the baselines are tuned on for the sample-efficiency targets."""
        return None

    def progress(self) -> tuple[int, int]:
        """``(done, total)`` for the progress bar (default: iterations)."""
        total = self.iterations_total
        return self.iterations_done, total if total is not None else self.iterations_done + (0 if self.done() else 1)

    def check_resume(self, state: dict[str, Any], path: Path) -> None:
        """Raise :class:`CheckpointError` if ``state`` cannot continue with this agent's config."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """Extra config entries of the written checkpoints."""
        return {}

    def summary_extra(self) -> dict[str, Any]:
        """Extra entries of ``summary.json``."""
        return {}

    def on_best(self) -> None:
        """Called when a validation becomes the new best (e.g. to keep its weights in memory)."""

    def selection_rule(self) -> str:
        """How ``{kind}_best`` is chosen, in words (for the warning when nothing was eligible)."""
        return "had a finite val objective"

    def close(self) -> None:
        """Release resources (envs, writers) at the end of :func:`fit`."""

    # -- convenience -----------------------------------------------------------------------------------
    @property
    def best_val(self) -> float:
        return self.record.best_val

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.record.history

    def resume(self, path: str | Path, reset_best: bool = False) -> None:
        """Continue from the training state ``path`` (:func:`load_run_state`)."""
        load_run_state(self, path, reset_best=reset_best)


# ====================================================================================== run folder
@dataclass
class RunFolder:
    """File names of a run folder ``out`` for agent ``kind``."""

    out: Path
    kind: str

    @property
    def best(self) -> Path:
        return self.out / f"{self.kind}_best.safetensors"

    @property
    def last(self) -> Path:
        return self.out / f"{self.kind}_last.safetensors"

    @property
    def state(self) -> Path:
        return self.out / "state.pt"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    def prepare(self) -> None:
        """Create the folder (a clear :class:`CheckpointError` if it cannot be) and move a previous run's
        checkpoints aside to ``*.previous.safetensors`` (never relabel them with this run's record)."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create the run folder {str(self.out)!r}: {exc}") from None
        for path in (self.best, self.last):
            self.set_aside(path, "new run")

    def set_aside(self, path: Path, why: str) -> None:
        """Move ``path``, if it exists, to ``*.previous.safetensors``."""
        if path.is_file():
            kept = path.with_name(path.name.replace(".safetensors", ".previous.safetensors"))
            log.warning("%s in %s: the previous run's %s is moved to %s", why, self.out, path.name, kept.name)
            path.replace(kept)


def state_path(out: str | Path) -> Path:
    """``out/state.pt``."""
    return Path(out) / "state.pt"


def read_run_state(path: str | Path, kind: str) -> dict[str, Any]:
    """Load a ``state.pt`` written by :func:`fit` for agent ``kind``.

    Raises:
        CheckpointError: the file is missing or unreadable, not a dict, written by another kind of run or by
            an l2o-gym older than the common lifecycle (no ``run_format``), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training state {str(path)!r} to continue from (--resume needs a state.pt)")
    state = load_state(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"training state {str(path)!r} is a {type(state).__name__}, not an l2o-gym training state")
    found = state.get("kind")
    if "run_format" not in state or found is None:
        raise CheckpointError(
            f"training state {str(path)!r} has no 'kind'/'run_format': it was not written by an l2o-gym training "
            f"run of format {RUN_FORMAT} (an older version, or another program); start a new run")
    if found != kind:
        raise CheckpointError(f"training state {str(path)!r} belongs to a {found!r} run, not {kind!r}")
    if state["run_format"] != RUN_FORMAT:
        raise CheckpointError(f"training state {str(path)!r} has run_format {state['run_format']!r}, expected {RUN_FORMAT}")
    return state


def _problem_of(agent: Agent) -> dict[str, Any]:
    """The problems a run trains on (``env_id``, ``family_kwargs`` of its config), as saved in ``state.pt``."""
    cfg = agent.config_dict()
    return _json_form({k: cfg[k] for k in ("env_id", "family_kwargs") if k in cfg})


#: settings a resumed run may change without the saved state stopping to fit (its length, where it writes).
_RUN_SETTINGS = frozenset({"episodes", "iterations", "total_timesteps", "out", "progress", "tensorboard", "device",
                           "threads", "checkpoint_every", "eval_every", "val_every"})


def _flat_settings(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A ``train_config`` JSON form with dotted keys for nested settings (``{"gps.horizon": 400, …}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat_settings(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def _settings_diff(saved: Any, now: dict[str, Any], limit: int = 8) -> str:
    """The training settings (dotted keys for nested ones) in which ``now`` differs from the ``saved`` JSON form,
    as ``"hidden (saved 20, now 7), …"``; ``""`` if ``saved`` is not a dict (states from before the field)."""
    if not isinstance(saved, dict):
        return ""
    a, b = _flat_settings(saved), _flat_settings(now)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k.rpartition(".")[2] not in _RUN_SETTINGS]
    parts = [f"{k} (saved {a.get(k, '—')!r}, now {b.get(k, '—')!r})" for k in keys[:limit]]
    return ", ".join(parts) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _json_form(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples → lists), so that equal settings compare equal however they
    were written (a tuple from Python, a list from ``--family-kwargs``)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _check_structural(agent: Agent, state: dict[str, Any], path: Path) -> None:
    """Refuse to resume when a setting of ``agent.structural`` differs from the saved ``train_config``, naming each."""
    saved = state.get("train_config")
    if not isinstance(saved, dict) or not agent.structural:  # states from before the field are not checked
        return
    a, b = _flat_settings(saved), _flat_settings(_json_form(agent.config_dict()))
    diff = [k for k in agent.structural if a.get(k) != b.get(k)]
    if diff:
        raise CheckpointError(
            f"cannot resume: the run in {str(path)!r} was made with other "
            + ", ".join(f"{k} ({a.get(k)!r}, now {b.get(k)!r})" for k in diff)
            + ": its state, policy and best validation value would mix two runs' settings")


def load_run_state(agent: Agent, path: str | Path, reset_best: bool = False) -> None:
    """Restore ``agent`` and its run record from ``path`` (:func:`read_run_state`).

    ``reset_best`` forgets the best value, the curve and the history (fine-tuning on another family, whose
    validation objective is not comparable) and moves the earlier phase's ``{kind}_best`` aside
    (``*.previous.safetensors``).

    Raises:
        CheckpointError: see :func:`read_run_state`; also when the state does not fit the agent (missing or
            ill-typed entries, another configuration), naming the file.
    """
    path = Path(path)
    state = read_run_state(path, agent.kind)
    saved, now = state.get("problem"), _problem_of(agent)  # saved in the JSON form of _problem_of
    if not reset_best and saved is not None and saved != now:  # states from before the field are not checked
        raise CheckpointError(
            f"training state {str(path)!r} was trained on {saved}, this run is on {now}: its best validation value "
            "is not comparable. Resume with the same env and family settings or start a new run"
            + (", or fine-tune with reset_best (train_lstm.py --reset-best), which forgets the best value and the "
               "history" if agent.kind == "lstm" else ""))
    if not reset_best:  # reset_best forgets the best value: a fine-tuning phase may change the val set
        _check_structural(agent, state, path)
    agent.check_resume(state, path)
    try:
        agent.load_state_dict(state)
        agent.record.load_state_dict(state["record"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        diff = _settings_diff(state.get("train_config"), _json_form(agent.config_dict()))
        said = f"; settings that differ from the saved run: {diff}" if diff else ""
        raise CheckpointError(f"training state {str(path)!r} does not fit this {agent.kind} run{said}: "
                              f"{type(exc).__name__}: {one_line(str(exc), limit=400)}") from None
    if reset_best:
        agent.record = RunRecord()
        if agent.writes:  # the earlier phase's best is not this run's: never relabel it with this run's record
            folder = RunFolder(path.parent, agent.kind)
            folder.set_aside(folder.best, "resumed with reset_best")
    log.info("resumed from %s after %d iterations (best val %.4g)", path, agent.iterations_done, agent.record.best_val)


def _writer(out: Path | None) -> Any:
    if out is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # a broken install: tensorboard is a dependency
        log.warning("tensorboard is not installed: no TensorBoard scalars")
        return None
    return SummaryWriter(str(out / "tb"))


@contextlib.contextmanager
def _interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) back until the block is done, then raise ``KeyboardInterrupt``: a new best value and its
    ``{kind}_best`` file (or ``{kind}_last`` and ``state.pt``) are updated together, never the one without the other.
    A second Ctrl-C during the block interrupts at once. Only in the main thread with Python's default handler
    (elsewhere, or under a handler of the caller's, the block runs unguarded)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)
        log.warning("Ctrl-C: finishing the checkpoint being written first (press again to stop at once)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def _tune(agent: Agent) -> dict[str, tuple[dict[str, float], float]]:
    from l2o_gym.agents.tuning import FIRST_ORDER, tune_baselines

    at = agent.baseline_problems()
    if at is None or not agent.baselines:
        return {}
    val, horizon = at
    return tune_baselines(tuple(dict.fromkeys(tuple(agent.baselines) + FIRST_ORDER)), val, horizon)


def fit(
    agent: Agent,
    out: str | Path | None,
    *,
    resume: bool = False,
    reset_best: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
    desc: str | None = None,
) -> dict[str, Any]:
    """Run ``agent`` to the end of its budget (module docstring) and return the summary.

    Args:
        agent: the agent (possibly already part-trained: then the run continues, nothing is moved aside).
        out: run folder; ``None`` writes nothing.
        resume: first restore ``out/state.pt`` (a :class:`CheckpointError` if there is none).
        reset_best: with ``resume``, forget the best value and the history (:func:`load_run_state`).
        progress: show a tqdm bar.
        tensorboard: write TensorBoard scalars to ``out/tb``.

    Raises:
        CheckpointError: ``resume`` without a fitting ``state.pt``; an unusable ``out``.
        KeyboardInterrupt: re-raised after the checkpoints and the summary are written.
    """
    from l2o_gym.agents.tuning import FIRST_ORDER, _best_of

    folder = RunFolder(Path(out), agent.kind) if out is not None and agent.writes else None
    if resume:
        if out is None:
            raise CheckpointError("resume needs a run folder (out)")
        load_run_state(agent, state_path(out), reset_best=reset_best)
    if folder is not None:
        if agent.iterations_done == 0 and not agent.record.curve:
            folder.prepare()
        else:
            folder.out.mkdir(parents=True, exist_ok=True)
    tuned = _tune(agent)
    base_name, base_hp, base_val = _best_of(tuned, tuple(agent.baselines) if tuned else ())
    fo_name, fo_hp, fo_val = _best_of(tuned, FIRST_ORDER if tuned else ())
    if tuned:
        log.info("tuned baselines on val: %s", {k: (hp, round(v, 6)) for k, (hp, v) in tuned.items()})
        log.info("best tuned baseline: %s %s -> %.5g; first-order: %s %s -> %.5g",
                 base_name, base_hp, base_val, fo_name, fo_hp, fo_val)
    writer = _writer(folder.out) if folder is not None and tensorboard else None
    rec = agent.record
    start_steps, t0 = agent.env_steps, time.perf_counter()
    interrupted = False
    last_saved = -1

    def extra(**kw: Any) -> dict[str, Any]:
        return {"train_config": agent.config_dict(), "iteration": agent.iterations_done,
                "env_steps": int(agent.env_steps), **agent.checkpoint_extra(), **kw}

    def checkpoint() -> None:
        nonlocal last_saved
        if folder is None:
            return
        with _interrupt_after():
            agent.save_policy(folder.last, extra())
            save_state(folder.state, {**agent.state_dict(), "kind": agent.kind, "run_format": RUN_FORMAT,
                                      "problem": _problem_of(agent), "train_config": _json_form(agent.config_dict()),
                                      "record": rec.state_dict()})
            last_saved = agent.iterations_done

    def validation(metrics: dict[str, Any]) -> None:
        v = agent.validate()
        if not isinstance(v, Validation):
            v = Validation(float(v))
        value = float(v.value) if math.isfinite(v.value) else math.inf
        steps = int(agent.env_steps)
        metrics.update(v.metrics)
        metrics["val_final"] = value
        if rec.curve and rec.curve[-1][0] == steps:
            rec.curve[-1] = [steps, value]
        else:
            rec.curve.append([steps, value])
        if math.isfinite(base_val) and value <= base_val and all(c[1] > base_val for c in rec.curve[:-1]):
            log.info("%s reached the best baseline's val objective after %d env steps", agent.kind, steps)
        if v.eligible and value < rec.best_val:
            with _interrupt_after():  # a Ctrl-C here would leave a best value recorded whose file was never written
                rec.best_val, rec.best_iteration, rec.best_env_steps = value, agent.iterations_done, steps
                agent.on_best()
                if folder is not None:
                    agent.save_policy(folder.best, extra(val_final=value))
        if writer is not None:
            for k, x in metrics.items():
                if k.startswith("val"):
                    writer.add_scalar(f"val/{k}", x, steps)

    done, total = agent.progress()
    bar = tqdm(total=total, initial=done, desc=desc or agent.kind, disable=not progress)
    try:
        if agent.validate_first and not rec.curve:
            validation({})
        while not agent.done():
            metrics = dict(agent.iteration())
            metrics.setdefault("env_steps", float(agent.env_steps))
            due = agent.val_every > 0 and (agent.iterations_done % agent.val_every == 0 or agent.done())
            if due:
                validation(metrics)
            rec.history.append({k: (float(x) if isinstance(x, (int, float)) else x) for k, x in metrics.items()})
            if writer is not None:
                for k, x in metrics.items():
                    if not k.startswith("val") and isinstance(x, (int, float)):
                        writer.add_scalar(f"train/{k}", x, int(agent.env_steps))
                writer.flush()
            if due and (agent.iterations_done % (agent.checkpoint_every * max(agent.val_every, 1)) == 0 or agent.done()):
                checkpoint()
            done, total = agent.progress()
            bar.total = total
            bar.update(done - bar.n)
            bar.set_postfix(val=f"{rec.curve[-1][1]:.4g}" if rec.curve else "-", best=f"{rec.best_val:.4g}")
    except KeyboardInterrupt:
        interrupted = True
        if agent.interrupt_safe:
            log.warning("interrupted after %d env steps: writing a final checkpoint", agent.env_steps)
            checkpoint()
        else:
            log.warning("interrupted during iteration %d; %s", agent.iterations_done + 1,
                        f"the training state of iteration {last_saved if last_saved >= 0 else 'the last validation'} "
                        f"is intact: continue with --resume" if folder is not None and folder.state.is_file()
                        else "no training state was saved yet")
    finally:
        bar.close()
    if not interrupted and last_saved != agent.iterations_done:
        checkpoint()
    wall = time.perf_counter() - t0
    if rec.best_iteration < 0 and rec.curve:
        log.warning("no iteration %s: no %s_best checkpoint (%s_last is the last iterate)",
                    agent.selection_rule(), agent.kind, agent.kind)
    training = training_record(rec.curve, int(agent.env_steps), (base_name, base_val), (fo_name, fo_val))
    if folder is not None:
        for path in (folder.best, folder.last):
            if path.is_file():
                update_policy_config(path, {"training": training})
    summary = {
        "kind": agent.kind,
        "env_id": agent.config_dict().get("env_id"),
        "best_val": rec.best_val if rec.best_iteration >= 0 else None,
        "best_iteration": rec.best_iteration,
        "best_env_steps": rec.best_env_steps,
        "final_val": rec.curve[-1][1] if rec.curve else None,
        "baseline": {**training["baseline"], "hparams": base_hp},
        "env_steps_to_reach_baseline": training["env_steps_to_reach_baseline"],
        "first_order_baseline": {**training["first_order_baseline"], "hparams": fo_hp},
        "env_steps_to_reach_first_order": training["env_steps_to_reach_first_order"],
        "tuned_baselines": {k: {"hparams": hp, "val_final": v} for k, (hp, v) in tuned.items()},
        "training": training,
        "env_steps_total": int(agent.env_steps),
        "env_steps_per_s": (agent.env_steps - start_steps) / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "kernels": kernel_provenance(),
        "interrupted": interrupted,
        "best_checkpoint": str(folder.best) if folder is not None else None,
        "last_checkpoint": str(folder.last) if folder is not None else None,
        "history": rec.history,
        "train_config": agent.config_dict(),
        **agent.summary_extra(),
    }
    if writer is not None:
        writer.close()
    if folder is not None:
        text = json.dumps(summary, indent=1, default=str) + "\n"
        atomic_write(folder.summary, lambda tmp: Path(tmp).write_text(text))
    agent.close()
    if interrupted:
        raise KeyboardInterrupt
    return summary
