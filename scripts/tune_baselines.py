#!/usr/bin/env python
"""Tune the hand-designed baselines' hyperparameters on train problems and save them per env.

    python scripts/tune_baselines.py --env l2o/Quadratic-v0 --policies sgd adam --out agents/tuned_baselines.json

Grids, divergence penalty and selection rule: the one protocol of agents/tuning.py (``l2o_gym.agents.tuning``) (also used by
GPS and SB3 training). The test split is never read.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from l2o_gym.agents.baselines import BASELINES
from l2o_gym.agents.tuning import SEARCHES
from l2o_gym.experiments import cli
from l2o_gym.registry import ENV_IDS
from l2o_gym.experiments.tuning import default_tuned_path, setting_key, tune, variant_kwargs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", nargs="+", default=list(ENV_IDS), choices=ENV_IDS, metavar="ID",
                        help=f"env ids (default: all): {', '.join(ENV_IDS)}")
    parser.add_argument("--policies", nargs="+", default=list(BASELINES), choices=list(BASELINES), metavar="NAME",
                        help=f"baselines (default: all): {', '.join(BASELINES)}")
    parser.add_argument("--n-problems", type=cli.positive_int, default=100,
                        help="train problems per configuration (default: %(default)s)")
    parser.add_argument("--horizon", type=cli.positive_int, default=100, help="iterations (default: %(default)s)")
    parser.add_argument("--variant", nargs="+", default=[None], metavar="V",
                        help="named problem variant(s) of the env(s), each its own setting, e.g. relu hidden40 for "
                             "l2o/MLP-v0 (l2o_gym.registry.VARIANTS); none: the plain env (default: none)")
    parser.add_argument("--search", default="grid", choices=list(SEARCHES),
                        help="grid: every configuration; coarse: coarse-to-fine along the learning rate, for "
                             "expensive families (conv nets, neural art) (default: %(default)s)")
    parser.add_argument("--split", default="train", choices=["train", "val"], help="never test (default: %(default)s)")
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0, help="seed (default: %(default)s)")
    parser.add_argument("--device", type=cli.device, default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--out", type=cli.out_file, default=str(default_tuned_path()),
                        help="JSON file to merge into (default: the shipped one)")
    parser.add_argument("--quiet", action="store_true", help="warnings-only logging")
    cli.add_portable_flag(parser)
    return cli.run(parser, lambda args: _body(args, argv), argv,
                   interrupted="interrupted: the settings tuned before it are saved in --out (written after each env); "
                               "the one being tuned is not")


def _body(args: argparse.Namespace, argv: list[str] | None) -> int:
    args.variant = [None if v in (None, "none", "") else v for v in args.variant]
    for env_id in args.env:
        for variant in args.variant:
            variant_kwargs(env_id, variant)
    cli.pin_kernels(args)  # before any work: the process restarts with pinned kernels
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    command = "python scripts/tune_baselines.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    for variant in args.variant:
        data = tune(args.env, args.policies, n_problems=args.n_problems, horizon=args.horizon, seed=args.seed,
                    split=args.split, device=args.device, command=command, out=args.out, variant=variant,
                    search=args.search)
        for env_id in args.env:
            for name in args.policies:
                key = setting_key(env_id, args.horizon, variant)
                e = data["envs"][key][name]
                print(f"{key:40s} {name:9s} {str(e['hparams']):38s} train score = {e['score']:.4g} "
                      f"(diverged {100 * e['diverged_fraction']:.0f}%)", flush=True)
    print(f"saved: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
