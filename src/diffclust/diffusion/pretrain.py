"""Pretraining an ε-prediction DDPM on an image array, and sampling from it.

:func:`pretrain_ddpm` trains a :class:`~diffclust.diffusion.unet.DiffusionUNet` with the simple
DDPM loss ``E_{t,ε} ‖ε − ε_θ(sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε, t)‖²`` (METHODS.md §1.5, t uniform
in ``{0..T−1}``), Adam with a linear warm-up then a constant learning rate (as in DDPM), an EMA
copy of the weights (decay warmed up as ``min(decay, (1 + s)/(10 + s))``), bf16 autocast on AMX
CPUs and mixed precision on CUDA.

Crash safety: every ``checkpoint_every`` steps the online weights, the EMA weights, the
optimiser moments and the random-generator state go to ``OUT/checkpoint/state-<step>.safetensors``
and then ``OUT/checkpoint/state.json`` (written atomically) points at it; a rerun with
``resume=True`` continues from there and gives the same weights as an uninterrupted run (all
randomness comes from one checkpointed ``torch.Generator``).

At the end ``OUT`` holds the EMA U-Net in diffusers format (``config.json`` +
``diffusion_pytorch_model.safetensors`` + ``diffclust_unet.json``), so ``OUT`` can be passed to
``DiEC(unet=OUT)`` or ``UNet2DModel.from_pretrained(OUT)``; ``samples.png`` (a grid drawn with
deterministic DDIM, 50 steps) and ``pretrain.json`` (settings, loss curve, timings).

Class-conditional pretraining (``labels=...``) trains with the labels dropped to the null id with
probability ``p_uncond`` (classifier-free guidance, METHODS.md §1.7); :func:`sample_images`
samples with a guidance scale.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.io import atomic_write_bytes, atomic_write_text
from ..data.validation import check_images
from ..training.runtime import autocast, progress, resolve_device, resolve_precision
from .process import predict_x0_from_eps, q_sample
from .samplers import ddim_sample, ddim_time_pairs
from .schedules import NoiseSchedule
from .unet import DiffusionUNet, make_unet

__all__ = ["pretrain_ddpm", "sample_images", "image_grid", "save_image_grid", "PretrainResult"]

CKPT_DIR = "checkpoint"
STATE_JSON = "state.json"


class PretrainResult:
    """What :func:`pretrain_ddpm` returns: ``unet`` (the EMA model, eval mode), ``history``
    (``[{"step", "loss", "seconds"}, …]``), ``steps`` done, ``seconds`` of training (summed over
    resumed runs) and ``out_dir``."""

    def __init__(self, unet, history, steps, seconds, out_dir, online=None):
        self.unet, self.history, self.steps = unet, history, steps
        self.seconds, self.out_dir, self.online = seconds, out_dir, online

    def __repr__(self):
        return f"PretrainResult(steps={self.steps}, seconds={self.seconds:.1f}, out_dir={self.out_dir})"


# ---------------------------------------------------------------------- sampling and grids
@torch.no_grad()
def sample_images(unet: DiffusionUNet, n: int, n_steps: int = 50, eta: float = 0.0,
                  class_labels=None, guidance_scale: float = 1.0, generator=None, device=None,
                  dtype=None, batch_size: int = 256, schedule: NoiseSchedule | None = None):
    """Draw ``n`` images with DDIM(η) (η = 0: deterministic given the start noise), cropped to
    ``unet.image_size`` and clipped to [−1, 1]. With ``class_labels`` (a class-conditional
    U-Net) the prediction uses classifier-free guidance
    ``ε̂ = ε̂_∅ + w (ε̂_c − ε̂_∅)`` with ``w = guidance_scale``."""
    sched = schedule or unet.noise_schedule()
    device = device or next(unet.parameters()).device
    unet = unet.eval()
    C, S = unet.in_channels, unet.sample_size
    pairs = ddim_time_pairs(sched.T, n_steps)
    out = []
    for i0 in range(0, n, batch_size):
        b = min(batch_size, n - i0)
        cl = None
        if class_labels is not None:
            cl = torch.as_tensor(class_labels).reshape(-1)
            cl = (cl.expand(n) if cl.numel() == 1 else cl)[i0:i0 + b].to(device).long()

        def model_x0(x, t, _sc, cl=cl):
            with autocast(torch.device(device), dtype):
                if cl is None:
                    eps = unet(x, t).float()
                elif guidance_scale == 1.0:
                    eps = unet(x, t, class_labels=cl).float()
                else:
                    null = torch.full_like(cl, unet.null_class)
                    e = unet(torch.cat([x, x]), t, class_labels=torch.cat([cl, null])).float()
                    e_c, e_u = e.chunk(2)
                    eps = e_u + guidance_scale * (e_c - e_u)
            return predict_x0_from_eps(sched, x, t, eps)

        x_T = torch.randn((b, C, S, S), generator=generator).to(device)
        x, _ = ddim_sample(model_x0, sched, (b, C, S, S), eta=eta, noise_scale=1.0, clip=1.0,
                           generator=generator, time_pairs=pairs, x_T=x_T)
        out.append(unet.crop(x.clamp(-1, 1)).float().cpu())
    return torch.cat(out)


def image_grid(images, nrow: int | None = None, pad: int = 1, upscale: int | None = None):
    """A uint8 grid ``(H', W', C)`` of images ``(N, C, H, W)`` in [−1, 1] (white borders)."""
    x = torch.as_tensor(images).float().clamp(-1, 1)
    N, C, H, W = x.shape
    nrow = nrow or int(math.ceil(math.sqrt(N)))
    ncol = int(math.ceil(N / nrow))
    u = upscale or max(1, 48 // max(H, W))
    x = ((x + 1) * 127.5).round().to(torch.uint8)
    if u > 1:
        x = x.repeat_interleave(u, 2).repeat_interleave(u, 3)
    H, W = H * u, W * u
    grid = torch.full((C, ncol * (H + pad) + pad, nrow * (W + pad) + pad), 255, dtype=torch.uint8)
    for i in range(N):
        r, c = divmod(i, nrow)
        grid[:, pad + r * (H + pad):pad + r * (H + pad) + H,
             pad + c * (W + pad):pad + c * (W + pad) + W] = x[i]
    return grid.permute(1, 2, 0).numpy()


def save_image_grid(path, images, nrow: int | None = None, upscale: int | None = None) -> Path:
    """Write :func:`image_grid` as a PNG (PIL), atomically."""
    from PIL import Image

    g = image_grid(images, nrow=nrow, upscale=upscale)
    img = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g[..., :3])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------- checkpoints
def _opt_to_tensors(opt) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state_keys": {}}
    for i, st in sd["state"].items():
        meta["state_keys"][str(i)] = list(st)
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v)
    return meta, tensors


def _opt_from_tensors(opt, meta, tensors):
    state = {int(i): {k: tensors[f"opt.{i}.{k}"] for k in keys}
             for i, keys in meta["state_keys"].items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _save_checkpoint(ckdir: Path, step, model, ema, opt, gen, info: dict):
    from safetensors.torch import save

    ckdir.mkdir(parents=True, exist_ok=True)
    opt_meta, tensors = _opt_to_tensors(opt)
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors["rng.generator"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    name = f"state-{step:08d}.safetensors"
    atomic_write_bytes(ckdir / name, save(tensors))
    atomic_write_text(ckdir / STATE_JSON, json.dumps(dict(info, step=step, weights=name,
                                                          optimizer=opt_meta), indent=1))
    for old in ckdir.glob("state-*.safetensors"):  # keep only the one state.json points at
        if old.name != name:
            old.unlink(missing_ok=True)


def _load_checkpoint(ckdir: Path):
    from safetensors.torch import load_file

    js = ckdir / STATE_JSON
    if not js.exists():
        return None
    info = json.loads(js.read_text())
    w = ckdir / info["weights"]
    if not w.exists():
        raise ValueError(f"{js} points at {w.name}, which is missing; delete {ckdir} to "
                         f"start over")
    return info, load_file(str(w))


# ---------------------------------------------------------------------- training
class _EpochOrder:
    """Batch ``s`` = items ``[sB, (s+1)B)`` of the endless stream perm_0 ‖ perm_1 ‖ …, where
    perm_e is a permutation seeded by ``(seed, e)``: a pure function of the step, so resuming
    needs no extra state."""

    def __init__(self, n, batch, seed):
        self.n, self.bs, self.seed, self._cache = n, batch, int(seed), {}

    def perm(self, e):
        if e not in self._cache:
            if len(self._cache) > 2:
                self._cache.clear()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            self._cache[e] = torch.randperm(self.n, generator=g)
        return self._cache[e]

    def batch(self, step):
        pos = torch.arange(step * self.bs, (step + 1) * self.bs)
        ep, off = pos // self.n, pos % self.n
        out = torch.empty(self.bs, dtype=torch.long)
        for e in ep.unique().tolist():
            m = ep == e
            out[m] = self.perm(e)[off[m]]
        return out


def _prepare_images(images):
    X = check_images(images)
    if X.shape[2] != X.shape[3]:
        raise ValueError(f"images must be square for the U-Net presets, got {X.shape[2]}×"
                         f"{X.shape[3]}; crop or pad them first")
    return X


def pretrain_ddpm(images, out_dir=None, *, unet: DiffusionUNet | None = None,
                  preset: str = "auto", labels=None, p_uncond: float = 0.1,
                  n_steps: int = 10_000, batch_size: int = 128, lr: float = 2e-4,
                  warmup_steps: int = 200, weight_decay: float = 0.0, ema_decay: float = 0.999,
                  clip_grad: float | None = 1.0, schedule: str = "linear",
                  n_timesteps: int = 1000, checkpoint_every: int = 500, resume: bool = True,
                  max_seconds: float | None = None, n_samples: int = 64, sample_steps: int = 50,
                  seed: int = 0, device=None, precision: str = "auto", verbose: bool = True,
                  callback=None) -> PretrainResult:
    """Pretrain an ε-prediction DDPM on ``images``.

    Parameters
    ----------
    images : array (N, H, W), (N, H, W, C) or (N, C, H, W); uint8 or floats in [0, 1]/[−1, 1].
    out_dir : folder for the final U-Net (diffusers format), ``samples.png``, ``pretrain.json``
        and ``checkpoint/``; ``None`` keeps everything in memory (no checkpoints).
    unet : a :class:`DiffusionUNet` to train (default: ``make_unet(side, C, preset)``).
    labels : optional int class ids → class-conditional U-Net (null id dropout ``p_uncond``).
    n_steps : optimiser steps in total (a resumed run continues up to this number).
    max_seconds : stop early (with a checkpoint and the final files) after this much training
        time in this call; ``None`` = no limit.
    checkpoint_every : steps between checkpoints (needs ``out_dir``); 0 disables them.
    callback : ``callback(step, loss)`` after every step (e.g. for logging; an exception raised
        there stops training like a crash would).
    """
    X = _prepare_images(images)
    N, C, H, _ = X.shape
    dev = resolve_device(device)
    amp = resolve_precision(precision, dev)
    out = Path(out_dir) if out_dir is not None else None
    ckdir = out / CKPT_DIR if out is not None else None
    sched = NoiseSchedule(schedule, n_timesteps)
    y = None
    n_classes = None
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels).reshape(-1), dtype=torch.long)
        if len(y) != N:
            raise ValueError(f"labels has {len(y)} entries but there are {N} images")
        n_classes = int(y.max()) + 1
    if unet is None:
        unet = make_unet(H, C, preset, n_classes=n_classes, seed=seed,
                         schedule=sched.to_config())
    elif unet.schedule is None:
        unet.schedule = sched.to_config()
    if unet.in_channels != C or unet.image_size != H:
        raise ValueError(f"the U-Net expects {unet.in_channels}×{unet.image_size}² images, got "
                         f"{C}×{H}²")
    if y is not None and unet.n_classes is None:
        raise ValueError("labels were given but the U-Net is not class-conditional")
    B = int(min(batch_size, N))
    if n_steps < 1 or B < 1:
        raise ValueError(f"n_steps and batch_size must be ≥ 1 (got {n_steps}, {batch_size})")
    unet = unet.to(dev).train()
    from ..training.optim import EMA

    ema = EMA(unet, ema_decay)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    settings = dict(preset=preset, n_steps=n_steps, batch_size=B, lr=lr,
                    warmup_steps=warmup_steps, ema_decay=ema_decay, schedule=sched.to_config(),
                    seed=seed, n_images=N, image_shape=[C, H, H], conditional=y is not None,
                    p_uncond=p_uncond)
    step, history, seconds_before = 0, [], 0.0
    if out is not None and resume:
        ck = _load_checkpoint(ckdir)
        if ck is not None:
            info, tens = ck
            for k in ("batch_size", "seed", "n_images", "image_shape", "schedule"):
                if info["settings"].get(k) != settings[k]:
                    raise ValueError(f"checkpoint in {ckdir} was made with {k}="
                                     f"{info['settings'].get(k)!r}, this run has "
                                     f"{settings[k]!r}; use resume=False (or another out_dir)")
            unet.load_state_dict({k[6:]: v for k, v in tens.items() if k.startswith("model.")})
            ema.module.load_state_dict({k[4:]: v for k, v in tens.items() if k.startswith("ema.")})
            _opt_from_tensors(opt, info["optimizer"], tens)
            gen.set_state(tens["rng.generator"])
            torch.set_rng_state(tens["rng.torch"])
            step, history = int(info["step"]), list(info["history"])
            seconds_before = float(info["seconds"])
    Xt = torch.from_numpy(X)
    order = _EpochOrder(N, B, seed)
    t0 = time.perf_counter()

    def elapsed():
        return seconds_before + time.perf_counter() - t0

    def checkpoint():
        if ckdir is not None and checkpoint_every:
            _save_checkpoint(ckdir, step, unet, ema.module, opt, gen,
                             {"settings": settings, "history": history, "seconds": elapsed(),
                              "unet_config": dict(unet.unet.config),
                              "unet_extra": unet.extra_config()})

    bar = progress(range(step, n_steps), total=n_steps, initial=step, desc="DDPM pretrain",
                   verbose=verbose)
    run_loss, n_run, log_every = 0.0, 0, max(1, min(100, n_steps // 50))
    stopped_early = False
    try:
        for _ in bar:
            idx = order.batch(step)
            x0 = unet.pad(Xt[idx].to(dev))
            t = torch.randint(0, sched.T, (B,), generator=gen).to(dev)
            eps = torch.randn(x0.shape, generator=gen).to(dev)
            x_t = q_sample(sched, x0, t, noise=eps)
            cl = None
            if y is not None:
                cl = y[idx].clone()
                drop = torch.rand(B, generator=gen) < p_uncond
                cl[drop] = unet.null_class
                cl = cl.to(dev)
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / max(1, warmup_steps))
            with autocast(dev, amp):
                pred = unet(x_t, t, class_labels=cl)
            loss = F.mse_loss(pred.float(), eps)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"DDPM loss became {loss.item()} at step {step}; lower "
                                         f"lr (now {lr}) or use precision='fp32'")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(unet.parameters(), clip_grad)
            opt.step()
            ema.update(unet, min(ema_decay, (1 + step) / (10 + step)))
            step += 1
            run_loss += loss.item()
            n_run += 1
            if step % log_every == 0 or step == n_steps:
                history.append({"step": step, "loss": run_loss / n_run, "seconds": elapsed()})
                bar.set_postfix(loss=f"{run_loss / n_run:.4f}")
                run_loss, n_run = 0.0, 0
            if callback is not None:
                callback(step, loss.item())
            if checkpoint_every and step % checkpoint_every == 0 and step < n_steps:
                checkpoint()
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                stopped_early = step < n_steps
                break
    finally:
        bar.close()
    seconds = elapsed()
    checkpoint()
    model = ema.module.eval()
    if out is not None:
        model.save_pretrained(out)
        summary = dict(settings, steps_done=step, train_seconds=seconds,
                       stopped_early=stopped_early, history=history, device=str(dev),
                       precision=str(amp))
        if n_samples:
            ts = time.perf_counter()
            g = torch.Generator().manual_seed(int(seed) + 12345)
            cl = None
            if y is not None:
                cl = torch.arange(n_samples) % unet.n_classes
            imgs = sample_images(model, n_samples, sample_steps, class_labels=cl,
                                 guidance_scale=1.0, generator=g, device=dev, dtype=amp)
            save_image_grid(out / "samples.png", imgs)
            summary["sample_seconds"] = time.perf_counter() - ts
        atomic_write_text(out / "pretrain.json", json.dumps(summary, indent=1))
    return PretrainResult(model, history, step, seconds, out, online=unet)
