"""ClusterDDPM's prior ``p(c) p(z | c)`` (METHODS.md §5, eq. 9–10, 22), mixed into
:class:`~diffclust.methods.clusterddpm.ClusterDDPM`: the E-step (a GMM on the encoder's
latents, warm-started from the previous mixture), the cluster posterior ``p(c | z)`` that labels
the data, and generation (``c ~ Cat(π)``, ``z ~ N(μ_c, Σ_c)``, then the z-conditioned DDPM).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..mixture import fit_gmm, gmm_log_posterior, sample_gmm
from ..training.runtime import progress

__all__ = ["MixturePrior"]


class MixturePrior:
    """The mixture of ClusterDDPM: ``gmm_weights_`` π, ``gmm_means_`` μ_c and
    ``gmm_covariances_`` Σ_c (CPU tensors). The estimator supplies the encoder pass
    (``_embed``), ``unet_`` and ``sched_``."""

    def _gmm(self):
        d = self.device_
        return self.gmm_weights_.to(d), self.gmm_means_.to(d), self.gmm_covariances_.to(d)

    def _e_step(self, X, init, round_):
        g = torch.Generator().manual_seed(self.seed_ + 10007 * (round_ + 1))
        Z = self._embed(X, sample=self.e_step_input == "sample", generator=g)
        # reg_covar relative to the latents' scale, which the encoder sets freely: an absolute
        # floor lets a component shrink to a spike that the prior term then empties
        reg = float(self.gmm_reg_covar) * max(float(Z.var(0).mean()), 1e-12)
        if init is None and self.gmm_init == "spectral":  # GMM_0 from the k-NN graph partition
            from ..graph import spectral_partition
            from ..mixture import gmm_from_labels

            labels, self.init_ncut_ = spectral_partition(Z.numpy(), self.n_clusters,
                                                         n_neighbors=10, random_state=self.seed_)
            init = gmm_from_labels(Z.numpy(), labels, self.n_clusters, self.covariance_type, reg)
        (w, m, v), info = fit_gmm(Z.numpy(), self.n_clusters, self.covariance_type, init=init,
                                  reg_covar=reg, max_iter=int(self.gmm_max_iter),
                                  n_init=int(self.gmm_n_init), seed=self.seed_ + round_)
        self.gmm_weights_, self.gmm_means_, self.gmm_covariances_ = w, m, v
        return info

    def _log_posterior(self, Z):
        """log p(c | z) under the current mixture (eq. 22), on the CPU."""
        with torch.no_grad():
            return gmm_log_posterior(Z.to(self.device_), *self._gmm(), self.covariance_type).cpu()

    def _current_labels(self, X):
        return self._log_posterior(self._embed(X)).argmax(1).numpy()

    def _predict_proba(self, X):
        g = torch.Generator().manual_seed(getattr(self, "seed_", 0) + 2)
        Z = self._embed(X, sample=self.predict_from == "sample", generator=g)
        return self._log_posterior(Z).exp().double().numpy()

    def _extra_warnings(self):
        n_empty = int(self.n_clusters) - len(np.unique(self.labels_))
        return [f"{n_empty} of {self.n_clusters} clusters received no sample (the mixture "
                f"collapsed); pre-train longer, or lower lam/lr"] if n_empty else []

    @torch.no_grad()
    def sample(self, n, cluster=None, guidance=0.0, random_state=None, batch_size=256,
               verbose=None):
        """Generate ``n`` images: ``c`` = ``cluster`` (an int, or an array of ``n`` ids; ``None``
        draws ``c ~ Cat(π)``), ``z ~ N(μ_c, σ_c²)``, then DDPM ancestral sampling from
        ``x_T ~ N(0, I)`` with ``σ_t² = β_t`` and a deterministic last step (§5.4). ``guidance``
        w ≥ 0 uses ``(1 + w) ε(x_t, t, z) − w ε(x_t, t, 0)``. Returns float32 images in
        [−1, 1] of shape ``(n, C, H, W)`` and the cluster ids ``(n,)``."""
        from ..diffusion.pretrain import sample_images

        self._fitted_input()
        n = int(n)
        if n < 1:
            raise ValueError(f"n must be ≥ 1, got {n}")
        seed = (getattr(self, "seed_", 0) + 99991) if random_state is None else int(random_state)
        g = torch.Generator().manual_seed(seed)
        Zs, c = sample_gmm(n, self.gmm_weights_, self.gmm_means_, self.gmm_covariances_,
                           self.covariance_type, cluster, g)
        bar = progress(total=self.sched_.T * math.ceil(n / int(batch_size)), desc="sampling",
                       verbose=self.verbose if verbose is None else verbose)
        with bar:
            x = sample_images(self.unet_, n, cond=Zs, sampler="ddpm", guidance=guidance,
                              generator=g, device=self.device_, dtype=self.amp_dtype_,
                              batch_size=int(batch_size), schedule=self.sched_, progress=bar)
        return x.numpy(), c.numpy()
