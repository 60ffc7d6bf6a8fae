"""How CLUDI's and TEMI's cost grows with N: fit and predict time and peak memory on synthetic
embeddings.

N points in D = 384 dimensions from K = 100 Gaussian clusters on the unit sphere (L2-normalised,
like DINO features). Training length is a small fixed ``--n-steps`` so the training part is
independent of N; what must grow linearly with N is the labelling / prediction pass (every
point, ``eval_chains`` × ``eval_steps`` denoiser calls, batched), and memory must stay O(N·D):
no N×N matrix. Each N runs in a fresh subprocess, so ``peak_mem_mb`` (max RSS) is its own.

TEMI additionally mines m = 50 cosine neighbours of every point before training
(``knn_seconds``): exact (torch, then a faiss flat index) up to 300k points, a faiss IVF index
above (``diffclust.knn``), so that step is sub-quadratic; its labelling pass is one head
forward per point.

Reported per N: ``train_seconds`` (the optimiser steps, ``fit_seconds_``),
``predict_seconds`` (the labelling pass over all N points that ``fit`` ends with — the same code
as ``predict``), ``fit_seconds`` (both), ``predict_us_per_point``, ``peak_mem_mb`` next to
``data_mb`` (N·D float32) and ``nxn_mb`` (what one N×N float32 matrix would take).

    python benchmarks/scaling.py                         # CLUDI, N = 10k and 100k
    python benchmarks/scaling.py --n 1000000             # the 1M case
    python benchmarks/scaling.py --method temi --n 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, command_line, machine, peak_mem_mb  # noqa: E402


def synthetic_embeddings(n, d=384, k=100, spread=0.6, seed=0, chunk=100_000):
    """``(X, y)``: N unit vectors around K random unit centres, generated in chunks."""
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((k, d)).astype(np.float32)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    y = rng.integers(0, k, n)
    X = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        X[s:e] = C[y[s:e]] + (spread / np.sqrt(d)) * rng.standard_normal((e - s, d),
                                                                           dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, y.astype(np.int64)


def run_one(args) -> dict:
    import torch

    from diffclust import CLUDI, TEMI, evaluate

    X, y = synthetic_embeddings(args.one, args.d, args.k, seed=args.seed)
    extra = {}
    if args.method == "cludi":
        m = CLUDI(args.k, n_steps=args.n_steps, batch_size=args.batch_size,
                  eval_chains=args.eval_chains, eval_steps=args.eval_steps,
                  predict_batch_size=args.predict_batch_size, random_state=args.seed,
                  verbose=False)
        extra = {"eval_chains": args.eval_chains, "eval_steps": args.eval_steps}
    else:
        m = TEMI(args.k, n_steps=args.n_steps, batch_size=args.batch_size,
                 n_neighbors=50, predict_batch_size=args.predict_batch_size,
                 random_state=args.seed, verbose=False)
    t = time.perf_counter()
    m.fit(X)
    fit_s = time.perf_counter() - t
    train_s = float(m.fit_seconds_)
    if args.method == "temi":
        extra = {"knn_seconds": round(float(m.knn_seconds_), 2), "n_neighbors": 50,
                 "knn_backend": _knn_backend(len(X))}
        train_s -= float(m.knn_seconds_)
    pred_s = fit_s - float(m.fit_seconds_)
    met = evaluate(y, m.labels_)
    n = len(X)
    return {"method": args.method, "dataset": f"synthetic_sphere_gmm_d{args.d}_k{args.k}",
            "n": n,
            "k": args.k, "seed": args.seed, "acc": round(met["acc"], 4),
            "nmi": round(met["nmi"], 4), "ari": round(met["ari"], 4),
            "fit_seconds": round(fit_s, 2), "train_seconds": round(train_s, 2),
            "predict_seconds": round(pred_s, 2),
            "predict_us_per_point": round(1e6 * pred_s / n, 1),
            "peak_mem_mb": round(peak_mem_mb(), 1), "data_mb": round(X.nbytes / 2**20, 1),
            "nxn_mb": round(4 * n * n / 2**20, 1), "n_steps": args.n_steps,
            "batch_size": args.batch_size, **extra, "threads": torch.get_num_threads(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "machine": machine() + (", " + args.machine_note if args.machine_note else ""),
            "note": "train steps fixed (independent of N); predict = labelling pass over all N",
            "date": time.strftime("%Y-%m-%d")}


def _knn_backend(n):
    from diffclust.knn import FAISS_AUTO_MIN_N, FAISS_IVF_AUTO_MIN_N, _faiss_available

    if n >= FAISS_AUTO_MIN_N and _faiss_available():
        return "faiss_ivf" if n >= FAISS_IVF_AUTO_MIN_N else "faiss"
    return "torch"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=["cludi", "temi"], default="cludi")
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--n-steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--eval-chains", type=int, default=2)
    ap.add_argument("--eval-steps", type=int, default=10)
    ap.add_argument("--predict-batch-size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--machine-note", default="",
                    help="appended to the machine description, e.g. 'shared with other jobs'")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:  # child: one N, result as JSON on the last stdout line
        print(json.dumps(run_one(args)))
        return
    records = []
    for n in args.n:
        cmd = [sys.executable, __file__, "--one", str(n)] + [
            a for a in sys.argv[1:] if a not in ("--no-save",)]
        cmd = _drop_n(cmd)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"N={n} failed:\n{r.stderr[-3000:]}")
        rec = json.loads(r.stdout.strip().splitlines()[-1])
        rec["command"] = command_line()
        records.append(rec)
        knn = f"knn {rec['knn_seconds']:.1f}s, " if "knn_seconds" in rec else ""
        print(f"{args.method} N={n:>8}: fit {rec['fit_seconds']:8.1f}s ({knn}"
              f"train {rec['train_seconds']:.1f}s, "
              f"predict {rec['predict_seconds']:.1f}s = {rec['predict_us_per_point']} us/pt), "
              f"peak {rec['peak_mem_mb']:.0f} MB (data {rec['data_mb']} MB, N×N would be "
              f"{rec['nxn_mb']:.0f} MB), ACC {100 * rec['acc']:.1f}", flush=True)
    if not args.no_save:
        print("appended to", append_results("scaling", records))


def _drop_n(cmd):
    """Remove the parent's ``--n a b c`` from a child command line."""
    out, skip = [], False
    for a in cmd:
        if a == "--n":
            skip = True
            continue
        if skip and a.lstrip("-").isdigit() and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


if __name__ == "__main__":
    main()
