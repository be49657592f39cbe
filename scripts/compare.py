#!/usr/bin/env python
"""Compare optimizers on held-out test problems: results JSON, markdown report and plots.

    python scripts/compare.py --preset study --out runs/main      # the RL-vs-supervised study (README)
    python scripts/compare.py --env l2o/Quadratic-v0 [--env ...] \\
        --policies sgd momentum nag adam rmsprop cg lbfgs [lstm[=CKPT] gps[=CKPT] ppo[=CKPT]] \\
        --n-problems 100 --horizon 100 [--long-horizon 1000] --seed 0 --device cpu --out runs/NAME

Baselines use the hyperparameters tuned on train problems at the horizon (agents/tuned_baselines.json, or
--tuned FILE). A learned policy without =CKPT uses the checkpoint shipped for that env in agents/pretrained/.
Presets (l2o_gym/experiments/study.py): ``study`` (every shipped learned optimizer against the tuned baselines at its
training horizon T and at 10T, MLP transfer runs, sample-efficiency table) and ``study-tiny`` (its
structure at toy size, seconds).
Writes OUT/results.json, OUT/timings.json, OUT/report.md and OUT/<Env>_T<horizon>.png.
Each evaluation runs on one thread; --workers N runs N of them in parallel processes (default: one per available
CPU). results.json is byte-identical for any N, and meant to be on any x86-64 CPU with AVX2: every kernel library
is pinned to its AVX2 code path (checked on Intel only so far: scripts/bench.py kernels; --no-portable: this
machine's fastest kernels, numbers this CPU's own); wall times go to timings.json (docs/threads.md).
Every finished job is also saved in OUT/jobs/; after Ctrl-C or a crash, the same command with --resume runs only
the jobs that had not finished.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from l2o_gym.agents.baselines import BASELINES
from l2o_gym.experiments import cli
from l2o_gym.experiments.compare import (LEARNED, TUNED_ON, CompareConfig, fmt_percent, job_status, run_comparison,
                                         saved_sections)
from l2o_gym.registry import ENV_IDS, VARIANTS
from l2o_gym.experiments.study import PRESETS, preset_config, run_study


def _variant_list() -> str:
    return "; ".join(f"{env}: {', '.join(table)}" for env, table in VARIANTS.items() if table)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a predefined study (replaces --env/--horizon/--n-problems; with --policies, only those of "
                        "its policies, e.g. --policies gps=runs/x/gps_best.safetensors to re-run it for one checkpoint)")
    p.add_argument("--env", action="extend", nargs="+", default=None, metavar="ID",
                   help=f"env id(s), repeatable; one of: {', '.join(ENV_IDS)}")
    p.add_argument("--variant", action="extend", nargs="+", default=None, metavar="NAME",
                   help="named problem variant(s) of every --env, e.g. photo_patches-wide for l2o/NNClassifier-v0 "
                        f"(one section each); per env: {_variant_list()}")
    p.add_argument("--tuned-on", choices=TUNED_ON, default="variant",
                   help="with --variant, the baselines use the hyperparameters tuned on the variant itself "
                        "(variant, the default) or on the plain env, applied unchanged (env: Li & Malik's protocol "
                        "for the NN transfer settings)")
    p.add_argument("--policies", nargs="+", default=None, metavar="NAME[=CKPT]",
                   help=f"policies (default: every baseline tuned for all the envs): {', '.join(BASELINES)}, "
                        f"{', '.join(k + '[=CKPT]' for k in LEARNED)}")
    p.add_argument("--n-problems", type=cli.positive_int, default=None, help="test problems per env (default: 100)")
    p.add_argument("--horizon", type=cli.positive_int, default=None, help="iterations T (default: 100)")
    p.add_argument("--long-horizon", type=cli.positive_int, default=None, help="also evaluate at this horizon, e.g. 10×T")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="test-instance seed (default: %(default)s)")
    p.add_argument("--device", type=cli.device, default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--out", type=cli.out_dir, required=True, help="output folder, e.g. runs/NAME")
    p.add_argument("--tuned", default=None, help="tuned-hyperparameter JSON (default: the shipped one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress log lines (warnings still show)")
    cli.deprecated_alias(p, "--no-progress", "--quiet", "quiet", store_const=True)
    p.add_argument("--workers", type=cli.positive_int, default=None,
                   help="parallel worker processes, one thread each; results do not depend on it "
                        "(default: one per available CPU)")
    p.add_argument("--resume", action="store_true",
                   help="take the results of the jobs an earlier run into the same --out finished (OUT/jobs/) instead "
                        "of re-running them: a stopped preset continues where it stopped")
    p.add_argument("--status", action="store_true",
                   help="run nothing: print how many jobs of each section already have a saved result in OUT/jobs/ "
                        "(what --resume would take), e.g. for a preset run across sessions")
    p.add_argument("--saved-only", action="store_true",
                   help="run nothing: write the report of the sections whose jobs all have a saved result in OUT/jobs/ "
                        "(what a --resume run has finished so far; the report names the sections it leaves out)")
    cli.add_portable_flag(p, help="pin every kernel library (torch, MKL, oneDNN, OpenBLAS) to its AVX2 code path in "
                                  "the workers: the same results.json on any x86-64 CPU with AVX2, AVX-512 or not (the "
                                  "default; checked on Intel so far: scripts/bench.py kernels); --no-portable uses "
                                  "this machine's fastest kernels (up to 1.5x faster on AVX-512, numbers this CPU's "
                                  "own; docs/threads.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return cli.run(parser, lambda args: _body(args, argv), argv, interrupted="interrupted: no report was written")


def _body(args: argparse.Namespace, argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    command = "python scripts/compare.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.preset and args.env:
        raise cli.UsageError("--preset and --env are exclusive: a preset defines its own envs")
    if not args.preset and not args.env:
        raise cli.UsageError("give --env ID [ID ...] or --preset NAME")
    given = [flag for flag, v in (("--n-problems", args.n_problems), ("--horizon", args.horizon),
                                  ("--long-horizon", args.long_horizon), ("--variant", args.variant)) if v is not None]
    if args.tuned_on != "variant" and not args.variant:
        raise cli.UsageError("--tuned-on applies to --variant sections: give --variant NAME")
    if args.preset and given:
        raise cli.UsageError(f"--preset and {', '.join(given)} are exclusive: a preset defines its own problems and "
                             "horizons")
    if args.status and (args.resume or args.saved_only):
        raise cli.UsageError(f"--status runs nothing: it cannot be combined with {'--resume' if args.resume else '--saved-only'}")
    if args.preset:
        cfg = preset_config(args.preset, policies=args.policies, seed=args.seed, device=args.device, out=args.out,
                            tuned=args.tuned, command=command, workers=args.workers, portable=args.portable,
                            resume=args.resume)
        if args.status:
            return _status(cfg)
        results = run_study(_saved_only(cfg) if args.saved_only else cfg, progress=not args.quiet)
    else:
        cfg = CompareConfig(  # without --policies: every baseline tuned for all the envs (compare.plan)
            envs=args.env, policies=args.policies or [], variants=args.variant or [], tuned_on=args.tuned_on,
            n_problems=args.n_problems or 100, horizon=args.horizon or 100,
            long_horizon=args.long_horizon, seed=args.seed, device=args.device, out=args.out, tuned=args.tuned,
            command=command, workers=args.workers, portable=args.portable, resume=args.resume,
        )
        if args.status:
            return _status(cfg)
        results = run_comparison(_saved_only(cfg) if args.saved_only else cfg, progress=not args.quiet)
    width = max(len(r.policy) for r in results)
    for r in results:
        print(f"{r.extra.get('section', r.env):40s} T={r.horizon:<5d} {r.policy:{width}s} mean f(θ_T)={r.final_mean:10.4g} "
              f"log10={r.log10_final_mean:6.2f} diverged={fmt_percent(r.diverged_fraction):>4s} evals={r.grad_evals:.0f}")
    print(f"report: {args.out}/report.md")
    return 0


def _saved_only(cfg: CompareConfig) -> CompareConfig:
    try:
        return saved_sections(cfg)
    except ValueError as exc:
        raise cli.UsageError(str(exc)) from None


def _status(cfg: CompareConfig) -> int:
    rows = job_status(cfg)
    width = max(len(name) for name, _, _ in rows)
    for name, done, total in rows:
        print(f"{name:{width}s} {done:4d} / {total:<4d}" + ("  complete" if done == total else ""))
    done, total = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'all':{width}s} {done:4d} / {total:<4d} ({sum(r[1] == r[2] for r in rows)} of {len(rows)} sections complete; "
          f"{cfg.out}/jobs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
