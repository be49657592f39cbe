"""Tests of the neural-art family (l2o_gym.problems.neural_art): losses against direct per-image
computations and closed forms, batching, seeding, disjoint content photos, clear errors, gradients, env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from l2o_gym import data
from l2o_gym.checks import SPLITS
from l2o_gym.problems import make_family
from l2o_gym.problems import neural_art as na
from l2o_gym.problems.neural_art import CONTENT_PHOTOS, STYLES, FeatureNet, NeuralArt, gram, total_variation
from l2o_gym.registry import VARIANTS, env_family

#: tiny sizes: 16×16 images, a 2-layer feature net with 4 and 8 channels.
TINY = {"size": 16, "widths": (4, 8)}


def tiny(**kw) -> NeuralArt:
    return NeuralArt(**{**TINY, **kw})


def test_gram_and_style_loss_match_a_direct_per_image_computation() -> None:
    fam = tiny()
    batch = fam.sample(3, "train", seed=0, dtype=torch.float64)
    theta = batch.x0 + 0.2 * torch.randn(batch.x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = fam.terms(batch, theta)["style"]
    style_img = fam.style_image()
    for i in range(3):
        x = theta[i].reshape(3, 16, 16)
        total = 0.0
        feats_x, feats_s = fam.net(x[None]), fam.net(style_img[None])
        for fx, fs in zip(feats_x, feats_s):
            c = fx.shape[1]
            # Gram by explicit sums over positions, per image
            mx = fx[0].reshape(c, -1).numpy()
            ms = fs[0].reshape(c, -1).numpy()
            gx = np.array([[np.dot(mx[a], mx[b]) for b in range(c)] for a in range(c)]) / mx.shape[1]
            gs = np.array([[np.dot(ms[a], ms[b]) for b in range(c)] for a in range(c)]) / ms.shape[1]
            np.testing.assert_allclose(gram(fx)[0].numpy(), gx, rtol=1e-12)
            total += np.mean((gx - gs) ** 2) / np.mean(gs**2)
        assert float(got[i]) == pytest.approx(total / len(feats_x), rel=1e-10)


def test_total_variation_closed_form() -> None:
    # x[c, i, j] = a·i + b·j + c: every vertical difference is a, every horizontal one b → TV = (a² + b²) / 2.
    a, b = 0.3, -0.7
    i = torch.arange(8, dtype=torch.float64)
    x = torch.stack([a * i[:, None] + b * i[None, :] + k for k in range(3)])[None]
    assert float(total_variation(x)[0]) == pytest.approx(0.5 * (a * a + b * b), rel=1e-12)
    assert float(total_variation(torch.ones(1, 3, 5, 5))[0]) == 0.0


def test_objective_is_the_weighted_sum_of_its_terms_and_extensive() -> None:
    fam = tiny(content_weight=2.0, style_weight=3.0, tv_weight=5.0)
    batch = fam.sample(2, "val", seed=0, dtype=torch.float64)
    t = fam.terms(batch, batch.x0)
    expected = (16 / 64) ** 2 * (2.0 * t["content"] + 3.0 * t["style"] + 5.0 * t["tv"])
    torch.testing.assert_close(batch.loss(batch.x0), expected, rtol=1e-12, atol=0)
    # the content term by a direct per-image computation: mean squared difference of the content layer's features
    gen = torch.Generator().manual_seed(2)
    theta = batch.x0 + 0.1 * torch.randn(batch.x0.shape, generator=gen, dtype=torch.float64)
    got = fam.terms(batch, theta)["content"]
    for i in range(2):
        fx = fam.net(theta[i].reshape(1, 3, 16, 16))[fam.content_layer].numpy()
        fc = fam.net(batch.data["content"][i].reshape(1, 3, 16, 16))[fam.content_layer].numpy()
        assert float(got[i]) == pytest.approx(np.mean((fx - fc) ** 2), rel=1e-10)
    # at the content image the content term vanishes
    assert float(fam.terms(batch, batch.data["content"])["content"].abs().max()) < 1e-20
    # at the style image the style term vanishes
    s = fam.style_image().reshape(1, -1).expand(2, -1)
    assert float(fam.terms(batch, s)["style"].abs().max()) < 1e-20


def test_batched_equals_per_image() -> None:
    fam = tiny()
    batch = fam.sample(4, "test", seed=2, dtype=torch.float64)
    theta = batch.x0 + 0.1
    f, g = batch.loss_and_grad(theta)
    for i in range(4):
        sub = batch.index(torch.tensor([i]))
        fi, gi = sub.loss_and_grad(theta[i : i + 1])
        torch.testing.assert_close(fi, f[i : i + 1], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(gi, g[i : i + 1], rtol=1e-10, atol=1e-14)


def test_deterministic_from_seed_and_feature_net_fixed() -> None:
    a = tiny().sample(3, "train", seed=5, dtype=torch.float64)
    b = tiny().sample(3, "train", seed=5, dtype=torch.float64)
    c = tiny().sample(3, "train", seed=6, dtype=torch.float64)
    assert torch.equal(a.x0, b.x0) and torch.equal(a.data["content"], b.data["content"])
    assert not torch.equal(a.data["content"], c.data["content"])
    assert all(torch.equal(u, v) for u, v in zip(FeatureNet((4, 8)).weights64, FeatureNet((4, 8)).weights64))
    assert not torch.equal(FeatureNet((4, 8), seed=1).weights64[0], FeatureNet((4, 8)).weights64[0])


def test_content_photos_disjoint_and_each_split_reads_only_its_own(monkeypatch) -> None:
    sets = {s: set(CONTENT_PHOTOS[s]) for s in SPLITS}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert not (set(STYLES) & set().union(*sets.values()))
    fam = tiny()
    read: list[str] = []
    real = na._photo_chw
    monkeypatch.setattr(na, "_photo_chw", lambda name: (read.append(name), real(name))[1])
    for split in SPLITS:
        read.clear()
        fam.sample(30, split, seed=0)
        assert read and set(read) <= sets[split], (split, set(read))
    assert set(read) == sets["test"]  # 30 draws reach both test photos


def test_missing_image_is_a_clear_error(monkeypatch) -> None:
    import skimage.data

    def missing():
        raise FileNotFoundError("immunohistochemistry.png")

    data.photo.cache_clear()
    monkeypatch.setattr(skimage.data, "immunohistochemistry", missing)
    try:
        with pytest.raises(data.DataUnavailableError) as exc:
            tiny()
        msg = str(exc.value)
        assert "scikit-image" in msg and "immunohistochemistry" in msg
    finally:
        data.photo.cache_clear()


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"size 4 is too small.*need size >= 8"):
        NeuralArt(size=4, widths=(4, 8, 8))
    with pytest.raises(ValueError, match="too small"):
        make_family("neural_art", size=7)  # the default 3-layer net needs size >= 8
    with pytest.raises(ValueError, match="exceeds the smallest content photo side 300"):
        NeuralArt(size=301, widths=(2, 2))
    with pytest.raises(ValueError, match="'nope'"):
        tiny(style="nope")
    with pytest.raises(ValueError, match="'chelsea' is a test content photo"):
        tiny(style="chelsea")
    with pytest.raises(ValueError, match="content_layer"):
        tiny(content_layer=2)
    with pytest.raises(ValueError, match="-1.0"):
        tiny(tv_weight=-1.0)


def test_gradient_check() -> None:
    fam = NeuralArt(size=8, widths=(3, 4))
    batch = fam.sample(2, "train", seed=0, dtype=torch.float64)
    theta = (batch.x0 + 0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: batch.loss(t), (theta,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_param_specs_and_images() -> None:
    fam = tiny()
    (spec,) = fam.param_specs()
    assert (spec.name, spec.shape, spec.kind, spec.offset, spec.numel) == ("image", (3, 16, 16), "pixels", 0, fam.dim)
    batch = fam.sample(2, seed=0)
    imgs = fam.images(batch.x0)
    assert imgs.shape == (2, 16, 16, 3) and float(imgs.min()) >= 0 and float(imgs.max()) <= 1
    # the displayed image is θ's layout: channel c of pixel (i, j) is θ[c·S² + i·S + j]
    assert float(imgs[0, 3, 5, 1]) == pytest.approx(float(batch.x0[0, 1 * 256 + 3 * 16 + 5].clamp(0, 1)))


def test_env_and_variants() -> None:
    assert set(VARIANTS["l2o/NeuralArt-v0"]) == {"128", "style2", "128+style2"}
    assert env_family("l2o/NeuralArt-v0", **VARIANTS["l2o/NeuralArt-v0"]["style2"]).style == STYLES[1]
    env = gym.make("l2o/NeuralArt-v0", **TINY, horizon=3)
    obs, _ = env.reset(seed=0)
    assert env.action_space.shape == (3 * 16 * 16,)
    rewards = []
    for _ in range(3):
        obs, r, term, trunc, _ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        assert np.isfinite(r) and not term
        rewards.append(r)
    assert trunc
    assert rewards[0] < 0 and rewards == [rewards[0]] * 3  # −f, and a zero step leaves the image (so f) unchanged
    env.close()


def test_art_pictures_show_the_sections_first_test_problems(tmp_path) -> None:
    import json

    from PIL import Image

    from l2o_gym.agents.baselines import make_baseline
    from l2o_gym.experiments.art import art_pictures
    from l2o_gym.experiments.compare import CompareConfig, Section
    from l2o_gym.experiments.evaluation import evaluate

    tuned = {"envs": {"l2o/NeuralArt-v0@T5": {"sgd": {"hparams": {"lr": 0.5}, "horizon": 5},
                                               "adam": {"hparams": {"lr": 0.02}, "horizon": 5}}}}
    (tmp_path / "tuned.json").write_text(json.dumps(tuned))
    sec = Section("l2o/NeuralArt-v0", ["sgd", "adam"], 5, 50, n_problems=4)
    cfg = CompareConfig(sections=[sec], tuned=str(tmp_path / "tuned.json"), out=str(tmp_path),
                        family_kwargs={"l2o/NeuralArt-v0": TINY})
    path, lines = art_pictures(sec, cfg, tmp_path, n_images=2)
    assert path.name == "art_NeuralArt_T5.png" and path.is_file()
    w, h = Image.open(path).size
    assert (w, h) == (5 * 160, 2 * 180 + 50)  # 5 columns (content, style, start, sgd, adam) x 2 rows at 100 dpi
    assert any("art_NeuralArt_T5.png" in line for line in lines)
    ref = evaluate(make_baseline("adam", lr=0.02), "l2o/NeuralArt-v0", n_problems=4, horizon=5, family_kwargs=TINY)
    assert f"adam {sum(ref.final_values[:2]) / 2:.3g}" in " ".join(lines)  # the section's first 2 of its 4
    with pytest.raises(ValueError, match="not a neural-art env"):
        art_pictures(Section("l2o/Quadratic-v0", ["sgd"], 5), cfg, tmp_path)


def test_huge_size_is_a_value_error_before_allocating() -> None:
    """A size above the smallest content photo is a ``ValueError`` naming it, raised before the style image is
    resized to that size (which asked the allocator for 24 TB at size 10**6 and failed with a RuntimeError)."""
    with pytest.raises(ValueError, match="size 1000000 exceeds the smallest content photo side 300"):
        NeuralArt(size=10**6)
