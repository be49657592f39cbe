"""The conv-net family (Andrychowicz et al. §3.3) and the multi-LSTM (one LSTM per parameter kind)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l2o_gym import core
from l2o_gym.agents.lstm import LSTMConfig, LSTMPolicy
from l2o_gym.agents.lstm.multi import KindMismatchError, MultiLSTMPolicy, init_from_checkpoint, load_multi_policy
from l2o_gym.agents.lstm.trainer import TrainConfig, Trainer
from l2o_gym.optim import LearnedOptimizer, param_groups_by_kind
from l2o_gym.problems import ConvNet, make_family
from l2o_gym.registry import VARIANTS, env_family, variant_kwargs

SMALL = {"channels": (2, 3, 3), "fc": 5, "batch_size": 8}


def _reference_losses(fam: ConvNet, batch, theta: torch.Tensor, step: int) -> torch.Tensor:
    """Each net separately as an ``nn.Sequential`` on its own minibatch."""
    X, y = fam.partition(batch.split, theta.device, theta.dtype)
    pos = fam.minibatch_positions(batch, torch.full((batch.n,), step, dtype=torch.int64))
    out = []
    for i in range(batch.n):
        net = fam.to_module(theta[i])
        out.append(F.cross_entropy(net(X[pos[i]]), y[pos[i]]))
    return torch.stack(out)


@pytest.mark.parametrize("dataset,extra", [("patches", {"image_size": 16}), ("mnist", {})])
@pytest.mark.parametrize("method", ["grouped", "vmap"])
def test_batched_forward_and_gradient_equal_separate_nets(dataset, extra, method):
    fam = ConvNet(dataset=dataset, method=method, **SMALL, **extra)
    batch = fam.sample(3, "train", seed=1, dtype=torch.float64)
    theta = batch.x0 + 0.1 * torch.randn(batch.x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f, g = batch.loss_and_grad(theta, 2)
    ref = _reference_losses(fam, batch, theta, 2)
    torch.testing.assert_close(f, ref, rtol=1e-10, atol=1e-10)
    # gradients of each separate net, mapped back to θ's layout
    for i in range(batch.n):
        net = fam.to_module(theta[i])
        X, y = fam.partition("train", theta.device, theta.dtype)
        pos = fam.minibatch_positions(batch, torch.full((batch.n,), 2, dtype=torch.int64))[i]
        F.cross_entropy(net(X[pos]), y[pos]).backward()
        convs = [m for m in net if isinstance(m, nn.Conv2d)]
        bns = [m for m in net if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d))]
        lins = [m for m in net if isinstance(m, nn.Linear)]
        parts = {f"conv{j}.weight": c.weight.grad for j, c in enumerate(convs)}
        for j, b in enumerate(bns):
            parts[f"bn{j}.weight"], parts[f"bn{j}.bias"] = b.weight.grad, b.bias.grad
        parts["fc0.weight"], parts["fc1.weight"], parts["fc1.bias"] = lins[0].weight.grad.T, lins[1].weight.grad.T, lins[1].bias.grad
        got = fam.unflatten(g)
        for name, ref_g in parts.items():
            torch.testing.assert_close(got[name][i], ref_g, rtol=1e-8, atol=1e-10, msg=name)


def test_grouped_and_vmap_agree_and_seed_fixes_the_trajectory():
    a, b = ConvNet(**SMALL, image_size=16), ConvNet(**SMALL, image_size=16, method="vmap")
    pa, pb = a.sample(4, "test", seed=3), b.sample(4, "test", seed=3)
    torch.testing.assert_close(pa.loss(pa.x0, 5), pb.loss(pb.x0, 5), rtol=1e-5, atol=1e-6)
    assert torch.equal(pa.loss(pa.x0, 5), a.sample(4, "test", seed=3).loss(pa.x0, 5))
    assert not torch.equal(pa.loss(pa.x0, 5), pa.loss(pa.x0, 6))  # another minibatch


def test_sizes_param_specs_cover_theta_and_kinds():
    fam = ConvNet()
    specs = fam.param_specs()
    assert specs[0].offset == 0
    for s, t in zip(specs, specs[1:]):
        assert t.offset == s.offset + s.numel
    assert specs[-1].offset + specs[-1].numel == fam.dim == 12338
    assert {s.kind for s in specs} == {"conv", "fc", "bn", "bias"}
    assert [s.shape for s in specs if s.kind == "conv"] == [(8, 3, 3, 3), (16, 8, 3, 3), (16, 16, 3, 3)]
    assert ConvNet(dataset="mnist").dim == 8610
    assert ConvNet(labels=(3, 7)).param_specs()[-1].shape == (2,)
    # initial point: He-scaled kernels, BN scale 1 / shift 0
    x0 = fam.sample(2, "train").x0
    p = fam.unflatten(x0)
    assert torch.all(p["bn0.weight"] == 1) and torch.all(p["bn0.bias"] == 0)
    assert abs(float(p["conv2.weight"].std()) - (2 / 144) ** 0.5) < 0.02


def test_pooling_size_error_names_the_size():
    with pytest.raises(ValueError, match=r"image size 4×4 cannot pass 3 2×2 max-pool"):
        ConvNet(image_size=4)
    with pytest.raises(ValueError, match=r"28×28 cannot pass 5 .*32×32"):
        ConvNet(dataset="mnist", channels=(2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="mnist images are 28×28"):
        ConvNet(dataset="mnist", image_size=32)
    with pytest.raises(ValueError, match=r"labels \[10\] out of range"):
        ConvNet(labels=(1, 10))
    with pytest.raises(ValueError, match="unknown dataset"):
        ConvNet(dataset="cifar")
    ConvNet(image_size=8, channels=(2, 2, 2))  # the smallest size that pools three times


def test_label_subsets_and_partitions_are_disjoint():
    var = VARIANTS["l2o/ConvNet-v0"]
    assert set(var["labels5"]["labels"]).isdisjoint(var["labels5_test"]["labels"])
    assert set(var["labels5"]["labels"]).isdisjoint(var["labels2_test"]["labels"])
    fam = env_family("l2o/ConvNet-v0", **variant_kwargs("l2o/ConvNet-v0", "labels5"))
    from l2o_gym.problems.convnet import load_images

    _, y = load_images("patches", 32)
    parts = {s: fam.partition_indices(s) for s in ("train", "val", "test")}
    assert set(np.unique(y[parts["train"]])) == {0, 1, 2, 3, 4}
    for a in parts:
        for b in parts:
            if a < b:
                assert not set(parts[a]).intersection(parts[b])
    X, yy = fam.partition("train", torch.device("cpu"), torch.float32)
    assert X.shape[1:] == (3, 32, 32) and set(yy.tolist()) == {0, 1, 2, 3, 4}
    sub = ConvNet(labels=(8, 9))
    _, y2 = sub.partition("test", torch.device("cpu"), torch.float32)
    assert set(y2.tolist()) == {0, 1}  # renumbered in the order of labels
    full = ConvNet().partition_indices("test")
    assert len(sub.partition_indices("test")) == int(np.isin(y[full], [8, 9]).sum()) > 150


def test_registered_env_and_variants():
    import gymnasium as gym

    for name, kw in VARIANTS["l2o/ConvNet-v0"].items():
        fam = env_family("l2o/ConvNet-v0", **kw)
        assert isinstance(fam, ConvNet), name
    env = gym.make("l2o/ConvNet-v0", **SMALL, labels=(0, 1), horizon=3)
    obs, _ = env.reset(seed=0)
    obs, r, term, trunc, _ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    assert np.isfinite(r) and not term
    env.close()


# ---- multi-LSTM ---------------------------------------------------------------------------------------------
def _run(policy, problems, steps: int) -> list[torch.Tensor]:
    state = core.reset(problems, core.CoreConfig(horizon=steps, history=1, validate=False))
    memory = policy.reset(state)
    out = []
    for _ in range(steps):
        step, memory = policy.act(state, memory)
        out.append(step)
        state, *_ = core.step(state, step)
    return out


def test_multi_lstm_with_shared_weights_equals_single_lstm_step_by_step():
    torch.manual_seed(0)
    single = LSTMPolicy(LSTMConfig())
    multi = MultiLSTMPolicy(("conv", "fc", "bn", "bias"), LSTMConfig())
    for net in multi.nets.values():
        net.load_state_dict(single.net.state_dict())
    problems = ConvNet(**SMALL, image_size=16).sample(2, "train", seed=0)
    for a, b in zip(_run(single, problems, 4), _run(multi, problems, 4)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    # one shared network object under one name is the single LSTM as well
    shared = MultiLSTMPolicy(("all",), assign={"*": "all"}, nets={"all": single.net})
    for a, b in zip(_run(single, problems, 3), _run(shared, problems, 3)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    # different weights per kind give different steps on the kinds that changed only
    with torch.no_grad():
        multi.nets["fc"].out.bias.add_(1.0)
    fam = problems.family
    step = _run(multi, problems, 1)[0]
    ref = _run(single, problems, 1)[0]
    for s in fam.param_specs():
        same = torch.allclose(step[:, s.slice], ref[:, s.slice])
        assert same == (s.kind != "fc"), s.name


def test_checkpoint_stores_kinds_and_mismatch_lists_both(tmp_path):
    policy = MultiLSTMPolicy(("conv", "fc"), LSTMConfig(hidden=4), env_id="l2o/ConvNet-v0")
    path = policy.save(tmp_path / "m.safetensors")
    back = MultiLSTMPolicy.load(path)
    assert back.kinds == ("conv", "fc")
    for k in back.kinds:
        for a, b in zip(back.nets[k].parameters(), policy.nets[k].parameters()):
            assert torch.equal(a, b)
    with pytest.raises(KindMismatchError, match=r"has kinds \['bias', 'bn', 'conv', 'fc'\].*LSTMs for kinds \['conv', 'fc'\].*no LSTM for \['bias', 'bn'\]"):
        load_multi_policy(path, env_id="l2o/ConvNet-v0")
    ok = MultiLSTMPolicy(("conv", "fc"), LSTMConfig(hidden=4), assign={"bn": "conv", "*": "fc"})
    ok.check_kinds(["conv", "fc", "bn", "bias"])
    # an LSTM checkpoint initialises every per-kind LSTM
    single = LSTMPolicy(LSTMConfig(hidden=4))
    sp = single.save(tmp_path / "s.safetensors")
    init_from_checkpoint(policy, sp)
    assert torch.equal(policy.nets["fc"].weights[0], single.net.weights[0])
    with pytest.raises(ValueError, match="no LSTM for"):
        MultiLSTMPolicy(("conv",)).bind(ConvNet(**SMALL).param_specs())


def test_multi_lstm_with_one_network_object_under_several_names_saves_and_loads(tmp_path):
    # `nets` may hold one shared network under several names; save() failed (safetensors refuses shared tensors)
    torch.manual_seed(0)
    net = LSTMPolicy(LSTMConfig(hidden=4)).net
    shared = MultiLSTMPolicy(("conv", "fc"), nets={"conv": net, "fc": net}, assign={"*": "fc"})
    back = MultiLSTMPolicy.load(shared.save(tmp_path / "shared.safetensors"))
    problems = ConvNet(**SMALL, image_size=16).sample(2, "train", seed=0)
    for a, b in zip(_run(shared, problems, 2), _run(back, problems, 2)):
        assert torch.equal(a, b)


def test_trainer_trains_all_lstms_jointly(tmp_path):
    cfg = TrainConfig(env_id="l2o/ConvNet-v0", family_kwargs={**SMALL, "image_size": 16}, arch=LSTMConfig(hidden=4),
                      n_problems=2, horizon=4, unroll=2, episodes=1, val_every=1, val_problems=2, progress=False,
                      kinds=("conv", "fc", "bn", "bias"), out=str(tmp_path), tensorboard=False)
    trainer = Trainer(cfg)
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in trainer.policy.nets.items()}
    policy = trainer.train()
    assert isinstance(policy, MultiLSTMPolicy) and policy.kinds == cfg.kinds
    for k, net in trainer.policy.nets.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[k], net.parameters())), k
    with pytest.raises(ValueError, match="assign needs kinds"):
        TrainConfig(assign={"*": "all"})
    with pytest.raises(KindMismatchError, match="no LSTM for"):
        Trainer(TrainConfig(env_id="l2o/ConvNet-v0", kinds=("conv", "fc"), val_problems=1))


# ---- LearnedOptimizer on a user's conv net -------------------------------------------------------------------
def _user_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 10),
    )


def test_learned_optimizer_maps_user_params_to_kinds_and_decreases_the_loss():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:256] / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target[:256])
    model = _user_net()
    groups = param_groups_by_kind(model)
    assert {g["kind"]: len(g["params"]) for g in groups} == {"conv": 1, "bias": 2, "bn": 2, "fc": 1}
    policy = MultiLSTMPolicy(("conv", "fc", "bn", "bias"))
    from l2o_gym.agents.lstm.policy import PRETRAINED_DIR

    init_from_checkpoint(policy, PRETRAINED_DIR / "lstm_MLP.safetensors")
    opt = LearnedOptimizer(groups, policy)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert [s.kind for s in policy._bound] == [g["kind"] for g in groups for _ in g["params"]]
    assert np.mean(losses[-5:]) < 0.6 * losses[0]
    m = _user_net()
    o = LearnedOptimizer(m.parameters(), MultiLSTMPolicy())
    F.cross_entropy(m(x), y).backward()
    with pytest.raises(ValueError, match="'kind' key"):
        o.step()
    m = _user_net()
    o = LearnedOptimizer(param_groups_by_kind(m), MultiLSTMPolicy(("conv", "fc")))
    F.cross_entropy(m(x), y).backward()
    with pytest.raises(KindMismatchError, match=r"no LSTM for \['bias', 'bn'\]"):
        o.step()


def test_make_family_by_name():
    fam = make_family("convnet", **SMALL, labels=[0, 1, 2])
    assert fam.labels == (0, 1, 2) and fam.n_outputs == 3
