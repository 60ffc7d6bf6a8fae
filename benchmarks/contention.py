"""Training speed of CLUDI and TEMI alone and next to one competing CPU-bound process.

Each measurement is a fresh worker process that trains at the paper's sizes (synthetic
features, D = 384, K = 50; CLUDI: B = 256, 8 chains, 10 teacher steps (``cludi``, the
library's default) or the paper's 25 (``cludi-paper``); TEMI: B = 512, 16 heads, compiled
as in any fit of ≥ 2,000 steps (``temi``; ``temi-eager``: ``compile=False``)) and reports
training samples/s over the steps after a warm-up, read from the estimator's own history.
"busy" runs the same worker while a second process spins on one core (a pure-Python loop,
like a browser tab or another user's job). Policies:

* ``torch-default``: torch's own intra-op thread count (one per core);
* ``diffclust``: the library's default (``diffclust.training.runtime.thread_policy``);
* ``threads=N``: an explicit ``torch.set_num_threads(N)``;
* ``…+passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep at barriers).

Also measured: the bf16 matmul peak of this machine (a 2048³ product) and the GFLOP/s that the
CLUDI step achieves, counted from its matmul shapes. Appends a record to
``results/contention.json``.

    python benchmarks/contention.py [--steps 40] [--policies torch-default diffclust]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKER = r"""
import json, os, sys, time
import numpy as np, torch
method, steps, policy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if policy.startswith("threads="):
    torch.set_num_threads(int(policy.split("=")[1]))
    os.environ["DIFFCLUST_THREADS"] = policy.split("=")[1]
elif policy == "torch-default":
    os.environ["DIFFCLUST_THREADS"] = "torch"
from diffclust import CLUDI, TEMI
rng = np.random.default_rng(0)
X = rng.normal(size=(4096, 384)).astype(np.float32)
if method.startswith("cludi"):  # "cludi": the library's defaults; "cludi-paper": 25 teacher steps
    est = CLUDI(50, n_steps=steps, batch_size=256, eval_chains=1, eval_steps=2, verbose=False,
                random_state=0, **({"teacher_steps": 25} if method == "cludi-paper" else {}))
    B = 256
else:
    # compile=True: what "auto" does in a real fit (≥ 2,000 steps); the compilation falls in
    # the warm-up steps that the rate below leaves out
    est = TEMI(50, n_steps=steps, batch_size=512, verbose=False, random_state=0,
               compile=method != "temi-eager")
    B = 512
est.fit(X)
h = est.history_
warm = max(len(h) // 4, 1)
sps = B * (h[-1]["step"] - h[warm]["step"]) / (h[-1]["seconds"] - h[warm]["seconds"])
print(json.dumps({"samples_per_s": sps, "threads": torch.get_num_threads()}))
"""

BUSY = "import time\nt = time.time()\nwhile time.time() - t < 3600: pass\n"


def measure_demo(busy):
    """Wall seconds of `diffclust demo -q --no-report`, alone or next to the busy loop."""
    import tempfile

    hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "diffclust.cli", "demo", "-q", "--no-report",
                            "-o", f"{d}/demo"], check=True, capture_output=True, timeout=3600,
                           env=dict(os.environ, TQDM_DISABLE="1"))
            return time.perf_counter() - t
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def measure(method, steps, policy, busy):
    hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        time.sleep(0.5 if busy else 0)
        env = dict(os.environ, TQDM_DISABLE="1")
        env.pop("OMP_NUM_THREADS", None)
        if policy.endswith("+passive"):  # OpenMP threads sleep at barriers instead of spinning
            env["OMP_WAIT_POLICY"] = "PASSIVE"
            policy = policy[: -len("+passive")]
        out = subprocess.run([sys.executable, "-c", WORKER, method, str(steps), policy],
                             capture_output=True, text=True, env=env, timeout=3600)
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def matmul_peak():
    import torch

    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    b = torch.randn(2048, 2048, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    n = 10
    for _ in range(n):
        a @ b
    return 2 * 2048**3 * n / (time.perf_counter() - t) / 1e9


def cludi_step_flops(B=256, S=8, D=384, d=64, teacher_steps=25, n_blocks=5):
    """Matmul FLOPs of one CLUDI training step (forward; backward ≈ 2× forward where a graph
    exists: the last teacher step and the student)."""
    width, hc = D + D // 2, D // 2
    rows = S * B
    per_eval = 2 * rows * ((2 * d) * (2 * d) + (2 * d) * hc + hc * hc + hc * width
                           + (n_blocks - 1) * width * width + width * d + 2 * d * d)
    prepare = 2 * B * (3 * D * D + D * width)
    teacher = teacher_steps * per_eval + prepare
    student = 2 * per_eval + 2 * S * B * (3 * D * D + D * width)  # self-cond + step, S views
    with_grad = per_eval + student
    return teacher + 2 * with_grad


def temi_step_flops(B=512, H=16, D=384, hidden=512, bottleneck=256, C=50):
    """Matmul FLOPs of one TEMI training step: the EMA teacher's forward and the student's
    forward and backward (≈ 2× forward) on both views (2B rows) through H heads."""
    per_row = 2 * H * (D * hidden + hidden * bottleneck + bottleneck * C)
    return 4 * (2 * B) * per_row


def main():
    from _common import RESULTS, append_results, command_line, machine

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--methods", nargs="+", default=["cludi", "temi"])
    ap.add_argument("--policies", nargs="+", default=["torch-default", "diffclust"])
    ap.add_argument("--demo", action="store_true", help="also time `diffclust demo`")
    a = ap.parse_args()
    peak = matmul_peak()
    print(f"bf16 matmul peak (2048³): {peak:.0f} GFLOP/s", flush=True)
    rows = []
    for method in a.methods:
        for policy in a.policies:
            alone = measure(method, a.steps, policy, busy=False)
            busy = measure(method, a.steps, policy, busy=True)
            r = {"method": method, "policy": policy, "threads": alone["threads"],
                 "alone_samples_per_s": round(alone["samples_per_s"], 1),
                 "busy_samples_per_s": round(busy["samples_per_s"], 1),
                 "slowdown": round(alone["samples_per_s"] / busy["samples_per_s"], 2)}
            if method.startswith("cludi"):
                ts = 25 if method == "cludi-paper" else 10
                gf = cludi_step_flops(teacher_steps=ts) * alone["samples_per_s"] / 256 / 1e9
                r["gflops_alone"] = round(gf, 1)
            else:
                gf = temi_step_flops() * alone["samples_per_s"] / 512 / 1e9
                r["gflops_alone"] = round(gf, 1)
            rows.append(r)
            print(json.dumps(r), flush=True)
    if a.demo:
        alone, busy = measure_demo(False), measure_demo(True)
        rows.append({"method": "diffclust demo", "alone_seconds": round(alone, 1),
                     "busy_seconds": round(busy, 1), "slowdown": round(busy / alone, 2)})
        print(json.dumps(rows[-1]), flush=True)
    append_results("contention", [{"benchmark": "contention", "machine": machine(),
                                   "bf16_matmul_peak_gflops": round(peak, 1), "rows": rows,
                                   "command": command_line(),
                                   "date": time.strftime("%Y-%m-%d")}])
    print(f"-> {RESULTS / 'contention.json'}")


if __name__ == "__main__":
    main()
