"""Batched augmentations in plain torch (no torchvision): images for contrastive learning,
feature vectors for the feature methods (:func:`feature_view`).

Every function takes images ``x`` of shape ``(B, C, H, W)`` in [−1, 1] (the diffclust image
convention, see :func:`diffclust.data.validation.check_images`) and a CPU ``torch.Generator``;
all random parameters are drawn per sample in one call (no Python loop over samples), so a given
generator state gives the same views on every run. The output has the input's shape, dtype,
device and range.

* :func:`random_resized_crop` — area fraction ``scale``, aspect ratio ``ratio`` (log-uniform),
  resampled bilinearly back to ``H×W`` with one batched ``affine_grid``/``grid_sample``;
  ``flip_p`` folds a horizontal flip into the same affine map;
* :func:`color_jitter` — brightness, contrast, saturation, hue (hue as a rotation of the
  chrominance plane in YIQ), applied with probability ``p``; saturation and hue are no-ops on
  grey images;
* :func:`random_grayscale` (colour only), :func:`gaussian_blur` (per-sample σ, separable,
  grouped convolution);
* :class:`SimCLRAugment` — the SimCLR composition with defaults per image type;
* :func:`feature_view` — a noisy, coordinate-dropped view of feature vectors (CLUDI,
  Self-Classifier).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "SimCLRAugment",
    "color_jitter",
    "feature_view",
    "gaussian_blur",
    "random_grayscale",
    "random_resized_crop",
]

_LUMA = (0.299, 0.587, 0.114)


def _u(n, lo, hi, generator, device):
    return (lo + (hi - lo) * torch.rand(n, generator=generator)).to(device)


def _bern(n, p, generator, device):
    return (torch.rand(n, generator=generator) < p).to(device)


def _check(x):
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"augmentations take a (B, C, H, W) tensor, got "
                         f"{getattr(x, 'shape', type(x))}")


def random_resized_crop(x, generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.0):
    """Crop a random box of area fraction ``U(scale)`` and aspect ``logU(ratio)`` from each image
    and resize it to the input size (bilinear); flip it horizontally with probability
    ``flip_p``."""
    _check(x)
    B, dev = x.shape[0], x.device
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < lo ≤ hi ≤ 1, got {scale}")
    area = _u(B, scale[0], scale[1], generator, dev)
    logr = _u(B, math.log(ratio[0]), math.log(ratio[1]), generator, dev)
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(max=1.0)  # fractions of the side
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (2 * torch.rand(B, generator=generator).to(dev) - 1) * (1 - w)
    cy = (2 * torch.rand(B, generator=generator).to(dev) - 1) * (1 - h)
    sx = torch.where(_bern(B, flip_p, generator, dev), -w, w)
    theta = torch.zeros(B, 2, 3, device=dev, dtype=torch.float32)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.to(x.dtype)


def _gray(y):
    if y.shape[1] == 1:
        return y
    w = torch.tensor(_LUMA, device=y.device, dtype=y.dtype).view(1, 3, 1, 1)
    return (y[:, :3] * w).sum(1, keepdim=True)


def color_jitter(x, generator, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8):
    """SimCLR colour jitter with probability ``p`` per image: brightness ``y·b``, contrast
    ``m + c (y − m)`` (m the image's mean grey level), saturation ``g + s (y − g)`` (g the grey
    image), hue rotation by ``2π h`` of the YIQ chrominance; b, c, s ~ U(1 ± strength),
    h ~ U(±hue); computed on [0, 1] and clamped."""
    _check(x)
    B, C, dev = x.shape[0], x.shape[1], x.device
    y = (x.float() + 1) / 2
    b = _u(B, 1 - brightness, 1 + brightness, generator, dev).view(B, 1, 1, 1)
    c = _u(B, 1 - contrast, 1 + contrast, generator, dev).view(B, 1, 1, 1)
    s = _u(B, 1 - saturation, 1 + saturation, generator, dev).view(B, 1, 1, 1)
    hh = _u(B, -hue, hue, generator, dev)
    apply = _bern(B, p, generator, dev).view(B, 1, 1, 1)
    z = (y * b).clamp(0, 1)
    m = _gray(z).mean((1, 2, 3), keepdim=True)
    z = (m + c * (z - m)).clamp(0, 1)
    if C == 3:
        g = _gray(z)
        z = (g + s * (z - g)).clamp(0, 1)
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                               [0.211, -0.523, 0.312]], device=dev)
        from_yiq = torch.linalg.inv(to_yiq)
        cos, sin = torch.cos(2 * math.pi * hh), torch.sin(2 * math.pi * hh)
        rot = torch.zeros(B, 3, 3, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        M = from_yiq @ rot @ to_yiq  # (B, 3, 3)
        z = torch.einsum("bij,bjhw->bihw", M, z).clamp(0, 1)
    out = torch.where(apply, z, y)
    return (out * 2 - 1).to(x.dtype)


def random_grayscale(x, generator, p=0.2):
    """Replace colour images by their luma (repeated over the channels) with probability p;
    grey images are returned unchanged."""
    _check(x)
    if x.shape[1] != 3:
        return x
    B = x.shape[0]
    g = ((_gray((x.float() + 1) / 2) * 2) - 1).expand_as(x).to(x.dtype)
    return torch.where(_bern(B, p, generator, x.device).view(B, 1, 1, 1), g, x)


def gaussian_blur(x, generator, sigma=(0.1, 2.0), p=0.5, kernel_size=None):
    """Gaussian blur with σ ~ U(sigma) per image, applied with probability p. The kernel side is
    ``kernel_size`` or the odd number nearest 10 % of the image side (at least 3), as SimCLR."""
    _check(x)
    B, C, H, W = x.shape
    k = kernel_size or max(3, int(round(0.1 * min(H, W))) // 2 * 2 + 1)
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {k}")
    dev = x.device
    sig = _u(B, sigma[0], sigma[1], generator, dev)
    apply = _bern(B, p, generator, dev)
    r = torch.arange(k, device=dev, dtype=torch.float32) - k // 2
    ker = torch.exp(-r[None] ** 2 / (2 * sig[:, None] ** 2))
    ker = ker / ker.sum(1, keepdim=True)  # (B, k)
    ker = ker.repeat_interleave(C, 0)  # (B·C, k)
    y = x.float().reshape(1, B * C, H, W)
    pad = k // 2
    y = F.pad(y, (pad, pad, 0, 0), mode="replicate")
    y = F.conv2d(y, ker.view(B * C, 1, 1, k), groups=B * C)
    y = F.pad(y, (0, 0, pad, pad), mode="replicate")
    y = F.conv2d(y, ker.view(B * C, 1, k, 1), groups=B * C)
    y = y.view(B, C, H, W)
    return torch.where(apply.view(B, 1, 1, 1), y, x.float()).to(x.dtype)


class SimCLRAugment:
    """The SimCLR view generator: random resized crop (+ horizontal flip) → colour jitter (p 0.8)
    → random grayscale (p 0.2) → Gaussian blur (p ``blur_p``).

    ``SimCLRAugment.for_images(C, H)`` picks defaults: colour images use the SimCLR/SCAN CIFAR
    values (crop scale (0.2, 1), flip 0.5, jitter 0.4/0.4/0.4/0.1, blur 0.5); grey images
    (digits) use a milder crop (0.5, 1), no flip (a mirrored digit is another symbol), jitter
    0.4/0.4 (brightness/contrast only) and blur 0.5 [PROP]."""

    def __init__(self, crop_scale=(0.2, 1.0), flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1),
                 jitter_p=0.8, gray_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0)):
        self.crop_scale, self.flip_p = tuple(crop_scale), float(flip_p)
        self.jitter, self.jitter_p = tuple(jitter), float(jitter_p)
        self.gray_p, self.blur_p, self.blur_sigma = float(gray_p), float(blur_p), tuple(blur_sigma)

    @classmethod
    def for_images(cls, channels: int, size: int):
        if channels == 1:
            return cls(crop_scale=(0.5, 1.0), flip_p=0.0, jitter=(0.4, 0.4, 0.0, 0.0),
                       gray_p=0.0, blur_sigma=(0.1, max(0.2, 0.0625 * size)))
        return cls()

    def __call__(self, x, generator):
        x = random_resized_crop(x, generator, scale=self.crop_scale, flip_p=self.flip_p)
        b, c, s, h = self.jitter
        x = color_jitter(x, generator, b, c, s, h, p=self.jitter_p)
        x = random_grayscale(x, generator, p=self.gray_p)
        return gaussian_blur(x, generator, sigma=self.blur_sigma, p=self.blur_p)

    def __repr__(self):
        return (f"SimCLRAugment(crop_scale={self.crop_scale}, flip_p={self.flip_p}, "
                f"jitter={self.jitter}, jitter_p={self.jitter_p}, gray_p={self.gray_p}, "
                f"blur_p={self.blur_p}, blur_sigma={self.blur_sigma})")


def _plain_draws(fn):
    return lambda shape, generator, device: fn(shape, generator=generator).to(device)


def feature_view(x, generator, noise=(0.2, 1.0), drop=(0.05, 0.1), order="noise_then_drop",
                 rows=None):
    """A random view x̃ of feature vectors ``x`` (L, …, D) (METHODS.md §2.4.2): a unit-norm
    Gaussian direction scaled by ``U[noise]``, then coordinate dropout at rate ``U[drop]``
    without rescaling (``order="drop_then_noise"`` swaps the two).

    One scale and one rate per leading index (a row of a (B, D) batch; a chain of CLUDI's
    (S, B, D)), drawn on the CPU. ``rows``: the source of the per-coordinate draws, with
    ``rows.randn(shape, generator, device)`` and ``rows.rand(…)`` (e.g. a
    :class:`~diffclust.training.distributed.GlobalBatchRandom` for one rank's rows of a global
    batch); default plain ``torch.randn`` / ``torch.rand`` on ``generator``.
    """
    dev, lead = x.device, (x.shape[0],) + (1,) * (x.ndim - 1)
    randn = rows.randn if rows is not None else _plain_draws(torch.randn)
    rand = rows.rand if rows is not None else _plain_draws(torch.rand)

    def add_noise(v):
        a = torch.empty(lead).uniform_(*noise, generator=generator).to(dev)
        return v + a * F.normalize(randn(v.shape, generator, dev), dim=-1)

    def dropout(v):
        r = torch.empty(lead).uniform_(*drop, generator=generator).to(dev)
        return v * (rand(v.shape, generator, dev) >= r)

    return dropout(add_noise(x)) if order == "noise_then_drop" else add_noise(dropout(x))
