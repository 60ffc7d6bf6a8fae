"""ClusterDDPM: EM clustering with a latent-conditioned DDPM (Yan, Liu & Zhang; METHODS.md §5).

Generative model (eq. 9–16): ``c ~ Cat(π)``, ``z | c ~ N(μ_c, diag σ_c²)``, ``x_T ~ N(0, I)`` and
the reverse process ``p_θ(x_{t−1} | x_t, z) = N(μ_θ(x_t, t, z), β_t I)`` with the ε-parameterised
mean ``μ_θ = (x_t − β_t/sqrt(1 − ᾱ_t) ε_θ(x_t, t, z)) / sqrt(α_t)``.

Variational posterior (eq. 17–22): ``q(x_{1:T}|x_0) q_φ(z|x_0) q(c|x_0)`` with
``[μ_φ; log σ_φ²] = f_φ(x_0)``, ``z = μ_φ + σ_φ ⊙ ε`` and the optimal
``w_c = q(c|x_0) = p(c|z) = π_c N(z; μ_c, σ_c²) / Σ_c' π_c' N(z; μ_c', σ_c'²)`` evaluated at the
sampled z with the mixture held constant (gradients flow into the encoder through z and w).

Loss per sample (eq. 24 / A.17), λ = ``lam``::

    L = ‖ε − ε_θ(x_t, t, z)‖²                                      (one t ~ U per sample)
      − λ Σ_c w_c log(π_c / w_c)                                   (KL(q(c|x) ‖ π))
      + λ/2 Σ_c w_c Σ_j [log σ_c² + σ_φ²/σ_c² + (μ_φ − μ_c)²/σ_c²]  (weighted Gaussian KLs)
      − λ/2 Σ_j (1 + log σ_φ²)                                     (encoder entropy)

The three prior-matching terms together are exactly ``KL(q_φ(z|x) q(c|x) ‖ p(z, c))`` (the
``log 2π`` constants cancel); :func:`prior_matching_terms` returns them per sample.

Algorithm (METHODS.md §5.4): pre-training as a diffusion autoencoder (mean-over-pixels MSE, no
prior term), GMM_0 fitted with k-means initialisation, then EM rounds of an M-step (Adam on θ, φ
for ``m_step_epochs`` epochs with the mixture fixed) followed by an E-step (diagonal GMM refitted
on the encoder outputs of all samples, warm-started from the previous mixture). Labels are the
GMM posterior ``argmax_c p(c | μ_φ(x))`` (eq. 22).

Decisions ([PROP], all switchable; measured in docs/DECISIONS.md, "ClusterDDPM"): ε_θ the
library's U-Net with ``[t_emb + W z]`` group norm, f_φ the first half of one
(:class:`~diffclust.models.encoder.LatentEncoder`); pixel-sum reconstruction in the EM phase,
mean in pre-training (``max(10 epochs, MIN_PRETRAIN_UPDATES)`` at lr 2e-3), a fresh Adam
between them; ``covariance_type="tied"``, ``reg_covar`` relative to the latents' variance;
T = 400, linear β; ``lam=0.01`` (:data:`PAPER_DEFAULTS`); a loss past ``divergence_factor`` ×
its phase's first value is a divergence. ``fit(X, checkpoint_dir=...)`` resumes per epoch.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..diffusion.process import q_sample
from ..diffusion.schedules import NoiseSchedule
from ..diffusion.unet import DiffusionUNet, make_unet, unet_config
from ..errors import DivergenceError
from ..mixture import prior_matching_terms
from ..models.encoder import LatentEncoder
from ..training.checkpoint import load_named_state, named_state
from ..training.loop import ExplosionCheck, epoch_batches, train_epoch
from ..training.runtime import autocast, map_batches, progress
from .base import DiffClusterMixin, ResumableMixin
from .clusterddpm_prior import MixturePrior
from .params import (AUTO, COMMON, Interval, Real, StrOptions, fraction, int_at_least, non_negative,
                     positive)

__all__ = ["PAPER_DEFAULTS", "ClusterDDPM"]
#: The paper's per-dataset latent dimension J and trade-off λ (Table 4 / §5.5).
PAPER_DEFAULTS = {
    "mnist": {"latent_dim": 32, "lam": 0.1},
    "fashion_mnist": {"latent_dim": 64, "lam": 0.001},
    "cifar10": {"latent_dim": 512, "lam": 0.01, "n_timesteps": 1000},
    "coil20": {"latent_dim": 10, "lam": 0.05, "n_timesteps": 1000},
}

#: Fewest pre-training updates of ``pretrain_epochs="auto"`` (see the module docstring).
MIN_PRETRAIN_UPDATES = 1200


# ---------------------------------------------------------------------- the estimator
class ClusterDDPM(MixturePrior, ResumableMixin, DiffClusterMixin):
    """ClusterDDPM: EM clustering of images with a z-conditioned DDPM and a GMM prior.

    Parameters
    ----------
    n_clusters : int
        K, the number of mixture components.
    latent_dim : int
        J, the width of z (32; see :data:`PAPER_DEFAULTS` / :meth:`for_dataset`).
    lam : float
        λ, the weight of the prior-matching terms (0.01; paper range [0.001, 0.1]).
    unet_preset : str
        U-Net size for ε_θ and f_φ (``"auto"``: ``small16``/``small32``/``small64`` by image
        side; ``"tiny"`` for tests; any key of :data:`~diffclust.diffusion.unet.PRESETS`).
    n_timesteps, beta_start, beta_end : int, float, float
        T and the linear β schedule (400, 1e-4, 0.02; not rescaled with T).
    pretrain_epochs : int or "auto"
        Epochs of the diffusion-autoencoder phase (mean-MSE, no prior term). ``"auto"``
        (default): ``max(10, ceil(MIN_PRETRAIN_UPDATES / updates_per_epoch))``. On 10,000
        MNIST or Fashion-MNIST images 60–80 epochs did best (MNIST's latent 10 ACC points more
        clusterable than after 20; Fashion-MNIST lost 9.5 at 160; docs/DECISIONS.md).
    n_em_iters, m_step_epochs : int
        EM rounds (50) and M-step epochs per round (1, as in the code).
    batch_size, lr : int, float
        Adam batch size and the EM-phase learning rate (128, 1e-4 as in the paper's code).
    pretrain_lr : float or None
        Learning rate of the pre-training phase (2e-3, [PROP]; ``None`` uses ``lr``).
    cond_drop : float
        Probability of zeroing z during training (0.1).
    covariance_type : "tied", "diag" or "full"
        The mixture's covariance: one full Σ shared by the components (``"tied"``, default,
        [PROP], see the module docstring), the paper's per-component diagonal (``"diag"``) or
        one full Σ_c per component (``"full"``, [PROP]; needs well over J images a cluster).
    gmm_init : "kmeans" or "spectral"
        GMM_0's start: k-means (the paper, ``gmm_n_init`` restarts) or the spectral partition
        of the latents' 10-NN graph (:mod:`diffclust.graph`, [PROP]).
    gmm_reg_covar, gmm_max_iter, gmm_n_init : float, int, int
        E-step settings: ``reg_covar`` relative to the mean per-dimension variance of the
        latents (0.05), EM iterations (100), k-means restarts for the first fit (5).
    e_step_input, predict_from : "mean" or "sample"
        Whether the E-step / the read-out use μ_φ (default) or a reparameterised z.
    clip_grad : float or None
        Optional global gradient-norm clip (None: off, as in the paper).
    divergence_factor : float
        A batch loss above this multiple of its phase's first loss counts as divergence (1e3).
    embed_batch_size : int
        Batch size of the no-grad encoder passes (E-step, predict, transform).
    random_state, device, precision, verbose
        Seed, device (``None``: CUDA if available), ``"auto"``/``"bf16"``/``"fp32"`` autocast,
        progress bar.
    """

    _input_kind = "images"
    _loss_should_decrease = True

    #: old parameter names read from models saved before the names were unified
    _renamed_params = {"grad_clip": "clip_grad"}

    _parameter_constraints = {
        **COMMON,
        "latent_dim": [int_at_least(1)], "lam": [non_negative], "unet_preset": [str],
        "n_timesteps": [int_at_least(2)], "beta_start": [Interval(Real, 0, 1, closed="neither")],
        "beta_end": [Interval(Real, 0, 1, closed="neither")],
        "pretrain_epochs": [int_at_least(0), AUTO], "pretrain_lr": [positive, None],
        "n_em_iters": [int_at_least(0)], "m_step_epochs": [int_at_least(1)],
        "batch_size": [int_at_least(1)], "lr": [positive],
        "cond_drop": [fraction],
        "covariance_type": [StrOptions({"tied", "diag", "full"})],
        "gmm_init": [StrOptions({"kmeans", "spectral"})],
        "gmm_max_iter": [int_at_least(1)], "gmm_n_init": [int_at_least(1)],
        "gmm_reg_covar": [non_negative], "e_step_input": [StrOptions({"mean", "sample"})],
        "predict_from": [StrOptions({"mean", "sample"})], "clip_grad": [positive, None],
        "divergence_factor": [Interval(Real, 1, None, closed="neither")],
        "embed_batch_size": [int_at_least(1)],
    }

    def __init__(self, n_clusters=10, *, latent_dim=32, lam=0.01, unet_preset="auto",
                 n_timesteps=400, beta_start=1e-4, beta_end=0.02, pretrain_epochs="auto",
                 n_em_iters=50, m_step_epochs=1, batch_size=128, lr=1e-4, pretrain_lr=2e-3,
                 cond_drop=0.1, covariance_type="tied", gmm_init="kmeans",
                 gmm_reg_covar=0.05, gmm_max_iter=100, gmm_n_init=5, e_step_input="mean",
                 predict_from="mean", clip_grad=None, divergence_factor=1e3,
                 embed_batch_size=512, random_state=None, device=None, precision="auto",
                 verbose=True):
        self.n_clusters = n_clusters
        self.latent_dim = latent_dim
        self.lam = lam
        self.unet_preset = unet_preset
        self.n_timesteps = n_timesteps
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.pretrain_epochs = pretrain_epochs
        self.n_em_iters = n_em_iters
        self.m_step_epochs = m_step_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.pretrain_lr = pretrain_lr
        self.cond_drop = cond_drop
        self.covariance_type = covariance_type
        self.gmm_init = gmm_init
        self.gmm_reg_covar = gmm_reg_covar
        self.gmm_max_iter = gmm_max_iter
        self.gmm_n_init = gmm_n_init
        self.e_step_input = e_step_input
        self.predict_from = predict_from
        self.clip_grad = clip_grad
        self.divergence_factor = divergence_factor
        self.embed_batch_size = embed_batch_size
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.verbose = verbose

    @classmethod
    def for_dataset(cls, name: str, n_clusters: int, **params) -> ClusterDDPM:
        """An estimator with the paper's J and λ for ``name`` (mnist, fashion_mnist, cifar10,
        coil20); ``params`` override them."""
        key = name.lower().replace("-", "_")
        if key not in PAPER_DEFAULTS:
            raise ValueError(f"no paper defaults for {name!r}; known: {sorted(PAPER_DEFAULTS)}")
        return cls(n_clusters, **{**PAPER_DEFAULTS[key], **params})

    # ------------------------------------------------------------------ checks and building
    def _check_params(self):
        """Rules spanning several parameters (each one alone is declared above)."""
        if not self.beta_start < self.beta_end:
            raise ValueError(f"need beta_start < beta_end, got {self.beta_start}, "
                             f"{self.beta_end}")

    def _n_pretrain_epochs(self, n):
        """The resolved number of pre-training epochs for ``n`` samples."""
        if self.pretrain_epochs != "auto":
            return int(self.pretrain_epochs)
        per_epoch = math.ceil(n / min(int(self.batch_size), n))
        return max(10, math.ceil(MIN_PRETRAIN_UPDATES / per_epoch))

    def _schedule_config(self):
        return {"name": "linear", "T": int(self.n_timesteps), "noise_scale": 1.0,
                "rescale": None, "kwargs": {"beta_start": float(self.beta_start),
                                            "beta_end": float(self.beta_end),
                                            "scale_with_T": False}}

    def _build(self, X):
        C, H, W = X.shape[1:]
        if H != W:
            raise ValueError(f"ClusterDDPM needs square images, got {H}×{W}; crop or pad them")
        if H < 8:
            raise ValueError(f"images must be at least 8×8 for the U-Net, got {H}×{W}")
        J = int(self.latent_dim)
        unet = make_unet(H, C, self.unet_preset, cond_dim=J, seed=self.seed_,
                         schedule=self._schedule_config(), resnet_time_scale_shift="scale_shift")
        enc_cfg = unet_config(H, C, self.unet_preset)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed_ + 1)
            enc = LatentEncoder(enc_cfg, J)
        return unet.to(self.device_).float(), enc.to(self.device_).float()

    # ------------------------------------------------------------------ encoder passes
    def _encode(self, xb):
        """``(μ_φ, log σ_φ²)`` in float32 for images ``xb`` (B, C, H, W) on the device."""
        with autocast(self.device_, self.amp_dtype_):
            mu, logvar = self.encoder_(self.unet_.pad(xb))
        return mu.float(), logvar.float()

    @torch.no_grad()
    def _embed(self, X, sample=False, generator=None):
        """μ_φ (or a reparameterised z when ``sample``) for all rows of ``X``: (N, J) on CPU."""
        self.encoder_.eval()

        def z(xb):
            mu, logvar = self._encode(xb)
            if sample:
                eps = torch.randn(mu.shape, generator=generator).to(mu.device)
                mu = mu + (0.5 * logvar).exp() * eps
            return mu

        Z = map_batches(z, X, self.embed_batch_size, self.device_)
        if not torch.isfinite(Z).all():
            raise DivergenceError("the encoder produced NaN/inf latent codes; training diverged "
                                  "(lower lam or lr, or set clip_grad)")
        return Z

    # ------------------------------------------------------------------ losses
    def _losses(self, x0, prior: bool, g):
        """Loss of one batch: returns ``(loss, logs)``. ``prior=False`` is the pre-training loss
        (mean MSE); ``prior=True`` is eq. A.17 (pixel-sum MSE + λ · prior matching)."""
        dev = self.device_
        B = x0.shape[0]
        mu, logvar = self._encode(x0)
        std = (0.5 * logvar).exp()
        z_rec = mu + std * torch.randn(mu.shape, generator=g).to(dev)
        cond = z_rec
        if self.cond_drop > 0:
            keep = (torch.rand(B, generator=g) >= self.cond_drop).float().to(dev)
            cond = z_rec * keep[:, None]
        x0p = self.unet_.pad(x0)
        t = torch.randint(0, self.sched_.T, (B,), generator=g).to(dev)
        eps = torch.randn(x0p.shape, generator=g).to(dev)
        x_t = q_sample(self.sched_, x0p, t, noise=eps)
        with autocast(dev, self.amp_dtype_):
            pred = self.unet_(x_t, t, cond=cond)
        mse = ((pred.float() - eps) ** 2).flatten(1).mean(1)  # (B,) per-pixel mean
        if not prior:
            rec = mse.mean()
            return rec, {"rec": rec}
        rec = (mse * self.n_pixels_).mean()  # sum over the user's C·H·W pixels
        z_kl = mu + std * torch.randn(mu.shape, generator=g).to(dev)
        terms = prior_matching_terms(mu, logvar, z_kl, *self._gmm(),
                                     covariance_type=self.covariance_type)
        kl = terms["total"].mean()
        loss = rec + float(self.lam) * kl
        return loss, {"rec": rec, "kl": kl, "kl_c": terms["kl_c"].mean(),
                      "kl_z": terms["kl_z"].mean(), "entropy": terms["entropy"].mean()}

    # ------------------------------------------------------------------ fit
    def _fit(self, X):
        self._check_params()
        t_start = time.perf_counter()
        self.n_pixels_ = int(np.prod(X.shape[1:]))
        self.unet_, self.encoder_ = self._build(X)
        self.sched_ = NoiseSchedule(**self._schedule_config())
        params = list(self.unet_.parameters()) + list(self.encoder_.parameters())
        pre_lr = float(self.lr if self.pretrain_lr is None else self.pretrain_lr)
        opt_box = [torch.optim.Adam(params, lr=pre_lr)]
        n, B = len(X), min(int(self.batch_size), len(X))
        Xt = torch.from_numpy(X)
        g = self.generator_
        self.history_ = []
        n_pre = self.n_pretrain_epochs_ = self._n_pretrain_epochs(n)
        n_em, m_ep = int(self.n_em_iters), int(self.m_step_epochs)
        total = math.ceil(n / B) * (n_pre + n_em * m_ep)
        bar = progress(range(total), desc="ClusterDDPM", verbose=self.verbose)
        state = {"it": 0}
        guard = ExplosionCheck(self.divergence_factor)  # and non-finite values: the loop's

        def run_epoch(phase, epoch, prior):
            self.unet_.train()
            self.encoder_.train()

            def step(idx):
                return self._losses(Xt[idx].to(self.device_), prior, g)

            # the gradient norm is always computed (inf: no clipping) and must be finite
            batches = epoch_batches(n, B, g)  # a one-image remainder has no batch statistics
            batches = batches[:1] + [b for b in batches[1:] if len(b) >= 2]
            logs = train_epoch(step, batches, opt_box[0], parameters=params,
                               clip_grad=float(self.clip_grad) if self.clip_grad else math.inf,
                               what=f"ClusterDDPM diverged in the {phase} phase (epoch {epoch})",
                               hint=self._divergence_hint(), bar=bar, check=guard,
                               postfix=lambda p: {"phase": phase, "loss": f"{p['loss']:.3f}"})
            state["it"] += logs.pop("steps")
            logs.pop("loss")  # the history keeps the named terms
            return logs

        # resumable per epoch (fit(X, checkpoint_dir=...)): steps 1..n_pre are the pre-training
        # epochs (step n_pre also holds GMM_0), steps n_pre + r the EM rounds
        n_total = n_pre + n_em
        saved = self._saved_step()
        if saved and saved >= n_pre:  # restoring past pre-training: the main loop's optimiser
            opt_box[0] = torch.optim.Adam(params, lr=float(self.lr))

        def ck_state():
            return dict(modules={"unet": self.unet_, "encoder": self.encoder_},
                        optimizer=opt_box[0], generator=g)

        def checkpoint(step, prev=None):
            gmm = ({} if prev is None else
                   {"gmm_weights": self.gmm_weights_, "gmm_means": self.gmm_means_,
                    "gmm_covariances": self.gmm_covariances_, "prev": torch.as_tensor(prev)})
            self._checkpoint_training(step, n_total, ck_state(), tensors=gmm, every=1,
                                      extra={"history": self.history_, "ref": guard.ref,
                                             "it": state["it"]})

        start, tens, extra = self._restore_training(X, ck_state())
        prev = None
        if start:
            self.history_, guard.ref, state["it"] = extra["history"], extra["ref"], extra["it"]
            bar.update(state["it"])
            if "prev" in tens:
                self.gmm_weights_, self.gmm_means_ = tens["gmm_weights"], tens["gmm_means"]
                self.gmm_covariances_, prev = tens["gmm_covariances"], tens["prev"].numpy()
        try:
            # ---- pre-training: diffusion autoencoder, no prior term
            for ep in range(start, n_pre):
                logs = run_epoch("pretrain", ep, prior=False)
                self.history_.append({"phase": "pretrain", "epoch": ep, **logs,
                                      "seconds": time.perf_counter() - t_start})
                if ep + 1 < n_pre:
                    checkpoint(ep + 1)
            if prev is None:
                # ---- GMM_0 (k-means init) on the encoder outputs
                self._e_step(X, init=None, round_=0)
                guard.ref = None  # the main loss has a different scale
                # fresh Adam moments: the pixel-sum loss is ~C·H·W times the pre-training mean,
                # and stale second moments would turn the first main steps into huge updates
                opt_box[0] = torch.optim.Adam(params, lr=float(self.lr))
                prev = self._current_labels(X)
                if n_pre:
                    checkpoint(n_pre, prev)
            for r in range(max(start - n_pre, 0) + 1, n_em + 1):
                logs = {}
                for ep in range(m_ep):  # M-step with the mixture fixed
                    logs = run_epoch("em", r, prior=True)
                gmm = (self.gmm_weights_, self.gmm_means_, self.gmm_covariances_)
                info = self._e_step(X, init=gmm, round_=r)  # E-step, warm-started
                labels = self._current_labels(X)
                change = float((labels != prev).mean())
                prev = labels
                self.history_.append({"phase": "em", "epoch": r, **logs, "label_change": change,
                                      "gmm_lower_bound": info["lower_bound"],
                                      "seconds": time.perf_counter() - t_start})
                checkpoint(n_pre + r, prev)
        finally:
            bar.close()
            self.unet_.eval()
            self.encoder_.eval()
        self.n_iter_ = state["it"]
        proba = self._predict_proba(X)
        if not np.isfinite(proba).all():
            raise DivergenceError("the final cluster posteriors are not finite")
        self.train_proba_, self.labels_ = proba, proba.argmax(1)
        self.fit_seconds_ = time.perf_counter() - t_start

    def _divergence_hint(self):
        return (f"lam={self.lam} is probably too large for this data (the paper reports "
                f"unstable training for large λ); lower lam or lr, or set clip_grad")

    # ------------------------------------------------------------------ transform
    def transform(self, X):
        """The encoder means μ_φ(x) (N, J): the learned latent representation."""
        X = self._fitted_input(X)
        return self._embed(X).numpy()

    # ------------------------------------------------------------------ persistence
    _fitted_json = ("history_", "n_iter_", "fit_seconds_", "seed_", "n_pixels_")

    def _get_state(self):
        meta = {"n_pretrain_epochs_": int(self.n_pretrain_epochs_), **self.unet_.to_meta(),
                "encoder_config": self.encoder_.config}
        tensors = named_state(unet=self.unet_, enc=self.encoder_)
        tensors.update(gmm_weights=self.gmm_weights_, gmm_means=self.gmm_means_,
                       gmm_covariances=self.gmm_covariances_,
                       train_proba=torch.as_tensor(self.train_proba_))
        return meta, tensors

    def _set_state(self, meta, tensors):
        self.n_pretrain_epochs_ = int(meta.get("n_pretrain_epochs_", -1))
        unet = DiffusionUNet.from_meta(meta)
        enc = LatentEncoder(meta["encoder_config"], int(self.latent_dim))
        load_named_state(tensors, unet=unet, enc=enc)
        self.unet_ = unet.to(self.device_).eval()
        self.sched_ = unet.noise_schedule()
        self.encoder_ = enc.to(self.device_).eval()
        self.gmm_weights_ = tensors["gmm_weights"].float()
        self.gmm_means_ = tensors["gmm_means"].float()
        if "gmm_covariances" in tensors:
            self.gmm_covariances_ = tensors["gmm_covariances"].float()
        else:  # saved before covariance_type existed: the paper's diagonal mixture
            self.gmm_covariances_ = tensors["gmm_vars"].float()
            self.covariance_type = "diag"
        self.train_proba_ = tensors["train_proba"].double().numpy()
