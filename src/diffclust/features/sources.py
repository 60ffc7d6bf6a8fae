"""Where images come from: a folder of image files, or an array of images.

Every source gives, for item ``i``: a display name (``names``), a content key (``keys``, what the
feature cache is keyed by) and ``load(i)`` (a PIL image or a uint8 array; it raises for an
unreadable file, which the extractor reports and skips).

* :class:`FolderSource` — ``root`` searched recursively for .jpg/.jpeg/.png/.webp (any case);
  names are paths relative to ``root``; the key of a file is its absolute path, size and
  modification time, so an edited or replaced file gets a new key and is re-embedded. When
  every image sits in a first-level sub-folder (the ImageFolder layout) and there are at least
  two of them, ``y`` holds the sub-folder index (``class_names`` the folder names).
* :class:`ArraySource` — uint8 images ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``
  (C ∈ {1, 3, 4}; grey becomes 3 channels at preprocessing), or floats in [0, 1]; names are the
  row indices; the key of a row is a hash of its pixels.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

__all__ = ["ImageSource", "FolderSource", "ArraySource", "as_source", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


class ImageSource:
    names: np.ndarray
    keys: list
    y: np.ndarray | None = None
    class_names: list | None = None
    description: str = ""

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, i: int):  # pragma: no cover - interface
        raise NotImplementedError


class FolderSource(ImageSource):
    def __init__(self, root, recursive: bool = True, extensions=IMAGE_EXTENSIONS,
                 labels: str | bool = "auto"):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ValueError(f"{root} is not a directory")
        exts = tuple(e.lower() for e in extensions)
        pattern = "**/*" if recursive else "*"
        files = sorted((p for p in root.glob(pattern)
                        if p.suffix.lower() in exts and p.is_file()),
                       key=lambda p: p.relative_to(root).as_posix())
        if not files:
            raise ValueError(f"no images ({', '.join(exts)}) found in {root}"
                             + ("" if recursive else " (recursive=False)"))
        self.root = root.resolve()
        self.paths = files
        rel = [p.relative_to(root).as_posix() for p in files]
        self.names = np.array(rel)
        keys = []
        for p in files:
            st = p.stat()
            keys.append(hashlib.sha1(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
                                     .encode()).hexdigest())
        self.keys = keys
        self.description = f"folder {self.root} ({len(files)} images)"
        if labels in ("auto", True):
            parts = [r.split("/") for r in rel]
            if all(len(q) >= 2 for q in parts):
                classes = sorted({q[0] for q in parts})
                if len(classes) >= 2 or labels is True:
                    idx = {c: k for k, c in enumerate(classes)}
                    self.y = np.array([idx[q[0]] for q in parts], dtype=np.int64)
                    self.class_names = classes

    def load(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im.load()  # decode now: truncated or corrupt files raise here
            if "A" in im.getbands() or im.info.get("transparency") is not None:
                return im.convert("RGBA")  # composited onto white at preprocessing
            return im.copy() if im.mode in ("RGB", "L") else im.convert("RGB")


def _as_uint8_hwc(X, name="X") -> np.ndarray:
    import torch

    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.dtype == object or not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{name} must be a numeric image array, got dtype {X.dtype}")
    if X.ndim == 4:
        if X.shape[1] in (1, 3, 4) and X.shape[-1] not in (1, 3, 4):
            X = X.transpose(0, 2, 3, 1)
        elif X.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{name} has shape {X.shape}: no channel axis of size 1, 3 or 4 "
                             f"(expected (N,H,W), (N,H,W,C) or (N,C,H,W))")
        if X.shape[-1] == 1:
            X = X[..., 0]
    elif X.ndim != 3:
        hint = (" These look like feature vectors: cluster them directly (diffclust fit)"
                if X.ndim == 2 else "")
        raise ValueError(f"{name} must hold images shaped (N,H,W), (N,H,W,C) or (N,C,H,W); "
                         f"got shape {X.shape}.{hint}")
    if X.dtype != np.uint8:
        X = X.astype(np.float32)
        lo, hi = float(np.nanmin(X)), float(np.nanmax(X))
        if not np.isfinite(X).all():
            raise ValueError(f"{name} contains NaN or infinite pixels")
        if lo >= 0 and hi <= 1.0 + 1e-6:
            X = np.round(X * 255.0)
        elif not (lo >= 0 and hi <= 255):
            raise ValueError(f"{name} float pixels must lie in [0, 1] or [0, 255]; got "
                             f"[{lo:.3g}, {hi:.3g}]")
        X = np.clip(X, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(X)


class ArraySource(ImageSource):
    def __init__(self, X, y=None, names=None, description: str = "array"):
        self.X = _as_uint8_hwc(X)
        n = len(self.X)
        if n == 0:
            raise ValueError("no images: the array is empty")
        self.names = np.arange(n) if names is None else np.asarray(names)
        if len(self.names) != n:
            raise ValueError(f"{len(self.names)} names for {n} images")
        if y is not None:
            y = np.asarray(y).reshape(-1)
            if len(y) != n:
                raise ValueError(f"{len(y)} labels for {n} images")
        self.y = y
        head = f"{self.X.shape[1:]}|{self.X.dtype}".encode()
        self.keys = [hashlib.sha1(head + row.tobytes()).hexdigest() for row in self.X]
        self.description = f"{description} {tuple(self.X.shape)}"

    def load(self, i: int):
        return self.X[i]


def as_source(inputs, data_home=None, key=None) -> ImageSource:
    """An :class:`ImageSource` from a folder, an image-array file (.npz/.npy), a dataset name
    (``usps``, ``cifar10_jpeg_test``, …), an array/tensor of images, or a source."""
    if isinstance(inputs, ImageSource):
        return inputs
    if isinstance(inputs, (str, os.PathLike)):
        p = Path(inputs).expanduser()
        if p.is_dir():
            return FolderSource(p)
        if p.is_file():
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                raise ValueError(f"{p} is a single image; pass the folder that holds it")
            from ..data import load_array

            X, y = load_array(p, key=key)
            return ArraySource(X, y, description=str(p))
        from ..data import available_datasets, load_dataset

        if str(inputs) in available_datasets():
            ds = load_dataset(str(inputs), data_home=data_home)
            if not ds.is_images:
                raise ValueError(f"dataset {inputs!r} already holds features "
                                 f"{tuple(ds.x.shape)}, not images: cluster it directly")
            return ArraySource(ds.x, ds.y, description=f"dataset {inputs}")
        raise ValueError(f"{inputs!r} is neither a folder, a file nor a dataset name "
                         f"({', '.join(available_datasets())})")
    return ArraySource(inputs)
