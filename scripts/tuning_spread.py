#!/usr/bin/env python
"""How stable is the tuned choice? Tune the baselines on several train seeds, evaluate every selection on the same
test problems, store the spread in the tuned file (``"stability"``); optionally re-derive the sample-efficiency
targets of the shipped learned checkpoints with the same protocol (``"val_references"``).

    python scripts/tuning_spread.py --env l2o/Quadratic-v0 --policies momentum nag --seeds 0 1 2 3 4
    python scripts/tuning_spread.py --val-references          # every shipped checkpoint with a training record

The protocol: l2o_gym/agents/tuning.py. Tuning reads train problems only; test is read after tuning, to score
the selections.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from l2o_gym.agents.baselines import BASELINES
from l2o_gym.experiments import cli
from l2o_gym.experiments.tuning import (
    default_tuned_path, read_tuned_file, record_spread, record_val_references, seed_spread, setting_key,
    variant_kwargs,
)
from l2o_gym.registry import ENV_IDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", nargs="+", default=[], choices=ENV_IDS, metavar="ID", help="env ids")
    parser.add_argument("--policies", nargs="+", default=["sgd", "momentum", "nag", "adam", "rmsprop"],
                        choices=list(BASELINES), metavar="NAME", help="baselines (default: %(default)s)")
    parser.add_argument("--n-problems", type=cli.positive_int, default=100,
                        help="train problems per tuning (default: %(default)s)")
    parser.add_argument("--horizon", type=cli.positive_int, default=100, help="iterations (default: %(default)s)")
    parser.add_argument("--variant", default=None, help="named problem variant (l2o_gym.registry.VARIANTS)")
    parser.add_argument("--seeds", nargs="+", type=cli.nonnegative_int, default=[0, 1, 2, 3, 4],
                        help="tuning seeds (default: %(default)s)")
    parser.add_argument("--n-test", type=cli.positive_int, default=1000,
                        help="test problems scoring each selection (default: %(default)s)")
    parser.add_argument("--val-references", action="store_true",
                        help="re-derive the sample-efficiency targets of the shipped learned checkpoints")
    parser.add_argument("--device", type=cli.device, default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--out", type=cli.out_file, default=str(default_tuned_path()),
                        help="tuned JSON file to add to (default: the shipped one)")
    parser.add_argument("--quiet", action="store_true", help="warnings-only logging")
    return cli.run(parser, lambda args: _body(args, argv), argv, interrupted="interrupted: nothing more was saved")


def _body(args: argparse.Namespace, argv: list[str] | None) -> int:
    if not args.env and not args.val_references:
        raise cli.UsageError("give --env ID ... and/or --val-references")
    for env_id in args.env:
        variant_kwargs(env_id, args.variant)
    read_tuned_file(args.out)  # an unreadable --out fails now, not after the tuning
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    command = "python scripts/tuning_spread.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    for env_id in args.env:
        spread = seed_spread(env_id, args.policies, seeds=args.seeds, n_problems=args.n_problems, horizon=args.horizon,
                             n_test=args.n_test, variant=args.variant, device=args.device)
        key = setting_key(env_id, args.horizon, args.variant)
        record_spread(args.out, key, spread, command)
        for name in args.policies:
            r = spread[name]
            print(f"{key:36s} {name:9s} hparams {r['hparams']}  test log10 mean f(θ_T) "
                  f"{[round(x, 3) for x in r['test_log10_final_mean']]}  spread {r['log10_spread']:.3f}")
    if args.val_references:
        from l2o_gym.experiments.compare import pretrained_dir

        data = record_val_references(args.out, sorted(pretrained_dir().glob("*.safetensors")), command)
        for key, ref in data.get("val_references", {}).items():
            print(f"{key}: {ref['baseline']['name']} {ref['baseline']['val_final']:.5g}, first-order "
                  f"{ref['first_order_baseline']['name']} {ref['first_order_baseline']['val_final']:.5g}")
    print(f"saved: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
