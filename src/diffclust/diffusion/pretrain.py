"""Pretraining a DDPM on an image array, and sampling from it.

:func:`pretrain_ddpm` trains a :class:`~diffclust.diffusion.unet.DiffusionUNet` with the simple
DDPM loss ``E_{t,ε} ‖ε − ε_θ(sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε, t)‖²`` (METHODS.md §1.5, t uniform
in ``{0..T−1}``; with ``prediction="v"`` the same loss on v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x_0),
Adam with a linear warm-up then a constant learning rate (as in DDPM), an EMA copy of the
weights (decay warmed up as ``min(decay, (1 + s)/(10 + s))``), bf16 autocast on AMX CPUs and
mixed precision on CUDA.

Crash safety: every ``checkpoint_every`` steps the online weights, the EMA weights, the
optimiser moments and the random-generator state go to ``OUT/checkpoint/state-<step>.safetensors``
and then ``OUT/checkpoint/state.json`` (written atomically) points at it; a rerun with
``resume=True`` continues from there and gives the same weights as an uninterrupted run (all
randomness comes from one checkpointed ``torch.Generator``). The loop itself is
:func:`diffclust.diffusion.trainer.train_denoiser`, shared with the EDM generators.

At the end ``OUT`` holds the EMA U-Net in diffusers format (``config.json`` +
``diffusion_pytorch_model.safetensors`` + ``diffclust_unet.json``), so ``OUT`` can be passed to
``DiEC(unet=OUT)`` or ``UNet2DModel.from_pretrained(OUT)``; ``samples.png`` (a grid drawn with
deterministic DDIM, 50 steps) and ``pretrain.json`` (settings, loss curve, timings).

Class-conditional pretraining (``labels=...``) trains with the labels dropped to the null id with
probability ``p_uncond`` (classifier-free guidance, METHODS.md §1.7); :func:`sample_images`
samples with a guidance scale.

Under ``torchrun`` (DistributedDataParallel, see :mod:`diffclust.diffusion.trainer`)
``batch_size`` is the global batch; every rank trains the same weights and gets the same
:class:`PretrainResult`, and only rank 0 writes checkpoints, the U-Net, ``samples.png`` and
``pretrain.json`` (complete on every rank when the function returns).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.io import atomic_write_text
from ..data.validation import check_images
from ..training.distributed import barrier
from ..training.runtime import autocast, resolve_device, resolve_precision
from .guidance import check_guidance, guided_call
from .process import denoiser_target, eps_from_prediction, predict_x0_from_eps, q_sample
from .samplers import ddim_sample, ddim_time_pairs
from .schedules import NoiseSchedule
from .trainer import CKPT_DIR, setup_distributed, train_denoiser
from .unet import DiffusionUNet, make_unet

__all__ = ["pretrain_ddpm", "sample_images", "PretrainResult"]



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
                  class_labels=None, guidance: float = 0.0, generator=None, device=None,
                  dtype=None, batch_size: int = 256, schedule: NoiseSchedule | None = None,
                  cond: torch.Tensor | None = None, sampler: str = "ddim", progress=None):
    """Draw ``n`` images, cropped to ``unet.image_size`` and clipped to [−1, 1].

    ``sampler="ddim"``: DDIM(η) in ``n_steps`` steps (η = 0: deterministic given the start
    noise); ``"ddpm"``: ancestral sampling over all T steps with σ_t² = β_t. A conditional
    U-Net gets ``class_labels`` (one id, or one per image) or ``cond`` (one vector per image,
    e.g. ClusterDDPM's latent z; the null condition is zeros), with classifier-free guidance of
    weight ``guidance`` (:mod:`diffclust.diffusion.guidance`; 0 = the conditional model).
    ``progress``: a bar advanced once per denoising step."""
    from .samplers import ddpm_sample

    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
    guidance = check_guidance(guidance)
    sched = schedule or unet.noise_schedule()
    device = device or next(unet.parameters()).device
    unet = unet.eval()
    C, S = unet.in_channels, unet.sample_size
    pairs = ddim_time_pairs(sched.T, n_steps) if sampler == "ddim" else None
    if class_labels is not None:
        labels = torch.as_tensor(class_labels).reshape(-1).long()
        labels = labels.expand(n) if labels.numel() == 1 else labels
    out = []
    for i0 in range(0, n, batch_size):
        b = min(batch_size, n - i0)
        c = c_null = None
        if cond is not None:
            c = cond[i0:i0 + b].to(device)
            c_null, key = torch.zeros_like(c), "cond"
        elif class_labels is not None:
            c = labels[i0:i0 + b].to(device)
            c_null, key = torch.full_like(c, unet.null_class), "class_labels"

        def model_eps(x, t):
            with autocast(torch.device(device), dtype):
                if c is None:
                    out = unet(x, t).float()
                else:  # guidance is linear in the output, so it commutes with v → ε
                    out = guided_call(lambda x, t, c: unet(x, t, **{key: c}).float(), x, t, c,
                                      c_null, guidance)
            return eps_from_prediction(unet.prediction, sched, x, t, out)

        x_T = torch.randn((b, C, S, S), generator=generator).to(device)
        if sampler == "ddpm":
            x = ddpm_sample(model_eps, sched, (b, C, S, S), variance="beta", generator=generator,
                            device=device, x_T=x_T, progress=progress)
        else:
            x, _ = ddim_sample(lambda x, t, _sc: predict_x0_from_eps(sched, x, t, model_eps(x, t)),
                               sched, (b, C, S, S), eta=eta, noise_scale=1.0, clip=1.0,
                               generator=generator, time_pairs=pairs, x_T=x_T,
                               progress=progress)
        out.append(unet.crop(x.clamp(-1, 1)).float().cpu())
    return torch.cat(out)


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
                  prediction: str = "epsilon", n_timesteps: int = 1000,
                  checkpoint_every: int = 500, resume: bool = True,
                  max_seconds: float | None = None, n_samples: int = 64, sample_steps: int = 50,
                  seed: int = 0, device=None, precision: str = "auto", verbose: bool = True,
                  callback=None) -> PretrainResult:
    """Pretrain a DDPM on ``images``: an ε-prediction one, or a v-prediction one with
    ``prediction="v"`` (the loss ‖v − v̂‖², Salimans & Ho 2022).

    Parameters
    ----------
    images : array (N, H, W), (N, H, W, C) or (N, C, H, W); uint8 or floats in [0, 1]/[−1, 1].
    out_dir : folder for the final U-Net (diffusers format), ``samples.png``, ``pretrain.json``
        and ``checkpoint/``; ``None`` keeps everything in memory (no checkpoints).
    unet : a :class:`DiffusionUNet` to train (default: ``make_unet(side, C, preset)``); it
        keeps the schedule and parametrisation it was trained with (``schedule`` and
        ``prediction`` apply to a fresh U-Net only).
    prediction : "epsilon" (DDPM) or "v" — what a fresh U-Net learns to output.
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
    dist, dev = setup_distributed(resolve_device(device))  # under torchrun: this rank's device
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
                         schedule=sched.to_config(), prediction=prediction)
    elif unet.schedule is None:
        unet.schedule = sched.to_config()
    else:  # a pretrained U-Net trains further on the schedule it was trained with
        sched = unet.noise_schedule()
    prediction = unet.prediction  # … and on its own parametrisation
    if unet.in_channels != C or unet.image_size != H:
        raise ValueError(f"the U-Net expects {unet.in_channels}×{unet.image_size}² images, got "
                         f"{C}×{H}²")
    if y is not None and unet.n_classes is None:
        raise ValueError("labels were given but the U-Net is not class-conditional")
    B = int(min(batch_size, N))
    if n_steps < 1 or B < 1:
        raise ValueError(f"n_steps and batch_size must be ≥ 1 (got {n_steps}, {batch_size})")
    unet = unet.to(dev)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=weight_decay)
    settings = dict(preset=preset, n_steps=n_steps, batch_size=B, lr=lr,
                    warmup_steps=warmup_steps, ema_decay=ema_decay, schedule=sched.to_config(),
                    seed=seed, n_images=N, image_shape=[C, H, H], conditional=y is not None,
                    p_uncond=p_uncond)
    if prediction != "epsilon":  # absent means ε, as in every run before v existed
        settings["prediction"] = prediction

    def ddpm_loss(net, x0, cl, rng):
        """E_{t,ε} ‖y − ŷ_θ(sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε, t)‖², y = ε or v, t uniform."""
        t = rng.randint(0, sched.T, (len(x0),)).to(dev)
        eps = rng.randn(x0.shape).to(dev)
        with autocast(dev, amp):
            pred = net(q_sample(sched, x0, t, noise=eps), t, class_labels=cl)
        return F.mse_loss(pred.float(), denoiser_target(prediction, sched, x0, t, eps))

    res = train_denoiser(
        unet, torch.from_numpy(X), ddpm_loss, opt, n_steps=n_steps, batch_size=B, lr=lr,
        seed=seed, settings=settings, labels=y, p_uncond=p_uncond if y is not None else 0.0,
        warmup_steps=warmup_steps, ema_decay=ema_decay, clip_grad=clip_grad,
        ckdir=ckdir if out is not None else None,
        checkpoint_every=checkpoint_every if out is not None else 0, resume=resume,
        check_keys=("batch_size", "seed", "n_images", "image_shape", "schedule", "prediction"),
        max_seconds=max_seconds, device=dev, desc="DDPM pretrain", verbose=verbose,
        on_step=None if callback is None else (lambda s, loss, _ema: callback(s, loss)),
        checkpoint_info=lambda: {"unet_config": dict(unet.unet.config),
                                 "unet_extra": unet.extra_config()})
    step, history, seconds, stopped_early = res.step, res.history, res.seconds, res.stopped_early
    model = res.ema.eval()
    if out is not None and dist.is_main:  # under torchrun rank 0 writes, the others wait
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
                                 guidance=0.0, generator=g, device=dev, dtype=amp)
            from ..viz.images import save_image_grid

            save_image_grid(out / "samples.png", imgs)
            summary["sample_seconds"] = time.perf_counter() - ts
        atomic_write_text(out / "pretrain.json", json.dumps(summary, indent=1))
    if out is not None:
        barrier()
    return PretrainResult(model, history, step, seconds, out, online=unet)
