"""Input validation with errors that say what was wrong and what to do."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["check_features", "check_n_clusters", "check_images", "check_labels"]


#: largest |value| accepted: beyond it squared distances overflow float32 (max 3.4e38)
MAX_ABS_VALUE = 1e15


def _to_numpy(X, what: str):
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{what} is a scipy sparse matrix; diffclust's methods need dense "
                        f"arrays: pass {what}.toarray() (it needs {_dense_size(X)}) or reduce "
                        f"it first, e.g. with sklearn's TruncatedSVD")
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    try:
        X = np.asarray(X)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{what} could not be converted to a numeric array: {e}") from e
    if np.iscomplexobj(X):
        raise ValueError(f"Complex data not supported: {what} is {X.dtype}; pass "
                         f"np.abs({what}), {what}.real, or the real and imaginary parts as "
                         f"separate features")
    return X


def _dense_size(X) -> str:
    try:
        return f"{np.prod(X.shape) * 4 / 2**30:.2f} GiB as float32"
    except Exception:
        return "memory for every entry"


def _check_range(X, name):
    """Refuse values whose squares overflow float32 (NaN probabilities otherwise)."""
    if X.size:
        big = float(np.nanmax(np.abs(X.astype(np.float64, copy=False))))
        if big > MAX_ABS_VALUE and np.isfinite(big):
            raise ValueError(f"{name} has values up to {big:.3g} in magnitude; above "
                             f"{MAX_ABS_VALUE:.0e} the distances overflow float32: rescale it "
                             f"first (e.g. sklearn's StandardScaler)")


def check_features(X, name: str = "X", min_samples: int = 1) -> np.ndarray:
    """Return ``X`` as a finite float32 ``(N, D)`` array or raise a ``ValueError`` saying why."""
    X = _to_numpy(X, name)
    if X.dtype == object:  # numbers stored as objects are converted; anything else is refused
        try:
            X = X.astype(np.float64)
        except TypeError as e:
            raise TypeError(f"{name} holds non-numeric objects ({e})") from None
        except ValueError:
            pass
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {X.dtype}; convert it with "
                         f"np.asarray({name}, dtype=np.float32)")
    if X.ndim != 2:
        hint = (" Images? Use an image method (DiEC, ClusterDDPM, GCC) or flatten them with "
                "X.reshape(len(X), -1)." if X.ndim in (3, 4) else "")
        if X.ndim == 1:
            hint = (" Reshape your data: X.reshape(-1, 1) for a single feature, "
                    "X.reshape(1, -1) for a single sample.")
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_features), got shape "
                         f"{X.shape}.{hint}")
    if X.shape[0] < max(min_samples, 1):
        raise ValueError(f"{name} is empty or too small: Found array with {X.shape[0]} "
                         f"sample(s) (shape={X.shape}) while a minimum of {max(min_samples, 1)} "
                         f"is required.")
    if X.shape[1] == 0:
        raise ValueError(f"{name} is empty: Found array with 0 feature(s) (shape={X.shape}) "
                         f"while a minimum of 1 is required.")
    if X.dtype.kind == "f":
        _check_range(X, name)
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X))
        raise ValueError(f"{name} contains {len(bad)} NaN or infinite values (first at row "
                         f"{bad[0][0]}, column {bad[0][1]}); drop or impute those rows first")
    return X


def check_n_clusters(n_clusters, n_samples: int) -> int:
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise ValueError(f"n_clusters must be an integer, got {n_clusters!r}")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be at least 1, got {n_clusters}")
    if n_clusters > n_samples:
        raise ValueError(f"n_clusters={n_clusters} is larger than the number of samples "
                         f"(n_samples = {n_samples}); use fewer clusters or more data")
    return int(n_clusters)


def check_labels(y, n_samples: int | None = None, name: str = "y") -> np.ndarray:
    if y is None:
        raise ValueError(f"{name} (the true labels) is required to compute metrics; pass the "
                         f"labels (e.g. --labels labels.npy) or skip the evaluation")
    y = _to_numpy(y, name)
    if y.ndim != 1:
        y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per sample), got shape {y.shape}")
    if n_samples is not None and len(y) != n_samples:
        raise ValueError(f"{name} has {len(y)} labels but there are {n_samples} samples")
    if y.dtype.kind not in "iub":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            _, y = np.unique(y, return_inverse=True)
    return y.astype(np.int64)


def check_images(X, name: str = "X") -> np.ndarray:
    """Images as float32 ``(N, C, H, W)`` in [-1, 1].

    Accepts ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C ∈ {1, 3, 4}; uint8 is
    divided by 255, floats must already be in [0, 1] or [-1, 1]. A 4-D array is read as
    channels-last when its last axis has 1, 3 or 4 entries and either its second axis does not
    or the image is square in the last two spatial axes (``(N, 4, 4, 3)`` is 4×4 RGB);
    otherwise as channels-first.
    """
    X = _to_numpy(X, name)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise ValueError(f"{name} must be a numeric image array, got dtype {X.dtype}")
    if X.size == 0:
        raise ValueError(f"{name} is empty (shape {X.shape})")
    if X.ndim == 3:
        X = X[:, None]
    elif X.ndim == 4:
        last_is_c = X.shape[-1] in (1, 3, 4)
        if last_is_c and (X.shape[1] not in (1, 3, 4) or X.shape[1] == X.shape[2]):
            X = X.transpose(0, 3, 1, 2)
        elif X.shape[1] not in (1, 3, 4):
            raise ValueError(f"{name} has shape {X.shape}: cannot find a channel axis of size "
                             f"1, 3 or 4 (expected (N,H,W), (N,H,W,C) or (N,C,H,W))")
    else:
        raise ValueError(f"{name} must hold images shaped (N,H,W), (N,H,W,C) or (N,C,H,W); got "
                         f"shape {X.shape}" + (" (flat vectors: use a feature method such as "
                                               "CLUDI or TEMI)" if X.ndim == 2 else ""))
    if X.dtype == np.uint8:
        X = X.astype(np.float32) / 127.5 - 1.0
    else:
        X = X.astype(np.float32)
        if not np.isfinite(X).all():
            raise ValueError(f"{name} contains NaN or infinite pixels")
        lo, hi = float(X.min()), float(X.max())
        if lo >= 0.0 and hi <= 1.0 + 1e-6:
            X = X * 2.0 - 1.0
        elif lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
            if lo >= 0 and hi <= 255:
                X = X / 127.5 - 1.0
            else:
                raise ValueError(f"{name} float pixels must lie in [0, 1], [-1, 1] or [0, 255];"
                                 f" got range [{lo:.3g}, {hi:.3g}]")
    return np.ascontiguousarray(X)
