"""The NN-classifier benchmark family (Li & Malik 2017) and the true objective through core, rollout, envs
and evaluation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from l2o_gym import core
from l2o_gym.agents import Adam, make_baseline
from l2o_gym.core import CoreConfig
from l2o_gym.experiments.evaluation import evaluate
from l2o_gym.policy import run_policy
from l2o_gym.problems import NNClassifier, make_family
from l2o_gym.problems.mlp import example_partitions
from l2o_gym.registry import NN_DATASETS, VARIANTS, env_family

SMALL = {"dataset": "breast_cancer", "inputs": 6, "hidden": 5, "batch_size": 8, "n_examples": 50}


def test_default_is_mnist48_and_param_specs_cover_theta():
    f = env_family("l2o/NNClassifier-v0")
    assert (f.dataset, f.inputs, f.hidden, f.batch_size) == ("mnist", 48, 48, 64)
    assert f.dim == 48 * 48 + 48 + 48 * 10 + 10 == 2842
    specs = f.param_specs()
    assert [s.name for s in specs] == ["layer0.weight", "layer0.bias", "layer1.weight", "layer1.bias"]
    assert [s.kind for s in specs] == ["weight", "bias", "weight", "bias"]
    assert specs[0].offset == 0 and specs[-1].offset + specs[-1].numel == f.dim
    wide = env_family("l2o/NNClassifier-v0", **VARIANTS["l2o/NNClassifier-v0"]["lfw_subset-wide"])
    assert (wide.inputs, wide.hidden, wide.n_classes, wide.dim) == (100, 200, 2, 100 * 200 + 200 + 200 * 2 + 2)


def test_variants_cover_every_setting_and_dataset():
    table = VARIANTS["l2o/NNClassifier-v0"]
    assert len(table) == 4 * len(NN_DATASETS)
    assert table["photo_patches-wide-batch10"] == {"dataset": "photo_patches", "inputs": 100, "hidden": 200,
                                                   "batch_size": 10}


def test_instances_projected_to_unit_variance_and_deterministic():
    f = NNClassifier(**SMALL)
    a, b = f.sample(3, "train", 7), f.sample(3, "train", 7)
    for k in a.data:
        assert torch.equal(a.data[k], b.data[k])
    assert torch.equal(a.x0, b.x0) and torch.equal(a.seeds, b.seeds)
    X = a.data["X"].double()
    assert X.shape == (3, 50, 6)
    torch.testing.assert_close(X.mean(1), torch.zeros(3, 6, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(X.std(1, unbiased=False), torch.ones(3, 6, dtype=torch.float64), atol=1e-4, rtol=0)
    # instances differ in projection, example subset and initialisation; splits draw other instances
    assert not torch.equal(a.data["index"][0], a.data["index"][1])
    assert not torch.allclose(a.x0[0], a.x0[1])
    test = f.sample(3, "test", 7)
    assert not torch.equal(test.data["index"], a.data["index"])


def test_mnist_held_out_instances_use_other_digits():
    f = NNClassifier(n_examples=100)
    parts = example_partitions(5000)
    tr, te = f.sample(2, "train", 0), f.sample(2, "test", 0)
    assert set(tr.data["index"].flatten().tolist()) <= set(parts["train"].tolist())
    assert set(te.data["index"].flatten().tolist()) <= set(parts["test"].tolist())
    assert not NNClassifier(dataset="digits", n_examples=100).split_examples  # transfer sets use all examples


def test_losses_match_a_plain_torch_net():
    f = NNClassifier(**SMALL)
    batch = f.sample(2, "val", 1, dtype=torch.float64)
    theta = batch.x0 + 0.3 * torch.randn_like(batch.x0)
    step = torch.tensor([3, 5])
    pos = f.minibatch_positions(batch, step)
    for i in range(2):
        w1, b1, w2, b2 = torch.split(theta[i], [6 * 5, 5, 5 * 2, 2])
        net = lambda x: torch.relu(x @ w1.reshape(6, 5) + b1) @ w2.reshape(5, 2) + b2  # noqa: E731
        X, y = batch.data["X"][i], batch.data["y"][i]
        full = F.cross_entropy(net(X), y)
        mini = F.cross_entropy(net(X[pos[i]]), y[pos[i]])
        torch.testing.assert_close(batch.true_loss(theta)[i], full)
        torch.testing.assert_close(batch.loss(theta, step)[i], mini)
    # the minibatch stream is a pure function of (seed, step)
    assert torch.equal(f.minibatch_positions(batch, step), pos)
    assert not torch.equal(f.minibatch_positions(batch, step + 1), pos)


def test_bad_input_clear_errors():
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'.*mnist, digits, lfw_subset"):
        NNClassifier(dataset="cifar10")
    with pytest.raises(ValueError, match="unknown activation 'gelu'.*relu"):
        NNClassifier(dataset="breast_cancer", activation="gelu")
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        NNClassifier(dataset="breast_cancer", hidden=0)
    with pytest.raises(ValueError, match="too small for batch_size=300.*only 200 examples"):
        NNClassifier(dataset="lfw_subset", batch_size=300)
    with pytest.raises(ValueError, match="500 examples for split 'val', fewer than n_examples=800"):
        NNClassifier(dataset="mnist", n_examples=800)
    with pytest.raises(ValueError, match="unexpected keyword argument 'layers'.*valid: \\['dataset', 'inputs'"):
        make_family("nn_classifier", layers=3)


def test_projection_wider_than_the_input_is_allowed():
    f = NNClassifier(dataset="breast_cancer", inputs=64, hidden=8, batch_size=16)  # 30 raw features -> 64
    batch = f.sample(2, "test", 0)
    f0, g0 = batch.loss_and_grad(batch.x0)
    assert torch.isfinite(f0).all() and torch.isfinite(g0).all() and torch.isfinite(batch.true_loss(batch.x0)).all()


def test_core_cost_is_the_true_objective_observations_the_minibatch():
    batch = NNClassifier(**SMALL).sample(3, "train", 0, dtype=torch.float64)
    state = core.reset(batch, CoreConfig(horizon=5))
    torch.testing.assert_close(state.true_loss, batch.true_loss(batch.x0))
    action = -0.1 * state.grad
    nxt, cost, term, _ = core.step(state, action)
    torch.testing.assert_close(cost, batch.true_loss(batch.x0 + action))
    torch.testing.assert_close(nxt.loss, batch.loss(batch.x0 + action, 1))  # minibatch objective of step 1
    assert not torch.equal(cost, nxt.loss)
    assert torch.equal(nxt.objective, nxt.true_loss)


def test_true_every_holds_the_value_between_evaluations():
    batch = NNClassifier(**SMALL).sample(2, "train", 0, dtype=torch.float64)
    traj = run_policy(make_baseline("sgd", lr=0.1), batch, 7, CoreConfig(horizon=7, history=1, true_every=3))
    exact = run_policy(make_baseline("sgd", lr=0.1), batch, 7, CoreConfig(horizon=7, history=1))
    tl, ex = traj.true_losses, exact.true_losses
    assert tl.shape == (8, 2)
    torch.testing.assert_close(traj.losses, exact.losses)  # the optimizer sees the same minibatches
    for t in (0, 3, 6, 7):  # evaluated at multiples of 3 and at the horizon
        torch.testing.assert_close(tl[t], ex[t])
    torch.testing.assert_close(tl[4], ex[3])
    torch.testing.assert_close(tl[5], ex[3])
    torch.testing.assert_close(traj.costs[3], ex[3])  # the cost after step 4 is the held value


def test_families_without_true_objective_unchanged():
    batch = make_family("quadratic", dim=4).sample(2, "train", 0)
    state = core.reset(batch, CoreConfig(horizon=3))
    assert state.true_loss is None and state.objective is state.loss
    nxt, cost, _, _ = core.step(state, -0.01 * state.grad)
    assert torch.equal(cost, nxt.loss)
    traj = run_policy(make_baseline("sgd", lr=0.01), batch, 3)
    assert traj.true_losses is None and traj.objectives is traj.losses


def test_env_reward_is_minus_true_objective():
    env = gym.make("l2o/NNClassifier-v0", **SMALL, horizon=4)
    env.reset(seed=0)
    state = env.unwrapped.driver.state
    _, reward, _, _, _ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))  # θ stays at θ₀
    assert reward == pytest.approx(-float(state.true_loss[0]), rel=1e-5)
    assert reward != pytest.approx(-float(env.unwrapped.driver.state.loss[0]), rel=1e-5)


def test_evaluation_reports_the_true_objective_and_adam_learns():
    res = evaluate(Adam(0.01), "l2o/NNClassifier-v0", n_problems=3, horizon=60, seed=0,
                   family_kwargs={"dataset": "digits", "n_examples": 200}, true_every=20, n_boot=20)
    assert res.extra["objective"] == "true" and res.extra["true_every"] == 20
    assert len(res.curve_mean) == 61
    assert res.curve_mean[25] == res.curve_mean[20]  # held between evaluations
    assert res.final_mean < 0.5 * res.curve_mean[0]  # the true objective falls (≈2.3 at θ₀)
    assert np.isfinite(res.extra["minibatch_final_mean"])


def test_nn_presets_follow_the_protocol():
    from l2o_gym.experiments.study import PRESETS

    full = PRESETS["nn-full"]()
    assert {s.variant for s in full[:-1]} == set(VARIANTS["l2o/NNClassifier-v0"])
    assert all((s.n_problems, s.horizon, s.long_horizon) == (100, 400, 800) for s in full[:-1])
    assert (full[-1].variant, full[-1].long_horizon) == ("mnist", 4000)
    # baselines tuned on the MNIST-48 training objective at T only, applied unchanged everywhere
    assert all(s.tuned_as == "" and s.tuned_horizon == 400 for s in full)
    assert all("lstm" in s.policies and "adagrad" in s.policies for s in full)
    small = PRESETS["nn-small-photo_patches"]()
    assert [s.long_horizon for s in small] == [800] * 4  # T and 2T on every setting (the README's table)


def test_every_split_has_instances_of_the_same_size():
    # model selection on val must see problems distributed like train and test: an MNIST val instance with 500
    # examples is ~25x easier to fit than a 1000-example test one (measured, docs/benchmarks.md)
    from l2o_gym.problems.nn_classifier import NNClassifier

    for ds in ("mnist", "digits", "lfw_subset"):
        fam = NNClassifier(dataset=ds)
        sizes = {split: fam.sample(1, split, 0).data["X"].shape[1] for split in ("train", "val", "test")}
        assert len(set(sizes.values())) == 1, (ds, sizes)
    assert NNClassifier().examples_per_instance("train") == 500


def test_env_info_objective_is_what_the_reward_uses_and_the_observed_one_the_minibatch():
    import gymnasium as gym
    import numpy as np

    import l2o_gym  # noqa: F401  (registers the envs)

    env = gym.make("l2o/NNClassifier-v0", horizon=5)
    _, info = env.reset(seed=0)
    assert info["objective"] != info["observed_objective"]  # the full-data loss vs the first minibatch's
    _, reward, _, _, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    assert reward == pytest.approx(-info["objective"])
    assert info["objective"] != info["observed_objective"]
    venv = gym.make_vec("l2o/NNClassifier-v0", num_envs=2, vectorization_mode="vector_entry_point", horizon=5)
    venv.reset(seed=0)
    _, rew, _, _, vinfo = venv.step(np.zeros(venv.action_space.shape, dtype=np.float32))
    np.testing.assert_allclose(np.asarray(rew), -np.asarray(vinfo["objective"]), rtol=1e-6)
    assert vinfo["observed_objective"].shape == (2,)


@pytest.mark.parametrize("dataset, split_examples", [("mnist", None), ("digits", True), ("lfw_subset", True),
                                                     ("photo_patches", True)])
def test_split_examples_are_disjoint_between_splits(dataset, split_examples):
    # the promise of docs/nn-benchmark.md: held-out (test) instances use *other* examples than train ones — for
    # mnist by default, for every dataset with split_examples=True; checked on the instances' example indices
    # (photo_patches: disjoint *patches*, but patches of one photo overlap in pixels across the partition)
    from l2o_gym import data

    f = NNClassifier(dataset=dataset, split_examples=split_examples, inputs=4, hidden=3, batch_size=8,
                     n_examples=15)
    assert f.split_examples
    X_all, y_all = data.load_dataset(dataset)
    parts = example_partitions(len(y_all))
    used = {}
    for split in ("train", "val", "test"):
        b = f.sample(4, split, 3)
        idx = b.data["index"]
        assert torch.equal(b.data["y"], torch.from_numpy(np.array(y_all))[idx])  # labels are the indexed examples'
        assert all(len(set(row.tolist())) == 15 for row in idx)  # drawn without replacement
        used[split] = set(idx.flatten().tolist())
        assert used[split] <= set(parts[split].tolist())
    assert not used["train"] & used["test"] and not used["train"] & used["val"] and not used["val"] & used["test"]


def test_mnist_test_digits_are_not_copies_of_train_digits():
    # disjoint indices would not help if the same image appeared twice in the set: compare the pixels
    from l2o_gym import data

    X, _ = data.load_dataset("mnist")
    parts = example_partitions(len(X))
    train = {X[i].tobytes() for i in parts["train"]}
    assert not any(X[i].tobytes() in train for i in np.concatenate([parts["val"], parts["test"]]))


def test_transfer_datasets_are_not_split_by_default():
    # documented: the transfer datasets are never trained on, so every split draws from all their examples
    for ds in ("digits", "lfw_subset", "breast_cancer", "photo_patches"):
        assert not NNClassifier(dataset=ds, inputs=4, hidden=3).split_examples, ds
    f = NNClassifier(dataset="lfw_subset", inputs=4, hidden=3)  # M = all 200 examples in every split
    assert f.examples_per_instance("test") == 200 and len(f.available("test")) == 200


def test_features_are_the_standardised_projection_of_the_indexed_examples():
    # X[k] = (X_raw[index[k]] P - mu) / sigma for some P: an exact affine function of the raw examples
    from l2o_gym import data

    f = NNClassifier(dataset="breast_cancer", inputs=6, hidden=3, batch_size=8, n_examples=80)
    b = f.sample(2, "test", 5, dtype=torch.float64)
    X_all, _ = data.load_dataset("breast_cancer")
    for k in range(2):
        raw = X_all[b.data["index"][k].numpy()]
        A = np.c_[raw, np.ones(len(raw))]
        target = b.data["X"][k].numpy()
        coef = np.linalg.lstsq(A, target, rcond=None)[0]
        np.testing.assert_allclose(A @ coef, target, atol=1e-5)


def test_instances_do_not_depend_on_the_thread_count():
    f = NNClassifier(dataset="digits", inputs=8, hidden=3, batch_size=8, n_examples=200)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = f.sample(2, "test", 0, dtype=torch.float64)
        torch.set_num_threads(2)
        b = f.sample(2, "test", 0, dtype=torch.float64)
    finally:
        torch.set_num_threads(old)
    for key in a.data:
        assert torch.equal(a.data[key], b.data[key]), key
    assert torch.equal(a.x0, b.x0) and torch.equal(a.seeds, b.seeds)


def test_a_non_finite_true_objective_is_divergence_never_a_nan_cost(monkeypatch):
    """The cost reads the true objective: where it overflows (evaluated there) the step counts as divergence and
    costs the finite penalty; non-finite at θ₀ is a ValueError naming the instances."""
    import torch

    from l2o_gym import core, make_family

    fam = make_family("nn_classifier", dataset="digits", inputs=8, hidden=4)
    problems = fam.sample(3, "test", 0)
    cfg = core.CoreConfig(horizon=4, history=1)
    state = core.reset(problems, cfg)
    real = type(problems).true_loss

    def overflowing(self, theta):
        out = real(self, theta)
        return torch.where(torch.arange(out.shape[0]) == 1, torch.full_like(out, float("nan")), out)

    monkeypatch.setattr(type(problems), "true_loss", overflowing)
    nxt, cost, terminated, _ = core.step(state, torch.zeros_like(state.theta))
    assert terminated.tolist() == [False, True, False] and torch.isfinite(cost).all()
    assert float(cost[1]) == float(state.threshold[1])
    with pytest.raises(ValueError, match=r"non-finite true objective at x0 for instances \[1\]"):
        core.reset(problems, cfg)
