"""What makes a diffusion representation clusterable (issue 15): k-means on DiEC's bottleneck
features against DDPM pretraining steps, EMA against raw weights, at several timesteps.

One DDPM is pretrained on the whole dataset (``pretrain_ddpm``, resumable in ``--out``) up to
each milestone in turn; at every milestone both the EMA and the raw (online) weights embed all
images at each t of ``--ts`` (the activations of each block of ``--blocks``, by default the
bottleneck "mid", averaged over ``--noise`` draws, DiEC eq.
9–13, standardised per dimension as DiEC does), and k-means (K = number of classes, 10 inits)
clusters them, and spectral clustering partitions their k-NN graph (k = 10,
:mod:`diffclust.graph`). A record per (milestone, weights, t, partition) goes to
``results/diffusion_representation.json`` with ACC / NMI / ARI, the Calinski–Harabasz score
(the paper's OTS criterion: ``chosen`` marks the t it would pick, without labels) or the
normalised cut (DiEC's ``partition="spectral"`` criterion), the pretraining
seconds and images/s; ``--plot`` draws the curves.

    python benchmarks/diffusion_representation.py --dataset usps --preset small16 --batch 64 \
        --milestones 1000 2000 4000 8000 16000 32000 50000

A killed run resumes from the last pretraining checkpoint; milestones already recorded for the
same settings are skipped. Each milestone's EMA U-Net is kept in ``--out``/milestones/step-N.
``--device cuda`` trains and embeds on a GPU. ``--max-minutes`` is a wall-clock budget for this
call's pretraining and the measurements between milestones: when it runs out, pretraining stops
and the step reached is measured (a milestone of its own) before the run ends.

    python benchmarks/diffusion_representation.py --dataset mnist --preset base32 --batch 128 \
        --device cuda --max-minutes 5 --milestones 2000 4000 8000 16000 --eval-n 10000

The study's other axes: ``--batch``, ``--schedule cosine`` (noise schedule) and ``--prediction v``
(v- instead of ε-prediction); a non-default schedule or parametrisation is named in the records'
settings, the run folder and the plot. ``--plot-axes`` draws every run of one preset against
images seen.

``--unet NAME`` measures a finished U-Net instead (a model shipped with the package, or a
folder; no pretraining, its steps read from its ``pretrain.json``), e.g. the layer axis:

    python benchmarks/diffusion_representation.py --dataset usps --unet usps --weights ema \
        --blocks mid up.0 --ts 100 200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, append_results, record

from diffclust import evaluate
from diffclust.data.validation import check_images
from diffclust.diffusion.pretrain import pretrain_ddpm
from diffclust.diffusion.unet import DiffusionUNet, noisy_features
from diffclust.graph import spectral_partition
from diffclust.training.runtime import map_batches, resolve_precision

NAME = "diffusion_representation"


def embed(unet, X, t, n_noise, amp, seed=0, batch=512, block="mid"):
    """Averaged features ē(t) of one block for all images (N, D_e), standardised per
    dimension; computed on the U-Net's device."""
    sched, g = unet.noise_schedule(), torch.Generator().manual_seed(seed)
    unet.eval()
    dev = next(unet.parameters()).device
    with torch.no_grad():
        e = map_batches(lambda xb: noisy_features(unet, sched, xb, t, n_noise, g, block, amp)
                        .mean(0), X, max(batch // n_noise, 1), dev)
    e = e.numpy().astype(np.float64)
    return (e - e.mean(0)) / np.maximum(e.std(0), 1e-6)


def kmeans_scores(Z, y, k, seed):
    from sklearn.cluster import KMeans
    from sklearn.metrics import calinski_harabasz_score

    labels = KMeans(k, n_init=10, random_state=seed).fit_predict(Z)
    return evaluate(y, labels), float(calinski_harabasz_score(Z, labels))


def done(settings):
    """{(method, pretrain_steps, weights, block, t)} already recorded for these settings."""
    path = RESULTS / f"{NAME}.json"
    if not path.exists():
        return set()
    return {(r["method"], r["pretrain_steps"], r["weights"], r.get("block", "mid"), r["t"])
            for r in json.loads(path.read_text()) if r.get("settings") == settings}


def plot(settings):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in json.loads((RESULTS / f"{NAME}.json").read_text())
            if r.get("settings") == settings]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    crit = {"kmeans-bottleneck": "CH", "spectral-bottleneck": "Ncut"}
    for meth, color in (("kmeans-bottleneck", "C0"), ("spectral-bottleneck", "C3")):
        for w, style in (("ema", "-"), ("raw", "--")):
            for key, label in (("chosen", f"t chosen by {crit[meth]}"), ("best", "best t")):
                pts = {}
                for r in recs:
                    if r["method"] != meth or r["weights"] != w or r.get("block", "mid") != "mid":
                        continue
                    s = r["pretrain_steps"]
                    if key == "chosen" and r["chosen"] or key == "best":
                        if key == "best" and s in pts and pts[s][0] >= r["acc"]:
                            continue
                        pts[s] = (r["acc"], r["nmi"])
                xs = sorted(pts)
                if not xs:
                    continue
                for i in range(2):
                    ax[i].plot(xs, [100 * pts[s][i] for s in xs], style, color=color,
                               marker="o" if key == "chosen" else "x", alpha=0.9,
                               label=f"{meth.split('-')[0]}, {w}, {label}")
    for i, m in enumerate(("ACC", "NMI")):
        ax[i].set_xscale("log")
        ax[i].set_xlabel("DDPM pretraining steps")
        ax[i].set_ylabel(f"{m} of a partition of the bottleneck (%)")
        ax[i].grid(alpha=0.3)
    ax[0].legend(fontsize=7)
    fig.suptitle(f"{settings['dataset']}: {settings['preset']} U-Net, batch {settings['batch']}"
                 + "".join(f", {settings[k]}" for k in ("schedule", "prediction") if k in settings),
                 fontsize=9)
    fig.tight_layout()
    seed = f"_s{settings['seed']}" if settings["seed"] else ""
    variant = "".join(f"_{settings[k]}" for k in ("schedule", "prediction") if k in settings)
    out = (RESULTS / f"{NAME}_{settings['dataset']}_{settings['preset']}_b{settings['batch']}"
                     f"{variant}{seed}.png")
    fig.savefig(out, dpi=110)
    print(f"-> {out}")


def plot_axes(dataset, preset):
    """The study's training axes side by side: ACC at the label-free choice of t (CH for
    k-means, Ncut for the spectral partition), EMA bottleneck, against images seen (steps ×
    batch), one curve per pretraining run of ``preset`` on all of ``dataset``, up to the
    600,000 images the axis runs cover."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    for r in json.loads((RESULTS / f"{NAME}.json").read_text()):
        s = r.get("settings", {})
        if (s.get("dataset") != dataset or s.get("preset") != preset or "unet" in s
                or "eval_n" in s or r["weights"] != "ema" or r.get("block", "mid") != "mid"
                or not r["chosen"]):
            continue
        label = (f"batch {s['batch']}, {s.get('schedule', 'linear')}, "
                 f"{s.get('prediction', 'epsilon')}, seed {s['seed']}")
        runs.setdefault(label, {}).setdefault(r["method"], {})[
            r["pretrain_steps"] * s["batch"]] = 100 * r["acc"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for i, (meth, title) in enumerate((("kmeans-bottleneck", "k-means, t by CH"),
                                       ("spectral-bottleneck", "spectral, t by Ncut"))):
        for j, label in enumerate(sorted(runs)):
            pts = runs[label].get(meth, {})
            xs = [x for x in sorted(pts) if x <= 600_000]
            ax[i].plot(xs, [pts[x] for x in xs], marker="os^Dv<>"[j % 7], color=f"C{j}",
                       alpha=0.85, label=label)
        ax[i].set_xscale("log")
        ax[i].set_xlabel("images seen in pretraining (steps × batch)")
        ax[i].set_title(title, fontsize=9)
        ax[i].grid(alpha=0.3)
    ax[0].set_ylabel("ACC of the partition (%)")
    ax[0].legend(fontsize=7)
    fig.suptitle(f"{dataset}: {preset} U-Net, EMA bottleneck — batch, schedule, "
                 f"parametrisation", fontsize=9)
    fig.tight_layout()
    out = RESULTS / f"{NAME}_{dataset}_{preset}_axes.png"
    fig.savefig(out, dpi=110)
    print(f"-> {out}")


def milestone_nets(a, X, out, m, left, dev):
    """Pretrain (resumably, in ``out``) up to ``m`` steps or until ``left`` seconds are spent;
    returns ``(nets, steps, seconds, out_of_time)`` with ``nets`` the (weights name, U-Net)
    pairs to measure at that step, or ``None`` when no model of step ``m`` is left."""
    res = pretrain_ddpm(X, out, preset=a.preset, n_steps=m, batch_size=a.batch, lr=a.lr,
                        schedule=a.schedule, prediction=a.prediction, seed=a.seed, n_samples=0,
                        verbose=False, device=dev, max_seconds=left)
    out_of_time = res.steps < m
    if out_of_time:  # the time ran out: measure where it stopped, then stop
        print(f"time is up at {res.steps} of {m} steps", flush=True)
        m = res.steps
    snap = out / "milestones" / f"step-{m}"
    if res.steps == m:
        if not snap.exists():  # keep each milestone's EMA model
            res.unet.save_pretrained(snap)
        return (("ema", res.unet), ("raw", res.online)), m, res.seconds, out_of_time
    if snap.exists():  # the run is past m: the kept EMA model (the raw one is gone)
        return (("ema", DiffusionUNet.from_pretrained(snap).to(dev)),), m, None, out_of_time
    print(f"{m} steps: the run is at {res.steps} and kept no model at {m}; skipped")
    return None, m, None, out_of_time


def main():
    from _common import DATA_HOME

    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="usps")
    ap.add_argument("--preset", default="auto")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--schedule", default="linear", help="noise schedule: linear, cosine, …")
    ap.add_argument("--prediction", default="epsilon", choices=["epsilon", "v"],
                    help="what the U-Net predicts")
    ap.add_argument("--milestones", type=int, nargs="+",
                    default=[1000, 2000, 4000, 8000, 16000, 32000, 50000])
    ap.add_argument("--ts", type=int, nargs="+", default=[50, 100, 200, 300])
    ap.add_argument("--blocks", nargs="+", default=["mid"],
                    help="U-Net blocks read: mid, conv_in, down.i, up.i")
    ap.add_argument("--weights", nargs="+", default=["ema", "raw"], choices=["ema", "raw"],
                    help="which weights to partition")
    ap.add_argument("--noise", type=int, default=2, help="noise draws averaged per image")
    ap.add_argument("--eval-n", type=int, default=0,
                    help="partition a fixed random subset of this many images (0 = all); the "
                         "DDPM still trains on all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="wall-clock budget of this call (pretraining and measuring); when it "
                         "runs out the step reached is measured, then the run ends")
    ap.add_argument("--out", default=None,
                    help="pretraining folder (default ~/.cache/diffclust/representation/…)")
    ap.add_argument("--plot", action="store_true", help="only draw the curves of these settings")
    ap.add_argument("--plot-axes", action="store_true",
                    help="only draw every pretraining run of --preset on --dataset, against "
                         "images seen (the batch / schedule / parametrisation axes)")
    ap.add_argument("--unet", default=None,
                    help="measure this finished U-Net (a shipped name or a folder); no pretraining")
    a = ap.parse_args()
    settings = {"dataset": a.dataset, "preset": a.preset, "batch": a.batch, "lr": a.lr,
                "seed": a.seed, "noise": a.noise}
    variant = ""  # the study's other axes, named only when not the DDPM default
    if a.schedule != "linear":
        settings["schedule"], variant = a.schedule, variant + f"-{a.schedule}"
    if a.prediction != "epsilon":
        settings["prediction"], variant = a.prediction, variant + f"-{a.prediction}"
    if a.unet:  # the model's own training settings, from its card
        from diffclust.pretrained import PRETRAINED, pretrained_path

        card = pretrained_path(a.unet) if a.unet in PRETRAINED else Path(a.unet)
        if not (card / "pretrain.json").is_file():
            ap.error(f"--unet {a.unet}: no pretrain.json in {card}; give a shipped name "
                     f"({', '.join(sorted(PRETRAINED))}) or a folder written by pretrain_ddpm")
        info = json.loads((card / "pretrain.json").read_text())
        # seed: the evaluation subset's draw (the model's own seed is on its card)
        settings = {"dataset": a.dataset, "unet": a.unet, "preset": info["preset"],
                    "batch": info["batch_size"], "lr": info["lr"], "seed": a.seed,
                    "noise": a.noise}
        a.milestones = [int(info["steps_done"])]
    if a.plot_axes:
        return plot_axes(a.dataset, a.preset)
    if a.plot:
        if a.eval_n:  # the runs' records name their evaluation subset
            settings["eval_n"] = a.eval_n
        return plot(settings)
    d = np.load(Path(DATA_HOME) / f"{a.dataset}.npz")
    X, y = check_images(d["x"]), d["y"].astype(np.int64)
    k = len(np.unique(y))
    keep = np.arange(len(X))
    if 0 < a.eval_n < len(X):
        settings["eval_n"] = a.eval_n
        keep = np.sort(np.random.default_rng(a.seed).choice(len(X), a.eval_n, replace=False))
    Xt, y_eval = torch.from_numpy(X[keep]), y[keep]
    if a.unet:
        from diffclust.diffusion.unet import load_unet

        unet = load_unet(a.unet, tuple(X.shape[1:]))[0].to(torch.device(a.device))
    out = Path(a.out or Path.home() / ".cache/diffclust/representation" /
               f"{a.dataset}-{a.preset}-b{a.batch}-lr{a.lr:g}-s{a.seed}{variant}")
    dev = torch.device(a.device)
    amp = resolve_precision("auto", dev)
    have = done(settings)
    t_end = None if a.max_minutes is None else time.monotonic() + 60 * a.max_minutes
    for m in sorted(a.milestones):
        left = None if t_end is None else t_end - time.monotonic()
        if left is not None and left <= 0:
            break
        if a.unet:
            nets, seconds = (("ema", unet),), None
        else:
            nets, m, seconds, out_of_time = milestone_nets(a, X, out, m, left, dev)
            if out_of_time:
                t_end = time.monotonic()
            if nets is None:
                continue
        # a criterion's choice is over the ts of one pass: a partition is measured at every t
        # or (when some t of it is on record already) at none
        nets = tuple((w, net) for w, net in nets if w in a.weights)
        todo = [(meth, w, b, t) for meth in ("kmeans-bottleneck", "spectral-bottleneck")
                for w, _ in nets for b in a.blocks for t in a.ts
                if not any(h[:4] == (meth, m, w, b) for h in have)]
        if not todo:
            continue
        n_params = sum(p.numel() for p in nets[0][1].parameters())
        ips = None if seconds is None else round(m * a.batch / max(seconds, 1e-9), 1)
        print(f"{a.dataset} {settings['preset']}: {m} steps, {seconds} s of pretraining "
              f"({ips} images/s), {n_params / 1e6:.2f} M parameters", flush=True)
        recs = []
        for w, net in nets:
            rows = {"kmeans-bottleneck": [], "spectral-bottleneck": []}
            for block in a.blocks:
                for t in a.ts:
                    if not any(x[1:] == (w, block, t) for x in todo):
                        continue
                    t0 = time.perf_counter()
                    Z = embed(net.float(), Xt, t, a.noise, amp, seed=a.seed + 1, block=block)
                    t_embed = time.perf_counter() - t0
                    if ("kmeans-bottleneck", w, block, t) in todo:
                        met, ch = kmeans_scores(Z, y_eval, k, a.seed)
                        rows["kmeans-bottleneck"].append(
                            (block, t, met, ch, time.perf_counter() - t0, Z.shape[1]))
                    if ("spectral-bottleneck", w, block, t) in todo:
                        t1 = time.perf_counter()
                        labels, ncut = spectral_partition(Z, k, n_neighbors=10,
                                                          random_state=a.seed)
                        rows["spectral-bottleneck"].append(
                            (block, t, evaluate(y_eval, labels), -ncut,
                             t_embed + time.perf_counter() - t1, Z.shape[1]))
            for meth, crit in (("kmeans-bottleneck", "ch"), ("spectral-bottleneck", "ncut")):
                mids = [r[3] for r in rows[meth] if r[0] == "mid"]
                best = max(mids) if mids else None
                for block, t, met, score, sec, dim in rows[meth]:
                    value = round(abs(score), 5 if crit == "ncut" else 2)
                    recs.append(record(meth, a.dataset, len(keep), k, a.seed, met, sec,
                                       settings=settings, pretrain_steps=m, weights=w, t=t,
                                       block=block, **{crit: value},
                                       chosen=block == "mid" and score == best,
                                       feature_dim=dim,
                                       pretrain_seconds=None if seconds is None
                                       else round(seconds, 1),
                                       pretrain_images_per_s=ips, unet_params=n_params,
                                       precision=str(amp)))
                    print(f"  {w:3s} {block} t={t:4d} {meth.split('-')[0]:8s}: "
                          f"ACC {100 * met['acc']:.1f} NMI {100 * met['nmi']:.1f} "
                          f"{crit} {value}{' *' if score == best else ''}", flush=True)
        append_results(NAME, recs)
    if not a.unet:  # one model has no curve
        plot(settings)


if __name__ == "__main__":
    main()
