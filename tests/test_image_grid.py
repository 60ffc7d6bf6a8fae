"""The plain PNG image grid (viz.images.image_grid) that generators and the CLI write."""

import numpy as np
import pytest


def test_image_grid_pixels_layout_and_upscale(tmp_path):
    """The PNG grid (viz.images.image_grid): tiles in row-major order, [−1, 1] → 0..255,
    grey images as RGB, upscaled by pixel repetition, written atomically as a PNG."""
    from PIL import Image

    from diffclust.viz.images import image_grid, save_image_grid

    imgs = np.stack([np.full((1, 2, 2), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    g = image_grid(imgs, nrow=2, pad=1, upscale=3)
    cell = 3 * 2 + 2
    assert g.shape == (2 * cell, 2 * cell, 3) and g.dtype == np.uint8
    assert (g[1:7, 1:7] == 0).all()                                  # first tile: black
    assert (g[1:7, cell + 1:cell + 7] == 128).all()                  # second: mid grey
    assert (g[cell + 1:cell + 7, 1:7] == 255).all()                  # third, next row: white
    assert (g[cell + 1:cell + 7, cell + 1:cell + 7] == 255).all()    # empty slot: background
    with pytest.raises(ValueError, match="C in"):
        image_grid(np.zeros((2, 5, 4, 4)))
    path = save_image_grid(tmp_path / "g.png", imgs)
    assert Image.open(path).size == (2 * (48 * 2 + 2),) * 2           # ~96 px tiles: 2·48 = 96
