"""Cheap baselines through the same API: k-means and a Gaussian mixture (scikit-learn)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture
from sklearn.utils.validation import check_is_fitted

from .base import DiffClusterMixin
from .params import COMMON, StrOptions, int_at_least, non_negative

__all__ = ["KMeansClusterer", "GMMClusterer"]


class KMeansClusterer(DiffClusterMixin):
    """k-means (k-means++ init, ``n_init`` restarts) with soft assignments
    ``softmax(−‖x − c_k‖² / temperature)`` for :meth:`predict_proba`, ``temperature`` defaulting
    to the mean within-cluster squared distance."""

    _parameter_constraints = {**COMMON, "n_clusters": [int_at_least(1)],
                              "n_init": [int_at_least(1)], "max_iter": [int_at_least(1)]}

    def __init__(self, n_clusters=10, n_init=10, max_iter=300, random_state=None, device=None,
                 verbose=False):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def _fit(self, X):
        km = KMeans(self.n_clusters, n_init=self.n_init, max_iter=self.max_iter,
                    random_state=self.seed_).fit(X)
        self.cluster_centers_ = km.cluster_centers_.astype(np.float32)
        self.labels_ = km.labels_.astype(np.int64)
        self.inertia_ = float(km.inertia_)
        self.n_iter_ = int(km.n_iter_)
        self.temperature_ = max(self.inertia_ / len(X), 1e-12)

    def _predict_proba(self, X):
        d2 = ((X[:, None, :] - self.cluster_centers_[None]) ** 2).sum(-1) if len(X) * \
            self.n_clusters * X.shape[1] < 5e7 else _sqdist(X, self.cluster_centers_)
        logits = -d2 / self.temperature_
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def predict(self, X):
        check_is_fitted(self, "labels_")
        X = self._validate_input(X, fitting=False)
        return _sqdist(X, self.cluster_centers_).argmin(1)

    _fitted_json = ("inertia_", "temperature_")
    _fitted_numpy = ("cluster_centers_",)

    def _get_state(self):
        return {"n_iter_": self.n_iter_}, {}

    def _set_state(self, meta, tensors):
        self.n_iter_ = int(meta.get("n_iter_", 0))  # models saved before n_iter_ have none
        _check_shape("cluster_centers_", self.cluster_centers_,
                     (self.n_clusters, self.n_features_in_))


def _check_shape(name, arr, expected):
    if tuple(arr.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(arr.shape)}, but n_clusters and "
                         f"n_features_in_ give {tuple(expected)}")


def _sqdist(X, C):
    return (X**2).sum(1)[:, None] - 2 * X @ C.T + (C**2).sum(1)[None]


class GMMClusterer(DiffClusterMixin):
    """Gaussian mixture (scikit-learn ``GaussianMixture``), diagonal covariances by default."""

    _parameter_constraints = {
        **COMMON, "n_clusters": [int_at_least(1)], "n_init": [int_at_least(1)],
        "max_iter": [int_at_least(1)],
        "covariance_type": [StrOptions({"full", "tied", "diag", "spherical"})],
        "reg_covar": [non_negative],
    }

    def __init__(self, n_clusters=10, covariance_type="diag", n_init=1, max_iter=100,
                 reg_covar=1e-6, random_state=None, device=None, verbose=False):
        self.n_clusters = n_clusters
        self.covariance_type = covariance_type
        self.n_init = n_init
        self.max_iter = max_iter
        self.reg_covar = reg_covar
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def _fit(self, X):
        self.gmm_ = GaussianMixture(self.n_clusters, covariance_type=self.covariance_type,
                                    n_init=self.n_init, max_iter=self.max_iter,
                                    reg_covar=self.reg_covar, random_state=self.seed_).fit(X)
        self.labels_ = self.gmm_.predict(X).astype(np.int64)
        self.n_iter_ = int(self.gmm_.n_iter_)

    def _predict_proba(self, X):
        return self.gmm_.predict_proba(X)

    _FIELDS = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")

    def _get_state(self):
        return ({"converged_": bool(self.gmm_.converged_), "n_iter_": self.n_iter_},
                {k: torch.as_tensor(getattr(self.gmm_, k)) for k in self._FIELDS})

    def _set_state(self, meta, tensors):
        g = GaussianMixture(self.n_clusters, covariance_type=self.covariance_type)
        for k in self._FIELDS:
            setattr(g, k, tensors[k].numpy())
        _check_shape("means_", g.means_, (self.n_clusters, self.n_features_in_))
        g.converged_ = meta["converged_"]
        self.n_iter_ = int(meta.get("n_iter_", 0))
        g.n_features_in_ = self.n_features_in_
        self.gmm_ = g
