"""Pretrained features for any images: transformers backbones (DINO, DINOv2, CLIP vision, any
``save_pretrained`` directory) or any callable, with the backbone's own preprocessing, batched
bf16/fp16 extraction and an on-disk, resumable cache. CLI: ``diffclust embed``."""

from .backbones import (
                        KNOWN_BACKBONES,
                        Backbone,
                        BackboneLoadError,
                        CallableBackbone,
                        HFBackbone,
                        load_backbone,
)
from .cache import FeatureCache, default_cache_dir
from .extract import Features, embed, load_features, save_features
from .preprocess import Preprocessor
from .sources import ArraySource, FolderSource, ImageSource, as_source

__all__ = ["embed", "Features", "save_features", "load_features", "load_backbone", "Backbone",
           "HFBackbone", "CallableBackbone", "BackboneLoadError", "KNOWN_BACKBONES",
           "Preprocessor", "FeatureCache", "default_cache_dir", "ImageSource", "FolderSource",
           "ArraySource", "as_source"]
