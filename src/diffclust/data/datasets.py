"""Named datasets: scikit-learn's bundled ``digits`` and the real files of ``shared/data``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["load_dataset", "available_datasets", "Dataset", "resolve_data_home",
           "locate_dataset"]

SHARED_DATASETS = {
    "mnist": "mnist.npz",
    "fashion_mnist": "fashion_mnist.npz",
    "usps": "usps.npz",
    "coil20": "coil20.npz",
    "coil100_32": "coil100_32.npz",
    "umist": "umist.npz",
    "orl_32": "orl_32.npz",
    "cifar10_jpeg_test": "cifar10_jpeg_test.npz",
    "cifar10_lossless_train4000": "cifar10_lossless_train4000.npz",
    "imagenet50_dino_vits16_val_dev": "imagenet50_dino_vits16_val_dev.npz",
}
BUNDLED = ("digits",)


@dataclass
class Dataset:
    """``x`` images (uint8, (N,H,W[,C])) or features (float32, (N,D)); ``y`` labels or None."""

    name: str
    x: np.ndarray
    y: np.ndarray | None
    extra: dict

    @property
    def is_images(self) -> bool:
        return self.x.ndim >= 3


def available_datasets() -> list[str]:
    from .download import REMOTE_DATASETS

    return list(BUNDLED) + sorted(set(SHARED_DATASETS) | set(REMOTE_DATASETS))


def locate_dataset(name: str, data_home=None, download: bool = True, cache_dir=None,
                   verbose: bool = True) -> Path:
    """The npz file of a named dataset, looked for in this order: ``data_home`` (or
    ``$DIFFCLUST_DATA``), a ``../shared/data`` folder next to the working directory, the
    download cache (``~/.cache/diffclust/datasets``, ``$DIFFCLUST_CACHE``, ``cache_dir``); then,
    for the public datasets and with ``download=True``, fetched from its source and verified."""
    from .download import REMOTE_DATASETS, cache_home, fetch_dataset

    fname = SHARED_DATASETS.get(name, f"{name}.npz")
    folders = []
    explicit = data_home or os.environ.get("DIFFCLUST_DATA")
    if explicit:
        folders.append(resolve_data_home(data_home))
    else:
        folders += [g.resolve() for g in (Path.cwd() / "../shared/data", Path.cwd() / "shared/data")
                    if g.is_dir()]
    folders.append(cache_home(cache_dir))
    for folder in folders:
        if (folder / fname).is_file():
            return folder / fname
    if name in REMOTE_DATASETS and download:
        return fetch_dataset(name, cache_dir=cache_dir, verbose=verbose)
    where = ", ".join(str(f) for f in folders)
    how = ("pass download=True to fetch it from its public source, or " if name in
           REMOTE_DATASETS else "it has no public source we can verify here: ")
    how += ("put its .npz in a folder and pass data_home= (CLI: --data-home) or set "
            "DIFFCLUST_DATA")
    raise FileNotFoundError(f"dataset {name!r} ({fname}) was not found in {where}; {how}")


def resolve_data_home(data_home=None) -> Path:
    """The folder of real datasets: the argument, else ``$DIFFCLUST_DATA``, else ``../shared/data``
    relative to the working directory when it exists."""
    cand = data_home or os.environ.get("DIFFCLUST_DATA")
    if cand is None:
        for guess in (Path.cwd() / "../shared/data", Path.cwd() / "shared/data"):
            if guess.is_dir():
                return guess.resolve()
        raise FileNotFoundError(
            "no dataset folder: pass data_home=... (CLI: --data-home) or set DIFFCLUST_DATA to "
            "the folder that holds the .npz files (e.g. export DIFFCLUST_DATA=../shared/data)")
    p = Path(cand).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"dataset folder {p} does not exist; set DIFFCLUST_DATA or "
                                f"data_home to the folder that holds the .npz files")
    return p


def load_dataset(name: str, data_home=None, return_X_y: bool = False, flatten: bool = False,
                 split: str = "all", download: bool = True, cache_dir=None,
                 verbose: bool = True):
    """Load a named dataset.

    ``digits`` (1,797 8×8 images, shipped with scikit-learn) needs no files; the others are read
    from ``data_home`` / ``$DIFFCLUST_DATA``, or downloaded once from their public source
    (MNIST, Fashion-MNIST, USPS, CIFAR-10), checksum-verified and cached (see
    :func:`locate_dataset`). ``flatten`` turns images into ``(N, H·W·C)``
    float32 in [0, 1]. ``split`` is ``'all'``, ``'train'`` or ``'test'`` (where the file has a
    split). Returns a :class:`Dataset`, or ``(X, y)`` with ``return_X_y``.
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
        ds = Dataset("digits", x, d.target.astype(np.int64), {})
    elif name in available_datasets():
        path = locate_dataset(name, data_home, download=download, cache_dir=cache_dir,
                              verbose=verbose)
        with np.load(path, allow_pickle=False) as z:
            extra = {k: z[k] for k in z.files if k not in ("x", "y")}
            ds = Dataset(name, z["x"], z["y"].astype(np.int64), extra)
    else:
        raise ValueError(f"unknown dataset {name!r}; available: {available_datasets()} (or load "
                         f"your own file with diffclust.data.load_array)")
    if split != "all":
        if "split" not in ds.extra:
            raise ValueError(f"dataset {name!r} has no train/test split; use split='all'")
        keep = ds.extra["split"] == {"train": 0, "test": 1}[split]
        ds = Dataset(ds.name, ds.x[keep], ds.y[keep],
                     {k: v[keep] if len(v) == len(keep) else v for k, v in ds.extra.items()})
    if flatten and ds.is_images:
        ds = Dataset(ds.name, ds.x.reshape(len(ds.x), -1).astype(np.float32) / 255.0, ds.y,
                     ds.extra)
    return (ds.x, ds.y) if return_X_y else ds
