"""Conv-GPS and BADMM resume checks (structural settings, device) and conv-GPS checkpoint header errors."""

from __future__ import annotations

import io
import types

import pytest
import torch

from conftest import load_script, requires_cuda

DT = torch.float64


def _script():
    return load_script("train_conv_gps")


def test_conv_gps_resume_refuses_other_problems_units_or_cost(tmp_path, capsys):
    """Resuming with another val set (seed, n_val), step unit or cost continued silently: the best value of one val
    set was compared with another's, and ``gps_best`` (trained in one unit) kept beside iterates of another."""
    mod = _script()
    args = ["--env", "l2o/MLP-v0", "--family-kwargs", '{"dataset": "digits", "hidden": [4], "batch_size": 16}',
            "--horizon", "4", "--conditions", "1", "--samples", "2", "--lstm-hidden", "4", "--regression-coords", "2",
            "--n-val", "2", "--regression-epochs", "1", "--init-lr", "0.03", "--baselines",
            "--out", str(tmp_path / "run"), "--quiet", "--no-tensorboard"]
    assert mod.main([*args, "--iterations", "1"]) == 0
    for extra, name in ((["--seed", "5"], "seed"), (["--n-val", "3"], "n_val"),
                        (["--step-unit", "decay"], "gps.step_unit"), (["--cost", "area"], "gps.cost"),
                        (["--conditions", "2"], "n_conditions"), (["--horizon", "5"], "gps.horizon"),
                        (["--grad-average", "last3"], "gps.grad_average"), (["--area-weight", "0.5"], "gps.area_weight"),
                        (["--cost-scale", "2"], "gps.cost_scale"), (["--action-penalty", "0.5"], "gps.action_penalty"),
                        (["--no-share-conditions"], "gps.share_conditions"), (["--lstm-hidden", "5"], "gps.hidden")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            mod.main([*args, *extra, "--iterations", "2", "--resume"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "cannot resume" in err and f"other {name} (" in err, err  # the usage text names "seed" too
    assert mod.main([*args, "--iterations", "2", "--resume"]) == 0  # the same settings still resume


def test_conv_gps_header_with_no_groups_or_bad_hidden_is_a_checkpoint_error_naming_the_file(tmp_path):
    from l2o_gym.agents.gps.coord_policy import ConvGPSPolicy, CoordinateLSTMNet
    from l2o_gym.checkpoint import CheckpointError, save_policy

    net = CoordinateLSTMNet([("w", "weight")], 4)
    for i, hdr in enumerate(({"groups": [], "hidden": 4}, {"groups": [["w", "weight"]], "hidden": 0})):
        path = save_policy(tmp_path / f"p{i}.safetensors", net.state_dict(), {"kind": "conv_gps", "env_id": None, **hdr})
        with pytest.raises(CheckpointError, match=f"p{i}.safetensors: bad conv-GPS header field"):
            ConvGPSPolicy.load(path)


@pytest.mark.cuda
@requires_cuda
def test_conv_gps_trainer_resumes_on_cuda_from_a_cpu_loaded_state():
    """state.pt is read onto the CPU; a CUDA run's trainer indexed CPU controllers with CUDA indices (crash)."""
    from l2o_gym.agents.gps.conv import ConvGPSConfig, ConvGPSTrainer
    from l2o_gym.problems import make_family

    fam = make_family("mlp", hidden=(4,), dataset="digits", batch_size=16)
    train = fam.sample(2, "train", 0, device="cuda", dtype=DT)
    cfg = ConvGPSConfig(horizon=6, n_samples=2, hidden=8, regression_coords=4, init_std=0.01, kl_step=0.05,
                        regression_epochs=2, bptt=3, seed=3, init_lr=0.03)
    a = ConvGPSTrainer(train, cfg)
    for _ in range(3):
        a.iteration()
    b = ConvGPSTrainer(train, cfg)
    for _ in range(2):
        b.iteration()
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    c = ConvGPSTrainer(train, cfg)
    c.load_state_dict(torch.load(buf, map_location="cpu", weights_only=True))
    c.iteration()
    assert c.local.K.device.type == "cuda"
    assert torch.allclose(a.local.K, c.local.K) and torch.allclose(a.lam, c.lam)


@pytest.mark.cuda
@requires_cuda
def test_badmm_trainer_keeps_its_device_when_loading_a_cpu_state():
    from l2o_gym.agents.gps.badmm import BADMMConfig, BADMMTrainer
    from l2o_gym.agents.gps.global_policy import GaussianMLP
    from l2o_gym.agents.gps.lingauss import LinearGaussianPolicy

    m, t_len, dx, du = 2, 3, 2, 1
    task = types.SimpleNamespace(n_conditions=m, horizon=t_len, dx=dx, du=du, obs_slice=slice(0, dx))
    z = dict(dtype=DT, device="cuda")
    local = LinearGaussianPolicy(torch.zeros(m, t_len, du, dx, **z), torch.zeros(m, t_len, du, **z),
                                 torch.ones(m, t_len, du, du, **z))
    model = GaussianMLP(dx, du, hidden=()).to(**z)
    tr = BADMMTrainer(task, local, model, BADMMConfig(), seed=0)
    sd = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in tr.state_dict().items()}
    sd["model"] = {k: v.cpu() for k, v in sd["model"].items()}
    tr.load_state_dict(sd)
    for t in (tr.local.K, tr.local.k, tr.local.cov, tr.lam, tr.nu, tr.mult, tr.eta):
        assert t.device.type == "cuda"
