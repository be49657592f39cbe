"""Damaged or edited checkpoint headers are a ``CheckpointError`` naming the file and the field, before any
network is built (issue 17 §3); each agent kind's ``load_policy`` checks the kind; the shipped checkpoints load
through the one package-data locator."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from l2o_gym.agents.common import package_file, pretrained_dir
from l2o_gym.agents.gps import policy as gps_policy
from l2o_gym.agents.lstm import policy as lstm_policy
from l2o_gym.agents import sb3
from l2o_gym.checkpoint import CheckpointError, read_policy_config
from l2o_gym.experiments.compare import LEARNED, PolicySpec, _load_learned

SHIPPED = {
    "lstm": pretrained_dir() / "lstm_Quadratic.safetensors",
    "gps": pretrained_dir() / "gps_LogisticRegression.safetensors",
    "ppo": pretrained_dir() / "ppo_LogisticRegression.safetensors",
}
LOADERS = {"lstm": lstm_policy.load_policy, "gps": gps_policy.load_policy, "ppo": sb3.load_policy}


def _rewrite(src, dst, edit):
    """Copy the checkpoint ``src`` to ``dst`` with its JSON header replaced by ``edit(config)`` (raw JSON text if
    ``edit`` returns a string)."""
    cfg = read_policy_config(src)
    new = edit(dict(cfg))
    save_file(load_file(str(src)), str(dst), metadata={"l2o_gym": new if isinstance(new, str) else json.dumps(new)})
    return dst


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_shipped_checkpoints_load_through_each_kinds_loader(kind):
    policy = LOADERS[kind](SHIPPED[kind], env_id=read_policy_config(SHIPPED[kind])["env_id"], device="cpu")
    assert policy.checkpoint_config["kind"] == kind


@pytest.mark.parametrize("kind", sorted(SHIPPED))
@pytest.mark.parametrize("header", ["[]", "null", "123", '"text"'])
def test_a_header_that_is_not_a_json_object(kind, header, tmp_path):
    path = _rewrite(SHIPPED[kind], tmp_path / "c.safetensors", lambda c: header)
    with pytest.raises(CheckpointError, match=r"c\.safetensors.*not an object"):
        LOADERS[kind](path)


@pytest.mark.parametrize("kind", sorted(SHIPPED))
@pytest.mark.parametrize("version", [None, 0, 99, "1"])
def test_format_version_is_checked(kind, version, tmp_path):
    def edit(c):
        c.pop("format_version")
        if version is not None:
            c["format_version"] = version
        return c

    path = _rewrite(SHIPPED[kind], tmp_path / "v.safetensors", edit)
    with pytest.raises(CheckpointError, match=r"v\.safetensors.*'format_version'"):
        LOADERS[kind](path)


FIELD_EDITS = [
    ("gps", "obs_dim", None), ("gps", "obs_dim", "7"), ("gps", "dim", 2.5), ("gps", "hidden", "50"),
    ("gps", "core_config", [1]), ("gps", "activation", 3), ("gps", "max_step", "big"),
    ("ppo", "obs_dim", None), ("ppo", "policy_kwargs", []), ("ppo", "core_config", None),
    ("ppo", "action_scale", "1"), ("ppo", "dim", True), ("ppo", "obs_norm", "on"),
    ("lstm", "arch", None), ("lstm", "arch", [20, 2]),
]


@pytest.mark.parametrize("kind, field, value", FIELD_EDITS)
def test_missing_or_ill_typed_fields_name_the_file_and_the_field(kind, field, value, tmp_path):
    def edit(c):
        if value is None:
            c.pop(field)
        else:
            c[field] = value
        return c

    path = _rewrite(SHIPPED[kind], tmp_path / "f.safetensors", edit)
    with pytest.raises(CheckpointError, match=rf"f\.safetensors.*'{field}'"):
        LOADERS[kind](path)


def _never(*args, **kwargs):
    raise AssertionError("a network was built from an edited header before its shapes were checked")


def test_an_edited_lstm_arch_is_refused_before_building_anything(tmp_path, monkeypatch):
    path = _rewrite(SHIPPED["lstm"], tmp_path / "big.safetensors",
                    lambda c: {**c, "arch": {**c["arch"], "hidden": 200_000, "layers": 50}})  # ~160 GB if built
    monkeypatch.setattr(lstm_policy.CoordinateLSTM, "__init__", _never)
    with pytest.raises(CheckpointError, match=r"big\.safetensors.*does not match"):
        lstm_policy.load_policy(path)


def test_an_edited_gps_width_is_refused_before_building_anything(tmp_path, monkeypatch):
    path = _rewrite(SHIPPED["gps"], tmp_path / "big.safetensors", lambda c: {**c, "hidden": [10**7]})
    monkeypatch.setattr(gps_policy, "GaussianMLP", _never)
    with pytest.raises(CheckpointError, match=r"big\.safetensors.*'net\.0\.weight'"):
        gps_policy.load_policy(path)


def test_an_edited_sb3_width_is_refused_before_building_anything(tmp_path, monkeypatch):
    path = _rewrite(SHIPPED["ppo"], tmp_path / "big.safetensors",
                    lambda c: {**c, "policy_kwargs": {**c["policy_kwargs"], "net_arch": [10**7, 64]}})
    monkeypatch.setattr(sb3, "build_sb3_policy", _never)
    with pytest.raises(CheckpointError, match=r"big\.safetensors.*10000000"):
        sb3.load_policy(path)


@pytest.mark.parametrize("name", ["sac", "recurrent_ppo", "gps", "lstm"])
def test_compare_checks_the_kind_of_a_named_checkpoint(name):
    """``--policies sac=<a PPO checkpoint>`` used to load it and label it "sac"/"ppo"; now the kind must match."""
    assert name in LEARNED
    with pytest.raises(CheckpointError, match=r"holds a 'ppo' policy, not '" + name + r"'; pass it as ppo="):
        _load_learned(PolicySpec(name, str(SHIPPED["ppo"])), "l2o/LogisticRegression-v0", "cpu")


def test_package_data_is_found_through_one_locator():
    assert package_file("tuned_baselines.json").is_file()
    assert {p.name for p in pretrained_dir().glob("*.safetensors")} >= {p.name for p in SHIPPED.values()}
    from l2o_gym.experiments.tuning import default_tuned_path

    assert default_tuned_path() == package_file("tuned_baselines.json")
    assert lstm_policy.PRETRAINED_DIR == pretrained_dir()


def test_policy_save_round_trips_for_every_kind(tmp_path):
    """``Policy.save`` writes what the kind's loader reads (same weights, same actions)."""
    from l2o_gym import make_family, run_policy
    from l2o_gym.agents.baselines import GradientDescent

    problems = make_family("logistic_regression").sample(4, "test", 0)
    for kind, path in SHIPPED.items():
        policy = LOADERS[kind](path)
        copy = LOADERS[kind](policy.save(tmp_path / f"{kind}.safetensors"))
        cfg = policy.core_config
        a = run_policy(policy, problems, 5, cfg).losses
        b = run_policy(copy, problems, 5, cfg).losses
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match="GradientDescent"):
        GradientDescent(0.1).save(tmp_path / "gd.safetensors")
