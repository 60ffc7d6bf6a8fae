"""Self-Classifier on frozen features (Amrani et al., 2022): the cheap baseline of the CLUDI
paper. An MLP head ``f(x) → K`` logits is trained on two augmented views of each feature vector
with the symmetric Self-Classifier cross-entropy (CLUDI eq. 20–24 with one chain per view):

    L = ½ [CE(q(v₁) → ℓ(v₂)) + CE(q(v₂) → ℓ(v₁))],

``q`` the row/column-normalised targets (τ_row, τ_col), ``ℓ`` the log-softmax of the other view.
The views are CLUDI's feature augmentation (a random unit direction scaled by U[a, b], then
coordinate dropout) of the unit-normalised features, so that the baseline differs from CLUDI
only by the diffusion model. Labels: the argmax of the head on the clean features.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..augment import feature_view
from ..losses import self_classifier_loss
from ..training.checkpoint import load_named_state, named_state
from ..training.loop import train_steps
from ..training.optim import warmup_cosine
from ..training.runtime import autocast
from .base import DiffClusterMixin
from .params import AUTO, COMMON, int_at_least, non_negative, pair, positive

__all__ = ["SelfClassifier"]


class SelfClassifier(DiffClusterMixin):
    """Self-Classifier baseline over frozen feature vectors.

    Parameters
    ----------
    n_clusters : int
    hidden_dim : int
        Width of the MLP head (two hidden layers, 1,024).
    n_steps : int or "auto"
        Optimiser steps; ``"auto"`` = CLUDI's rule, ``clip(60·N/B, 2000, 50000)``.
    batch_size, lr, weight_decay, tau_row, tau_col, aug_noise, aug_drop : as CLUDI.
    """

    _thread_cap = 1  # small matmuls: docs/DECISIONS.md, "Threads"
    _parameter_constraints = {
        **COMMON,
        "hidden_dim": [int_at_least(1)], "n_steps": [int_at_least(1), AUTO],
        "batch_size": [int_at_least(2)], "lr": [positive], "weight_decay": [non_negative],
        "tau_row": [positive], "tau_col": [positive], "aug_noise": pair, "aug_drop": pair,
    }

    def __init__(self, n_clusters=10, *, hidden_dim=1024, n_steps="auto", batch_size=256,
                 lr=1e-3, weight_decay=0.01, tau_row=0.1, tau_col=0.05, aug_noise=(0.2, 1.0),
                 aug_drop=(0.05, 0.1), random_state=None, device=None, precision="auto",
                 verbose=True):
        self.n_clusters = n_clusters
        self.hidden_dim = hidden_dim
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.tau_row = tau_row
        self.tau_col = tau_col
        self.aug_noise = aug_noise
        self.aug_drop = aug_drop
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.verbose = verbose

    def _head(self, D):
        H = int(self.hidden_dim)
        return nn.Sequential(nn.Linear(D, H), nn.BatchNorm1d(H), nn.ReLU(), nn.Linear(H, H),
                             nn.BatchNorm1d(H), nn.ReLU(), nn.Linear(H, self.n_clusters))

    def _fit(self, X):
        n, D = X.shape
        if n < 2:
            raise ValueError(f"Self-Classifier needs at least 2 samples for its batch "
                             f"statistics, got n_samples = {n}")
        B = min(int(self.batch_size), n)
        steps = (int(np.clip(60 * n / B, 2000, 50000)) if self.n_steps == "auto"
                 else int(self.n_steps))
        g = self.generator_
        torch.manual_seed(self.seed_)
        head = self._head(D).to(self.device_)
        opt = torch.optim.AdamW(head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = warmup_cosine(opt, steps, max(steps // 20, 1), 1e-3)
        Xt = F.normalize(torch.from_numpy(X), dim=-1)
        history, t0 = [], time.perf_counter()

        def step(i):
            x = Xt[torch.randint(n, (B,), generator=g)]
            v1 = feature_view(x, g, self.aug_noise, self.aug_drop).to(self.device_)
            v2 = feature_view(x, g, self.aug_noise, self.aug_drop).to(self.device_)
            head.train()
            with autocast(self.device_, self.amp_dtype_):
                l1, l2 = head(v1).float(), head(v2).float()
            return self_classifier_loss(l1, l2, self.tau_row, self.tau_col), {}

        train_steps(step, opt, n_steps=steps, desc="Self-Classifier", history=history,
                    verbose=self.verbose, clock=lambda: time.perf_counter() - t0,
                    hint=f"lower lr (now {self.lr})", scheduler=sched)
        self.head_ = head.eval()
        self.history_, self.n_steps_ = history, steps
        self.labels_ = self._predict_proba(X).argmax(1)

    @torch.no_grad()
    def _predict_proba(self, X):
        x = F.normalize(torch.from_numpy(X), dim=-1).to(self.device_)
        with autocast(self.device_, self.amp_dtype_):
            logits = self.head_.eval()(x).float()
        return torch.softmax(logits / self.tau_row, dim=-1).cpu().numpy().astype(np.float64)

    _fitted_json = ("n_steps_", "history_")

    def _get_state(self):
        return {}, named_state(head=self.head_)

    def _set_state(self, meta, tensors):
        head = self._head(self.n_features_in_)
        load_named_state(tensors, head=head)
        self.head_ = head.to(self.device_).eval()
