"""Worker for tests/test_gps_coord.py: two conv-GPS iterations on a tiny net, under torchrun or alone.

Not a test module (no ``test_`` prefix): ``python tests/cgps_worker.py OUT`` or
``torchrun --nproc_per_node 2 tests/cgps_worker.py OUT``; rank 0 writes the global policy to OUT.
"""

import os
import sys

import torch
import torch.distributed as dist

torch.set_num_threads(1)


def main(out: str) -> None:
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    from l2o_gym.agents.gps.conv import ConvGPSConfig, ConvGPSTrainer
    from l2o_gym.problems import make_family

    fam = make_family("mlp", hidden=(4,), dataset="digits", batch_size=16)
    train = fam.sample(2, "train", 0, dtype=torch.float64)
    cfg = ConvGPSConfig(horizon=8, n_samples=3, hidden=6, regression_coords=4, init_std=0.01, kl_step=0.05,
                        regression_epochs=2, bptt=4, seed=5)
    tr = ConvGPSTrainer(train, cfg)
    for _ in range(2):
        m = tr.iteration()
    if not dist.is_initialized() or dist.get_rank() == 0:
        tr.policy().save(out, extra={"env_steps": int(m["env_steps"]), "world": dist.get_world_size() if dist.is_initialized() else 1})
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
