"""Images in: a folder of image files as one uint8 array, and the one rule by which images
become feature vectors for the feature methods."""

from __future__ import annotations

from collections import Counter

import numpy as np

__all__ = ["load_image_folder", "flatten_images"]


def flatten_images(X) -> np.ndarray:
    """Images ``(N, …)`` → ``(N, H·W·C)`` float32: uint8 pixels divided by 255, float pixels
    kept as they are (the rule ``load_dataset(..., flatten=True)`` uses)."""
    X = np.asarray(X)
    flat = X.reshape(len(X), -1)
    return flat.astype(np.float32) / 255.0 if X.dtype == np.uint8 else flat.astype(np.float32)


def load_image_folder(root, size: tuple[int, int] | None = None, verbose: bool = False):
    """Read every image under ``root`` (recursive; .jpg/.jpeg/.png/.webp) into one uint8 array.

    Rule: grey ``(N, H, W)`` when every image is greyscale, else RGB ``(N, H, W, 3)`` (an alpha
    channel is composited onto white); every image is resized (bicubic) to ``size`` (W, H) or,
    by default, to the most common size in the folder. Labels come from the first-level
    sub-folders when every image sits in one and there are at least two (else ``None``).
    Returns ``(X, y)``; an unreadable file raises a ``ValueError`` naming it.
    """
    from PIL import Image

    from ..features.sources import FolderSource
    from ..training.runtime import progress

    src = FolderSource(root)
    images = []
    for i in progress(range(len(src)), desc="reading images", verbose=verbose):
        try:
            im = src.load(i)
        except Exception as e:
            raise ValueError(f"cannot read image {src.paths[i]}: {e}") from None
        if im.mode == "RGBA":
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im).convert("RGB")
        images.append(im)
    grey = all(im.mode == "L" for im in images)
    if size is None:
        size = Counter(im.size for im in images).most_common(1)[0][0]
    mode = "L" if grey else "RGB"

    def fit(im):
        im = im if im.mode == mode else im.convert(mode)
        return im if im.size == tuple(size) else im.resize(size, Image.Resampling.BICUBIC)

    return np.stack([np.asarray(fit(im), dtype=np.uint8) for im in images]), src.y
