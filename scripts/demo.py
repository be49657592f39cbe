#!/usr/bin/env python
"""A first look at the envs: gradient descent as an agent of registered envs; prints and plots the loss curves."""

from __future__ import annotations

import argparse
import logging
import sys

from l2o_gym.experiments.demo import gradient_descent_demo
from l2o_gym.experiments import cli
from l2o_gym.registry import ENV_IDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", nargs="+", default=["l2o/Quadratic-v0", "l2o/LogisticRegression-v0"],
                        choices=ENV_IDS, metavar="ID", help="env ids (default: %(default)s)")
    parser.add_argument("--n-problems", type=cli.positive_int, default=128, help="problems per env (default: %(default)s)")
    cli.deprecated_alias(parser, "--num-envs", "--n-problems", "n_problems", type=cli.positive_int)
    parser.add_argument("--horizon", type=cli.positive_int, default=100, help="iterations (default: %(default)s)")
    parser.add_argument("--lrs", type=cli.positive_float, nargs="+", default=[0.003, 0.01, 0.03, 0.1],
                        help="GD step sizes (finite, positive)")
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0, help="seed (default: %(default)s)")
    parser.add_argument("--device", type=cli.device, default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--out", type=cli.out_dir, default="runs/demo", help="output folder for the plots (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings-only logging")
    return cli.run(parser, _body, argv)


def _body(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    for env_id in args.env:
        res = gradient_descent_demo(env_id, args.n_problems, args.horizon, tuple(args.lrs), args.seed, args.out, args.device,
                                   progress=not args.quiet)
        print(f"\n{env_id}: mean objective over {args.n_problems} test problems")
        print(f"{'t':>5} " + " ".join(f"{k:>14}" for k in res.curves))
        for t in sorted({0, 1, 5, 10, 25, 50, args.horizon} & set(range(args.horizon + 1))):
            print(f"{t:>5} " + " ".join(f"{v[t]:14.5g}" for v in res.curves.values()))
        print(f"plot: {res.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
