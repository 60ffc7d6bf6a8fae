"""C-EDM's sample-efficiency claim at small scale: cluster-conditioned vs unconditional EDM on USPS.

    python benchmarks/cedm.py --steps 3000 --eval-every 500 --n-gen 1000 --seed 0
    python benchmarks/cedm.py --steps 40 --eval-every 20 --n-gen 100 --no-save   # smoke run

Setup (all choices ours; C-EDM trains on CIFAR/FFHQ with DINO+TEMI clusters for 100–200 Mimg):

* data: USPS, all 9,298 16×16 grey digits, in [−1, 1];
* clusters for conditioning: **k-means** (``--clusters`` C, default 10, 10 restarts) on the
  50-d PCA of the pixels. k-means rather than TEMI: TEMI needs good features (DINO in the
  paper) that a 16×16 grey digit does not get from anything we have locally, and C-EDM reports
  k-means clusters work as well for generation when sampling from q(c) (Table 1, 6);
* generators: the same ``small16`` U-Net (1.06 M parameters; the conditional one adds a
  (C+1)×128 id embedding), the same EDM loss, Adam lr 1e-3, batch 128, EMA 0.999, bf16
  autocast, the same seed and data order; the conditional one uses label dropout 0.1
  (guidance available, sampled at w = 0) and samples c ~ q(c);
* Fréchet distance every ``--eval-every`` steps between ``--n-gen`` generated images (Heun, 18
  steps, seeds 0..n−1: the *same* start noise for both generators) and all real images, in the
  feature space of a small CNN trained on USPS digit labels (see
  ``diffclust.generation.frechet``; no Inception/DINOv2 weights on this machine). FD of a
  random half of the real data vs all of it is reported as the noise floor;
* confidence of generated samples (C-EDM Fig. 8): the max softmax probability of the k-means
  soft assignment (``KMeansClusterer.predict_proba``) on the generated images; for the
  conditional model also the fraction whose k-means cluster equals the condition.

Outputs: ``benchmarks/results/cedm.json`` (appended), ``cedm_cond.png`` (one row per cluster),
``cedm_uncond.png``, ``cedm_confidence.png`` (Fig. 8-style: columns share the start noise;
rows: unconditional / conditional of the 8 least confident conditional samples, then the same
for the 8 most confident) and ``cedm_curve.png`` (FD vs steps, when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from _common import DATA_HOME, RESULTS, append_results, command_line, machine, peak_mem_mb

from diffclust import KMeansClusterer, load_dataset
from diffclust.generation import (
    confidence_extremes,
    extract_features,
    frechet_distance,
    gaussian_stats,
    sample,
    train_feature_extractor,
    train_generator,
)
from diffclust.viz.images import save_image_grid


def steps_to_reach(curve, target):
    """First step (linearly interpolated) at which ``curve`` [(step, fd)] gets ≤ ``target``."""
    prev = None
    for s, fd in curve:
        if fd <= target:
            if prev is None or prev[1] == fd:
                return float(s)
            s0, f0 = prev
            return float(s0 + (f0 - target) / (f0 - fd) * (s - s0))
        prev = (s, fd)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000, help="training steps per generator")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--n-gen", type=int, default=1000, help="generated images per FD")
    ap.add_argument("--clusters", type=int, default=10, help="k-means clusters C")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sample-steps", type=int, default=18, help="Heun steps (NFE 2N-1)")
    ap.add_argument("--preset", default="small16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-save", action="store_true", help="write nothing under results/")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)

    ds = load_dataset("usps", data_home=DATA_HOME)
    X = ds.x  # (N, 16, 16) uint8
    Xf = X.reshape(len(X), -1).astype(np.float32) / 127.5 - 1.0
    N = len(X)
    imgs_real = torch.from_numpy(Xf.reshape(N, 1, 16, 16))

    # clusters: k-means on the PCA of the pixels
    from sklearn.decomposition import PCA

    t0 = time.perf_counter()
    pca = PCA(50, random_state=args.seed).fit(Xf)
    km = KMeansClusterer(args.clusters, random_state=args.seed).fit(
        pca.transform(Xf).astype(np.float32))
    ids = km.labels_
    q = np.bincount(ids, minlength=args.clusters) / N
    kmeans_seconds = time.perf_counter() - t0

    def km_proba(x):
        flat = torch.as_tensor(x).reshape(len(x), -1).numpy()
        return torch.from_numpy(km.predict_proba(pca.transform(flat).astype(np.float32)))

    # feature extractor for the FD: a small CNN on the digit labels (train split), checked on test
    t0 = time.perf_counter()
    split = ds.extra.get("split")
    tr = split == 0 if split is not None else np.ones(N, bool)
    fx = train_feature_extractor(X[tr], ds.y[tr], n_epochs=4, seed=args.seed)
    te = ~tr if split is not None else tr
    test_acc = float((fx.predict_proba(imgs_real[te]).argmax(1).numpy() == ds.y[te]).mean())
    real_stats = gaussian_stats(extract_features(fx, imgs_real))
    half = rng.permutation(N)[: max(args.n_gen, 2)]
    fd_floor = frechet_distance(*real_stats, *gaussian_stats(extract_features(fx, imgs_real[half])))
    fx_seconds = time.perf_counter() - t0
    print(f"k-means C={args.clusters} ({kmeans_seconds:.1f}s), q(c) min/max "
          f"{q.min():.3f}/{q.max():.3f}; feature CNN test acc {test_acc:.4f} ({fx_seconds:.1f}s);"
          f" FD floor ({len(half)} real vs all) {fd_floor:.3f}", flush=True)

    seeds = np.arange(args.n_gen)
    results, finals = {}, {}
    for kind in ("conditional", "unconditional"):
        curve = []
        ev_seconds = [0.0]

        def evaluate(step, loss, gen, curve=curve, kind=kind, ev_seconds=ev_seconds):
            te0 = time.perf_counter()
            x, c = sample(gen, args.n_gen, seeds=seeds, device=args.device,
                          return_clusters=True)
            fd = frechet_distance(*real_stats, *gaussian_stats(extract_features(fx, x)))
            P = km_proba(x).numpy()
            row = {"step": step, "fd": round(fd, 4), "loss": round(loss, 5),
                   "msp_mean": round(float(P.max(1).mean()), 4)}
            if kind == "conditional":
                row["cond_agreement"] = round(float((P.argmax(1) == c.numpy()).mean()), 4)
            ev_seconds[0] += time.perf_counter() - te0
            row["eval_seconds"] = round(time.perf_counter() - te0, 2)
            curve.append(row)
            print(f"[{kind}] step {step}: FD {fd:.3f}, loss {loss:.4f}, MSP "
                  f"{row['msp_mean']:.3f}" + (f", agreement {row['cond_agreement']:.3f}"
                                              if "cond_agreement" in row else ""), flush=True)

        t0 = time.perf_counter()
        res = train_generator(
            X, ids if kind == "conditional" else None, freq=q if kind == "conditional" else None,
            preset=args.preset, n_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            sample_steps=args.sample_steps, seed=args.seed, device=args.device,
            n_samples=0, verbose=False, callback=evaluate, callback_every=args.eval_every)
        total = time.perf_counter() - t0
        results[kind] = {"curve": curve, "train_seconds": round(total - ev_seconds[0], 1),
                         "eval_seconds": round(ev_seconds[0], 1),
                         "n_params": sum(p.numel() for p in res.generator.unet.parameters())}
        finals[kind] = res.generator
        print(f"[{kind}] train {results[kind]['train_seconds']}s "
              f"({results[kind]['train_seconds'] / max(res.steps, 1):.3f}s/step), eval "
              f"{results[kind]['eval_seconds']}s", flush=True)

    cond_curve = [(r["step"], r["fd"]) for r in results["conditional"]["curve"]]
    unc_curve = [(r["step"], r["fd"]) for r in results["unconditional"]["curve"]]
    fd_c, fd_u = cond_curve[-1][1], unc_curve[-1][1]
    reach = steps_to_reach(cond_curve, fd_u)
    efficiency = (unc_curve[-1][0] / reach) if reach else None
    summary = {"fd_conditional": fd_c, "fd_unconditional": fd_u,
               "fd_ratio_uncond_over_cond": round(fd_u / max(fd_c, 1e-12), 3),
               "cond_steps_to_reach_uncond_final_fd": reach,
               "sample_efficiency": None if efficiency is None else round(efficiency, 2),
               # reached already at the first evaluation: the true efficiency is at least this
               "sample_efficiency_is_lower_bound": bool(reach is not None
                                                         and reach <= cond_curve[0][0]),
               "conditioning_helps": fd_c < fd_u}
    print(json.dumps(summary, indent=1), flush=True)

    # grids
    out = RESULTS if not args.no_save else Path(tempfile.mkdtemp(prefix="cedm_"))
    C = args.clusters
    per = 10
    by_cluster = np.repeat(np.arange(C), per)
    g_cond = sample(finals["conditional"], C * per, clusters=by_cluster, seed=10_000,
                    device=args.device)
    save_image_grid(out / "cedm_cond.png", g_cond, nrow=per)
    x_u = sample(finals["unconditional"], 100, seed=0, device=args.device)
    save_image_grid(out / "cedm_uncond.png", x_u, nrow=10)
    x_c = sample(finals["conditional"], args.n_gen, seeds=seeds, device=args.device)
    conf = km_proba(x_c).numpy().max(1)
    lo, hi = confidence_extremes(conf, 8)
    pick = np.concatenate([lo, hi])
    x_u8 = sample(finals["unconditional"], len(pick), seeds=seeds[pick], device=args.device)
    rows = [x_u8[:8], x_c[lo], x_u8[8:], x_c[hi]]
    save_image_grid(out / "cedm_confidence.png", torch.cat(rows), nrow=8)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for kind, cv in (("C-EDM (k-means C=%d)" % C, cond_curve), ("EDM (uncond.)", unc_curve)):
            ax.plot(*zip(*cv), marker="o", label=kind)
        ax.axhline(fd_floor, color="grey", ls=":", label="real-data floor")
        ax.set_xlabel("training steps (batch %d)" % args.batch_size)
        ax.set_ylabel("Fréchet distance (USPS CNN features)")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "cedm_curve.png", dpi=120)
        plt.close(fig)
    except ImportError:
        pass
    print(f"grids in {out}", flush=True)

    rec = {"method": "cedm", "dataset": "usps", "n": N, "k": C, "seed": args.seed,
           "clusters": "kmeans(pca50)", "preset": args.preset, "steps": args.steps,
           "batch_size": args.batch_size, "lr": args.lr, "eval_every": args.eval_every,
           "n_gen": args.n_gen, "sample_steps": args.sample_steps,
           "extractor": "SmallConvNet on USPS digit labels (train split)",
           "extractor_test_acc": round(test_acc, 4), "fd_floor": round(fd_floor, 4),
           "q_min": round(float(q.min()), 4), "q_max": round(float(q.max()), 4),
           **summary, "runs": results,
           "total_seconds": round(time.perf_counter() - t_start, 1),
           "peak_mem_mb": round(peak_mem_mb(), 1), "threads": torch.get_num_threads(),
           "device": "cuda" if torch.cuda.is_available() else "cpu", "machine": machine(),
           "command": command_line(), "date": date.today().isoformat()}
    if not args.no_save:
        print(f"appended to {append_results('cedm', [rec])}")
    else:
        print(f"(--no-save) total {rec['total_seconds']}s")


if __name__ == "__main__":
    main()
