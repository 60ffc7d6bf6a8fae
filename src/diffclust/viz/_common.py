"""Shared plumbing for the plots: Agg figures (no pyplot, no windows), PNG bytes, atomic saves,
image normalisation and mosaics."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "cluster_colors",
    "figure_to_png",
    "mosaic",
    "new_figure",
    "save_figure",
    "to_display_images",
]


def new_figure(figsize=(6.0, 4.0), **kw) -> Figure:
    """A matplotlib Figure drawn by the Agg canvas. pyplot is never involved, so nothing opens a
    window, and figures are freed with their last reference (no global figure registry)."""
    fig = Figure(figsize=figsize, **kw)
    FigureCanvasAgg(fig)
    return fig


def figure_to_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of ``fig`` (tight bounding box, no ``Software`` metadata)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def save_figure(fig: Figure, path, dpi: int = 100):
    """Write ``fig`` as a PNG to ``path`` atomically (temp file + rename); returns the path."""
    from ..data import atomic_write_bytes

    return atomic_write_bytes(path, figure_to_png(fig, dpi=dpi))


def to_display_images(images, image_shape=None) -> np.ndarray:
    """Any image batch → float RGB ``(N, H, W, 3)`` in [0, 1].

    Accepts ``(N, H, W)``, ``(N, H, W, C)``, ``(N, C, H, W)`` (C ∈ {1, 3}) or flattened
    ``(N, D)`` with ``image_shape`` ((H, W), (H, W, C) or (C, H, W)). uint8 is divided by 255;
    floats with negative values are taken to be in [-1, 1] (the diffusion convention), floats
    above 1 in [0, 255]; others are used as they are, then clipped to [0, 1].
    """
    x = np.asarray(images)
    if image_shape is not None:
        x = x.reshape((len(x),) + tuple(int(s) for s in image_shape))
    if x.ndim == 2:
        raise ValueError(f"got a (N, D) = {x.shape} array; pass image_shape=(H, W) to show it as "
                         f"images")
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        x = x.transpose(0, 2, 3, 1)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"cannot show an array of shape {np.asarray(images).shape} as images; "
                         f"expected (N,H,W), (N,H,W,C) or (N,C,H,W) with C in (1, 3)")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    else:
        x = x.astype(np.float32)
        if x.size and x.min() < 0:
            x = (x + 1.0) / 2.0
        elif x.size and x.max() > 1.0:
            x = x / 255.0
    x = np.clip(x, 0.0, 1.0)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def mosaic(tiles, frames=None, pad: int = 2, gap_after=None, gap: int = 6,
           background=1.0) -> np.ndarray:
    """Arrange ``tiles`` ``(R, C, H, W, 3)`` (NaN tiles stay empty) into one RGB image.

    ``frames`` ``(R, C, 3)`` colours the ``pad``-pixel border of each tile (NaN: no frame);
    ``gap_after`` adds ``gap`` extra pixels after that column (to separate two halves).
    """
    tiles = np.asarray(tiles, dtype=np.float32)
    R, C, H, W, _ = tiles.shape
    cell_h, cell_w = H + 2 * pad, W + 2 * pad
    extra = gap if gap_after is not None else 0
    out = np.full((R * cell_h, C * cell_w + extra, 3), background, dtype=np.float32)
    for r in range(R):
        for c in range(C):
            tile = tiles[r, c]
            if np.isnan(tile).all():
                continue
            y0 = r * cell_h
            x0 = c * cell_w + (extra if gap_after is not None and c > gap_after else 0)
            if frames is not None and not np.isnan(frames[r, c]).any():
                out[y0:y0 + cell_h, x0:x0 + cell_w] = frames[r, c]
            out[y0 + pad:y0 + pad + H, x0 + pad:x0 + pad + W] = tile
    return out


def cluster_colors(n: int) -> np.ndarray:
    """``n`` distinguishable RGBA colours: tab10/tab20 when they suffice, else an evenly spaced
    hue wheel in a fixed shuffled order (neighbouring ids get distant hues)."""
    from matplotlib import colormaps

    if n <= 10:
        return colormaps["tab10"](np.arange(n))
    if n <= 20:
        return colormaps["tab20"](np.arange(n))
    cols = colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))
    order = np.random.default_rng(0).permutation(n)
    return cols[order]
