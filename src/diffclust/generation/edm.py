"""EDM preconditioning, loss and guided Heun sampling for cluster-conditioned generation.

Everything follows Karras et al. 2022 ("EDM", Table 1) as METHODS.md §1.3.5, §1.4, §1.5 and
§4.4 restate it for C-EDM:

* preconditioning (:func:`edm_precond`, :class:`EDMDenoiser`)::

      c_skip  = σ_d² / (σ² + σ_d²)          c_out = σ σ_d / sqrt(σ² + σ_d²)
      c_in    = 1 / sqrt(σ² + σ_d²)          c_noise = ¼ ln σ
      D(x; σ, c) = c_skip x + c_out F_θ(c_in x; c_noise, c)

  with ``σ_d = 0.5``. ``F_θ`` is a class-conditional diffusers U-Net
  (:class:`~diffclust.diffusion.unet.DiffusionUNet`); ``c_noise`` is fed as its (float) timestep,
  which diffusers turns into sinusoidal embeddings like any other timestep.
* loss (:func:`edm_loss`): ``λ(σ) ‖D(y + n; σ, c) − y‖²`` with ``λ(σ) = (σ² + σ_d²)/(σ σ_d)² =
  1/c_out²``, ``n ~ N(0, σ² I)`` and ``ln σ ~ N(P_mean = −1.2, P_std = 1.2)``. [PROP] We average
  over pixels and the batch (EDM sums over pixels); with Adam this only rescales the loss.
* sampling (:func:`heun_sample`): the deterministic Heun sampler (EDM Alg. 2, S_churn = 0, NFE =
  2N − 1) on the ρ = 7 σ-grid with σ_min = 0.002, σ_max = 80, N = 18 (C-EDM's CIFAR setting).

Guidance convention (:func:`guided_denoiser`), [PROP] chosen so that ``w = 0`` is exactly the
conditional model C-EDM uses (it trains without condition dropout and samples without
guidance)::

      D_w(x; σ, c) = D(x; σ, c) + w (D(x; σ, c) − D(x; σ, ∅))

``∅`` is the U-Net's null id (``n_classes``); ``w = 0`` evaluates only the conditional branch.
In the ``ε̂_∅ + s (ε̂_c − ε̂_∅)`` convention of :func:`~diffclust.diffusion.pretrain.sample_images`
this is ``s = 1 + w``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..diffusion.guidance import check_guidance, guided_call
from ..diffusion.samplers import edm_heun_sample, randn
from ..diffusion.schedules import edm_sigmas
from ..diffusion.unet import DiffusionUNet
from ..diffusion.weighting import edm_weight
from ..training.runtime import autocast

__all__ = [
    "EDM_DEFAULTS",
    "EDMDenoiser",
    "edm_loss",
    "edm_precond",
    "guided_denoiser",
    "heun_sample",
    "sample_training_sigmas",
]

#: EDM / C-EDM defaults (METHODS.md §1.3.5, §1.4, §4.4).
EDM_DEFAULTS = dict(sigma_data=0.5, P_mean=-1.2, P_std=1.2, sigma_min=0.002, sigma_max=80.0,
                    rho=7.0, n_steps=18)


def edm_precond(sigma, sigma_data: float = 0.5) -> dict:
    """EDM preconditioning coefficients for noise levels ``sigma`` (Karras et al. Table 1).

    Returns a dict of tensors shaped like ``sigma``: ``c_skip = σ_d²/(σ²+σ_d²)``,
    ``c_out = σ σ_d / sqrt(σ²+σ_d²)``, ``c_in = 1/sqrt(σ²+σ_d²)``, ``c_noise = ln(σ)/4`` and the
    loss weight ``weight = λ(σ) = (σ²+σ_d²)/(σ σ_d)² = 1/c_out²``.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if (sigma <= 0).any():
        raise ValueError("EDM noise levels σ must be > 0")
    if sigma_data <= 0:
        raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
    sd2 = sigma_data**2
    denom = sigma**2 + sd2
    return {"c_skip": sd2 / denom, "c_out": sigma * sigma_data / denom.sqrt(),
            "c_in": 1.0 / denom.sqrt(), "c_noise": sigma.log() / 4.0,
            "weight": edm_weight(sigma, sigma_data)}


class EDMDenoiser(nn.Module):
    """``D(x; σ, c) = c_skip x + c_out F_θ(c_in x; ¼ ln σ, c)`` around a :class:`DiffusionUNet`.

    ``x`` lives on the U-Net's padded ``sample_size`` grid (use ``unet.pad`` / ``unet.crop``).
    ``amp`` is an autocast dtype (bf16 on CPU) applied to the U-Net call only; the
    preconditioning arithmetic stays in fp32.
    """

    def __init__(self, unet: DiffusionUNet, sigma_data: float = 0.5, amp=None):
        super().__init__()
        if not isinstance(unet, DiffusionUNet):
            raise TypeError(f"unet must be a DiffusionUNet, got {type(unet).__name__}")
        self.unet = unet
        self.sigma_data = float(sigma_data)
        self.amp = amp

    @property
    def n_classes(self):
        return self.unet.n_classes

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        B = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        if sigma.ndim == 0:
            sigma = sigma.expand(B)
        sigma = sigma.reshape(B)
        co = edm_precond(sigma, self.sigma_data)
        view = (B,) + (1,) * (x.ndim - 1)
        x = x.float()
        with autocast(x.device, self.amp):
            F_x = self.unet(co["c_in"].view(view) * x, co["c_noise"], class_labels=class_labels)
        return co["c_skip"].view(view) * x + co["c_out"].view(view) * F_x.float()


def sample_training_sigmas(n: int, P_mean: float = -1.2, P_std: float = 1.2, generator=None,
                           device=None) -> torch.Tensor:
    """``σ = exp(P_mean + P_std ξ)``, ξ ~ N(0, 1): EDM's log-normal training noise levels."""
    return (randn((n,), generator, device) * P_std + P_mean).exp()


def edm_loss(denoiser: EDMDenoiser, x0: torch.Tensor, class_labels=None, generator=None,
             P_mean: float = -1.2, P_std: float = 1.2, reduction: str = "mean",
             sigma_data: float | None = None):
    """EDM loss ``λ(σ) ‖D(x0 + n; σ, c) − x0‖²``, ``n ~ N(0, σ² I)``, ``ln σ ~ N(P_mean, P_std²)``.

    Noise comes from ``generator``: a ``torch.Generator`` (a CPU generator is fine for CUDA
    models) or an object with ``randn(shape)`` such as the training loop's per-rank
    :class:`~diffclust.diffusion.trainer.BatchRandom`; σ is drawn first, then n. ``denoiser``
    may be wrapped (e.g. by DDP); then pass ``sigma_data``. ``reduction``: ``"mean"`` (over
    pixels and batch) or ``"none"`` (per-sample mean over pixels).
    """
    B = x0.shape[0]
    if hasattr(generator, "randn"):
        def draw(shape):
            return generator.randn(shape).to(x0.device)
    else:
        def draw(shape):
            return randn(shape, generator, x0.device)
    sigma = (draw((B,)) * P_std + P_mean).exp()
    n = draw(x0.shape) * sigma.view((B,) + (1,) * (x0.ndim - 1))
    D = denoiser(x0 + n, sigma, class_labels)
    sd = denoiser.sigma_data if sigma_data is None else sigma_data
    per = edm_weight(sigma, sd) * ((D - x0) ** 2).flatten(1).mean(1)
    if reduction == "none":
        return per
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return per.mean()


def guided_denoiser(denoiser: EDMDenoiser, class_labels=None, guidance: float = 0.0):
    """``(x, σ) ↦ D_w(x; σ, c) = D_c + w (D_c − D_∅)`` for a fixed batch of ``class_labels``.

    ``class_labels=None`` gives the unconditional prediction (the null id for a conditional
    U-Net, the plain model for an unconditional one). ``w = 0`` is the conditional model (one
    U-Net call); ``w ≠ 0`` evaluates both branches in one batched call.
    """
    guidance = check_guidance(guidance)
    if class_labels is None:
        if guidance != 0.0:
            raise ValueError("guidance needs class_labels (cluster ids)")
        return lambda x, s: denoiser(x, s)
    if denoiser.n_classes is None:
        raise ValueError("class_labels were given but the generator is unconditional")
    c = torch.as_tensor(class_labels).long().reshape(-1)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= denoiser.n_classes):
        raise ValueError(f"cluster ids must lie in [0, {denoiser.n_classes - 1}], got "
                         f"[{int(c.min())}, {int(c.max())}]")
    if guidance == 0.0:
        return lambda x, s: denoiser(x, s, c.to(x.device))

    def guided(x, s):
        cc = c.to(x.device)
        null = torch.full_like(cc, denoiser.unet.null_class)
        s = torch.as_tensor(s, device=x.device).reshape(-1).expand(x.shape[0])
        return guided_call(denoiser, x, s, cc, null, guidance)

    return guided


@torch.no_grad()
def heun_sample(denoiser: EDMDenoiser, noise: torch.Tensor, class_labels=None,
                guidance: float = 0.0, n_steps: int = 18, sigma_min: float = 0.002,
                sigma_max: float = 80.0, rho: float = 7.0, progress=None) -> torch.Tensor:
    """Deterministic EDM Heun sampling (Alg. 2) of a whole batch from unit ``noise``.

    ``noise`` ``(B, C, S, S)`` on the padded grid is scaled to ``x_0 = σ_max · noise``; the
    result is on the padded grid (not cropped, not clipped). NFE = 2 ``n_steps`` − 1 (twice
    that with guidance ≠ 0, in the same batched calls).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be ≥ 1, got {n_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    sigmas = edm_sigmas(n_steps, sigma_min, sigma_max, rho)
    D = guided_denoiser(denoiser, class_labels, guidance)
    x_T = sigmas[0].to(noise.device) * noise.float()
    return edm_heun_sample(D, sigmas, noise.shape, device=noise.device, x_T=x_T,
                           progress=progress)
