"""Behaviour guard for refactors: short runs of every training loop on real data, fixed seeds.

Each entry trains one method (or one of the image-diffusion loops) for a few steps on
scikit-learn's digits (1,797 real 8×8 images; the image methods get the first 256 as 1×8×8
images, the feature methods the 64 pixels) and records the SHA-256 of its labels and the exact
(``repr``) loss values of its history. ``--check`` reruns everything and compares with the last
record of each entry: a refactor that claims to be behaviour-neutral must print ``same`` for
every entry on the same machine (CPU, one thread), or the change is explained and the affected
benchmarks re-run.

    OMP_NUM_THREADS=1 python benchmarks/guard.py            # record (results/guard.json)
    OMP_NUM_THREADS=1 python benchmarks/guard.py --check    # compare with the record
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import numpy as np
import torch
from _common import RESULTS, append_results, command_line, machine

FEATURE_KW = dict(random_state=0, verbose=False, precision="fp32")


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.images.astype(np.float32) / 8.0 - 1.0, d.target


def _history_losses(history):
    keys = ("loss", "l_emb", "l_ce", "l_kl", "l_gr", "l_re", "l_d", "l_cwm", "l_ml", "ce")
    return [[repr(float(h[k])) for k in keys if isinstance(h.get(k), (int, float))]
            for h in history]


def _labels_hash(labels):
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]


def run_all():
    from diffclust import CLUDI, GCC, TEMI, ClusterDDPM, DiEC, SelfClassifier
    from diffclust.diffusion.pretrain import pretrain_ddpm
    from diffclust.generation.frechet import train_feature_extractor
    from diffclust.generation.generator import train_generator

    X, images, y = _digits()
    imgs = images[:256, None]
    out = {}

    def fit(name, est, data):
        t = time.perf_counter()
        est.fit(data)
        hist = list(getattr(est, "history_", []))
        for extra in ("clr_history_", "head_history_", "ddpm_history_"):
            hist += list(getattr(est, extra, []) or [])
        out[name] = {"labels": _labels_hash(est.labels_), "losses": _history_losses(hist),
                     "seconds": round(time.perf_counter() - t, 1)}

    cludi_kw = dict(n_steps=30, n_chains=2, teacher_steps=3, eval_steps=2, eval_chains=2,
                    batch_size=128)
    fit("cludi", CLUDI(10, init_partition=None, **cludi_kw, **FEATURE_KW), X)
    fit("cludi_spectral", CLUDI(10, init_steps=10, **cludi_kw, **FEATURE_KW), X)
    fit("temi", TEMI(10, n_steps=40, n_heads=2, batch_size=128, readout="best_head",
                     **FEATURE_KW), X)
    fit("temi_consensus", TEMI(10, n_steps=40, n_heads=4, batch_size=128, **FEATURE_KW), X)
    bf16 = {**FEATURE_KW, "precision": "bf16"}  # where the CPU has it (same machine, same run)
    fit("cludi_bf16", CLUDI(10, init_partition=None, **cludi_kw, **bf16), X)
    fit("self_classifier", SelfClassifier(10, n_steps=40, batch_size=128, **FEATURE_KW), X)
    diec_kw = dict(pretrain_steps=20, pretrain_batch_size=32, unet_preset="tiny",
                   n_timesteps=50, ots_subset=64, ots_repeats=1, ots_grid=4, ots_tol=4,
                   ots_final=2, ots_n_init=1, n_noise_train=1, n_noise_infer=1, n_epochs=2,
                   batch_size=32, kmeans_n_init=1, embed_batch_size=64, **FEATURE_KW)
    fit("diec", DiEC(10, partition="kmeans", ots_criterion="ch", **diec_kw), imgs)
    fit("diec_spectral", DiEC(10, **diec_kw), imgs)
    fit("clusterddpm", ClusterDDPM(10, unet_preset="tiny", latent_dim=4, n_timesteps=50,
                                   pretrain_epochs=1, n_em_iters=2, batch_size=64, gmm_n_init=1,
                                   **FEATURE_KW), imgs)
    fit("gcc", GCC(10, backbone_width=8, clr_epochs=2, clr_batch_size=64, head_epochs=5,
                   head_lr=1e-3, unet_preset="tiny", n_timesteps=50, ddpm_epochs=1,
                   ddpm_batch_size=64, n_rounds=1, calib_epochs=1, gen_epochs=1, batch_size=64,
                   n_generate=32, sample_steps=3, kmeans_n_init=1, embed_batch_size=64,
                   **FEATURE_KW), imgs)
    t = time.perf_counter()
    res = pretrain_ddpm(imgs, None, preset="tiny", n_timesteps=50, n_steps=20,
                        batch_size=32, seed=0, n_samples=0, verbose=False, precision="fp32")
    out["pretrain_ddpm"] = {"labels": None, "losses": _history_losses(res.history),
                            "seconds": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    gen = train_generator(imgs, y[:256], n_steps=20, batch_size=32, seed=0, verbose=False,
                          preset="tiny", n_samples=0, precision="fp32")
    out["train_generator"] = {"labels": None, "losses": _history_losses(gen.history),
                              "seconds": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    fx = train_feature_extractor(imgs, y[:256], n_epochs=2, batch_size=64, seed=0)
    out["feature_extractor"] = {"labels": None, "losses": [[repr(float(fx.train_accuracy_))]],
                                "seconds": round(time.perf_counter() - t, 1)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    now = run_all()
    if a.check:
        recs = json.loads((RESULTS / "guard.json").read_text())
        ref = recs[-1]["entries"]
        bad = 0
        for k, v in now.items():
            r = ref.get(k)
            same = r is not None and r["labels"] == v["labels"] and r["losses"] == v["losses"]
            bad += not same
            print(f"{k:18s} {'same' if same else 'CHANGED'}  ({v['seconds']} s)")
        sys.exit(1 if bad else 0)
    append_results("guard", [{"entries": now, "torch": torch.__version__, "machine": machine(),
                              "command": command_line(), "date": time.strftime("%Y-%m-%d")}])
    for k, v in now.items():
        print(f"{k:18s} labels {v['labels']}  {len(v['losses'])} history rows  ({v['seconds']} s)")


if __name__ == "__main__":
    main()
