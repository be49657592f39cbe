"""Train the GPS global-policy class directly by BPTT (a diagnostic, see agents/gps/bound.py) and print the
docs/gps.md test table for it; argument parsing only.

    python scripts/gps_policy_bound.py --env l2o/LogisticRegression-v0 --history 5 --out runs/bound_lr
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from l2o_gym.agents.gps.bound import BoundConfig, train_bound
from l2o_gym.agents.gps.train import evaluate_on_test
from l2o_gym.registry import ENV_IDS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="l2o/LogisticRegression-v0", help="registered env id")
    p.add_argument("--horizon", type=int, default=20, help="T")
    p.add_argument("--history", type=int, default=5, help="H of the features")
    p.add_argument("--no-steps", action="store_true", help="without the step history (GPS without --include-steps)")
    p.add_argument("--hidden", type=int, nargs="*", default=[50], help="hidden widths")
    p.add_argument("--episodes", type=int, default=15000, help="Adam steps, one fresh train batch each")
    p.add_argument("--batch", type=int, default=128, help="problems per episode")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--val", type=int, default=100, help="val problems for model selection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", required=True, help="folder for bound_best.safetensors")
    a = p.parse_args(argv)
    if a.env not in ENV_IDS:
        p.error(f"unknown env id {a.env!r}: expected one of {', '.join(ENV_IDS)}")
    for name in ("horizon", "history", "episodes", "batch", "val", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be positive, got {getattr(a, name)!r}")
    if not a.lr > 0:
        p.error(f"--lr must be positive, got {a.lr!r}")
    if any(h < 1 for h in a.hidden):
        p.error(f"--hidden widths must be positive, got {a.hidden}")
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = BoundConfig(env_id=a.env, horizon=a.horizon, history=a.history, include_steps=not a.no_steps,
                      hidden=tuple(a.hidden), episodes=a.episodes, batch=a.batch, lr=a.lr, n_val=a.val, seed=a.seed,
                      device=a.device)
    try:
        _, summary = train_bound(cfg, a.out)
    except KeyboardInterrupt:
        print(f"interrupted: the best policy so far is in {a.out}/bound_best.safetensors", file=sys.stderr)
        return 130
    if summary["best_episode"] == 0:
        print("gps_policy_bound.py: error: no finite validation objective: nothing saved", file=sys.stderr)
        return 1
    print(f"best val objective at T={a.horizon} (float32 val problems, used for selection): {summary['best_val']:.5g} "
          f"(episode {summary['best_episode']}); tuned GD {summary['gd']['val_final']:.5g}. "
          "The table's val column is float64, as for GPS checkpoints.")
    rows = evaluate_on_test(f"{a.out}/bound_best.safetensors", a.env, a.horizon, seed=a.seed)
    for name, r in rows.items():
        print(f"{'bound' if name == 'gps' else name:9s} f(T)={r['f_T']:.4f} f(10T)={r['f_long']:.4f} "
              f"gap(T)={r['gap_T']:.2e} settled(T)={r['settled_T']:.2f} val={r['val_final']:.4f}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
