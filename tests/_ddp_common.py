"""Shared pieces of the DDP test workers (``tests/_ddp_*.py``): their data and their exit."""

import os
import sys
from pathlib import Path

import numpy as np


def blobs(n, d=8, k=3, seed=0):
    """``(X, y)``: n points of k well-separated Gaussian blobs in d dimensions."""
    rng = np.random.default_rng(seed)
    centers = 4.0 * rng.standard_normal((k, d))
    y = np.arange(n) % k
    return (centers[y] + rng.standard_normal((n, d))).astype(np.float32), y


def prepare(out: Path, n_points: int):
    """One thread per rank, the output folder, and the worker's ``blobs(n_points)`` data."""
    import torch

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    return blobs(n_points)[0]


def run_worker(main):
    """Run ``main(Path(argv[1]))``, then leave without the interpreter's finalisation: with torch
    2.13 + gloo a rank sometimes aborts there ("terminate called without an active exception",
    about 1 run in 10 on a loaded 2-core machine) after all work is done and the process group
    destroyed."""
    main(Path(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
