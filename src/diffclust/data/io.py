"""Loading arrays of embeddings (and labels) from .npy / .npz / .pt / .csv files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["load_array", "atomic_write_bytes", "atomic_write_text", "atomic_save_npy",
           "clean_stale_tmp"]

_X_KEYS = ("x", "X", "features", "feats", "embeddings", "data")
_Y_KEYS = ("y", "labels", "targets", "label")


def _pick(keys, available, what, path, required):
    for k in keys:
        if k in available:
            return k
    if required:
        raise KeyError(f"{path} has no {what} array: looked for keys {list(keys)}, found "
                       f"{sorted(available)}; pass key=... to choose one")
    return None


def load_array(path, key: str | None = None, label_key: str | None = None):
    """Load ``(X, y)`` from a file; ``y`` is ``None`` when the file has no labels.

    ``.npy``: one array. ``.npz``: ``x``/``features``/… and ``y``/``labels`` (or ``key``).
    ``.pt``: a tensor, or a dict of tensors with the same key names (loaded with
    ``weights_only=True``: no pickles). ``.csv``: numeric columns; a column named ``label`` or
    ``y`` is taken as labels; a header row is detected.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory; expected a .npy/.npz/.pt/.csv file "
                         f"(for a folder of images run `diffclust embed {path}` first)")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = set(z.files)
                xk = key or _pick(_X_KEYS, names, "feature", path, True)
                if xk not in names:
                    raise KeyError(f"{path} has no key {xk!r}; available keys: {sorted(names)}")
                yk = label_key or _pick(_Y_KEYS, names, "label", path, False)
                return z[xk], (z[yk] if yk in names else None)
        if suffix == ".pt":
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, torch.Tensor):
                return obj.numpy(), None
            if isinstance(obj, dict):
                names = set(obj)
                xk = key or _pick(_X_KEYS, names, "feature", path, True)
                yk = label_key or _pick(_Y_KEYS, names, "label", path, False)
                y = obj.get(yk) if yk else None
                to_np = lambda a: a.numpy() if hasattr(a, "numpy") else np.asarray(a)  # noqa: E731
                return to_np(obj[xk]), (to_np(y) if y is not None else None)
            raise ValueError(f"{path}: expected a tensor or a dict of tensors, got {type(obj)}")
        if suffix in (".csv", ".tsv", ".txt"):
            return _load_csv(path, "\t" if suffix == ".tsv" else ",")
    except ValueError as e:
        if "pickle" in str(e):
            raise ValueError(f"{path} is not a plain numeric {suffix} file (it holds pickled "
                             f"objects, or is not a numpy file at all); diffclust never "
                             f"unpickles files: save plain arrays with np.save / np.savez") \
                from None
        raise
    except (KeyError, FileNotFoundError):
        raise
    except Exception as e:
        raise ValueError(f"could not read {path}: {type(e).__name__}: {e}") from e
    raise ValueError(f"unsupported file type {suffix!r} for {path}; use .npy, .npz, .pt or .csv")


def _load_csv(path: Path, delimiter: str):
    with open(path) as f:
        first = f.readline().strip().split(delimiter)
    def _is_num(s):
        try:
            float(s)
            return True
        except ValueError:
            return False
    has_header = not all(_is_num(c) for c in first if c != "")
    with open(path) as f:
        n_rows = sum(1 for line in f if line.strip()) - int(has_header)
    if n_rows < 1:
        raise ValueError(f"{path} has no data rows (only a header); it needs one row per sample")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = np.genfromtxt(path, delimiter=delimiter, skip_header=int(has_header),
                                 dtype=np.float64, invalid_raise=True)
    except ValueError as e:
        raise ValueError(f"{path} is not a numeric CSV: {e}") from e
    if data.ndim == 1:
        data = data[None] if len(first) > 1 else data[:, None]
    if np.isnan(data).any():
        r, c = np.argwhere(np.isnan(data))[0]
        raise ValueError(f"{path} has a non-numeric or empty cell at data row {r + 1}, column "
                         f"{c + 1}; every cell must be a number")
    y = None
    if has_header:
        names = [c.strip().lower() for c in first]
        for lab in ("label", "y", "labels", "target"):
            if lab in names:
                j = names.index(lab)
                y = data[:, j].astype(np.int64)
                data = np.delete(data, j, axis=1)
                break
    return data.astype(np.float32), y


def clean_stale_tmp(folder, name: str = "*"):
    """Remove ``.NAME.tmpPID`` files (``name`` a glob) in ``folder`` whose writer was killed."""
    for p in Path(folder).glob(f".{name}.tmp*"):
        try:
            pid = int(p.name.rsplit(".tmp", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except (ValueError, PermissionError, OSError):
            continue


def _atomic(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(path.parent, path.name)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path, data: bytes):
    return _atomic(path, lambda p: p.write_bytes(data))


def atomic_write_text(path, text: str):
    return _atomic(path, lambda p: p.write_text(text))


def atomic_save_npy(path, arr):
    def w(p):
        with open(p, "wb") as f:
            np.save(f, arr)
    return _atomic(path, w)
