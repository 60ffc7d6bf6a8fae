"""Public benchmark datasets fetched from their canonical sources, verified, converted once.

``fetch_dataset(name)`` downloads the source files into a private temporary folder of the cache
(``~/.cache/diffclust/datasets``, or ``$DIFFCLUST_CACHE/datasets``, or ``cache_dir``), checks
every file's SHA-256 (MD5 where the source publishes only that), converts them to the npz layout
of the shared data folder (``x`` uint8 images, ``y`` int64 labels, ``split`` 0 = train /
1 = test, ``class_names`` where known) and renames the npz into place; the temporary folder is
removed whatever happens, so the cache never holds a half-written or unverified file.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "REMOTE_DATASETS",
    "DownloadError",
    "RemoteDataset",
    "RemoteFile",
    "cache_home",
    "fetch_dataset",
    "register_remote_dataset",
]


class DownloadError(ValueError):
    """A dataset could not be downloaded or verified (the message says why and what to do)."""


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str | None = None
    md5: str | None = None  # only where the source publishes no SHA-256

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class RemoteDataset:
    files: dict  # role -> RemoteFile
    convert: Callable[[dict], dict]  # role -> local path  ==>  arrays of the npz
    source: str = ""
    notes: str = ""
    extra: dict = field(default_factory=dict)


def cache_home(cache_dir=None) -> Path:
    """Where downloaded datasets live: ``cache_dir``, else ``$DIFFCLUST_CACHE``, else
    ``~/.cache/diffclust`` (each with a ``datasets`` sub-folder)."""
    base = cache_dir or os.environ.get("DIFFCLUST_CACHE") or Path.home() / ".cache" / "diffclust"
    return Path(base).expanduser() / "datasets"


# ------------------------------------------------------------------ converters
def _idx(path) -> np.ndarray:
    """An IDX file (MNIST format), gzipped or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DownloadError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DownloadError(f"{path}: header says {dims}, body has {body.size} bytes")
    return body.reshape(dims)


def _mnist_like(class_names=None):
    def convert(p):
        xtr, ytr = _idx(p["train_images"]), _idx(p["train_labels"])
        xte, yte = _idx(p["test_images"]), _idx(p["test_labels"])
        out = {"x": np.concatenate([xtr, xte]),
               "y": np.concatenate([ytr, yte]).astype(np.int64),
               "split": np.r_[np.zeros(len(xtr)), np.ones(len(xte))].astype(np.uint8)}
        if class_names:
            out["class_names"] = np.array(class_names)
        return out
    return convert


def _libsvm_usps(p):
    xs, ys, split = [], [], []
    for s, role in enumerate(("train", "test")):
        with bz2.open(p[role], "rt") as f:
            for line in f:
                parts = line.split()
                if not parts:
                    continue
                row = np.zeros(256, np.float32)
                for item in parts[1:]:
                    j, v = item.split(":")
                    row[int(j) - 1] = float(v)
                xs.append(row)
                ys.append(int(float(parts[0])) - 1)  # labels 1..10 -> 0..9
                split.append(s)
    x_float = (np.stack(xs).reshape(-1, 16, 16) + 1.0) / 2.0  # [-1, 1] -> [0, 1]
    return {"x": np.round(x_float * 255).astype(np.uint8), "y": np.array(ys, np.int64),
            "split": np.array(split, np.uint8), "x_float": x_float.astype(np.float32)}


def _cifar10(p):
    """The binary CIFAR-10 archive: records of one label byte and 3 × 1024 pixel bytes."""
    xs, ys, split = [], [], []
    with tarfile.open(p["archive"], "r:gz") as tar:
        members = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        for s, batch in [(0, f"data_batch_{i}.bin") for i in range(1, 6)] + [(1, "test_batch.bin")]:
            raw = np.frombuffer(tar.extractfile(members[batch]).read(), np.uint8)
            rec = raw.reshape(-1, 1 + 3 * 32 * 32)
            ys.append(rec[:, 0].astype(np.int64))
            xs.append(rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            split.append(np.full(len(rec), s, np.uint8))
        names = tar.extractfile(members["batches.meta.txt"]).read().decode().split()
    return {"x": np.ascontiguousarray(np.concatenate(xs)), "y": np.concatenate(ys),
            "split": np.concatenate(split), "class_names": np.array(names)}


_FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
            "Bag", "Ankle boot"]
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_LIBSVM_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/"

_IDX_NAMES = {"train_images": "train-images-idx3-ubyte.gz",
              "train_labels": "train-labels-idx1-ubyte.gz",
              "test_images": "t10k-images-idx3-ubyte.gz",
              "test_labels": "t10k-labels-idx1-ubyte.gz"}


def _idx_files(base: str, sha256: tuple) -> dict:
    """The four IDX files of an MNIST-like set under ``base``, with their SHA-256 in the order
    train images, train labels, test images, test labels."""
    return {role: RemoteFile(base + name, sha256=h) for (role, name), h in
            zip(_IDX_NAMES.items(), sha256)}


REMOTE_DATASETS: dict[str, RemoteDataset] = {
    "mnist": RemoteDataset(_idx_files(_MNIST_URL, (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")),
        _mnist_like(), source="LeCun, Cortes & Burges' IDX files (the PyTorch mirror)"),
    "fashion_mnist": RemoteDataset(_idx_files(_FASHION_URL, (
        "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
        "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
        "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
        "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf")),
        _mnist_like(_FASHION), source="Zalando Research's IDX files (MIT licence)"),
    "usps": RemoteDataset(
        {"train": RemoteFile(_LIBSVM_URL + "usps.bz2", md5="ec16c51db3855ca6c91edd34d0e9b197"),
         "test": RemoteFile(_LIBSVM_URL + "usps.t.bz2", md5="8ea070ee2aca1ac39742fdd1ef5ed118")},
        _libsvm_usps, source="Hull's USPS digits as published by LIBSVM (scaled to [-1, 1])",
        notes="the source publishes MD5 checksums only"),
    "cifar10": RemoteDataset(
        {"archive": RemoteFile("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", sha256=(
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"))},
        _cifar10, source="Krizhevsky's CIFAR-10 binary archive (50k train + 10k test)"),
}


def register_remote_dataset(name: str, dataset: RemoteDataset):
    """Add (or replace) a downloadable dataset, e.g. one served by your own mirror."""
    REMOTE_DATASETS[name] = dataset


# ------------------------------------------------------------------ download
def _download(f: RemoteFile, dest: Path, verbose: bool, timeout: float = 60.0):
    from ..training.runtime import progress

    try:
        resp = urllib.request.urlopen(f.url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"could not download {f.url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"could not reach {f.url} ({reason}); check the network, or put "
                            f"the .npz files in a folder and pass data_home= (or set "
                            f"DIFFCLUST_DATA)") from None
    expected = resp.headers.get("Content-Length")
    expected = int(expected) if expected and expected.isdigit() else None
    h256, h5, n = hashlib.sha256(), hashlib.md5(), 0
    try:
        with resp, open(dest, "wb") as out, progress(
                total=expected, desc=f"downloading {f.filename}", unit="B", unit_scale=True,
                verbose=verbose) as bar:
            while True:
                block = resp.read(1 << 20)
                if not block:
                    break
                out.write(block)
                h256.update(block)
                h5.update(block)
                n += len(block)
                bar.update(len(block))
    except (http.client.IncompleteRead, ConnectionError, OSError, TimeoutError) as e:
        raise DownloadError(f"the download of {f.url} was interrupted after {n} bytes "
                            f"({type(e).__name__}); try again") from None
    if expected is not None and n != expected:
        raise DownloadError(f"the download of {f.url} is truncated: {n} of {expected} bytes; "
                            f"try again")
    if f.sha256 and h256.hexdigest() != f.sha256:
        raise DownloadError(f"{f.url} has SHA-256 {h256.hexdigest()}, expected {f.sha256}: "
                            f"the file is corrupt or was changed at the source; nothing was "
                            f"cached")
    if f.md5 and h5.hexdigest() != f.md5:
        raise DownloadError(f"{f.url} has MD5 {h5.hexdigest()}, expected {f.md5}: the file is "
                            f"corrupt or was changed at the source; nothing was cached")


def fetch_dataset(name: str, cache_dir=None, verbose: bool = True) -> Path:
    """The path of ``name``'s npz in the cache, downloading, verifying and converting it the
    first time. Raises :class:`DownloadError` (a ``ValueError``) saying what failed; the cache
    is left without the file then."""
    if name not in REMOTE_DATASETS:
        raise DownloadError(f"{name!r} cannot be downloaded; downloadable: "
                            f"{sorted(REMOTE_DATASETS)}")
    ds = REMOTE_DATASETS[name]
    home = cache_home(cache_dir)
    target = home / f"{name}.npz"
    if target.exists():
        return target
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the dataset cache {home}: {e.strerror}; set "
                            f"DIFFCLUST_CACHE to a writable folder") from None
    work = home / f".download-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        paths = {}
        for role, f in ds.files.items():
            paths[role] = work / f.filename
            _download(f, paths[role], verbose)
        try:
            arrays = ds.convert(paths)
        except DownloadError:
            raise
        except Exception as e:
            raise DownloadError(f"the files of {name} did not convert ({type(e).__name__}: "
                                f"{e})") from None
        tmp = work / f"{name}.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
