"""Feature benchmark sets built by the project's own `embed` with an offline backbone.

Builds, into ``--cache`` (not committed; rebuilt when missing, resumable through the feature
cache), ``<set>_<backbone>.npz`` for:

* ``usps``: all 9,298 USPS digits;
* ``cifar10_14k``: the 4,000 lossless CIFAR-10 training images + the 10,000 test images, which
  are a **JPEG copy** (≈30 dB PSNR; not comparable with published CIFAR-10 numbers);
* ``fashion_mnist``: all 70,000 Fashion-MNIST images.

Records the build time and images/s in results/features.json.

    python benchmarks/features.py --sets usps cifar10_14k [--backbone efficientnet-lite0]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from _common import DATA_HOME, append_results, command_line, machine

from diffclust import load_dataset
from diffclust.features import embed

SETS = ("usps", "cifar10_14k", "fashion_mnist")
DEFAULT_CACHE = Path(os.environ.get("DIFFCLUST_FEATURES", Path.home() / ".cache" / "diffclust"
                                    / "benchmark-features"))


def images_of(name):
    if name == "cifar10_14k":
        a = load_dataset("cifar10_lossless_train4000", data_home=DATA_HOME)
        b = load_dataset("cifar10_jpeg_test", data_home=DATA_HOME)
        return np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y])
    d = load_dataset(name, data_home=DATA_HOME)
    return d.x, d.y


def feature_path(name, backbone="efficientnet-lite0", cache=DEFAULT_CACHE) -> Path:
    return Path(cache) / f"{name}_{backbone}.npz"


def build(name, backbone="efficientnet-lite0", cache=DEFAULT_CACHE, batch_size=64,
          verbose=True) -> Path:
    out = feature_path(name, backbone, cache)
    if out.exists():
        return out
    X, y = images_of(name)
    t = time.perf_counter()
    f = embed(X, backbone, batch_size=batch_size, cache_dir=Path(cache) / "cache", out=None,
              verbose=verbose)
    seconds = time.perf_counter() - t
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, x=f.x.astype(np.float32), y=y)
    os.replace(tmp, out)
    append_results("features", [{"set": name, "backbone": backbone, "n": int(len(X)),
                                 "dim": int(f.x.shape[1]), "seconds": round(seconds, 1),
                                 "images_per_s": round(f.meta.get("computed", len(X)) /
                                                       max(seconds, 1e-9), 1),
                                 "cache_hits": int(f.meta.get("cache_hits", 0)),
                                 "machine": machine(), "command": command_line(),
                                 "date": time.strftime("%Y-%m-%d")}])
    return out


def load_set(name, backbone="efficientnet-lite0", dim=384, cache=DEFAULT_CACHE):
    """The features of a set (built when missing) and its labels, reduced by PCA to ``dim``
    dimensions (every method alike; 0 keeps them): ``(X float32, y)``."""
    z = np.load(build(name, backbone, cache))
    X, y = z["x"], z["y"]
    if dim and dim < X.shape[1]:
        from sklearn.decomposition import PCA

        X = PCA(dim, random_state=0).fit_transform(X).astype(np.float32)
    return X, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    ap.add_argument("--batch-size", type=int, default=64)
    a = ap.parse_args()
    for name in a.sets:
        p = build(name, a.backbone, a.cache, a.batch_size)
        print(f"{name}: {p}", flush=True)


if __name__ == "__main__":
    main()
