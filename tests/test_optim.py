"""LearnedOptimizer: any Policy as a torch.optim.Optimizer."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l2o_gym.agents import Adam, GradientDescent
from l2o_gym.agents.lstm import LSTMConfig, LSTMPolicy, load_pretrained
from l2o_gym.optim import LearnedOptimizer

from conftest import requires_cuda


def _digits(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:n], dtype=torch.float32) / 16.0
    return x, torch.tensor(d.target[:n])


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 20), nn.Sigmoid(), nn.Linear(20, 10))


def _train(model: nn.Module, opt: torch.optim.Optimizer, x, y, steps: int, batch: int = 128, seed: int = 0,
           closure: bool = False) -> list[float]:
    """``steps`` minibatch steps; with ``closure`` the loss reaches the optimizer through ``step(closure)``."""
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=g)

        def evaluate() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            return loss

        if closure:
            loss = opt.step(evaluate)
        else:
            loss = evaluate()
            opt.step()
        losses.append(float(loss.detach()))
    return losses


def _restored(m1: nn.Module, o1: LearnedOptimizer, policy, seed: int) -> tuple[nn.Module, LearnedOptimizer, dict]:
    """A fresh model and optimizer loaded from ``m1``'s and ``o1``'s state dicts through ``torch.save`` and
    ``torch.load(weights_only=True)``, and the loaded optimizer state."""
    buf = io.BytesIO()
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    m2 = _model(seed)
    m2.load_state_dict(saved["model"])
    o2 = LearnedOptimizer(m2.parameters(), policy)
    o2.load_state_dict(saved["opt"])
    return m2, o2, saved["opt"]


def test_pretrained_lstm_trains_a_torch_model_on_digits():
    x, y = _digits()
    model = _model()
    opt = LearnedOptimizer(model.parameters(), load_pretrained("l2o/MLP-v0"))
    with torch.no_grad():
        start = float(F.cross_entropy(model(x), y))
    _train(model, opt, x, y, 100)
    with torch.no_grad():
        end = float(F.cross_entropy(model(x), y))
    assert end < 0.3 * start, (start, end)


def test_wrapping_gradient_descent_equals_torch_sgd():
    x, y = _digits(256)
    m1, m2 = _model(1), _model(1)
    _train(m1, LearnedOptimizer(m1.parameters(), GradientDescent(0.5)), x, y, 5)
    _train(m2, torch.optim.SGD(m2.parameters(), lr=0.5), x, y, 5)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b)


def test_wrapping_adam_equals_torch_adam():
    x, y = _digits(256)
    m1, m2 = _model(2), _model(2)
    _train(m1, LearnedOptimizer(m1.parameters(), Adam(0.01)), x, y, 5)
    _train(m2, torch.optim.Adam(m2.parameters(), lr=0.01), x, y, 5)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_state_dict_round_trip_continues_identically():
    x, y = _digits(256)
    policy = LSTMPolicy(LSTMConfig(global_cells=2))
    m1 = _model(3)
    o1 = LearnedOptimizer(m1.parameters(), policy)
    _train(m1, o1, x, y, 3)
    m2, o2, saved = _restored(m1, o1, policy, 4)
    assert isinstance(o2._memory, tuple) and len(o2._memory) == 4
    _train(m1, o1, x, y, 3, seed=7)
    _train(m2, o2, x, y, 3, seed=7)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="optimized parameter entries, this optimizer has 4"):
        LearnedOptimizer(nn.Linear(3, 1).parameters(), policy).load_state_dict(saved)


def test_lr_multiplier_and_scheduler():
    x, y = _digits(128)
    policy = LSTMPolicy()
    deltas = {}
    for lr in (1.0, 0.5, 0.0):
        m = _model(5)
        before = [p.detach().clone() for p in m.parameters()]
        _train(m, LearnedOptimizer(m.parameters(), policy, lr=lr), x, y, 1)
        deltas[lr] = torch.cat([(p.detach() - b).flatten() for p, b in zip(m.parameters(), before)])
    torch.testing.assert_close(deltas[0.5], 0.5 * deltas[1.0])
    assert torch.all(deltas[0.0] == 0)
    m = _model(5)
    opt = LearnedOptimizer(m.parameters(), policy)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    lrs = []
    for _ in range(4):
        _train(m, opt, x, y, 1)
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_param_groups_closure_and_frozen_parameters():
    x, y = _digits(128)
    model = _model(6)
    frozen = model[0].bias
    frozen.requires_grad_(False)
    frozen_before = frozen.detach().clone()
    opt = LearnedOptimizer(
        [{"params": [model[0].weight]}, {"params": list(model[2].parameters()), "lr": 0.0}, {"params": [frozen]}],
        LSTMPolicy(),
    )
    w2_before = model[2].weight.detach().clone()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and loss.ndim == 0
    assert torch.equal(frozen, frozen_before)
    assert torch.equal(model[2].weight, w2_before)  # lr 0 group
    assert opt._mdp.theta.shape == (1, 64 * 20 + 20 * 10 + 10)  # frozen bias not in θ


def test_sparse_gradients_are_a_clear_error():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = LearnedOptimizer(emb.parameters(), LSTMPolicy())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_non_finite_gradients_skip_those_parameters_with_a_warning():
    model = _model(7)
    opt = LearnedOptimizer(model.parameters(), LSTMPolicy())
    x, y = _digits(64)
    F.cross_entropy(model(x), y).backward()
    model[0].weight.grad[0, 0] = float("nan")
    model[2].bias.grad[0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning, match="non-finite gradient"):
        opt.step()
    after = list(model.parameters())
    assert torch.equal(after[0], before[0]) and torch.equal(after[3], before[3])
    assert not torch.equal(after[1], before[1]) and not torch.equal(after[2], before[2])
    assert all(torch.isfinite(p).all() for p in after)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # finite again: no warning, everything moves
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_rejects_non_policy():
    with pytest.raises(TypeError, match="Policy"):
        LearnedOptimizer(nn.Linear(2, 1).parameters(), torch.optim.SGD)  # type: ignore[arg-type]


@requires_cuda
@pytest.mark.cuda
def test_runs_on_cuda():
    model = _model(8).cuda()
    opt = LearnedOptimizer(model.parameters(), LSTMPolicy())
    x, y = _digits(128)
    _train(model, opt, x.cuda(), y.cuda(), 3)
    assert all(p.is_cuda and torch.isfinite(p).all() for p in model.parameters())
    sd = opt.state_dict()
    assert sd["l2o"]["mdp"]["theta"].is_cuda



@requires_cuda
@pytest.mark.cuda
def test_a_model_spread_over_cpu_and_cuda_steps_like_torch_sgd():
    class Split(nn.Module):  # first layer on the GPU, second on the CPU
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8).cuda(), nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x.cuda())).cpu())

    torch.manual_seed(0)
    ours, ref = Split(), Split()
    ref.load_state_dict(ours.state_dict())
    opt = LearnedOptimizer(ours.parameters(), GradientDescent(lr=0.1))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    for _ in range(5):
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            F.mse_loss(model(x), y).backward()
            o.step()
    assert ours.a.weight.is_cuda and not ours.b.weight.is_cuda
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)

def test_core_initial_state_matches_reset():
    from l2o_gym import core, make_family
    from l2o_gym.core import CoreConfig

    pb = make_family("quadratic", dim=4).sample(3, "train", 0)
    cfg = CoreConfig(history=3, include_steps=True)
    a = core.reset(pb, cfg)
    b = core.initial_state(a.theta, a.loss, a.grad, cfg)
    for k in ("theta", "loss", "grad", "loss_hist", "obs", "t", "threshold", "terminated"):
        torch.testing.assert_close(getattr(a, k), getattr(b, k), rtol=0, atol=0)


def test_conv_gps_state_dict_round_trip_continues_identically():
    """The conv-GPS policy's memory (a feature tracker object and LSTM states) survives state_dict/load_state_dict
    through ``torch.load(weights_only=True)``, and training continues bit for bit."""
    from l2o_gym.agents.gps import load_policy
    from l2o_gym.agents.common import pretrained_dir

    x, y = _digits(256)
    path = pretrained_dir() / "gps_NNClassifier.safetensors"
    m1 = _model(3)
    o1 = LearnedOptimizer(m1.parameters(), load_policy(path))
    _train(m1, o1, x, y, 4, batch=64, closure=True)
    m2, o2, saved = _restored(m1, o1, load_policy(path), 4)
    assert type(o2._memory.features).__name__ == "CoordinateFeatures"
    assert "state" not in saved["l2o"]["memory"]["fields"]["features"]["state"]  # Φ is recomputed, not saved
    _train(m1, o1, x, y, 4, batch=64, seed=7, closure=True)
    _train(m2, o2, x, y, 4, batch=64, seed=7, closure=True)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the same with a "last3" policy (the checkpoints before the "ema" average), and a state saved with one
    # policy's feature options refused by a policy trained with others
    from l2o_gym.agents.gps.coord_policy import ConvGPSPolicy, CoordinateLSTMNet

    specs_net = CoordinateLSTMNet([("w", "weight"), ("b", "bias")], hidden=4)
    last3 = ConvGPSPolicy(specs_net, step_unit="sqrt", grad_average="last3")
    m3 = _model(5)
    o3 = LearnedOptimizer(m3.parameters(), last3)
    _train(m3, o3, x, y, 3, batch=64, closure=True)
    m4, o4, _ = _restored(m3, o3, last3, 6)
    _train(m3, o3, x, y, 3, batch=64, seed=7, closure=True)
    _train(m4, o4, x, y, 3, batch=64, seed=7, closure=True)
    for a, b in zip(m3.parameters(), m4.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    m5, o5, _ = _restored(m3, o3, ConvGPSPolicy(specs_net, step_unit="sign", grad_average="last3"), 6)
    with pytest.raises(ValueError, match="memory tracks step_unit='sqrt'.*trained with step_unit='sign'"):
        _train(m5, o5, x, y, 1, batch=64, closure=True)


def test_a_policy_that_reads_the_objective_warns_once_without_a_closure():
    from l2o_gym.agents.gps import load_policy
    from l2o_gym.agents.common import pretrained_dir

    x, y = _digits(128)
    m = _model(8)
    opt = LearnedOptimizer(m.parameters(), load_policy(pretrained_dir() / "gps_NNClassifier.safetensors"))
    with pytest.warns(RuntimeWarning, match="'conv_gps' reads the objective.*got no closure") as rec:
        _train(m, opt, x, y, 3)
    assert sum("reads the objective" in str(w.message) for w in rec) == 1
    assert rec[0].filename == __file__  # the warning names the caller's line, not torch's wrappers
    opt = LearnedOptimizer(m.parameters(), load_policy(pretrained_dir() / "gps_NNClassifier.safetensors"))
    with pytest.warns(RuntimeWarning, match="closure that returned float, not a one-element loss tensor"):
        opt.step(lambda: 1.0)
    m = _model(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gradient-only policies need no closure: no warning
        _train(m, LearnedOptimizer(m.parameters(), LSTMPolicy()), x, y, 2)
        _train(m, LearnedOptimizer(m.parameters(), Adam(0.01)), x, y, 2)
