"""Batched feature extraction: images → L2-normalised backbone embeddings, cached and resumable.

>>> from diffclust.features import embed
>>> f = embed("photos/", "facebook/dino-vits16", out="feats.npz")    # doctest: +SKIP
>>> f.x.shape, f.names[:3], len(f.failed)                             # doctest: +SKIP

``feats.npz`` holds ``x`` (float32 ``(N, D)``, unit rows), ``names`` (file names relative to the
folder, or row indices), ``y`` when labels are known (array datasets; sub-folder names of an
ImageFolder layout, with ``class_names``); ``feats.json`` the metadata (backbone, resolved
path/commit, preprocessing, pooling, precision, date, unreadable files, cache hits).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..data.io import atomic_write_bytes, atomic_write_text
from ..training.runtime import progress
from .backbones import Backbone, load_backbone
from .cache import FeatureCache, default_cache_dir
from .sources import ImageSource, as_source

__all__ = ["embed", "Features", "save_features", "load_features"]


@dataclass
class Features:
    x: np.ndarray
    names: np.ndarray
    y: np.ndarray | None = None
    class_names: list | None = None
    failed: list = field(default_factory=list)  # [(name, reason)] of unreadable images
    meta: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.x)


def _metadata_path(out: Path) -> Path:
    return out.with_suffix(".json") if out.suffix == ".npz" else Path(str(out) + ".json")


def save_features(feats: Features, out) -> Path:
    """Write ``out`` (.npz: ``x``, ``names``, ``y``, ``class_names``) and its metadata JSON
    (``out`` with ``.json``), both atomically."""
    import io

    out = Path(out)
    if out.suffix != ".npz":
        out = out.with_suffix(out.suffix + ".npz") if out.suffix else out.with_suffix(".npz")
    arrays = {"x": feats.x.astype(np.float32), "names": feats.names}
    if feats.y is not None:
        arrays["y"] = np.asarray(feats.y)
    if feats.class_names is not None:
        arrays["class_names"] = np.array(feats.class_names)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out, buf.getvalue())
    atomic_write_text(_metadata_path(out), json.dumps(feats.meta, indent=1, default=str) + "\n")
    return out


def load_features(path) -> Features:
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        x, names = z["x"], z["names"]
        y = z["y"] if "y" in z.files else None
        cn = list(z["class_names"]) if "class_names" in z.files else None
    mp = _metadata_path(path)
    meta = json.loads(mp.read_text()) if mp.exists() else {}
    return Features(x, names, y, cn, meta.get("failed", []), meta)


def _load_batch(src: ImageSource, backbone: Backbone, idx):
    """Decode + preprocess one batch (loader thread); unreadable items come back as failures."""
    good, items, failed = [], [], []
    for i in idx:
        try:
            items.append(backbone.prepare_one(src.load(i)))
            good.append(i)
        except Exception as e:  # noqa: BLE001 - any decoding error → reported and skipped
            failed.append((i, f"{type(e).__name__}: {e}"))
    return good, (backbone.collate(items) if items else None), failed


def embed(inputs, backbone, *, batch_size: int = 64, cache_dir=None, use_cache: bool = True,
          device=None, precision: str = "auto", pooling: str = "auto", normalize: bool = True,
          local_files_only: bool = False, chunk_size: int | None = None, num_workers: int = 1,
          out=None, data_home=None, verbose: bool = True) -> Features:
    """Embed images with a pretrained backbone.

    Parameters
    ----------
    inputs : folder (recursive .jpg/.jpeg/.png/.webp), image-array file (.npz/.npy), dataset
        name of ``shared/data`` (``usps``, ``cifar10_jpeg_test``, …), an array/tensor of images
        ``(N,H,W[,C])``/``(N,C,H,W)``, or an :class:`~diffclust.features.sources.ImageSource`.
    backbone : Hugging Face id (``facebook/dino-vits16``, ``facebook/dinov2-small``,
        ``openai/clip-vit-base-patch16``, …), a ``save_pretrained`` directory, a callable
        ``images -> features`` or a :class:`~diffclust.features.backbones.Backbone`.
    batch_size : images per forward pass.
    cache_dir, use_cache : the on-disk cache (default ``$DIFFCLUST_CACHE`` or
        ``~/.cache/diffclust/features``); cached items are never recomputed, new ones are
        written every ``chunk_size`` images (default ``4 · batch_size``), so an interrupted run
        resumes where it stopped.
    device, precision, pooling, local_files_only : see :class:`HFBackbone`; precision
        ``"auto"`` is bf16 autocast on AMX CPUs and fp16 on CUDA.
    normalize : L2-normalise each feature (what CLUDI/TEMI expect).
    num_workers : threads decoding/preprocessing the next batch while the model runs (0: none).
    out : if given, write the ``.npz`` and its ``.json`` metadata there.

    Unreadable images are skipped and listed in ``Features.failed`` (and the metadata), never a
    crash; if none can be read a ``ValueError`` says so.
    """
    t0 = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    src = as_source(inputs, data_home=data_home)
    bb = load_backbone(backbone, device=device, precision=precision, pooling=pooling,
                       local_files_only=local_files_only)
    cache = FeatureCache(cache_dir or default_cache_dir(), bb.cache_key()) if use_cache else None
    keys = src.keys
    have, known_bad = cache.lookup(keys) if cache is not None else ({}, {})
    n_hits = sum(k in have for k in keys)
    todo, seen = [], set()
    for i, k in enumerate(keys):
        if k not in have and k not in known_bad and k not in seen:
            seen.add(k)
            todo.append(i)

    # describing an HF backbone reads its preprocessor through transformers: skip it when
    # everything is cached and the cache already holds the description (a repeat run is instant)
    info = (cache.info() if cache is not None and not todo else None) or bb.describe()
    if cache is not None:
        cache.set_info(dict(info, fingerprint=bb.fingerprint()))
    info.pop("fingerprint", None)
    failed_keys: dict[str, str] = dict(known_bad)
    chunk = max(chunk_size or 4 * batch_size, batch_size)
    batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
    pool = ThreadPoolExecutor(max_workers=num_workers) if num_workers > 0 and batches else None
    bar = progress(total=len(todo), desc="embed", verbose=verbose, unit="img")
    try:
        pending = None
        if pool is not None:
            pending = pool.submit(_load_batch, src, bb, batches[0])
        ck, cx, cf = [], [], {}
        for b in range(len(batches)):
            if pool is not None:
                good, prepared, failed = pending.result()
                if b + 1 < len(batches):
                    pending = pool.submit(_load_batch, src, bb, batches[b + 1])
            else:
                good, prepared, failed = _load_batch(src, bb, batches[b])
            for i, why in failed:
                failed_keys[keys[i]] = cf[keys[i]] = why
            if good:
                f = bb.forward(prepared)
                for i, row in zip(good, f):
                    have[keys[i]] = row
                ck.extend(keys[i] for i in good)
                cx.append(f)
            bar.update(len(batches[b]))
            if cache is not None and (len(ck) >= chunk or b == len(batches) - 1) and (ck or cf):
                cache.write(ck, np.concatenate(cx) if cx else np.zeros((0, 0)), cf)
                ck, cx, cf = [], [], {}
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    keep = [i for i, k in enumerate(keys) if k in have]
    failed = [(str(src.names[i]), failed_keys.get(k, "not embedded"))
              for i, k in enumerate(keys) if k not in have]
    if not keep:
        raise ValueError(f"none of the {len(keys)} images of {src.description} could be read; "
                         f"first error: {failed[0][1] if failed else '?'}")
    x = np.stack([have[keys[i]] for i in keep]).astype(np.float32)
    if normalize:
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    names = src.names[keep]
    y = src.y[keep] if src.y is not None else None
    meta = dict(info, input=src.description, n=len(keep), dim=int(x.shape[1]),
                normalized=normalize, n_failed=len(failed), failed=failed[:1000],
                cache_dir=str(cache.dir) if cache is not None else None,
                cache_hits=n_hits, computed=len(todo) - (len(failed_keys) - len(known_bad)),
                labels=("sub-folder names" if src.class_names else
                        ("given" if y is not None else None)),
                seconds=round(time.perf_counter() - t0, 3),
                date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                versions=_versions())
    feats = Features(x, names, y, src.class_names, failed, meta)
    if out is not None:
        save_features(feats, out)
    return feats


def _versions() -> dict:
    import torch

    v = {"torch": torch.__version__}
    try:
        import transformers

        v["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    from .. import __version__

    v["diffclust"] = __version__
    return v
