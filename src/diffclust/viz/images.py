"""Image grids: per-cluster galleries (most / least confident members, as in CLUDI's appendix)
and sample grids of generators, as matplotlib figures or (``image_grid``) as plain PNG pixels.
Every grid is laid out by :func:`~diffclust.viz._common.mosaic`."""

from __future__ import annotations

import numpy as np

from ._common import mosaic, new_figure, save_figure, to_display_images

__all__ = [
    "cluster_gallery_indices",
    "image_grid",
    "plot_cluster_gallery",
    "plot_sample_grid",
    "save_cluster_gallery",
    "save_image_grid",
    "save_sample_grid",
]

_GOOD, _BAD = np.array([0.17, 0.63, 0.17]), np.array([0.84, 0.15, 0.16])


def cluster_gallery_indices(labels, confidence=None, n: int = 8, clusters=None):
    """``{cluster: (most, least)}``: indices of the ``n`` most confident members (descending)
    and the ``n`` least confident (ascending, least confident first). Without ``confidence``
    members keep their order. Clusters default to all non-empty ones, largest first."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    conf = np.ones(len(labels)) if confidence is None else np.asarray(confidence, float)
    if len(conf) != len(labels):
        raise ValueError(f"confidence has {len(conf)} entries but labels has {len(labels)}")
    if clusters is None:
        ids, counts = np.unique(labels, return_counts=True)
        clusters = ids[np.argsort(-counts, kind="stable")]
    out = {}
    for c in clusters:
        idx = np.flatnonzero(labels == c)
        idx = idx[np.argsort(-conf[idx], kind="stable")]
        out[int(c)] = (idx[:n], idx[::-1][:n])
    return out


def plot_cluster_gallery(images, labels, confidence=None, n: int = 8, clusters=None, y=None,
                         mapping=None, image_shape=None, title=None, scale=None):
    """One row per cluster: its ``n`` most confident members (left) | its ``n`` least confident
    members (right, least confident first).

    ``images`` as :func:`to_display_images` accepts. With true labels ``y`` (and optionally the
    cluster → class ``mapping``, default: Hungarian) each tile gets a green frame when its class
    is the cluster's matched class and a red one otherwise.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    imgs = to_display_images(images, image_shape)
    if len(imgs) != len(labels):
        raise ValueError(f"{len(imgs)} images but {len(labels)} labels")
    sel = cluster_gallery_indices(labels, confidence, n, clusters)
    if not sel:
        raise ValueError("no clusters to show")
    if y is not None and mapping is None:
        from ..metrics import hungarian_match

        mapping = hungarian_match(np.asarray(y, np.int64), labels)
    H, W = imgs.shape[1:3]
    R = len(sel)
    tiles = np.full((R, 2 * n, H, W, 3), np.nan, np.float32)
    frames = np.full((R, 2 * n, 3), np.nan, np.float32)
    for r, (c, (most, least)) in enumerate(sel.items()):
        for half, idx in ((0, most), (1, least)):
            cols = np.arange(len(idx)) + half * n
            tiles[r, cols] = imgs[idx]
            if y is not None:
                ok = np.asarray(y)[idx] == mapping.get(c, -1)
                frames[r, cols] = np.where(ok[:, None], _GOOD, _BAD)
    pad = 2 if y is not None else 1
    img = mosaic(tiles, frames if y is not None else None, pad=pad, gap_after=n - 1, gap=8)
    if scale is None:
        scale = max(1.0, 40.0 / max(H, W))       # small images (USPS 16×16) get upscaled
    dpi = 100
    w_in = img.shape[1] * scale / dpi
    h_in = img.shape[0] * scale / dpi
    fig = new_figure(figsize=(w_in + 0.9, h_in + 0.6))
    ax = fig.add_axes((0.7 / (w_in + 0.9), 0.05 / (h_in + 0.6), w_in / (w_in + 0.9),
                       h_in / (h_in + 0.6)))
    ax.imshow(img, interpolation="nearest")
    cell_h = H + 2 * pad
    sizes = np.bincount(labels)
    ax.set_yticks([(r + 0.5) * cell_h for r in range(R)],
                  [f"{c} (n={sizes[c]})" for c in sel], fontsize=7)
    ax.set_xticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(title or f"most confident ← {n} | {n} → least confident", fontsize=9)
    return fig


def save_cluster_gallery(path, images, labels, confidence=None, dpi: int = 100, **kw):
    """:func:`plot_cluster_gallery` written as PNG to ``path`` (atomic)."""
    return save_figure(plot_cluster_gallery(images, labels, confidence, **kw), path, dpi=dpi)


def plot_sample_grid(samples, nrow=None, row_labels=None, image_shape=None, title=None,
                     scale=None):
    """A grid of generated images ``samples`` (any layout :func:`to_display_images` accepts,
    [-1, 1] floats included). ``nrow`` images per row (default ≈ √N); ``row_labels`` names the
    rows (e.g. the conditioning cluster of each row)."""
    imgs = to_display_images(samples, image_shape)
    N, H, W = imgs.shape[:3]
    if N == 0:
        raise ValueError("no samples to show")
    ncol = int(nrow or int(np.ceil(np.sqrt(N))))
    R = int(np.ceil(N / ncol))
    tiles = np.full((R * ncol, H, W, 3), np.nan, np.float32)
    tiles[:N] = imgs
    img = mosaic(tiles.reshape(R, ncol, H, W, 3), pad=1)
    if scale is None:
        scale = max(1.0, 48.0 / max(H, W))
    w_in, h_in = img.shape[1] * scale / 100, img.shape[0] * scale / 100
    fig = new_figure(figsize=(w_in + 0.8, h_in + 0.5))
    ax = fig.add_axes((0.6 / (w_in + 0.8), 0.05 / (h_in + 0.5), w_in / (w_in + 0.8),
                       h_in / (h_in + 0.5)))
    ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    if row_labels is not None:
        ax.set_yticks([(r + 0.5) * (H + 2) for r in range(R)],
                      [str(s) for s in list(row_labels)[:R]], fontsize=7)
    else:
        ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(title or f"{N} samples", fontsize=9)
    return fig


def save_sample_grid(path, samples, dpi: int = 100, **kw):
    """:func:`plot_sample_grid` written as PNG to ``path`` (atomic)."""
    return save_figure(plot_sample_grid(samples, **kw), path, dpi=dpi)


def image_grid(images, nrow: int | None = None, pad: int = 1,
               upscale: int | None = None) -> np.ndarray:
    """A uint8 RGB grid ``(H', W', 3)`` of images ``(N, C, H, W)`` in [−1, 1] (the diffusion
    convention), ``nrow`` per row (default ≈ √N), white borders, each tile enlarged by pixel
    repetition to about 96 px unless ``upscale`` is given."""
    x = np.clip(np.asarray(images, dtype=np.float32), -1.0, 1.0)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"image_grid needs (N, C, H, W) images with C in (1, 3), got {x.shape}")
    N, C, H, W = x.shape
    if N == 0:
        raise ValueError("no images to show")
    u = int(upscale or max(1, round(96 / max(H, W))))
    x = ((x + 1.0) / 2.0).transpose(0, 2, 3, 1).repeat(u, 1).repeat(u, 2)
    x = np.repeat(x, 3, axis=-1) if C == 1 else x
    nrow = int(nrow or int(np.ceil(np.sqrt(N))))
    R = int(np.ceil(N / nrow))
    tiles = np.full((R * nrow,) + x.shape[1:], np.nan, np.float32)
    tiles[:N] = x
    grid = mosaic(tiles.reshape((R, nrow) + x.shape[1:]), pad=pad)
    return np.round(grid * 255.0).astype(np.uint8)


def save_image_grid(path, images, nrow: int | None = None, upscale: int | None = None):
    """Write :func:`image_grid` as a PNG (Pillow) to ``path``, atomically; returns the path."""
    import io

    from PIL import Image

    from ..data.io import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(image_grid(images, nrow=nrow, upscale=upscale)).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
