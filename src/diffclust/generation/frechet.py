"""Fréchet distance between real and generated images, with a pluggable feature extractor, and
the confidence of generated samples (C-EDM Fig. 8).

Fréchet distance (METHODS.md §1.9; FID/FDD) between Gaussian fits ``N(μ_1, Σ_1)``,
``N(μ_2, Σ_2)`` of two feature sets::

    FD = ‖μ_1 − μ_2‖² + tr(Σ_1 + Σ_2 − 2 (Σ_1 Σ_2)^{1/2})

computed in float64 as ``tr((Σ_1 Σ_2)^{1/2}) = Σ_i sqrt(λ_i(Σ_1^{1/2} Σ_2 Σ_1^{1/2}))`` — the
symmetric PSD form, whose eigenvalues equal those of Σ_1 Σ_2 — so no complex square roots
appear. Covariances use the unbiased (N − 1) estimator as FID does.

**Feature extractors.** Any callable ``images (N, C, H, W) in [−1, 1] → (N, D)`` features works.
:func:`pretrained_extractor` loads Inception-v3 (torchvision, FID's network) or DINOv2
(transformers, FDD) **from local files only** and raises a clear error when the weights are not
on the machine. On machines without them (ours: no internet, no cached weights) use
:func:`train_feature_extractor`: a small CNN classifier trained on the dataset's images; its
penultimate activations (``feature_dim`` = 128) are the features and its softmax gives
class probabilities. This is our documented choice for USPS (benchmarks/cedm.py trains it on
the digit labels, like Inception is trained on ImageNet labels); numbers are therefore "FD in
this CNN's feature space", comparable across models evaluated with the same extractor, not
to published FIDs.

**Confidence** (C-EDM §5, Fig. 8): the maximum softmax probability of the clusterer on each
generated image, :func:`sample_confidence`; :func:`confidence_extremes` picks the lowest and
highest.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..training.loop import epoch_batches, train_epoch

__all__ = [
    "ClassifierFeatures",
    "SmallConvNet",
    "confidence_extremes",
    "extract_features",
    "frechet_distance",
    "frechet_distance_features",
    "frechet_distance_images",
    "gaussian_stats",
    "pretrained_extractor",
    "sample_confidence",
    "train_feature_extractor",
]


# ---------------------------------------------------------------------- the maths
def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of ``features`` ``(N, D)``, N ≥ 2."""
    f = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrtm_psd(S):
    w, V = np.linalg.eigh((S + S.T) / 2)
    return (V * np.sqrt(np.clip(w, 0, None))) @ V.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """``‖μ_1 − μ_2‖² + tr(Σ_1) + tr(Σ_2) − 2 tr((Σ_1 Σ_2)^{1/2})`` for PSD Σ's (float64)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    D = mu1.shape[0]
    if mu2.shape != (D,) or s1.shape != (D, D) or s2.shape != (D, D):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {s1.shape}, "
                         f"sigma2 {s2.shape}")
    r1 = _sqrtm_psd(s1)
    ev = np.linalg.eigvalsh(r1 @ ((s2 + s2.T) / 2) @ r1)
    tr_sqrt = np.sqrt(np.clip(ev, 0, None)).sum()
    d = mu1 - mu2
    fd = float(d @ d + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
    return max(fd, 0.0)


def frechet_distance_features(f1, f2) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets ``(N1, D)``, ``(N2, D)``."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


@torch.no_grad()
def extract_features(extractor: Callable, images, batch_size: int = 500) -> np.ndarray:
    """Run ``extractor`` over ``images`` (tensor/array ``(N, C, H, W)`` in [−1, 1]) in batches."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    x = x.float()
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    out = [torch.as_tensor(extractor(x[i:i + batch_size])).float().reshape(
        min(batch_size, len(x) - i), -1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


def frechet_distance_images(real, fake, extractor: Callable, batch_size: int = 500,
                            real_stats=None) -> float:
    """Fréchet distance between ``real`` and ``fake`` images in ``extractor``'s feature space.

    ``real_stats`` = ``gaussian_stats(extract_features(extractor, real))`` can be passed to
    reuse the real-data statistics across evaluations (then ``real`` may be ``None``).
    """
    if real_stats is None:
        real_stats = gaussian_stats(extract_features(extractor, real, batch_size))
    return frechet_distance(*real_stats,
                            *gaussian_stats(extract_features(extractor, fake, batch_size)))


# ---------------------------------------------------------------------- extractors
class SmallConvNet(nn.Module):
    """A small CNN for grey or colour images of side 8–64: three conv stages (32, 64, 128
    channels, GroupNorm, SiLU, the last two with stride 2), global average pooling to a
    ``feature_dim`` vector, and a linear classifier on top."""

    def __init__(self, in_channels: int, n_classes: int, feature_dim: int = 128):
        super().__init__()

        def block(i, o, s):
            return nn.Sequential(nn.Conv2d(i, o, 3, s, 1), nn.GroupNorm(8, o), nn.SiLU())

        self.body = nn.Sequential(block(in_channels, 32, 1), block(32, 32, 1),
                                  block(32, 64, 2), block(64, feature_dim, 2),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


class ClassifierFeatures:
    """Callable feature extractor around a trained :class:`SmallConvNet`:
    ``self(images) → (N, feature_dim)`` penultimate features; :meth:`predict_proba` gives the
    softmax. Images are ``(N, C, H, W)`` in [−1, 1] (the generators' output range)."""

    def __init__(self, net: SmallConvNet, image_shape):
        self.net = net.eval()
        self.image_shape = tuple(image_shape)

    def _check(self, x):
        x = torch.as_tensor(x).float()
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"the extractor was trained on {self.image_shape} images, got "
                             f"{tuple(x.shape[1:])}")
        return x

    @torch.no_grad()
    def __call__(self, images):
        return self.net.features(self._check(images))

    @torch.no_grad()
    def predict_proba(self, images):
        return torch.softmax(self.net(self._check(images)), 1)


def train_feature_extractor(images, labels, n_epochs: int = 3, batch_size: int = 128,
                            lr: float = 2e-3, feature_dim: int = 128, seed: int = 0,
                            verbose: bool = False) -> ClassifierFeatures:
    """Train :class:`SmallConvNet` to classify ``images`` into ``labels`` (digit labels, or
    cluster ids for a label-free extractor) with AdamW + cross-entropy and small random shifts
    (±1 px) as augmentation; returns a :class:`ClassifierFeatures`. ``train_accuracy_`` on the
    returned object is the last epoch's accuracy."""
    from ..data.validation import check_images

    X = torch.from_numpy(check_images(images))
    y = torch.as_tensor(np.asarray(labels).reshape(-1)).long()
    if len(y) != len(X):
        raise ValueError(f"{len(y)} labels for {len(X)} images")
    if int(y.min()) < 0:
        raise ValueError("labels must be ≥ 0")
    K = int(y.max()) + 1
    g = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        net = SmallConvNet(X.shape[1], K, feature_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = n_epochs * math.ceil(len(X) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    net.train()
    acc = 0.0
    correct = 0

    def step(idx):  # a batch shifted by up to one pixel, cross-entropy on its classes
        nonlocal correct
        sh = torch.randint(-1, 2, (2,), generator=g).tolist()
        logits = net(torch.roll(X[idx], shifts=sh, dims=(2, 3)))
        correct += int((logits.argmax(1) == y[idx]).sum())
        return nn.functional.cross_entropy(logits, y[idx]), {}

    for ep in range(n_epochs):
        correct = 0
        train_epoch(step, epoch_batches(len(X), batch_size, g), opt, scheduler=sched,
                    what=f"feature CNN in epoch {ep + 1}", hint="lower lr")
        acc = correct / len(X)
        if verbose:
            print(f"feature CNN epoch {ep + 1}/{n_epochs}: train acc {acc:.4f}")
    fx = ClassifierFeatures(net, X.shape[1:])
    fx.train_accuracy_ = acc
    return fx


def pretrained_extractor(name: str = "inception", device=None):
    """A pretrained image feature extractor from **local** weights only.

    ``"inception"``: torchvision Inception-v3 (ImageNet) pool features (2048-d), images resized
    to 299 (FID's network; the torchvision weights, not the TF-FID port, so values are close to
    but not identical with published FIDs). ``"dinov2"``: ``facebook/dinov2-base`` via
    transformers, CLS token at 224 (FDD's family; FDD uses ViT-L/14). Grey images are repeated
    to 3 channels; ImageNet normalisation. Raises ``RuntimeError`` when the weights are not
    available locally: use :func:`train_feature_extractor` or any callable instead.
    """
    import torch.nn.functional as F

    dev = torch.device(device or "cpu")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def prep(x, side):
        x = torch.as_tensor(x).float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate((x + 1) / 2, size=(side, side), mode="bilinear", align_corners=False)
        return ((x - mean) / std).to(dev)

    if name == "inception":
        try:
            from torchvision.models import Inception_V3_Weights, inception_v3

            w = Inception_V3_Weights.IMAGENET1K_V1
            path = torch.hub.get_dir() + "/checkpoints/" + w.url.rsplit("/", 1)[-1]
            import os

            if not os.path.exists(path):
                raise FileNotFoundError(path)
            net = inception_v3(weights=None, aux_logits=True, init_weights=False)
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (ImportError, FileNotFoundError) as e:
            raise RuntimeError(f"Inception-v3 weights are not available locally ({e}); use "
                               f"train_feature_extractor(...) or any callable extractor") from e
        net.fc = nn.Identity()
        net = net.eval().to(dev)
        return torch.no_grad()(lambda x: net(prep(x, 299)).cpu())
    if name == "dinov2":
        try:
            from transformers import AutoModel

            net = AutoModel.from_pretrained("facebook/dinov2-base", local_files_only=True)
        except Exception as e:
            raise RuntimeError(f"DINOv2 weights are not available locally ({e}); use "
                               f"train_feature_extractor(...) or any callable extractor") from e
        net = net.eval().to(dev)
        return torch.no_grad()(lambda x: net(pixel_values=prep(x, 224)).last_hidden_state[:, 0].cpu())
    raise ValueError(f"unknown extractor {name!r}; choose 'inception' or 'dinov2'")


# ---------------------------------------------------------------------- confidence
def sample_confidence(images, predict_proba: Callable, batch_size: int = 500) -> np.ndarray:
    """Max softmax probability (MSP) of a clusterer on each image (C-EDM Fig. 8).

    ``predict_proba``: images ``(B, C, H, W)`` in [−1, 1] → ``(B, K)`` cluster probabilities
    (e.g. ``lambda x: temi.predict_proba(features(x))`` or a
    :class:`ClassifierFeatures`'s ``predict_proba``). Rows are checked to be distributions.
    """
    P = extract_features(predict_proba, images, batch_size)
    if (P < -1e-6).any() or not np.allclose(P.sum(1), 1.0, atol=1e-3):
        raise ValueError("predict_proba must return probabilities (rows ≥ 0 summing to 1)")
    return P.max(1)


def confidence_extremes(confidence, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` least and the ``k`` most confident samples (lowest first, highest
    first); ties broken by index (stable sort)."""
    c = np.asarray(confidence).reshape(-1)
    k = min(int(k), len(c))
    order = np.argsort(c, kind="stable")
    return order[:k].copy(), order[::-1][:k].copy()
