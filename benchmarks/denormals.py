"""CLUDI's training step with and without flushing subnormal floats, fresh and trained.

A trained network makes subnormal values (tiny softmax probabilities, the gradients through
them) that cost the CPU a slow assist each. This times one training step (teacher pass, student
forward and backward; B = 256, 8 chains, D = 384, the library's defaults) of a freshly
initialised CLUDI network and of the network of a training checkpoint (``--checkpoint``: a
``fit(X, checkpoint_dir=...)`` folder, e.g. one of `features_bench.py --checkpoints`), with
``torch.set_flush_denormal`` off and on, interleaved, one thread. Appends to
results/denormals.json.

    python benchmarks/denormals.py --checkpoint ~/.cache/diffclust/bench-ck/SET-pca384-cludi-seed0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import append_results, command_line, machine
from safetensors.torch import load_file

from diffclust import CLUDI
from diffclust.diffusion.assignment import CLUDINet


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    files = sorted(Path(a.checkpoint).expanduser().glob("state-*.safetensors"))
    if not files:
        raise SystemExit(f"no state-*.safetensors in {a.checkpoint}: pass a checkpoint folder")
    state = load_file(str(files[-1]))
    prefix = "module.net."
    trained = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    D, K = trained["denoiser.feat.0.weight"].shape[1], trained["classifier.weight"].shape[0]
    m = CLUDI(K, random_state=0, verbose=False)
    m._setup_runtime()
    m._make_schedule()
    X = torch.randn(256, D, generator=torch.Generator().manual_seed(0))

    def net(kind):
        torch.manual_seed(0)
        n = CLUDINet(K, D, trained["classifier.weight"].shape[1])
        if kind == "trained":
            n.load_state_dict(trained)
        return n

    def seconds_per_step(n):
        g, ts = torch.Generator().manual_seed(0), []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            loss, _ = m._train_step(n, n, X, g)
            n.zero_grad()
            loss.backward()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts[2:]))

    out = {}
    for _ in range(a.rounds):  # interleaved: drifts of the machine hit every variant alike
        for kind in ("fresh", "trained"):
            for flush in (False, True):
                torch.set_flush_denormal(flush)
                out.setdefault((kind, flush), []).append(seconds_per_step(net(kind)))
    torch.set_flush_denormal(False)
    rec = {"method": "cludi-step", "checkpoint": files[-1].name, "amp": str(m.amp_dtype_),
           "machine": machine(), "command": command_line(), "date": time.strftime("%Y-%m-%d"),
           **{f"{kind}_{'flush' if flush else 'noflush'}_s": round(min(v), 4)
              for (kind, flush), v in out.items()}}
    append_results("denormals", [rec])
    for (kind, flush), v in out.items():
        print(f"{kind:8s} flush={flush!s:5s}: {min(v):.3f} s/step")


if __name__ == "__main__":
    main()
