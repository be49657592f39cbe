#!/usr/bin/env python
"""Main job (for now): run gradient descent through registered envs, print and plot the loss curves."""

from __future__ import annotations

import argparse
import logging
import sys

from l2o_gym.experiments.demo import gradient_descent_demo
from l2o_gym.registry import ENV_IDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", nargs="+", default=["l2o/Quadratic-v0", "l2o/LogisticRegression-v0"],
                        choices=ENV_IDS, metavar="ID", help="env ids (default: %(default)s)")
    parser.add_argument("--num-envs", type=int, default=128, help="problems per env (default: %(default)s)")
    parser.add_argument("--horizon", type=int, default=100, help="iterations (default: %(default)s)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1], help="GD step sizes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/demo", help="output folder for the plots (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.num_envs < 1 or args.horizon < 1:
        parser.error(f"--num-envs and --horizon must be positive, got {args.num_envs} and {args.horizon}")
    if any(not lr > 0 for lr in args.lrs):
        parser.error(f"--lrs must be positive step sizes, got {args.lrs}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for env_id in args.env:
        res = gradient_descent_demo(env_id, args.num_envs, args.horizon, tuple(args.lrs), args.seed, args.out, args.device)
        print(f"\n{env_id}: mean objective over {args.num_envs} test problems")
        print(f"{'t':>5} " + " ".join(f"{k:>14}" for k in res.curves))
        for t in sorted({0, 1, 5, 10, 25, 50, args.horizon} & set(range(args.horizon + 1))):
            print(f"{t:>5} " + " ".join(f"{v[t]:14.5g}" for v in res.curves.values()))
        print(f"plot: {res.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
