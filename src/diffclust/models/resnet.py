"""A ResNet-18-style backbone (He et al. 2016) sized for the input resolution.

For inputs of side ≤ 64 it is the "CIFAR variant" used by SimCLR/SCAN on small images: a 3×3
stride-1 stem without max-pool, then four stages of two basic blocks (widths w, 2w, 4w, 8w,
strides 1, 2, 2, 2) and global average pooling, so a 16×16 image ends at 2×2 and a 32×32 at 4×4.
Larger inputs get the ImageNet stem (7×7 stride 2 + max-pool). ``width=64`` is ResNet-18
(11.2 M parameters); smaller widths scale the FLOPs by (w/64)² for CPU runs.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNet18"]


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet18(nn.Module):
    """``forward(x) → (B, out_dim)`` pooled features, ``out_dim = 8·width``."""

    def __init__(self, in_channels: int = 3, width: int = 64, image_size: int = 32,
                 blocks=(2, 2, 2, 2)):
        super().__init__()
        if width < 1 or in_channels < 1:
            raise ValueError(f"width and in_channels must be ≥ 1, got {width}, {in_channels}")
        self.config = {"in_channels": int(in_channels), "width": int(width),
                       "image_size": int(image_size), "blocks": list(blocks)}
        w = int(width)
        if image_size <= 64:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        layers, c = [], w
        for i, nb in enumerate(blocks):
            c_out = w * 2 ** i
            for j in range(nb):
                layers.append(BasicBlock(c, c_out, stride=(1 if i == 0 or j > 0 else 2)))
                c = c_out
        self.layers = nn.Sequential(*layers)
        self.out_dim = c

    def forward(self, x):
        return self.layers(self.stem(x)).mean((2, 3))
