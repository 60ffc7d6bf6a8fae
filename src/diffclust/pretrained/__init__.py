"""Diffusion U-Nets shipped with the package, loadable by name (``DiEC(unet="usps")``,
``diffclust pretrain-diffusion usps --init usps`` to train one further).

Each model is a folder next to this file in the diffusers ``UNet2DModel`` format written by
:meth:`~diffclust.diffusion.unet.DiffusionUNet.save_pretrained` (``config.json``,
``diffusion_pytorch_model.safetensors``, ``diffclust_unet.json``) with its card
(``README.md``: data, training command, measured clusterability). The weights' SHA-256 is
listed here and checked before a model is used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["PRETRAINED", "available", "pretrained_path"]

HERE = Path(__file__).resolve().parent
WEIGHTS = "diffusion_pytorch_model.safetensors"

#: name → (image size, SHA-256 of the weights file)
PRETRAINED: dict[str, tuple[int, str]] = {
    "fashion_mnist": (28, "a9092e873d6a21dc207291e1cf5519b32dd01b72e9c42b41fe2e5d01e68fe09c"),
    "mnist": (28, "65067d1f8875f495a6ec193209e1b43efe27cdaa22e337b572c9456d0d722db8"),
    "usps": (16, "a7a579d5bcdd17f76a9be43e5f27ee0ddf5939f7495c6a285727f9e7a87963d4"),
}


def available() -> list[str]:
    """The names of the shipped models."""
    return sorted(PRETRAINED)


def pretrained_path(name: str) -> Path:
    """The folder of the shipped model ``name``, its weights verified against their SHA-256."""
    if name not in PRETRAINED:
        raise ValueError(f"no pretrained U-Net named {name!r}; the shipped ones are "
                         f"{available()} (or pass a U-Net folder or a hub id owner/name)")
    folder = HERE / name
    weights = folder / WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"the pretrained U-Net {name!r} is missing its weights "
                                f"({weights}); reinstall diffclust")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != PRETRAINED[name][1]:
        raise ValueError(f"the weights of the pretrained U-Net {name!r} do not match their "
                         f"SHA-256 ({weights} is damaged or was changed); reinstall diffclust")
    return folder
