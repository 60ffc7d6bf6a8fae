"""Helpers shared by the benchmark scripts: timing, peak memory, and the results JSON.

Every record follows the schema of shared/DESIGN.md; numbers are only written by the script that
measured them, together with the exact command line.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from diffclust.data.io import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
DATA_HOME = os.environ.get("DIFFCLUST_DATA") or str(
    Path(__file__).resolve().parents[1].parent / "shared" / "data")


def parse_params(pairs) -> dict:
    """``["lr=1e-3", "n_heads=4", "preset=small"]`` → ``{"lr": 0.001, "n_heads": 4, "preset":
    "small"}``: values are read as Python literals (numbers, tuples, booleans), else strings."""
    import ast

    out = {}
    for kv in pairs or []:
        if "=" not in kv:
            raise SystemExit(f"--param expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def peak_mem_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})"


def record(method, dataset, n, k, seed, metrics, fit_seconds, predict_seconds=None, **extra):
    rec = {"method": method, "dataset": dataset, "n": int(n), "k": int(k), "seed": seed,
           "acc": round(float(metrics["acc"]), 4), "nmi": round(float(metrics["nmi"]), 4),
           "ari": round(float(metrics["ari"]), 4),
           "fit_seconds": round(float(fit_seconds), 2),
           "predict_seconds": None if predict_seconds is None else round(float(predict_seconds), 2),
           "peak_mem_mb": round(peak_mem_mb(), 1),
           "device": "cuda" if torch.cuda.is_available() else "cpu", "machine": machine(),
           "command": command_line(), "date": date.today().isoformat()}
    rec.update(extra)
    return rec


def append_results(name: str, records: list[dict]) -> Path:
    """Append ``records`` to ``benchmarks/results/<name>.json`` (a JSON list), atomically."""
    import fcntl

    path = RESULTS / f"{name}.json"
    with open(RESULTS / f".{name}.lock", "a+") as lock:  # benchmarks may run side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.exists() else []
        atomic_write_text(path, json.dumps(old + list(records), indent=1) + "\n")
    return path


def summarize(records: list[dict], keys=("acc", "nmi", "ari")) -> dict:
    out = {}
    for k in keys:
        v = np.array([r[k] for r in records], dtype=float)
        out[k] = (float(v.mean()), float(v.std()))
    return out


class Timer:
    def __enter__(self):
        self.t = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.seconds = time.perf_counter() - self.t
