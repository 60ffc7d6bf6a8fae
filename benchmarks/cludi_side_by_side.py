"""CLUDI side by side with the authors' code (BGU-CS-VIL/CLUDI), term by term, on one fixed batch.

The authors' modules are imported from a local clone (nothing of them is copied into this
project), on CPU, with inert stand-ins for the imports this comparison does not touch (einops,
torchvision, accelerate, ema_pytorch). For every term the same inputs go through their code and
ours — their network carries our network's weights, their sampler gets our noise draws — and the
largest absolute difference is printed:

1. the noise schedule ᾱ_t (sqrt schedule, T = 1000) and the loss weight min(SNR, γ)/F;
2. the DDIM time grid of the teacher (25 steps) and of prediction (their 50, our 10);
3. the network ẑ_θ(z_t, x, t, z_sc) in eval mode (no dropout);
4. the re-embedding z̃ = sqrt(d)·normalize(softmax(L/τ) Ē);
5. the teacher's 25-step stochastic DDIM (η = 1, F = 49, clip to [−1, 1], self-conditioning);
6. the Self-Classifier cross-entropy with their pair weighting (ours with
   ``code_faithful_weighting=True``) and with our default weighting;
7. the embedding loss Σ_t w_t ‖z̃^S − z̃‖².

    git clone https://github.com/BGU-CS-VIL/CLUDI /tmp/CLUDI-authors
    python benchmarks/cludi_side_by_side.py --authors /tmp/CLUDI-authors

Appends the differences to results/cludi_side_by_side.json. What the comparison cannot cover
(their training loop runs on CUDA with fp16, their data loader) is listed in RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import append_results, command_line, machine

from diffclust.diffusion.samplers import ddim_sample, ddim_time_pairs
from diffclust.diffusion.schedules import NoiseSchedule
from diffclust.diffusion.weighting import min_snr_weight
from diffclust.losses import self_classifier_pair_matrix
from diffclust.methods.cludi import CLUDINet


class _Inert(types.ModuleType):
    """A stand-in module: every attribute is another stand-in, calling one returns it."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert(f"{self.__name__}.{name}")

    def __call__(self, *a, **k):
        return self


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def authors_modules(root: Path):
    for name in ("einops", "einops.layers", "einops.layers.torch", "torchvision",
                 "torchvision.transforms", "torchvision.utils", "accelerate", "ema_pytorch",
                 "denoising_diffusion_pytorch", "denoising_diffusion_pytorch.attend",
                 "denoising_diffusion_pytorch.fid_evaluation",
                 "denoising_diffusion_pytorch.version"):
        sys.modules.setdefault(name, _Inert(name))
    sys.modules["denoising_diffusion_pytorch.version"].__version__ = "authors"
    vit = _load(root / "vit_new.py", "authors_vit_new")
    loss = _load(root / "loss_utils.py", "authors_loss_utils")
    diff = _load(root / "diff_utils.py", "authors_diff_utils")
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:  # their schedule plots itself into the cwd
        os.chdir(tmp)
        try:
            ddp = _load(root / "denoising_diffusion_pytorch" / "denoising_diffusion_pytorch.py",
                        "authors_ddpm")
        finally:
            os.chdir(cwd)
    return vit, loss, diff, ddp


def copy_weights(ours: CLUDINet, theirs):
    """Our network's parameters into their UViTLin (same architecture, other names)."""
    den = ours.denoiser
    pairs = [(theirs.data_input_proj[i], den.feat[i]) for i in (0, 2, 4)]
    pairs += [(theirs.cluster_input_proj[i], den.assign[i]) for i in (0, 2, 3, 4)]
    pairs += [(theirs.time_embed[i], den.time[i]) for i in (0, 2)]
    pairs += [(theirs.network[0], den.trunk_in)]
    pairs += [(theirs.network[i], den.trunk[i - 2]) for i in (2, 4, 6, 8, 10, 12)]
    pairs += [(theirs.norm, den.trunk[11]), (theirs.final_layer, den.trunk[12]),
              (theirs.last_layer[0], ours.classifier)]
    with torch.no_grad():
        for a, b in pairs:
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
        theirs.clusters_centers.copy_(ours.E[None])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--authors", required=True, help="a local clone of BGU-CS-VIL/CLUDI")
    ap.add_argument("--clusters", type=int, default=50)
    a = ap.parse_args()
    torch.manual_seed(0)
    vit, loss_utils, diff_utils, ddp = authors_modules(Path(a.authors))
    K, D, d, S, B, Fs, T = a.clusters, 384, 64, 8, 256, 49.0, 1000
    out = {}

    # 1. schedule and loss weight
    theirs_diff = ddp.GaussianDiffusion(objective="pred_x0", rescaling_factor=Fs, timesteps=T)
    sched = NoiseSchedule("sqrt", T, noise_scale=Fs)
    out["alpha_bar"] = (theirs_diff.alphas_cumprod.double() - sched.alpha_bar.double()).abs().max()
    t_all = torch.arange(T)
    w_ours = min_snr_weight(sched.snr(t_all), 5.0, "x0") / Fs
    out["loss_weight"] = (theirs_diff.loss_weight[t_all] / Fs - w_ours).abs().max()

    # 2. time grids
    for steps in (25, 50, 10):
        times = list(reversed(torch.linspace(-1, T - 1, steps=steps + 1).int().tolist()))
        out[f"time_grid_{steps}"] = float(sum(p != q for p, q in zip(
            zip(times[:-1], times[1:]), ddim_time_pairs(T, steps))))

    # 3. network, eval mode
    ours = CLUDINet(K, D, d).eval()
    theirs = vit.UViTLin(num_clusters=K, embedding_dim=d).eval()
    copy_weights(ours, theirs)
    x = F.normalize(torch.randn(B, D), dim=-1)
    xs = x.expand(S, B, D).contiguous()
    z_t, z_sc = Fs * torch.randn(S, B, d), torch.randn(S, B, d).clamp(-1, 1)
    t = torch.randint(0, T, (S,))
    with torch.no_grad():
        zo, zt_ = ours.denoiser(z_t, x, t, z_sc), theirs(z_t, xs, t, z_sc)
    out["network"] = (zo - zt_).abs().max()
    out["network_scale"] = zt_.abs().max()

    # 4. re-embedding
    logits = torch.randn(S, B, K) * 3
    p = torch.softmax(logits / 0.1, -1)
    out["reembed"] = (ours.reembed(p) - theirs.return_embedding(p)).abs().max()

    # 5. the teacher's 25-step DDIM with the same draws
    draws = [torch.randn(S, B, d) for _ in range(26)]
    queue = list(draws)
    args = types.SimpleNamespace(embedding_dim=d, early_stopping=0, multiple_k=False,
                                 pred_v=False)
    real_randn, real_randn_like = torch.randn, torch.randn_like
    torch.randn = lambda *s, **k: queue.pop(0).clone()
    torch.randn_like = lambda ref, **k: queue.pop(0).clone()
    try:
        with torch.no_grad():
            z_theirs, logits_theirs, _ = diff_utils.gen_loop(theirs, theirs_diff, xs, args, 25, Fs)
    finally:
        torch.randn, torch.randn_like = real_randn, real_randn_like
    queue = list(draws[1:])
    h = ours.denoiser.prepare(x)
    with torch.no_grad():
        _, z0 = ddim_sample(
            lambda z, tt, zsc: ours.denoiser.step(z, h, ours.denoiser.time_bias(
                torch.tensor([tt])), zsc), sched, (S, B, d), eta=1.0, noise_scale=Fs, clip=1.0,
            self_condition=True, time_pairs=ddim_time_pairs(T, 25), x_T=Fs * draws[0],
            noise_fn=lambda shape, dev, dt: queue.pop(0))
        logits_ours = ours.classifier(z0)
    out["teacher_logits"] = (logits_ours - logits_theirs[0]).abs().max()
    out["teacher_logits_scale"] = logits_theirs[0].abs().max()
    out["teacher_labels_agree"] = float((logits_ours.argmax(-1) == logits_theirs[0].argmax(-1))
                                        .float().mean())

    # 6. Self-Classifier CE, both weightings
    lt, ls = torch.randn(S, B, K) * 2, torch.randn(S, B, K) * 2
    w = w_ours[torch.randint(0, T, (S,))]
    ce_theirs = loss_utils.extended_new_loss_newnew(lt, ls, w)
    A, Bm = self_classifier_pair_matrix(lt, ls, 0.1, 0.05)
    ce_faithful = 0.5 * ((w[:, None] * A).mean() + (w[None, :] * Bm).mean())
    ce_default = 0.5 * ((w[None, :] * A).mean() + (w[None, :] * Bm).mean())
    out["ce_code_faithful"] = (ce_faithful - ce_theirs).abs()
    out["ce_default_vs_theirs"] = (ce_default - ce_theirs).abs()
    out["ce_scale"] = ce_theirs.abs()

    # 7. embedding loss
    zs, zt2 = torch.randn(S, B, d), torch.randn(S, B, d)
    l_theirs = (F.mse_loss(zs, zt2, reduction="none").mean(dim=(1, 2)) * w).mean()
    l_ours = (w * ((zs - zt2) ** 2).mean(dim=(1, 2))).mean()
    out["l_emb"] = (l_ours - l_theirs).abs()

    out = {k: float(v) for k, v in out.items()}
    for k, v in out.items():
        print(f"{k:24s} {v:.3g}")
    append_results("cludi_side_by_side", [{"differences": out, "K": K, "machine": machine(),
                                           "command": command_line(),
                                           "date": time.strftime("%Y-%m-%d")}])


if __name__ == "__main__":
    main()
