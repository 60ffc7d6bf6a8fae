"""Neural network backbones shared by the image methods."""

from .resnet import BasicBlock, ResNet18

__all__ = ["BasicBlock", "ResNet18"]
