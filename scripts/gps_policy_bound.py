"""Train the GPS global-policy class directly by BPTT (a diagnostic, see agents/gps/bound.py) and print the
docs/gps.md test table for it; argument parsing only.

    python scripts/gps_policy_bound.py --env l2o/LogisticRegression-v0 --history 5 --out runs/bound_lr

Flags are generated from ``BoundConfig`` (l2o_gym.experiments.cli); the run folder is the common lifecycle's
(bound_best/bound_last.safetensors — GPS policy checkpoints —, state.pt, summary.json, tb/).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from l2o_gym.agents.gps.bound import ACTIVATIONS, BoundConfig, train_bound
from l2o_gym.agents.gps.train import evaluate_on_test
from l2o_gym.checkpoint import atomic_write
from l2o_gym.experiments import cli


def build_parser() -> tuple[argparse.ArgumentParser, cli.ConfigArgs]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cfg_args = cli.add_config_args(p, BoundConfig, rename={"env_id": "--env"},
                                   choices={"activation": ACTIVATIONS},
                                   types_={"hidden": cli.positive_int})
    cli.deprecated_alias(p, "--val", "--n-val", "cfg__n_val", type=cli.positive_int)
    cli.deprecated_alias(p, "--no-steps", "--no-include-steps", "cfg__include_steps", store_const=False)
    cli.add_run_args(p, tensorboard=True, out_required=True)
    return p, cfg_args


def main(argv: list[str] | None = None) -> int:
    parser, cfg_args = build_parser()

    def body(a: argparse.Namespace) -> int:
        cfg = cli.prepare(a, cfg_args)
        _, summary = train_bound(cfg, a.out, progress=not a.quiet, resume=a.resume, tensorboard=not a.no_tensorboard)
        if summary["best_episode"] == 0:
            print("gps_policy_bound.py: error: no finite validation objective: nothing saved", file=sys.stderr)
            return 1
        print(f"best val objective at T={cfg.horizon} (float32 val problems, used for selection): "
              f"{summary['best_val']:.5g} (episode {summary['best_episode']}); tuned GD {summary['gd']['val_final']:.5g}. "
              "The table's val column is float64, as for GPS checkpoints.")
        rows = evaluate_on_test(summary["best_checkpoint"], cfg.env_id, cfg.horizon, seed=cfg.seed)
        for name, r in rows.items():
            print(f"{'bound' if name == 'gps' else name:9s} f(T)={r['f_T']:.4f} f(10T)={r['f_long']:.4f} "
                  f"gap(T)={r['gap_T']:.2e} settled(T)={r['settled_T']:.2f} val={r['val_final']:.4f}")
        print(json.dumps(rows))
        if a.export:
            atomic_write(a.export, lambda tmp: shutil.copyfile(summary["best_checkpoint"], tmp))
            print(f"exported {a.export}")
        return 0

    return cli.run(parser, body, argv, interrupted="interrupted: the best policy so far is in --out "
                   "(bound_best.safetensors); continue with --resume")


if __name__ == "__main__":
    sys.exit(main())
