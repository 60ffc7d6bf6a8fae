"""DiEC's representation (METHODS.md §3.2–3.3, §3.5), mixed into
:class:`~diffclust.methods.diec.DiEC`: the U-Net, its bottleneck features at a timestep t
(eq. 9–13), the Optimal Timestep Search for t* (eq. 10, 14) and the clustering embedding
``z = mean_m (ẽ^(m) + g_φ(ẽ^(m)))`` of the standardised features (eq. 18, 20).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..diffusion.unet import DiffusionUNet, load_unet, noisy_features
from ..training.runtime import map_batches

__all__ = ["DiffusionFeatures"]


class DiffusionFeatures:
    """The U-Net, features, timestep search and embedding of DiEC. The estimator supplies its
    parameters, the runtime (``device_``, ``amp_dtype_``, ``seed_``) and, after the first pass,
    ``unet_``, ``sched_``, ``t_star_``, ``feat_mean_``/``feat_std_`` and ``g_``."""

    def _resolve_unet(self, X) -> DiffusionUNet:
        """The U-Net: pretrained here on ``X`` (``unet=None``, resumable with the fit's
        checkpoints) or the given one (:func:`~diffclust.diffusion.unet.load_unet`)."""
        self.pretrain_seconds_ = 0.0
        if self.unet is not None:
            model, self.unet_source_ = load_unet(self.unet, X.shape[1:])
            return model.to(self.device_).float()
        from ..diffusion.pretrain import pretrain_ddpm

        ck = getattr(self, "_checkpoint", None)  # fit(X, checkpoint_dir=...): resumable
        steps = int(self.pretrain_steps)
        res = pretrain_ddpm(X, None if ck is None else ck[0] / "pretrain",
                            checkpoint_every=max(1, min(500, steps // 4)), resume=True,
                            preset=self.unet_preset, n_steps=steps,
                            batch_size=int(self.pretrain_batch_size), lr=self.pretrain_lr,
                            schedule=self.schedule, n_timesteps=int(self.n_timesteps),
                            seed=self.seed_, device=self.device_, verbose=self.verbose,
                            precision=self.precision, n_samples=0)
        self.pretrain_seconds_, self.unet_source_ = res.seconds, "pretrained in fit"
        return res.unet.to(self.device_).float()

    # ------------------------------------------------------------------ features
    def _features(self, unet, x0, t, n_noise, generator, average=True):
        """Bottleneck features of clean images ``x0`` (B, C, H, W, on device) at step ``t`` for
        ``n_noise`` noise draws: ``(M, B, D_e)``, or their mean ``(B, D_e)`` when ``average``
        (eq. 11–13). Gradients follow the caller's grad mode."""
        e = noisy_features(unet, self.sched_, x0, t, n_noise, generator, self.block,
                           self.amp_dtype_)
        return e.mean(0) if average else e

    @torch.no_grad()
    def _embed_raw(self, unet, X, t, n_noise, seed, desc=None):
        """Averaged raw features ē(t) of all rows of ``X`` (numpy) with draws from ``seed``."""
        g = torch.Generator().manual_seed(int(seed))
        return map_batches(lambda xb: self._features(unet, xb, t, n_noise, g), X,
                           int(self.embed_batch_size) // n_noise, self.device_, desc, self.verbose)

    def _standardise(self, e):
        if self.feat_mean_ is None:
            return e
        return (e - self.feat_mean_.to(e.device)) / self.feat_std_.to(e.device)

    @torch.no_grad()
    def _embed(self, X, n_noise, seed, desc=None):
        """Z = mean_m (ẽ^(m) + g(ẽ^(m))) with ẽ the standardised features, no grad (N, D_e)."""
        g = torch.Generator().manual_seed(int(seed))
        self.unet_.eval()

        def z(xb):
            e = self._features(self.unet_, xb, self.t_star_, n_noise, g, average=False)
            return self.g_(self._standardise(e)).mean(0)

        return map_batches(z, X, int(self.embed_batch_size) // n_noise, self.device_, desc,
                           self.verbose)

    # ------------------------------------------------------------------ OTS
    def _ots_range(self):
        T = self.sched_.T
        lo, hi = self.ots_range if self.ots_range is not None else (1, T - 1)
        if not 0 <= lo <= hi <= T - 1:
            raise ValueError(f"ots_range must satisfy 0 ≤ lo ≤ hi ≤ T−1={T - 1}, got {(lo, hi)}")
        return int(lo), int(hi)

    def _search_timestep(self, unet, X):
        from ..selection.ots import optimal_timestep

        lo, hi = self._ots_range()
        crn_seed = self.seed_ + 7919  # common random numbers: the same draws for every t
        unet.eval()
        return optimal_timestep(
            lambda t, Xs: self._embed_raw(unet, Xs, t, int(self.ots_repeats), crn_seed).numpy(),
            X, self.n_clusters, np.arange(lo, hi + 1, int(self.ots_stride)),
            subset=int(self.ots_subset), generator=self.generator_, seed=self.seed_,
            n_init=int(self.ots_n_init), tol=int(self.ots_tol), grid=int(self.ots_grid),
            criterion=self.ots_criterion,
            n_neighbors=int(self.n_neighbors),
            n_final=self.ots_final, verbose=self.verbose)

    def _extra_warnings(self):
        """The timestep search ending at the edge of its range (t* = 1 means the U-Net's
        features barely depend on the noise level: usually an undertrained DDPM)."""
        from ..diagnostics import edge_warning

        if self.t_star != "auto" or not getattr(self, "ots_range_", None):
            return []
        return edge_warning("t*", self.t_star_, *self._ots_range())

    def bottleneck_features(self, X, t=None, n_noise=None):
        """Raw (un-standardised, un-mapped) averaged bottleneck features ē(t) of the fitted
        U-Net; ``t`` defaults to t*. Handy for the k-means-on-raw-features ablation."""
        X = self._fitted_input(X)
        t = self.t_star_ if t is None else int(t)
        return self._embed_raw(self.unet_, X, t, int(n_noise or self.n_noise_infer),
                               getattr(self, "seed_", 0) + 2).numpy()

    def save_unet(self, path) -> Path:
        """Write the fine-tuned U-Net as a diffusers folder."""
        return self.unet_.save_pretrained(path)
