"""Gaussian-mixture maths of ClusterDDPM (Yan et al., 2023; METHODS.md §5): the posterior
``p(c | z)`` (eq. 22), the prior-matching terms of the ELBO (eq. A.17) and the E-step's mixture
fit (scikit-learn's GaussianMixture, warm-started), for diagonal, tied and full covariances.

A mixture is ``(weights (K,), means (K, J), covariances)`` with scikit-learn's layout of
``covariances_``: ``"diag"`` → (K, J) per-component variances σ_c² (the paper), ``"tied"`` → one
(J, J) covariance Σ shared by all components, ``"full"`` → (K, J, J) one Σ_c per component.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import DivergenceError

__all__ = ["COVARIANCE_TYPES", "fit_diag_gmm", "fit_gmm", "gmm_from_labels", "gmm_log_posterior",
           "sample_gmm", "prior_matching_terms"]

_LOG2PI = math.log(2 * math.pi)

COVARIANCE_TYPES = ("diag", "tied", "full")


def check_covariance_type(covariance_type):
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, "
                         f"got {covariance_type!r}")


def _mahalanobis(diff, cov):
    """``(diffᵀ Σ_c⁻¹ diff (B, K), log|Σ_c|, L)`` for ``diff`` (B, K, J) and a tied ``Σ = L Lᵀ``
    (J, J) or full ``Σ_c = L_c L_cᵀ`` (K, J, J), by Cholesky factorisation and a triangular solve
    (no explicit inverse); ``log|Σ|`` is a scalar (tied) or (K,) (full)."""
    L = torch.linalg.cholesky(cov.float())
    if L.dim() == 2:  # tied: one solve for all (B·K) differences
        u = torch.linalg.solve_triangular(L, diff.reshape(-1, diff.shape[-1]).T, upper=False)
        maha = (u ** 2).sum(0).reshape(diff.shape[:2])
    else:  # full: L_c broadcast over the batch
        u = torch.linalg.solve_triangular(L, diff.transpose(0, 1).transpose(1, 2), upper=False)
        maha = (u ** 2).sum(1).T  # (K, J, B) → (B, K)
    log_det = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return maha, log_det, L


def gmm_log_posterior(z, weights, means, covariances, covariance_type="diag"):
    """``log p(c | z)`` (eq. 22): ``(B, K)`` log-softmax over c of
    ``log π_c + log N(z; μ_c, Σ_c)``, with ``Σ_c = diag σ_c²`` (``covariances`` (K, J)), a tied
    ``Σ`` ((J, J)) or full ``Σ_c`` ((K, J, J)). ``z`` (B, J), ``weights`` (K,), ``means`` (K, J).
    Differentiable in ``z``."""
    check_covariance_type(covariance_type)
    z = z.float()
    diff = z[:, None, :] - means[None]  # (B, K, J)
    if covariance_type == "diag":
        log_n = -0.5 * (_LOG2PI + torch.log(covariances)[None]
                        + diff ** 2 / covariances[None]).sum(-1)
    else:
        maha, log_det, _ = _mahalanobis(diff, covariances)
        log_n = -0.5 * (diff.shape[-1] * _LOG2PI + log_det + maha)
    return torch.log_softmax(torch.log(weights)[None] + log_n, dim=1)


def prior_matching_terms(mu, logvar, z, weights, means, covariances, w=None,
                         covariance_type="diag"):
    """The prior-matching part of eq. A.17, per sample (without λ).

    Returns a dict of ``(B,)`` tensors: ``kl_c = Σ_c w_c log(w_c/π_c)``,
    ``kl_z = ½ Σ_c w_c [log|Σ_c| + tr(Σ_c⁻¹ diag σ_φ²) + (μ_φ − μ_c)ᵀ Σ_c⁻¹ (μ_φ − μ_c)]``
    (for the paper's diagonal ``Σ_c`` this is ``½ Σ_c w_c Σ_j [log σ_c² + σ_φ²/σ_c² +
    (μ_φ − μ_c)²/σ_c²]``), ``entropy = −½ Σ_j (1 + log σ_φ²)`` and their sum ``total``, which
    equals ``KL(q_φ(z|x) q(c|x) ‖ p(z, c))``; plus ``w`` (B, K). ``w`` defaults to the posterior
    ``p(c | z)`` at the sampled ``z`` with the mixture constant (the paper's choice).
    """
    check_covariance_type(covariance_type)
    mu, logvar = mu.float(), logvar.float()
    if w is None:
        log_w = gmm_log_posterior(z, weights, means, covariances, covariance_type)
        w = log_w.exp()
    else:
        log_w = torch.log(w.clamp_min(1e-30))
    log_pi = torch.log(weights)[None]
    kl_c = (w * (log_w - log_pi)).sum(1)
    var_phi = logvar.exp()
    diff = mu[:, None, :] - means[None]  # (B, K, J)
    if covariance_type == "diag":
        per_c = (torch.log(covariances)[None] + var_phi[:, None, :] / covariances[None]
                 + diff ** 2 / covariances[None]).sum(-1)  # (B, K)
    else:  # tr(Σ_c⁻¹ diag σ_φ²) = Σ_j (Σ_c⁻¹)_jj σ_φj²
        maha, log_det, L = _mahalanobis(diff, covariances)
        prec_diag = torch.diagonal(torch.cholesky_inverse(L), dim1=-2, dim2=-1)  # (J,) or (K, J)
        per_c = log_det + (var_phi[:, None, :] * prec_diag).sum(-1) + maha
    kl_z = 0.5 * (w * per_c).sum(1)
    entropy = -0.5 * (1.0 + logvar).sum(1)
    return {"kl_c": kl_c, "kl_z": kl_z, "entropy": entropy, "total": kl_c + kl_z + entropy,
            "w": w}


def gmm_from_labels(Z, labels, n_components, covariance_type="diag", reg_covar=1e-4):
    """The mixture ``(weights, means, covariances)`` (numpy, float64) of a hard partition of
    ``Z``: the groups' fractions, means and (per-group diagonal, pooled full or per-group full)
    covariances plus ``reg_covar``; an empty group gets a small weight, the global mean and
    covariance."""
    check_covariance_type(covariance_type)
    Z = np.asarray(Z, dtype=np.float64)
    labels = np.asarray(labels)
    K, J = int(n_components), Z.shape[1]
    counts = np.bincount(labels, minlength=K).astype(np.float64)
    means = np.tile(Z.mean(0), (K, 1))
    sums = np.zeros((K, J))
    np.add.at(sums, labels, Z)
    used = counts > 0
    means[used] = sums[used] / counts[used, None]
    R = Z - means[labels]
    if covariance_type == "tied":
        cov = R.T @ R / len(Z) + reg_covar * np.eye(J)
    elif covariance_type == "full":  # one (J, J) product per group: memory O(N J), not O(N J²)
        cov = np.tile(np.cov(Z.T, bias=True).reshape(J, J), (K, 1, 1))
        for k in np.flatnonzero(used):
            Rk = R[labels == k]
            cov[k] = Rk.T @ Rk / counts[k]
        cov = cov + reg_covar * np.eye(J)
    else:
        sq = np.zeros((K, J))
        np.add.at(sq, labels, R ** 2)
        cov = np.tile(Z.var(0), (K, 1))
        cov[used] = sq[used] / counts[used, None]
        cov = cov + reg_covar
    weights = np.maximum(counts, 1e-3) / max(counts.sum(), 1.0)
    return weights / weights.sum(), means, cov


def fit_gmm(Z, n_components, covariance_type="diag", init=None, reg_covar=1e-4, max_iter=100,
            tol=1e-3, n_init=1, seed=0):
    """Fit a GMM with ``covariance_type`` (``"diag"`` or ``"tied"``) to ``Z`` (N, J) with
    scikit-learn and return its parameters as float32 tensors ``(weights (K,), means (K, J),
    covariances)`` (see :data:`COVARIANCE_TYPES`) plus a fit-info dict.

    ``init`` = a previous ``(weights, means, covariances)``: warm start (one run from there);
    otherwise k-means initialisation with ``n_init`` restarts."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    check_covariance_type(covariance_type)
    Z = np.asarray(Z, dtype=np.float64)
    if not np.isfinite(Z).all():
        raise DivergenceError("the latent codes passed to the E-step contain NaN/inf")
    kw = dict(n_components=int(n_components), covariance_type=covariance_type,
              reg_covar=reg_covar, max_iter=int(max_iter), tol=tol,
              random_state=int(seed) % (2**32))
    if init is not None:
        w0, m0, c0 = (np.asarray(a.detach().cpu() if torch.is_tensor(a) else a, np.float64)
                      for a in init)
        w0 = np.clip(w0, 1e-8, None)
        prec0 = (1.0 / np.clip(c0, 1e-12, None) if covariance_type == "diag"
                 else np.linalg.inv(c0))  # (J, J) tied or (K, J, J) full
        gm = GaussianMixture(weights_init=w0 / w0.sum(), means_init=m0, precisions_init=prec0,
                             n_init=1, **kw)
    else:
        gm = GaussianMixture(init_params="kmeans", n_init=int(n_init), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(Z)
    params = [torch.as_tensor(a, dtype=torch.float32)
              for a in (gm.weights_, gm.means_, gm.covariances_)]
    if not all(torch.isfinite(p).all() for p in params):
        raise DivergenceError("the E-step produced a non-finite mixture")
    params[0] = params[0].clamp_min(1e-8)
    params[0] = params[0] / params[0].sum()
    return tuple(params), {"converged": bool(gm.converged_), "n_iter": int(gm.n_iter_),
                           "lower_bound": float(gm.lower_bound_)}


def fit_diag_gmm(Z, n_components, **kwargs):
    """:func:`fit_gmm` with the paper's diagonal covariances."""
    return fit_gmm(Z, n_components, "diag", **kwargs)


def sample_gmm(n, weights, means, covariances, covariance_type="diag", cluster=None,
               generator=None):
    """Draw ``n`` latents ``z ~ N(μ_c, Σ_c)``: ``c`` = ``cluster`` (an int, or ``n`` ids) or, when
    ``None``, ``c ~ Cat(π)``; ``Σ_c = diag σ_c²`` (``"diag"``), one shared Σ = L Lᵀ
    (``"tied"``, ``z = μ_c + L ε``) or ``Σ_c = L_c L_cᵀ`` (``"full"``). Returns
    ``(z (n, J), c (n,))``."""
    K = len(weights)
    if cluster is None:
        c = torch.multinomial(weights.double(), n, replacement=True, generator=generator)
    else:
        c = torch.as_tensor(np.asarray(cluster)).long().reshape(-1)
        if c.numel() == 1:
            c = c.expand(n).clone()
        if c.numel() != n:
            raise ValueError(f"cluster must be an int or hold n={n} ids, got {c.numel()}")
        if int(c.min()) < 0 or int(c.max()) >= K:
            raise ValueError(f"cluster ids must lie in [0, {K - 1}], got {c.tolist()[:10]}")
    eps = torch.randn((n, means.shape[1]), generator=generator)
    if covariance_type == "diag":
        return means[c] + covariances[c].sqrt() * eps, c
    if covariance_type == "full":
        return means[c] + (torch.linalg.cholesky(covariances)[c] @ eps[:, :, None])[..., 0], c
    return means[c] + eps @ torch.linalg.cholesky(covariances).T, c

