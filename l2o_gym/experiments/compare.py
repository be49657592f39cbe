"""The comparison harness behind ``scripts/compare.py``: policies × envs × horizons on held-out problems.

Everything a run needs (env ids, policies, tuned hyperparameters, checkpoints, the output folder) is
resolved and checked *before* any evaluation starts, so bad input fails in seconds with a clear message.

Outputs in ``out/``: ``results.json`` (one entry per env × policy × horizon, see
:class:`l2o_gym.experiments.evaluation.EvalResult`, without ``wall_s``), ``timings.json`` (the wall seconds of
each entry, the worker count and the machine), ``report.md`` (a table per env and horizon, best in bold, links
to the plots) and one PNG of mean objective vs iteration with 95% CI bands per env and horizon.

Reproducibility: every evaluation runs on one torch thread (and one BLAS thread), in the main process
(``workers=1``) or in one of ``workers`` spawned worker processes; the evaluations are independent, so
``results.json`` is byte-identical for any worker count; with ``portable=True`` (``scripts/compare.py``'s default)
meant to be on any x86-64 CPU with AVX2 too — every kernel library pinned to its AVX2 path (:data:`PORTABLE_ENV`;
checked on Intel only so far: ``scripts/bench.py kernels``, docs/threads.md) — else only on
machines with the same CPU (the numbers of MKL, oneDNN and OpenBLAS depend on the CPU's generation and vendor).
Everything that may differ between two runs (wall times, date, machine) goes to ``timings.json`` and
``report.md`` only (``docs/threads.md``).

Resume: every finished job is also written, atomically and as soon as it finishes, to ``out/jobs/<key>.json``
(:func:`job_key`: a hash of everything its result depends on — env, policy, hyperparameters, the checkpoint's
*bytes*, horizon, problems, seed, device, true-objective stride, the kernels — pinned with ``portable``, else
the machine's CPU — and the torch and l2o-gym versions). A run with ``resume=True`` (``scripts/compare.py --resume``) into the same ``out`` takes those results
instead of re-running the jobs, so a multi-hour preset stopped by Ctrl-C, a crash or the end of a session loses
at most its unfinished jobs; the ``results.json`` it writes is byte-identical to an uninterrupted run's. The key
does not cover the library's source: after a change to the code that alters results, start a fresh ``out``.
"""

from __future__ import annotations

import concurrent.futures as _futures
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import importlib
import json
import logging
import multiprocessing
import os
import platform
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from l2o_gym.agents.baselines import BASELINES, make_baseline
from l2o_gym.agents.common import pretrained_dir
from l2o_gym.checkpoint import CheckpointError, atomic_write, read_policy_config
from l2o_gym.experiments.evaluation import EvalResult, evaluate_horizons
from l2o_gym.plotting import plot_curves
from l2o_gym.policy import Policy
from l2o_gym.experiments.tuning import load_tuned, tuned_entry
from l2o_gym.kernels import PORTABLE_ENV, can_pin
from l2o_gym.registry import env_family, env_short_name, variant_kwargs
from l2o_gym.threads import available_cpus

log = logging.getLogger(__name__)

#: learned policy kind (the ``kind`` in its checkpoints) -> "module:function" of its loader
#: ``load_policy(path, *, env_id=None, device="cpu") -> Policy``.
LEARNED: dict[str, str] = {
    "lstm": "l2o_gym.agents.lstm:load_policy",
    # one LSTM per parameter kind (conv nets): the multi-LSTM, LSTM-sub (trained on 5 of 10 labels) and the
    # single shared LSTM trained the same way (for the side-by-side comparison); docs/convnet.md
    "mlstm": "l2o_gym.agents.lstm:load_multi_policy",
    "mlstm-sub": "l2o_gym.agents.lstm:load_multi_policy",
    "mlstm-shared": "l2o_gym.agents.lstm:load_multi_policy",
    "gps": "l2o_gym.agents.gps:load_policy",
    "ppo": "l2o_gym.agents.sb3:load_policy",
    "sac": "l2o_gym.agents.sb3:load_policy",
    "recurrent_ppo": "l2o_gym.agents.sb3:load_policy",
    "coord_ppo": "l2o_gym.agents.sb3:load_policy",
}
#: checkpoint kinds a policy name accepts besides its own: ``gps`` is GPS on the full state or convolutional GPS
#: (the neural-net tasks), one loader for both.
CHECKPOINT_KINDS: dict[str, tuple[str, ...]] = {
    "gps": ("gps", "conv_gps"),
    # LSTM-sub and the shared LSTM are multi-LSTM checkpoints trained on other data or with one kind
    "mlstm-sub": ("mlstm",),
    "mlstm-shared": ("mlstm",),
}




def pretrained_path(kind: str, env_id: str) -> Path | None:
    """The shipped checkpoint ``agents/pretrained/{kind}_{EnvName}.*`` for ``env_id``, if there is one."""
    matches = sorted(pretrained_dir().glob(f"{kind}_{env_short_name(env_id)}.*"))
    return matches[0] if matches else None


@dataclass
class PolicySpec:
    """A ``--policies`` entry: ``name``, ``name=CHECKPOINT``, or ``name:oracle`` for a baseline.

    ``name:oracle`` is the *oracle* row of a baseline (Li & Malik 2017): the baseline with the hyperparameters
    tuned on the section's own setting (its variant, at the section's tuning horizon) even where the section's other baselines
    use those of another setting (:attr:`Section.tuned_as`) — the best a user could get by tuning per task.
    Its rows are labelled ``name:oracle`` and never count as "the best tuned baseline".
    """

    name: str
    checkpoint: str | None = None
    oracle: bool = False

    @property
    def label(self) -> str:
        """The row label: ``name``, or ``name:oracle``."""
        return self.name + (ORACLE_SUFFIX if self.oracle else "")

    @classmethod
    def parse(cls, text: str) -> PolicySpec:
        name, _, ckpt = text.partition("=")
        name = name.strip().lower()
        oracle = name.endswith(ORACLE_SUFFIX)
        if oracle:
            name = name[: -len(ORACLE_SUFFIX)]
        if name not in BASELINES and name not in LEARNED:
            valid = ", ".join([*BASELINES, *(f"{k}[=CKPT]" for k in LEARNED), f"BASELINE{ORACLE_SUFFIX}"])
            raise ValueError(f"unknown policy {name!r}: expected one of {valid}")
        if ckpt and name in BASELINES:
            raise ValueError(f"policy {name!r} is a hand-designed baseline and takes no checkpoint (got {ckpt!r})")
        if oracle and name not in BASELINES:
            raise ValueError(f"{text.strip()!r}: only a hand-designed baseline has an oracle row ({name!r} is learned)")
        return cls(name, ckpt or None, oracle)


#: the suffix of an oracle row's policy name (:class:`PolicySpec`).
ORACLE_SUFFIX = ":oracle"


def is_oracle(policy: str) -> bool:
    """Whether ``policy`` (a result's policy label) is an oracle row."""
    return policy.endswith(ORACLE_SUFFIX)


def _load_learned(spec: PolicySpec, env_id: str, device: str) -> tuple[Policy, str]:
    path = spec.checkpoint or pretrained_path(spec.name, env_id)
    if path is None:
        raise CheckpointError(
            f"no {spec.name} checkpoint is shipped for {env_id}; train one (see README) and pass {spec.name}=PATH"
        )
    if not Path(path).is_file():
        what = "is a folder, not a checkpoint file" if Path(path).is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {str(path)!r} for policy {spec.name!r} {what}")
    found = read_policy_config(path).get("kind")
    if found not in CHECKPOINT_KINDS.get(spec.name, (spec.name,)):
        hint = f"; pass it as {found}={path}" if found in LEARNED else ""
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {found!r} policy, not {spec.name!r}{hint}")
    module, _, fn = LEARNED[spec.name].partition(":")
    try:
        loader: Callable[..., Policy] = getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"policy kind {spec.name!r} is not available in this installation ({exc})") from None
    return loader(path, env_id=env_id, device=device), str(path)


@dataclass
class Section:
    """One block of a comparison: an env (optionally a named problem variant) at a horizon ``T``.

    Args:
        env: registered env id.
        policies: ``--policies`` entries (baselines, ``lstm``, ``gps``, ``ppo``, optionally ``=CKPT``).
        horizon: ``T``; baselines use hyperparameters tuned at ``T`` when the tuned file has them.
        long_horizon: also evaluate at this horizon (``10·T`` in the study), same policies and problems.
        variant: a named problem variant of ``env`` (:data:`l2o_gym.envs.VARIANTS`, e.g. ``"relu"``).
        n_problems: held-out problems (``None``: the config's ``n_problems``).
        title: heading in the report (default ``env`` or ``env + variant``).
        tuned_as: the variant whose tuned hyperparameters the baselines use (``""``: the plain env id); ``None``
            (default): this section's own. Li & Malik's protocol tunes on the training objective only and
            applies the result unchanged to every test setting.
        tuned_horizon: the horizon whose tuned hyperparameters the baselines use (default ``horizon``).
        true_every: evaluate the true objective (families that have one) every this many steps
            (:class:`l2o_gym.core.CoreConfig`).
    """

    env: str
    policies: list[str]
    horizon: int = 100
    long_horizon: int | None = None
    variant: str | None = None
    n_problems: int | None = None
    title: str | None = None
    tuned_as: str | None = None
    tuned_horizon: int | None = None
    true_every: int = 1

    @property
    def name(self) -> str:
        return self.title or (self.env + (f" + {self.variant}" if self.variant else ""))

    @property
    def file_stem(self) -> str:
        return env_short_name(self.env) + (f"-{self.variant}" if self.variant else "")


#: :attr:`CompareConfig.tuned_on` choices.
TUNED_ON = ("variant", "env")


@dataclass
class CompareConfig:
    """Arguments of a comparison run (``scripts/compare.py`` flags).

    Either ``envs`` (× ``variants``, named problem variants of :data:`l2o_gym.registry.VARIANTS`, each applied to
    every env) × ``policies`` at ``horizon`` (and ``long_horizon``; no ``policies``: every baseline tuned for all
    the envs, :func:`tuned_baselines_for`), or explicit ``sections`` (the presets of
    :mod:`l2o_gym.experiments.study`); ``n_problems`` is the default number of held-out problems. ``tuned_on``:
    whose tuned hyperparameters the baselines of a variant use — ``"variant"`` (its own) or ``"env"`` (the plain
    env's, applied unchanged: Li & Malik's protocol for the NN transfer settings, :attr:`Section.tuned_as` ``""``).
    ``workers``: parallel worker processes for the independent evaluations (``None``: one per available CPU,
    :func:`l2o_gym.threads.available_cpus`); each evaluation runs on one thread, so results do not depend on it.
    ``portable``: run every job in spawned workers whose kernel libraries are pinned to their AVX2 code paths
    (:data:`l2o_gym.kernels.PORTABLE_ENV`), so that ``results.json`` is also identical across x86-64 CPUs with and without
    AVX-512 (slower on AVX-512 machines; the default uses the machine's best kernels). ``resume``: take the
    results of jobs a previous run into ``out`` finished (``out/jobs/``, module docstring) instead of re-running them.
    ``note``: a line shown under the report's title (e.g. which sections a partial report leaves out).
    """

    envs: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)
    tuned_on: str = "variant"
    n_problems: int = 100
    horizon: int = 100
    long_horizon: int | None = None
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/compare"
    tuned: str | None = None
    family_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    command: str = ""
    sections: list[Section] | None = None
    title: str = "l2o-gym comparison"
    workers: int | None = None
    portable: bool = False
    resume: bool = False
    note: str = ""

    def resolve_workers(self, n_jobs: int) -> int:
        """The worker processes a run of ``n_jobs`` evaluations uses (at most one per job)."""
        w = self.workers
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ValueError(f"workers must be a positive integer, got {w!r}")
        return max(1, min(w or available_cpus(), n_jobs))

    def resolve_sections(self) -> list[Section]:
        if self.sections is not None:
            return list(self.sections)
        if self.tuned_on not in TUNED_ON:
            raise ValueError(f"unknown tuned_on {self.tuned_on!r}: expected one of {', '.join(TUNED_ON)}")
        tuned_as = None if self.tuned_on == "variant" else ""
        return [Section(env, list(self.policies), self.horizon, self.long_horizon, variant=v,
                        tuned_as=tuned_as if v else None)
                for env in dict.fromkeys(self.envs) for v in dict.fromkeys(self.variants or [None])]


def tuned_baselines_for(envs: list[str], horizon: int, tuned: str | None = None) -> list[str]:
    """The baselines (in :data:`~l2o_gym.agents.baselines.BASELINES` order) with tuned hyperparameters for every env
    of ``envs`` (at ``horizon``, or another horizon as :func:`~l2o_gym.experiments.tuning.tuned_entry` falls back)
    in the tuned file ``tuned``: what a comparison without policies runs (:func:`plan`). Empty if the file has none
    for some env."""
    return _tuned_baselines(load_tuned(tuned), envs, horizon)


def _tuned_baselines(table: dict[str, Any], envs: list[str], horizon: int) -> list[str]:
    return [name for name in BASELINES if all(tuned_entry(table, env, name, horizon) is not None for env in envs)]


@dataclass
class _Job:
    section: Section
    label: str
    policy: Policy
    horizon: int
    extra: dict[str, Any]
    family_kwargs: dict[str, Any]
    n_problems: int
    hparams: dict[str, Any] | None = None  # baselines: rebuilt from these in a worker process
    checkpoint: str | None = None  # learned policies: reloaded from this file in a worker process

    def task(self, cfg: CompareConfig) -> _Task:
        return _Task(self.section.env, self.label, self.hparams, self.checkpoint, self.horizon, self.n_problems,
                     self.family_kwargs, cfg.seed, cfg.device, self.section.true_every)

    def cost(self) -> float:
        """Rough relative cost (problems × steps × coordinates, learned policies ×10), to start long jobs first."""
        dim = env_family(self.section.env, **self.family_kwargs).dim
        return self.n_problems * self.horizon * dim * (10 if self.checkpoint else 1)


@dataclass(frozen=True)
class _Task:
    """What a worker process needs to rebuild and run one job (picklable: no tensors, no policy objects)."""

    env: str
    label: str
    hparams: dict[str, Any] | None
    checkpoint: str | None
    horizon: int
    n_problems: int
    family_kwargs: dict[str, Any]
    seed: int
    device: str
    true_every: int = 1
    prefixes: tuple[int, ...] = ()  # shorter horizons reported from the same rollout (evaluate_horizons)


def plan(cfg: CompareConfig) -> list[_Job]:
    """Resolve and check everything; raises ``ValueError``/``CheckpointError``/``OSError`` before any work."""
    from l2o_gym.registry import ENV_TABLE

    sections = cfg.resolve_sections()
    if not sections:
        raise ValueError("nothing to compare: give at least one env id (or a preset)")
    for sec in sections:
        if sec.env not in ENV_TABLE:
            raise ValueError(f"unknown env id {sec.env!r}: expected one of {', '.join(ENV_TABLE)}")
        n = sec.n_problems if sec.n_problems is not None else cfg.n_problems  # 0 is refused, not the default
        if isinstance(sec.true_every, bool) or not isinstance(sec.true_every, int) or sec.true_every < 1:
            raise ValueError(f"true_every must be a positive integer, got {sec.true_every!r} in {sec.name}")
        if n < 1 or sec.horizon < 1 or (sec.long_horizon is not None and sec.long_horizon < 1):
            raise ValueError(f"n_problems, horizon and long_horizon must be positive, got {n}, {sec.horizon}, {sec.long_horizon}")
        if sec.long_horizon is not None and sec.long_horizon <= sec.horizon:
            what = "equals" if sec.long_horizon == sec.horizon else "is shorter than"
            raise ValueError(f"long_horizon={sec.long_horizon} {what} the horizon T={sec.horizon} of {sec.name}: "
                             "the long-horizon check runs past T (e.g. 10·T)")
    defaults = not all(sec.policies for sec in sections)  # no policies given: the baselines tuned for every env
    need_tuned = defaults or any(PolicySpec.parse(p).name in BASELINES for sec in sections for p in sec.policies)
    tuned = load_tuned(cfg.tuned) if need_tuned else {}
    if defaults:
        envs = list(dict.fromkeys(sec.env for sec in sections))
        default = _tuned_baselines(tuned, envs, cfg.horizon)
        if not default:
            raise ValueError(f"no baseline has tuned hyperparameters for every env of {envs}: give the policies, or "
                             "tune them with scripts/tune_baselines.py")
        sections = [sec if sec.policies else dataclasses.replace(sec, policies=list(default)) for sec in sections]
    specs_by_section = [[PolicySpec.parse(p) for p in sec.policies] for sec in sections]
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"output folder {str(out)!r} is not writable: {exc}") from None
    jobs: list[_Job] = []
    loaded: dict[tuple[str, str | None, str], tuple[Policy, str]] = {}
    for sec, specs in zip(sections, specs_by_section):
        fkw = {**cfg.family_kwargs.get(sec.env, {}), **variant_kwargs(sec.env, sec.variant)}
        dim = env_family(sec.env, **fkw).dim
        horizons = [sec.horizon] + ([sec.long_horizon] if sec.long_horizon else [])
        for spec in specs:
            if spec.name in BASELINES:
                own = spec.oracle or sec.tuned_as is None
                tuned_variant = sec.variant if own else (sec.tuned_as or None)
                tuned_h = sec.tuned_horizon or sec.horizon
                entry = tuned_entry(tuned, sec.env, spec.name, tuned_h, tuned_variant)
                if entry is None:
                    variant = f" --variant {tuned_variant}" if tuned_variant else ""
                    raise ValueError(
                        f"no tuned hyperparameters for {spec.label!r} on {sec.name}: run `python scripts/tune_baselines.py "
                        f"--env {sec.env}{variant} --horizon {tuned_h} --policies {spec.name}`"
                    )
                policy: Policy = make_baseline(spec.name, **entry["hparams"])
                extra: dict[str, Any] = {"hparams": entry["hparams"], "tuned_horizon": entry.get("horizon")}
                if not own or spec.oracle:
                    extra["tuned_as"] = tuned_variant or sec.env
                hparams, ckpt = dict(entry["hparams"]), None
            else:
                key = (spec.name, spec.checkpoint, sec.env)
                if key not in loaded:
                    loaded[key] = _load_learned(spec, sec.env, cfg.device)
                policy, path = loaded[key]
                pdim = policy.dim
                if pdim is not None and pdim != dim:
                    raise CheckpointError(f"checkpoint {path!r} is for dimension {pdim}, {sec.name} has dimension {dim}")
                extra = {"checkpoint": path}
                hparams, ckpt = None, path
            extra["section"] = sec.name
            if sec.variant:
                extra["variant"] = sec.variant
            for h in horizons:
                jobs.append(_Job(sec, spec.label, policy, h, dict(extra), fkw, sec.n_problems or cfg.n_problems,
                                 hparams, ckpt))
    return jobs


def fmt_number(x: float) -> str:
    """Table format of an objective value: 3 significant digits, scientific below 1e-3 (``inf``/``nan`` as is)."""
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def fmt_percent(fraction: float) -> str:
    """Table format of a fraction of problems: ``"0%"`` only when it is exactly 0 (one diverged problem in 1,000
    is ``"0.1%"``, not ``"0%"``) and ``"100%"`` only when it is exactly 1 (199 of 200 is ``"99.5%"``), whole
    percents in between, never in exponent notation."""
    pct = 100 * fraction
    if 0 < pct < 0.995:
        s = f"{pct:.1g}"
        return (f"{pct:.{max(1, -int(s.split('e')[1]))}f}" if "e" in s else s) + "%"  # 1e-05 -> 0.00001
    if 99 < pct < 100:
        k = 0
        while f"{pct:.{k}f}" == f"{100:.{k}f}":  # as many decimals as it takes not to read 100
            k += 1
        return f"{pct:.{k}f}%"
    return f"{pct:.0f}%"


def write_report(
    results: list[EvalResult], out: Path, cfg: CompareConfig, summary_lines: list[str] | None = None
) -> Path:
    """Write ``report.md`` (``summary_lines`` first, then a table and plot per section and horizon) and the PNG
    plots for ``results``; returns the report path."""
    summary_lines = summary_lines or []
    lines = [
        f"# {cfg.title}",
        "",
        f"- command: `{cfg.command or 'l2o_gym.experiments.compare.run_comparison'}`",
        f"- date: {_dt.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, device {cfg.device}",
        *([f"- **{cfg.note}**"] if cfg.note else []),
        f"- held-out `test` problems (seed {cfg.seed}; how many: each section's heading); "
        "baselines tuned on `train` at the section's T (see `agents/tuned_baselines.json`) and run unchanged at "
        "the long horizon. Best mean final objective in **bold**.",
        "- columns: mean f(θ_T) with 95% bootstrap CI, median f(θ_T), log10 of the mean, AUC (mean objective "
        "over the run), fraction diverged, objective+gradient evaluations per problem, wall time. ⚠: some "
        "problems diverged; they count in the means with their last finite objective.",
        "",
    ]
    lines += list(summary_lines)
    groups: dict[tuple[str, int], list[EvalResult]] = {}
    for r in results:
        groups.setdefault((r.extra.get("section", r.env), r.horizon), []).append(r)
    used: set[str] = set()
    for (section, horizon), rows in groups.items():
        variant = rows[0].extra.get("variant")
        name = f"{env_short_name(rows[0].env)}{'-' + variant if variant else ''}_T{horizon}.png"
        if name in used:  # two sections of one env and variant (e.g. a 10T check beside the T section)
            name = f"{re.sub(r'[^A-Za-z0-9]+', '-', section).strip('-')}_T{horizon}.png"
        used.add(name)
        plot_curves(
            {r.policy: r.curve_mean for r in rows},
            out / name,
            f"{section}, T = {horizon}, {rows[0].n_problems} test problems",
            bands={r.policy: (r.curve_ci_low, r.curve_ci_high) for r in rows},
            highlight=[r.policy for r in rows if r.policy in LEARNED],
        )
        best = min(rows, key=lambda r: r.final_mean).policy
        lines += [
            f"## {section} — T = {horizon}, {rows[0].n_problems} problems",
            "",
            "| policy | mean f(θ_T) [95% CI] | median | log10 mean | AUC | diverged | grad evals | wall s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            mean = f"{fmt_number(r.final_mean)} [{fmt_number(r.curve_ci_low[-1])}, {fmt_number(r.curve_ci_high[-1])}]"
            cells = [r.policy, mean, fmt_number(r.final_median), f"{r.log10_final_mean:.2f}", fmt_number(r.auc_mean),
                     fmt_percent(r.diverged_fraction) + (" ⚠" if r.diverged_fraction > 0 else ""), f"{r.grad_evals:.0f}", f"{r.wall_s:.2f}"]
            if r.policy == best:
                cells = [f"**{c}**" for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"![{section} T={horizon}]({name})", ""]
    path = out / "report.md"
    text = "\n".join(lines)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def _build_policy(task: _Task) -> Policy:
    if task.checkpoint is None:
        return make_baseline(task.label.removesuffix(ORACLE_SUFFIX), **(task.hparams or {}))
    key = (task.label, task.checkpoint, task.env, task.device)
    if key not in _WORKER_POLICIES:
        module, _, fn = LEARNED[task.label].partition(":")
        loader = getattr(importlib.import_module(module), fn)
        _WORKER_POLICIES[key] = loader(task.checkpoint, env_id=task.env, device=task.device)
    return _WORKER_POLICIES[key]


#: learned policies a worker process has loaded (one load per checkpoint and env, not one per job).
_WORKER_POLICIES: dict[tuple[str, str, str, str], Policy] = {}


def _init_worker(log_level: int) -> None:
    """Worker start-up: one torch thread and one BLAS thread for the whole process (see the module docstring)."""
    from threadpoolctl import threadpool_limits

    logging.basicConfig(level=log_level, format="%(message)s")
    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")


def _evaluate_task(task: _Task, policy: Policy | None = None) -> list[EvalResult]:
    """Run one task on one thread (in a worker, or in the main process with ``policy`` already built): its
    results at ``task.prefixes`` and ``task.horizon`` from one rollout (:func:`evaluate_horizons`), ascending."""
    from threadpoolctl import threadpool_limits

    cpu = time.process_time()
    with threadpool_limits(limits=1, user_api="blas"):
        policy = policy if policy is not None else _build_policy(task)
        loading = time.process_time() - cpu
        results = evaluate_horizons(
            policy, task.env, horizons=(*task.prefixes, task.horizon), n_problems=task.n_problems, seed=task.seed,
            split="test", device=task.device, family_kwargs=task.family_kwargs, label=task.label, threads=1,
            true_every=task.true_every, record_cpu=True,
        )
    for res in results:
        res.extra["cpu_s"] += loading  # policy loading included; moved to timings.json
        res.extra["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the kernels used; timings.json
        if res.horizon != task.horizon:
            res.extra["prefix_of"] = task.horizon  # its CPU and wall time are part of that run's; timings.json
    return results


#: /proc/cpuinfo fields that name the CPU in :func:`kernel_fingerprint`: x86's vendor and model, ARM's implementer,
#: part and variant (its cpuinfo has no model name), POWER's ``cpu``, RISC-V's ``uarch``.
_CPUINFO_CPU = ("vendor_id", "model name", "CPU implementer", "CPU part", "CPU variant", "cpu", "uarch")
#: /proc/cpuinfo fields that list the instruction-set extensions (x86, ARM, s390x, RISC-V).
_CPUINFO_FLAGS = ("flags", "Features", "features", "isa")


def kernel_fingerprint(portable: bool) -> dict[str, Any]:
    """What decides the kernels a job runs with, part of its cache key (:func:`job_key`): the pinned environment
    (:data:`PORTABLE_ENV`) when ``portable``; else this machine — CPU vendor and model, a hash of its instruction-set
    flags and torch's kernel capability — so that a job saved on another machine (a folder carried between
    sessions or machines) is run again rather than mixed with this machine's numbers."""
    if portable:
        return {"portable": dict(PORTABLE_ENV)}
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            key = "flags" if key in _CPUINFO_FLAGS else key  # x86 "flags", ARM "Features", …
            if (key == "flags" or key in _CPUINFO_CPU) and key not in info:
                info[key] = value.strip()
    except OSError:  # not Linux
        pass
    if not any(k in info for k in _CPUINFO_CPU):  # not Linux, or a /proc/cpuinfo that names no CPU: the platform's
        info["model name"] = platform.processor() or platform.machine()
    flags = hashlib.sha256(" ".join(sorted(info.pop("flags", "").split())).encode()).hexdigest()[:16]
    pins = {k: os.environ[k] for k in PORTABLE_ENV if k in os.environ}  # set by hand in the shell: they count too
    return {"portable": False, "cpu": info, "cpu_flags": flags, "capability": torch.backends.cpu.get_cpu_capability(),
            **({"kernel_env": pins} if pins else {})}


@contextlib.contextmanager
def _child_environment(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` in ``os.environ`` while worker processes are spawned (they inherit it), then restore it."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: the subfolder of a run's ``out`` with one JSON file per finished job (module docstring: resume).
JOBS_DIR = "jobs"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def job_key(task: _Task, portable: bool = False) -> str:
    """The cache key of one job: a hash of the task (the checkpoint by content, not path), the kernels
    (:func:`kernel_fingerprint`: the pinned ones, or this machine's) and the torch and l2o-gym versions — everything
    its :class:`EvalResult` depends on but the library's source."""
    from importlib.metadata import version

    d = dataclasses.asdict(task)
    if task.checkpoint is not None:
        d["checkpoint"] = _sha256(task.checkpoint)
    d.update(kernel_fingerprint(portable), torch=torch.__version__, l2o_gym=version("l2o-gym"))
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _save_job(path: Path, res: EvalResult) -> None:
    payload = json.dumps(dataclasses.asdict(res))  # floats round-trip exactly; inf/nan as JSON extensions
    atomic_write(path, lambda tmp: Path(tmp).write_text(payload))


def _load_job(path: Path) -> EvalResult | None:
    """A finished job's result, or ``None`` (with a warning) when the file is unreadable."""
    try:
        return EvalResult(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring the unreadable job file %s (%s): the job runs again", path, exc)
        return None


def _pinnable(cfg: CompareConfig, warn: bool = False) -> CompareConfig:
    """``cfg`` with ``portable`` as it can hold on this CPU: pinning needs AVX2 (:func:`can_pin`); without it the
    jobs run (and are keyed, :func:`job_key`) with this CPU's own kernels — logged when ``warn``."""
    if not cfg.portable or can_pin():
        return cfg
    if warn:
        log.warning("this CPU has no AVX2 (torch reports %s): the kernels cannot be pinned to their AVX2 paths, so "
                    "the numbers are this CPU's own (as without portable)", torch.backends.cpu.get_cpu_capability())
    return dataclasses.replace(cfg, portable=False)


def run_jobs(cfg: CompareConfig, progress: bool = True) -> list[EvalResult]:
    """Plan and evaluate every job of ``cfg``; the only files written are the output-folder probe and the finished
    jobs' ``out/jobs/<key>.json`` (module docstring: resume).

    Jobs run one thread each: in this process when ``cfg.resolve_workers`` is 1 (and not ``cfg.portable``), else
    in a pool of spawned worker processes (spawn, not fork: a forked child of a process that has used torch's
    thread pool can deadlock), longest jobs first. Results come back in plan order whatever the worker count.
    """
    cfg = _pinnable(cfg, warn=True)
    jobs = plan(cfg)
    cache = Path(cfg.out) / JOBS_DIR
    cache.mkdir(parents=True, exist_ok=True)
    tasks = [job.task(cfg) for job in jobs]
    files = [cache / f"{job_key(task, cfg.portable)}.json" for task in tasks]
    results: list[EvalResult | None] = [None] * len(jobs)
    if cfg.resume:
        for i, path in enumerate(files):
            results[i] = _load_job(path) if path.is_file() else None
        log.info("resume: %d of %d jobs finished before (%s)", sum(r is not None for r in results), len(jobs), cache)
    # one rollout per section and task (policy, checkpoint, hyperparameters, problems …): its shorter horizons are
    # prefixes of the longest (evaluate_horizons). Jobs that repeat a horizon (the same policy listed twice, a long
    # horizon equal to T) run on their own.
    units: dict[tuple[int, str], list[int]] = {}
    for i, (job, task) in enumerate(zip(jobs, tasks)):
        other = dataclasses.asdict(dataclasses.replace(task, horizon=0))
        units.setdefault((id(job.section), json.dumps(other, sort_keys=True, default=str)), []).append(i)
    groups: list[list[int]] = []
    for idx in units.values():
        idx = sorted(idx, key=lambda i: jobs[i].horizon)
        horizons = [jobs[i].horizon for i in idx]
        shareable = len(set(horizons)) == len(horizons) and all(
            h % jobs[idx[0]].section.true_every == 0 for h in horizons[:-1])
        groups += [idx] if shareable else [[i] for i in idx]
    pending = [g for g in groups if any(results[i] is None for i in g)]
    workers = cfg.resolve_workers(len(pending)) if pending else 1
    bar = tqdm(total=len(jobs), desc=f"compare ({workers} worker{'s' if workers > 1 else ''})", disable=not progress)

    def done(i: int, res: EvalResult, fresh: bool = True) -> None:
        job = jobs[i]
        if fresh:
            _save_job(files[i], res)
        res.extra.update(job.extra)
        if job.family_kwargs:
            res.extra["family_kwargs"] = job.family_kwargs
        log.info("%s %s T=%d: mean f(θ_T) %.4g, diverged %.0f%%", job.section.name, job.label, job.horizon,
                 res.final_mean, 100 * res.diverged_fraction)
        results[i] = res
        bar.update()

    def group_task(group: list[int]) -> _Task:
        return dataclasses.replace(tasks[group[-1]], prefixes=tuple(jobs[i].horizon for i in group[:-1]))

    for group in groups:
        if group not in pending:
            for i in group:
                done(i, results[i], fresh=False)  # type: ignore[arg-type]
    if workers == 1 and not cfg.portable:
        for group in pending:
            for i, res in zip(group, _evaluate_task(group_task(group), jobs[group[-1]].policy)):
                done(i, res)
    elif pending:
        order = sorted(pending, key=lambda g: -jobs[g[-1]].cost())
        ctx = multiprocessing.get_context("spawn")
        with _child_environment(PORTABLE_ENV if cfg.portable else {}), _futures.ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(logging.getLogger().getEffectiveLevel(),)
        ) as pool:
            futures = {pool.submit(_evaluate_task, group_task(g)): g for g in order}
            try:
                for fut in _futures.as_completed(futures):
                    for i, res in zip(futures[fut], fut.result()):
                        done(i, res)
            except BaseException:  # a failed job or Ctrl-C: do not start the queued jobs
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    bar.close()
    return [r for r in results if r is not None]


#: ``results.json`` holds only what a rerun reproduces bit for bit; these run-dependent fields of each
#: entry go to ``timings.json`` instead: ``wall_s`` (the rollout's wall seconds), ``cpu_s`` (CPU seconds of
#: the whole job in its process, policy loading included — on one thread, the job's wall time on an idle core)
#: and ``cpu_capability`` (the torch kernel set the job ran with, e.g. ``AVX512``; ``AVX2`` with ``portable``);
#: ``prefix_of``: the longer horizon whose rollout this result was read from (its seconds are part of that run's).
TIMING_FIELDS: tuple[str, ...] = ("wall_s", "cpu_s", "cpu_capability", "prefix_of")


def write_results(
    results: list[EvalResult], out: Path, extra: dict[str, Any] | None = None, workers: int | None = None
) -> Path:
    """Write ``results.json`` — ``{"runs": [...], **extra}`` (strict JSON: no NaN), each run without
    :data:`TIMING_FIELDS` — and ``timings.json`` — ``{"runs": [{section, policy, horizon, wall_s, cpu_s}], "workers",
    "machine", "date"}``. Two runs of the same config write byte-identical ``results.json`` files."""
    runs, timings = [], []
    for r in results:
        d = r.as_dict()
        timing = {"section": r.extra.get("section", r.env), "policy": r.policy, "horizon": r.horizon}
        timing.update({k: d.pop(k) for k in TIMING_FIELDS if k in d})
        runs.append(d)
        timings.append(timing)
    meta = {"workers": workers, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {available_cpus()} CPUs available, torch {torch.__version__}"}
    payload_t = json.dumps({"runs": timings, **meta}, indent=1)
    atomic_write(out / "timings.json", lambda tmp: Path(tmp).write_text(payload_t))
    payload = json.dumps({"runs": runs, **(extra or {})}, indent=1, allow_nan=False)
    return atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(payload))


def job_status(cfg: CompareConfig) -> list[tuple[str, int, int]]:
    """``(section name, finished, total)`` per section of ``cfg``: how many of its jobs have a saved result in
    ``cfg.out/jobs/`` under this config's keys (pinned or this machine's kernels, :func:`job_key`) — what a
    ``resume`` run would take instead of running. Plans the jobs (loads the checkpoints) but runs nothing."""
    cfg = _pinnable(cfg)
    return _job_counts(cfg, plan(cfg))


def _job_counts(cfg: CompareConfig, jobs: list[_Job]) -> list[tuple[str, int, int]]:
    """:func:`job_status` of the planned ``jobs`` of ``cfg`` (already :func:`_pinnable`)."""
    cache = Path(cfg.out) / JOBS_DIR
    counts: dict[str, list[int]] = {}
    for job in jobs:
        c = counts.setdefault(job.section.name, [0, 0])
        c[0] += (cache / f"{job_key(job.task(cfg), cfg.portable)}.json").is_file()
        c[1] += 1
    return [(name, done, total) for name, (done, total) in counts.items()]


def saved_sections(cfg: CompareConfig) -> CompareConfig:
    """``cfg`` narrowed to the sections whose every job has a saved result in ``cfg.out/jobs/`` (:func:`job_status`),
    with ``resume`` on and a :attr:`~CompareConfig.note` naming the sections left out: running it evaluates nothing
    and writes the report of what a long run (a preset across sessions) has finished so far. A ``ValueError`` when
    no section is complete yet."""
    jobs = plan(cfg)  # once: planning loads the learned optimizers' checkpoints
    rows = _job_counts(_pinnable(cfg), jobs)
    complete = {name for name, done, total in rows if done == total}
    if not complete:
        done, total = sum(r[1] for r in rows), sum(r[2] for r in rows)
        raise ValueError(f"no section of this run is complete in {cfg.out}/jobs yet ({done} of {total} jobs saved): "
                         "nothing to report (--status shows each section's count)")
    left = [f"{name} ({done}/{total})" for name, done, total in rows if name not in complete]
    note = (f"partial report: {len(complete)} of {len(rows)} sections, from the saved jobs; left out (jobs saved/total): "
            + "; ".join(left)) if left else ""
    # a section without policies takes the baselines tuned for every env of the run (plan): keep the run's list
    default: dict[str, list[str]] = {}
    for j in jobs:
        labels = default.setdefault(j.section.name, [])
        if j.label not in labels:
            labels.append(j.label)
    sections = [s if s.policies else dataclasses.replace(s, policies=default[s.name])
                for s in cfg.resolve_sections() if s.name in complete]
    return dataclasses.replace(cfg, sections=sections, envs=[], variants=[], resume=True,
                               note="; ".join(x for x in (cfg.note, note) if x))


def run_comparison(cfg: CompareConfig, progress: bool = True) -> list[EvalResult]:
    """Plan, evaluate every job, write ``results.json``, ``report.md`` and plots into ``cfg.out``."""
    results = run_jobs(cfg, progress)
    out = Path(cfg.out)
    write_results(results, out, workers=cfg.resolve_workers(len(results)))
    write_report(results, out, cfg)
    return results
