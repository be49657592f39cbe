#!/usr/bin/env python
"""Coarse-to-fine learning-rate tuning of the first-order baselines for expensive families (the conv nets).

    python scripts/tune_coarse.py --env l2o/ConvNet-v0 --variant labels5_test --n-problems 2

Grid and rule: l2o_gym/experiments/coarse_tuning.py (LR_GRID decades, then half and quarter decades around
the best; momentum 0.9). Entries are merged into the tuned file under the usual setting key. Never reads test.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from l2o_gym.agents.baselines import FIRST_ORDER
from l2o_gym.experiments.coarse_tuning import coarse_tune
from l2o_gym.experiments.tuning import default_tuned_path
from l2o_gym.registry import ENV_IDS, variant_kwargs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, choices=ENV_IDS, metavar="ID", help="env id")
    parser.add_argument("--variant", nargs="+", default=[None], help="named problem variants (default: none)")
    parser.add_argument("--policies", nargs="+", default=list(FIRST_ORDER), choices=list(FIRST_ORDER), metavar="NAME",
                        help=f"baselines (default: {' '.join(FIRST_ORDER)})")
    parser.add_argument("--n-problems", type=int, default=4, help="train problems per configuration (default: %(default)s)")
    parser.add_argument("--horizon", type=int, default=100, help="iterations (default: %(default)s)")
    parser.add_argument("--refine", type=int, nargs="*", default=[2, 1],
                        help="refinement steps in quarter decades around the best (default: 2 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(default_tuned_path()), help="JSON file to merge into (default: the shipped one)")
    args = parser.parse_args(argv)
    if args.n_problems < 1 or args.horizon < 1:
        parser.error(f"--n-problems and --horizon must be positive, got {args.n_problems} and {args.horizon}")
    variants = [None if v in (None, "none", "") else v for v in args.variant]
    try:
        for v in variants:
            variant_kwargs(args.env, v)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = "python scripts/tune_coarse.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    for v in variants:
        entries = coarse_tune(args.env, args.policies, variant=v, out=args.out, command=command,
                              n_problems=args.n_problems, horizon=args.horizon, seed=args.seed, device=args.device,
                              refine=tuple(args.refine))
        for name, e in entries.items():
            print(f"{args.env}{'+' + v if v else ''} {name:9s} {str(e['hparams']):32s} train mean f(θ_T) = {e['final_mean']:.4g}",
                  flush=True)
    print(f"saved: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
