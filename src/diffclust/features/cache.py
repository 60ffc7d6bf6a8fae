"""On-disk feature cache keyed by the backbone and the data.

Layout: ``<cache_dir>/<backbone key>/`` holds ``backbone.json`` (what the key stands for) and
``chunk-*.npz`` files, each with ``keys`` (the item keys of :mod:`.sources`: a hash of the
pixels, or of a file's path + size + mtime) and ``x`` (raw float32 features, before L2
normalisation). The backbone key hashes the model (id/path, commit or file stats, config),
its preprocessing, pooling and precision, so any change there starts a new cache.

Chunks are written atomically (temp file + rename) as soon as they are computed: a killed run
leaves only complete chunks behind, and the next run embeds only what they do not hold. Several
runs (or datasets) sharing a backbone share its cache; a lookup reads the ``keys`` of every
chunk but the features only of the chunks it needs.
"""

from __future__ import annotations

import io
import json
import os
import uuid
import warnings
from pathlib import Path

import numpy as np

from ..data.io import atomic_write_bytes, atomic_write_text

__all__ = ["FeatureCache", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$DIFFCLUST_CACHE`` or ``~/.cache/diffclust``, plus ``features/``."""
    base = os.environ.get("DIFFCLUST_CACHE") or Path.home() / ".cache" / "diffclust"
    return Path(base).expanduser() / "features"


class FeatureCache:
    def __init__(self, root, backbone_key: str):
        self.dir = Path(root).expanduser() / backbone_key[:24]
        self.dir.mkdir(parents=True, exist_ok=True)

    def info(self) -> dict | None:
        """The backbone description stored with the cache (``backbone.json``), if any."""
        try:
            return json.loads((self.dir / "backbone.json").read_text())
        except (OSError, ValueError):
            return None

    def set_info(self, info: dict):
        if self.info() is None:
            atomic_write_text(self.dir / "backbone.json",
                              json.dumps(info, indent=1, default=str))

    def chunks(self) -> list[Path]:
        return sorted(self.dir.glob("chunk-*.npz"))

    def lookup(self, keys) -> tuple[dict, dict]:
        """``({key: feature row}, {key: reason})``: the ``keys`` already embedded, and those
        already found unreadable (a file that changes gets a new key and is tried again)."""
        want = set(keys)
        found, failed = {}, {}
        for path in self.chunks():
            if not want:
                break
            try:
                with np.load(path, allow_pickle=False) as z:
                    ck = z["keys"].astype(str)
                    rows = [j for j, k in enumerate(ck) if k in want]
                    if rows:
                        x = z["x"]
                        for j in rows:
                            found[ck[j]] = x[j]
                            want.discard(ck[j])
                    if "failed_keys" in z.files:
                        for k, why in zip(z["failed_keys"].astype(str), z["failed_reasons"]):
                            if k in want:
                                failed[k] = str(why)
            except Exception as e:  # noqa: BLE001 - a foreign or damaged file is skipped
                warnings.warn(f"feature cache: skipping unreadable {path.name} ({e})")
        return found, failed

    def write(self, keys, x: np.ndarray, failed: dict | None = None) -> Path | None:
        """Store one chunk atomically: features of ``keys`` and ``{key: reason}`` failures."""
        failed = failed or {}
        if len(keys) == 0 and not failed:
            return None
        buf = io.BytesIO()
        arrays = dict(keys=np.array(list(keys), dtype="S40"),
                      x=(np.asarray(x, dtype=np.float32).reshape(len(keys), -1) if len(keys)
                         else np.zeros((0, 0), np.float32)))
        if failed:
            arrays["failed_keys"] = np.array(list(failed), dtype="S40")
            arrays["failed_reasons"] = np.array([str(v)[:500] for v in failed.values()])
        np.savez(buf, **arrays)
        path = self.dir / f"chunk-{uuid.uuid4().hex}.npz"
        atomic_write_bytes(path, buf.getvalue())
        return path

    def n_items(self) -> int:
        n = 0
        for path in self.chunks():
            with np.load(path, allow_pickle=False) as z:
                n += len(z["keys"])
        return n
