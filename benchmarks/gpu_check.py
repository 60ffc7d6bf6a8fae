"""One pass over every method's accelerator path, one line per check (name, ok/FAIL, seconds,
result), logs under ``$OUT`` (or ``--out``). Sized to finish in ≤ 8 minutes on one GPU; with
``--cpu`` everything is tiny and runs on the CPU (the test suite runs it that way). A check that
runs past ``--check-timeout`` seconds prints every thread's stack and ends the run.

    bash benchmarks/gpu_check.sh            # on a GPU machine
    python benchmarks/gpu_check.py --cpu    # the same code paths, tiny, on the CPU
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch


def _data(cpu: bool):
    """USPS digits when the shared data folder is there, else synthetic blobs of images."""
    from diffclust import load_dataset

    n = 120 if cpu else 4000
    try:
        X, y = load_dataset("usps", return_X_y=True, download=False)
        idx = np.random.default_rng(0).permutation(len(X))[:n]
        return X[idx], y[idx]
    except (FileNotFoundError, ValueError):
        rng = np.random.default_rng(0)
        y = np.repeat(np.arange(10), n // 10)
        X = (rng.random((n, 16, 16)) * 60 + y[:, None, None] * 19).astype(np.uint8)
        return X, y


def checks(cpu: bool, out: Path):
    from diffclust import CLUDI, GCC, TEMI, ClusterDDPM, DiEC, evaluate, train_generator
    from diffclust.diffusion.pretrain import pretrain_ddpm
    from diffclust.generation import sample

    dev = "cpu" if cpu else "cuda"
    X, y = _data(cpu)
    F = X.reshape(len(X), -1).astype(np.float32) / 255.0
    K = 10
    small = dict(n_steps=8, n_chains=2, teacher_steps=2, eval_steps=2, eval_chains=2,
                 batch_size=60) if cpu else dict(n_steps=600)

    def autocast_matmul():
        a = torch.randn(1024, 1024, device=dev)
        with torch.autocast(dev, dtype=torch.bfloat16):
            c = a @ a
        return f"dtype {c.dtype}, finite {bool(torch.isfinite(c).all())}"

    def cludi():
        m = CLUDI(K, random_state=0, device=dev, verbose=False, **small).fit(F)
        return f"ACC {evaluate(y, m.labels_)['acc']:.3f}"

    def temi():
        m = TEMI(K, random_state=0, device=dev, verbose=False,
                 **(dict(n_steps=20, n_heads=2, batch_size=60) if cpu else {})).fit(F)
        # on the GPU the default fit (≥ 3,000 steps) compiles its heads: say whether it did
        return f"ACC {evaluate(y, m.labels_)['acc']:.3f}, compiled {m.compiled_}"

    state = {}

    def ddpm():
        res = pretrain_ddpm(X, out / "ddpm", preset="tiny" if cpu else "auto",
                            n_steps=10 if cpu else 1500, batch_size=32 if cpu else 128,
                            device=dev, n_samples=0, verbose=False, checkpoint_every=10**9)
        state["unet"] = res.unet
        return f"{res.steps} steps, {res.steps / max(res.seconds, 1e-9):.1f} steps/s"

    def diec():
        kw = (dict(ots_subset=60, ots_repeats=1, ots_grid=4, ots_tol=4, ots_final=2,
                   ots_n_init=1, n_noise_train=1, n_noise_infer=1, n_epochs=1, batch_size=32,
                   kmeans_n_init=1) if cpu else dict(n_epochs=3))
        m = DiEC(K, unet=state.get("unet"), random_state=0, device=dev, verbose=False,
                 **kw).fit(X)
        return f"t* {m.t_star_}, ACC {evaluate(y, m.labels_)['acc']:.3f}"

    def clusterddpm():
        kw = (dict(unet_preset="tiny", latent_dim=4, n_timesteps=50, pretrain_epochs=1,
                   n_em_iters=1, batch_size=32, gmm_n_init=1) if cpu else
              dict(pretrain_epochs=30, n_em_iters=5))
        m = ClusterDDPM(K, random_state=0, device=dev, verbose=False, **kw).fit(X)
        imgs, _ = m.sample(4, random_state=0, verbose=False)
        return f"ACC {evaluate(y, m.labels_)['acc']:.3f}, samples {tuple(imgs.shape)}"

    def gcc():
        kw = (dict(backbone_width=8, clr_epochs=1, clr_batch_size=64, head_epochs=2,
                   unet_preset="tiny", n_timesteps=50, ddpm_epochs=1, ddpm_batch_size=64,
                   n_rounds=1, calib_epochs=1, gen_epochs=1, batch_size=64, n_generate=32,
                   sample_steps=3, kmeans_n_init=1) if cpu else
              dict(backbone_width=32, clr_epochs=20, head_epochs=30, ddpm_epochs=20,
                   n_rounds=1, calib_epochs=1, n_generate=500))
        m = GCC(K, random_state=0, device=dev, verbose=False, **kw).fit(X)
        return f"ACC {evaluate(y, m.labels_)['acc']:.3f}"

    def cedm():
        res = train_generator(X, y, out_dir=out / "cedm", preset="tiny" if cpu else "auto",
                              n_steps=5 if cpu else 800, batch_size=32 if cpu else 128,
                              device=dev, n_samples=0, verbose=False, checkpoint_every=10**9)
        imgs = sample(res.generator, 8, clusters="uniform", guidance=1.0, device=dev,
                      n_steps=3 if cpu else 18)
        return f"{res.steps} steps, samples {tuple(imgs.shape)}"

    def ddp_step():
        import tempfile

        import torch.distributed as dist

        backend = "gloo" if cpu else "nccl"
        init = f"file://{tempfile.mkdtemp()}/rdzv"
        dist.init_process_group(backend, init_method=init, rank=0, world_size=1)
        try:
            net = torch.nn.Linear(8, 8).to(dev)
            ddp = torch.nn.parallel.DistributedDataParallel(net)
            ddp(torch.randn(4, 8, device=dev)).sum().backward()
            t = torch.ones(1, device=dev)
            dist.all_reduce(t)
            return f"{backend} world 1, all_reduce {t.item():.0f}"
        finally:
            dist.destroy_process_group()

    return [("autocast matmul", autocast_matmul), ("CLUDI", cludi), ("TEMI", temi),
            ("DDPM pretraining", ddpm), ("DiEC", diec), ("ClusterDDPM", clusterddpm),
            ("GCC", gcc), ("C-EDM generation", cedm), ("DDP step", ddp_step)]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    ap.add_argument("--check-timeout", type=float, default=None,
                    help="seconds a check may run before the stacks are dumped and the run "
                         "ends (default 120 with --cpu, 360 on a GPU)")
    a = ap.parse_args(argv)
    if not a.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for the tiny CPU pass", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if a.cpu:  # tiny budgets: the degenerate-result warnings are expected, not news
        import warnings

        warnings.simplefilter("ignore", UserWarning)
    device = "cpu" if a.cpu else torch.cuda.get_device_name(0)
    print(f"gpu_check on {device}, torch {torch.__version__}", flush=True)
    results, failed = [], 0
    # a check that hangs (a stuck collective, a deadlock) dumps every thread's stack and ends
    # the run instead of holding it until an outer timeout that says nothing of where
    limit = a.check_timeout or (120 if a.cpu else 360)
    for name, fn in checks(a.cpu, out):
        print(f"{name}: started", file=sys.stderr, flush=True)
        faulthandler.dump_traceback_later(limit, exit=True)
        t = time.perf_counter()
        try:
            res, ok = fn(), True
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check
            res, ok = f"{type(e).__name__}: {e}", False
            (out / f"{name.replace(' ', '_')}.traceback.txt").write_text(traceback.format_exc())
        s = time.perf_counter() - t
        faulthandler.cancel_dump_traceback_later()
        failed += not ok
        print(f"{name:<18} {'ok' if ok else 'FAIL':<4} {s:7.1f}s  {res}", flush=True)
        results.append({"check": name, "ok": ok, "seconds": round(s, 2), "result": res})
    (out / "gpu_check.json").write_text(json.dumps({"device": device, "checks": results},
                                                   indent=1))
    print(f"{len(results) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    rc = main()
    faulthandler.dump_traceback_later(120, exit=True)  # the interpreter's exit is watched too
    sys.exit(rc)
