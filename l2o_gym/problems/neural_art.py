"""Neural art (style transfer) as an optimizee: the pixels of an image (Andrychowicz et al., 2016, §3.4).

The objective is Gatys et al.'s style-transfer loss — match the *content* features of a content image and
the *style* statistics (Gram matrices) of a style image, plus a total-variation smoothness term — with the
image's pixels as the parameters θ. The feature network is a fixed, seeded, **random-weight** convolutional
net (see :class:`FeatureNet`): the paper used an ImageNet-trained VGG, whose weights no installed package
ships and nothing may be downloaded here. Random convolutional features are a published substitute for
texture and style statistics (Ustyuzhaninov et al., 2016, *Texture synthesis using shallow convolutional
networks with random filters*; He, Wang & Hopcroft, 2016, *A powerful generative model using random
weights for the deep image representation*): a Gram matrix of many random ReLU filter responses still
captures the colour correlations and local structure at the filters' scales, which is what style loss
needs, although the results are less "painterly" than with VGG. Claims made here are about this stand-in.

All images come from installed wheels (:func:`l2o_gym.data.photo`); nothing is downloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from l2o_gym import data
from l2o_gym.checks import SPLITS, check_positive_int, check_split
from l2o_gym.problems.base import ParamSpec, ProblemBatch, ProblemFamily, param_specs_from

#: Content photos of each split (disjoint photos, so test crops are never seen in training). The two style
#: photos (:data:`STYLES`) are in none of them.
CONTENT_PHOTOS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "rocket", "retina", "motorcycle", "china", "flower"),
    "val": ("coffee",),
    "test": ("chelsea", "grace_hopper"),
}

#: Style images: the training style and the second style of the transfer test (photos of :data:`l2o_gym.data.PHOTOS`).
STYLES: tuple[str, ...] = ("immunohistochemistry", "hubble_deep_field")

#: Seed of the random feature-network weights (fixed: the objective is the same on every machine).
FEATURE_SEED: int = 1606_04474

#: Side (pixels) of the reference image size: the objective is scaled by ``(size / REFERENCE_SIZE)²``.
REFERENCE_SIZE: int = 64


def _resize(img: Tensor, size: int) -> Tensor:
    """``[C, H, W]`` float64 → ``[C, size, size]`` by antialiased bilinear resampling (deterministic, CPU)."""
    return F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def _photo_chw(name: str) -> Tensor:
    """The photo ``name`` as a ``[3, H, W]`` float64 tensor in [0, 1] (raises DataUnavailableError if missing)."""
    return torch.from_numpy(np.ascontiguousarray(data.photo(name).transpose(2, 0, 1)))


def gram(feat: Tensor) -> Tensor:
    """Gram matrices ``G[N, C, C] = F Fᵀ / (h·w)`` of feature maps ``feat[N, C, h, w]`` (mean over positions)."""
    n, c, h, w = feat.shape
    f = feat.reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (h * w)


def total_variation(x: Tensor) -> Tensor:
    """Mean squared difference of vertically and horizontally adjacent pixels: ``[N]`` for ``x[N, C, S, S]``.

    ``TV(x) = ½ [mean (x[:, :, i+1, j] − x[:, :, i, j])² + mean (x[:, :, i, j+1] − x[:, :, i, j])²]``.
    """
    dv = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).flatten(1).mean(1)
    dh = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return 0.5 * (dv + dh)


class FeatureNet:
    """A fixed random-weight convolutional feature extractor, batched over images.

    Layer ``l`` (``l = 0 … L−1``) is ``conv3×3(padding 1, no bias) → ReLU``, preceded for ``l ≥ 1`` by a
    2×2 average pool (average pooling, as Gatys et al. preferred for synthesis). The input is ``x − 0.5``
    (pixels centred). Weights are ``N(0, 2 / fan_in)`` (He initialisation, which keeps the activations'
    scale roughly constant through ReLU layers — He, Wang & Hopcroft stress that random-weight features
    need such scaling), drawn in float64 from ``torch.Generator().manual_seed(seed)``, so every device
    and dtype sees the same network. Default widths ``(16, 32, 64)``: receptive fields of 3, 8 and 18
    pixels.

    Args:
        widths: output channels of each layer.
        seed: seed of the weights.
    """

    def __init__(self, widths: tuple[int, ...], seed: int = FEATURE_SEED) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.widths = tuple(widths)
        self.weights64: list[Tensor] = []
        c_in = 3
        for c_out in self.widths:
            fan_in = c_in * 9
            self.weights64.append(torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64) * math.sqrt(2.0 / fan_in))
            c_in = c_out
        self._cache: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}

    @property
    def min_size(self) -> int:
        """Smallest image side whose last feature map is at least 2×2: ``2^L``."""
        return 2 ** len(self.widths)

    def weights(self, device: torch.device, dtype: torch.dtype) -> list[Tensor]:
        key = (torch.device(device), dtype)
        if key not in self._cache:
            self._cache[key] = [w.to(device=device, dtype=dtype) for w in self.weights64]
        return self._cache[key]

    def __call__(self, x: Tensor) -> list[Tensor]:
        """Feature maps of every layer, ``[N, widths[l], S / 2^l, S / 2^l]``, for images ``x[N, 3, S, S]``."""
        h = x - 0.5
        out = []
        for i, w in enumerate(self.weights(x.device, x.dtype)):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            h = torch.relu(F.conv2d(h, w, padding=1))
            out.append(h)
        return out


@dataclass(eq=False)
class NeuralArt(ProblemFamily):
    """Style transfer: optimize an image's pixels to match a content photo's features and a style's Grams.

    Source: Andrychowicz et al., *Learning to learn by gradient descent by gradient descent* (NeurIPS 2016),
    §3.4 "Neural Art" (objective of Gatys, Ecker & Bethge, 2015/2016): one style image, 64×64 content
    images for training (1,800 / 20 / 100 train / val / test from ImageNet), tested at 128×128 and on a
    second style.

    Math:
        For an image ``x ∈ R^{3×S×S}`` (θ, pixels) with feature maps ``F_l(x)`` of :class:`FeatureNet` and
        Gram matrices ``G_l(x) = F_l F_lᵀ / (h_l w_l)``::

            f(x) = (S / 64)² · [ α · mean (F_k(x) − F_k(c))²
                                + β · (1/L) Σ_l mean (G_l(x) − G_l(s))² / g_l
                                + γ · TV(x) ]

        ``c`` the content image, ``s`` the style image (resized to ``S×S``), ``k = content_layer``,
        ``TV`` the mean squared difference of adjacent pixels (:func:`total_variation`), ``g_l`` the mean
        squared entry of the style's own Gram ``G_l(s)`` (so each layer's style term is relative and the
        layers weigh alike). The factor ``(S / 64)²`` makes ``f`` extensive (proportional to the number of
        pixels): the per-pixel gradients have the same scale at every size, so a step size tuned at 64×64
        means the same at 128×128, and ``f`` is 4× larger there.

    Scale (defaults ``α = 10``, ``β = 1``, ``γ = 10``): at 64×64, ``f(x₀)`` ranged 1.25–9.26 (mean 3.6) over
    8 ``test`` images (measured; ``docs/neural-art.md``); the style term dominates at the start (``x₀`` is
    near the content image), the content term grows as the style is imposed.

    Stand-in:
        The feature network is a fixed random-weight conv net (:class:`FeatureNet`), not the paper's
        ImageNet VGG (no installed package ships VGG weights); content and style images are photos from
        installed wheels, not ImageNet images and paintings.

    Pixel range:
        θ is unconstrained (no squashing, which would change the landscape and saturate gradients); the
        content term anchors the image, the TV term penalises high-frequency noise, and pixels are
        clipped to ``[0, 1]`` only for display (:meth:`images`).

    Sampling distribution:
        Content image ``c``: a square crop of side ``L ~ U{S, …, min(H, W)}`` at a uniform position of a
        photo drawn uniformly from :data:`CONTENT_PHOTOS` ``[split]`` (train: 6 photos, val: 1, test: 2 —
        disjoint photos), resized to ``S×S`` (antialiased bilinear). The crops are drawn from the
        instance generator, so a seed fixes them; the pool is every crop of these photos rather than the
        paper's fixed 1,800 images. Initial point ``x₀ = c + 0.1·ε``, ``ε ~ N(0, I)`` (the content image
        plus noise). The style image is the central square of the style photo (side ``min(H, W)``)
        resized to ``S×S``; it is the same for every instance.

    Sizes:
        ``size = 64`` (training; ``dim = 3·64·64 = 12288``), ``128`` for the transfer test (49152).
        ``size`` must be at least ``2^len(widths)`` (feature net) and at most the smallest side of the
        content photos of every split (300, ``chelsea``).

    θ layout:
        ``θ[:, :] = x.reshape(N, 3·S·S)`` (channel-major ``[3, S, S]``, RGB in [0, 1] units).

    Args:
        size: image side ``S`` (pixels).
        style: the style photo (one of :data:`l2o_gym.data.PHOTOS`; defaults to the training style).
        content_weight: α.
        style_weight: β.
        tv_weight: γ.
        widths: channels of the feature network's layers.
        content_layer: index of the layer whose features the content term matches.
        init_noise: standard deviation of the noise added to the content image at ``x₀``.
        feature_seed: seed of the feature network.
    """

    size: int = 64
    style: str = STYLES[0]
    content_weight: float = 10.0
    style_weight: float = 1.0
    tv_weight: float = 10.0
    widths: tuple[int, ...] = (16, 32, 64)
    content_layer: int = 1
    init_noise: float = 0.1
    feature_seed: int = FEATURE_SEED
    name = "neural_art"
    stochastic = False

    def __post_init__(self) -> None:
        self.size = check_positive_int("size", self.size)
        if isinstance(self.widths, (int, np.integer)) and not isinstance(self.widths, bool):
            self.widths = (int(self.widths),)
        if not isinstance(self.widths, (tuple, list)) or not self.widths:
            raise ValueError(f"widths must be a non-empty tuple of positive integers, got {self.widths!r}")
        self.widths = tuple(check_positive_int("feature width", w) for w in self.widths)
        if not (isinstance(self.content_layer, int) and 0 <= self.content_layer < len(self.widths)):
            raise ValueError(f"content_layer must be an integer in [0, {len(self.widths)}), got {self.content_layer!r}")
        for name in ("content_weight", "style_weight", "tv_weight", "init_noise"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.style not in data.PHOTOS:
            raise ValueError(f"unknown style {self.style!r}: expected one of {', '.join(data.PHOTOS)}")
        for split, names in CONTENT_PHOTOS.items():
            if self.style in names:
                raise ValueError(f"style {self.style!r} is a {split} content photo: pick a photo outside the content sets")
        self.net = FeatureNet(self.widths, self.feature_seed)
        if self.size < self.net.min_size:
            raise ValueError(
                f"size {self.size} is too small for the feature network with {len(self.widths)} layers "
                f"(widths {self.widths}, {len(self.widths) - 1} 2×2 poolings): need size >= {self.net.min_size}"
            )
        # Fail at construction, naming the package and file, if an image is missing; check the size against the
        # content photos before resizing the style to it (a huge size would otherwise fail in the allocator).
        max_size = min(min(data.photo(p).shape[:2]) for names in CONTENT_PHOTOS.values() for p in names)
        if self.size > max_size:
            raise ValueError(f"size {self.size} exceeds the smallest content photo side {max_size}")
        self._style_img = _resize(self._center_square(_photo_chw(self.style)), self.size)
        self._style_cache: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        g = [gram(f) for f in self.net(self._style_img[None])]
        self._style_grams64 = [x[0] for x in g]
        self._style_norms = [float(x.pow(2).mean()) for x in self._style_grams64]

    @staticmethod
    def _center_square(img: Tensor) -> Tensor:
        _, h, w = img.shape
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return img[:, top : top + s, left : left + s]

    @property
    def dim(self) -> int:
        return 3 * self.size * self.size

    @property
    def scale(self) -> float:
        """``(size / 64)²``: the extensive scaling of the objective."""
        return (self.size / REFERENCE_SIZE) ** 2

    def param_specs(self) -> tuple[ParamSpec, ...]:
        """One group ``"image"`` of shape ``(3, S, S)``, kind ``"pixels"``."""
        return param_specs_from([("image", (3, self.size, self.size), "pixels")])

    def style_image(self) -> Tensor:
        """The style target ``[3, S, S]`` float64 in [0, 1]."""
        return self._style_img.clone()

    def content_crops(self, n: int, generator: torch.Generator, split: str) -> Tensor:
        """``n`` content images ``[n, 3, S, S]`` float64 (see the class docstring), drawn from ``generator``."""
        check_split(split)
        names = CONTENT_PHOTOS[split]
        out = []
        for _ in range(n):
            k = int(torch.randint(len(names), (1,), generator=generator))
            img = _photo_chw(names[k])
            _, h, w = img.shape
            side = int(torch.randint(self.size, min(h, w) + 1, (1,), generator=generator))
            top = int(torch.randint(h - side + 1, (1,), generator=generator))
            left = int(torch.randint(w - side + 1, (1,), generator=generator))
            crop = img[:, top : top + side, left : left + side]
            out.append(crop if side == self.size else _resize(crop, self.size))
        return torch.stack(out).clamp(0.0, 1.0)

    def sample_instances(self, n: int, generator: torch.Generator, split: str) -> tuple[dict[str, Tensor], Tensor]:
        content = self.content_crops(n, generator, split)
        noise = torch.randn(content.shape, generator=generator, dtype=torch.float64)
        x0 = (content + self.init_noise * noise).reshape(n, -1)
        with torch.no_grad():
            feat = self.net(content)[self.content_layer]
        return {"content": content.reshape(n, -1), "content_features": feat}, x0

    def style_grams(self, device: torch.device, dtype: torch.dtype) -> list[Tensor]:
        """The style's Gram matrices ``[C_l, C_l]`` per layer on ``device``/``dtype`` (cached)."""
        key = (torch.device(device), dtype)
        if key not in self._style_cache:
            self._style_cache[key] = [g.to(device=device, dtype=dtype) for g in self._style_grams64]
        return self._style_cache[key]

    def terms(self, batch: ProblemBatch, theta: Tensor) -> dict[str, Tensor]:
        """The unweighted terms ``{"content", "style", "tv"}``, each ``[N]``, at ``theta[N, d]``.

        One batched forward of the feature network for the ``N`` images (the content features were
        computed once, at sampling: ``batch.data["content_features"]``).
        """
        n, s = theta.shape[0], self.size
        x = theta.reshape(n, 3, s, s)
        feats = self.net(x)
        c_term = (feats[self.content_layer] - batch.data["content_features"]).pow(2).flatten(1).mean(1)
        st = theta.new_zeros(n)
        for f, g_s, norm in zip(feats, self.style_grams(theta.device, theta.dtype), self._style_norms):
            st = st + (gram(f) - g_s).pow(2).flatten(1).mean(1) / norm
        return {"content": c_term, "style": st / len(feats), "tv": total_variation(x)}

    def loss(self, batch: ProblemBatch, theta: Tensor, step: Tensor) -> Tensor:
        t = self.terms(batch, theta)
        return self.scale * (self.content_weight * t["content"] + self.style_weight * t["style"] + self.tv_weight * t["tv"])

    def images(self, theta: Tensor) -> Tensor:
        """``theta[N, d]`` as displayable images ``[N, S, S, 3]`` clipped to [0, 1]."""
        n, s = theta.shape[0], self.size
        return theta.detach().reshape(n, 3, s, s).permute(0, 2, 3, 1).clamp(0.0, 1.0)


__all__ = ["CONTENT_PHOTOS", "FEATURE_SEED", "STYLES", "FeatureNet", "NeuralArt", "gram", "total_variation", "SPLITS"]
