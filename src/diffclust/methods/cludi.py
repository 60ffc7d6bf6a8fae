"""CLUDI: Clustering via Self-Supervised Diffusion (Uziel et al., ICML 2025).

A conditional diffusion model samples *assignment embeddings* ``z_0 ∈ R^d`` given a frozen
feature vector ``x``; a linear classifier maps them to cluster probabilities and the prediction
averages ``p(y | z_0^(s))`` over S sampled chains (eq. 3). Training is teacher–student
self-distillation with shared weights (METHODS.md §2.4):

1. teacher: stochastic DDIM (η = 1, noise scale F; the paper's 25 steps, our 10) from
   ``z_T ~ N(0, F² I)`` on the clean features → logits ``L^T = W ẑ_0 + b``,
   ``p^T = softmax(L^T/τ)`` and the target
   ``z̃ = sqrt(d) · normalize(p^T Ē)`` (eq. 13–14);
2. student: ``z_t = sqrt(ᾱ_t) z̃ + sqrt(1 − ᾱ_t) F ε`` on augmented features (unit-direction
   Gaussian noise + coordinate dropout), ``ẑ^S = ẑ_θ(z_t, x̃, t)``, re-embedded ``z̃^S`` (eq. 15–17);
3. ``L = E_t[w_t (L_emb + λ L_CE)]`` with ``w_t = min(SNR(t), γ)/F`` (Min-SNR, eq. 26 as in the
   authors' code), ``L_emb`` the MSE between re-embeddings (eq. 18) and ``L_CE`` the symmetric
   Self-Classifier cross-entropy over all teacher–student chain pairs (eq. 20–24).

Decisions where METHODS.md leaves a choice (all switchable; measured in docs/DECISIONS.md,
"CLUDI"):

* ``teacher_grad="last"``: gradients reach the teacher through its last denoising step only
  (``"none"``: the paper's stop-gradient; ``"all"``: the authors' code).
* ``lr=1e-3`` with warm-up and cosine decay over ``n_steps="auto"`` =
  ``clip(60·N/B, 2000, 50000)`` optimiser steps (the code's 1e-4 is tuned for ~50k steps).
* The teacher samples 10 DDIM steps (``teacher_steps``; the paper's 25 measured no better) with
  the student's own weights in eval mode (``teacher="shared"``; ``"ema"``: an EMA copy).
* CE pairs weighted by the student chain's weight (``code_faithful_weighting``: the code's
  teacher-index weighting); augmentation noise then dropout (``aug_order``).
* Prediction averages probabilities (eq. 3; ``average="logits"``: the code) over
  ``eval_chains`` chains of 10 DDIM steps (``eval_steps``; measured equal to 50).
* ``embedding_dim="auto"``: 64 for K ≤ 50, 128 above.
* ``neighbor_views`` (off: the paper's views): the student may see a random one of the
  k nearest neighbours of each point instead (TEMI's and SCAN's pairs); measured, not default.
* ``init_partition="multiscale"``: the consensus of the spectral partitions of the features'
  k-NN graphs (k = 5 … 30) is the teacher of the first 10 % of the steps (``None``: the
  paper's start from a random network); +7.0 ACC over k-means on ImageNet-50 (three seeds),
  +10.6 on CIFAR-10 (three seeds), +27.2 on USPS and −5.1 on Fashion-MNIST, where the
  paper's start gives +3.3 (one seed each; docs/DECISIONS.md).

Distributed training under ``torchrun``: docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..augment import feature_view
from ..diffusion.assignment import ONE_PROCESS, CLUDINet, sample_embeddings
from ..diffusion.process import q_sample
from ..diffusion.schedules import NoiseSchedule
from ..diffusion.weighting import min_snr_weight
from ..losses import cludi_loss
from ..training.checkpoint import load_named_state, named_state
from ..training.distributed import (DistributedBatchSampler, GlobalBatchDropout, GlobalBatchRandom,
                                    StepModule, all_gather_cat, all_reduce_mean, swap_dropout,
                                    wrap_ddp)
from ..training.loop import LossLog, train_steps
from ..training.optim import EMA, param_groups, warmup_cosine
from ..training.runtime import autocast, map_batches
from .base import DiffClusterMixin, EmbeddingMixin, ResumableMixin
from .params import (AUTO, COMMON, StrOptions, flag, fraction, int_at_least, non_negative, pair,
                     positive, unit)

__all__ = ["CLUDI", "CLUDINet"]


class CLUDI(EmbeddingMixin, ResumableMixin, DiffClusterMixin):
    """CLUDI clustering of feature vectors (e.g. DINO ViT embeddings).

    Parameters
    ----------
    n_clusters : int
    embedding_dim : int or "auto"
        d, the assignment-embedding width (64 for K ≤ 50, 128 above when "auto").
    noise_scale, decoding_noise_scale : float
        F for training and F_dec for sampling (49, 49).
    ce_weight : float
        λ, weight of the Self-Classifier CE (50).
    n_steps : int or "auto"
        Optimiser steps (see the module docstring).
    n_chains : int
        S, training chains per point (8). ``teacher_steps``: DDIM steps of the teacher (10; the
        paper's 25 labelled no better at 1.7× the cost: docs/DECISIONS.md, "CLUDI").
    eval_chains, eval_steps : int
        Chains averaged and DDIM steps at prediction (8, 10; 10 steps labelled as 50 did,
        5× faster: docs/DECISIONS.md, "CLUDI").
    batch_size : int
        B (256; the whole data when smaller). Under torch.distributed the global batch, split
        evenly over the ranks (must be divisible by the world size).
    center : bool
        [PROP] Subtract the training mean before the unit normalisation (False: the paper's
        raw features). Raw pixels share a large mean component; on the digits centring took
        ACC from 62.5 to 76.7 (docs/DECISIONS.md, "Demo").
    neighbor_views : int or "auto"
        [PROP] With k > 0 the student sees a random one of the k nearest neighbours (cosine) of
        each point instead of the point itself (SCAN-like); 0 (default) is the paper's.
        ``"auto"``: 10 when the data hold at least 100 points per cluster (N ≥ 100·K), else 0.
        Not the default: seed-dependent on USPS features (74.3 and 43.7 ACC; docs/DECISIONS.md,
        "CLUDI: neighbour views").
    marginal_entropy : float
        [PROP] Weight λ_H of ``log K − H(p̄)``, p̄ the student's mean assignment over the batch
        and chains (SCAN's entropy term): a stronger push against merged clusters than the
        Self-Classifier's uniform prior. 0 (default) is the paper's loss. With
        ``neighbor_views=10`` it made the demo on raw digits but collapsed ImageNet-50 features
        to 12 of 50 clusters (docs/DECISIONS.md, "Demo").
    init_partition : {"multiscale", "spectral", "kmeans", None}
        [PROP] A partition of the training features that stands in for the teacher during the
        first ``init_steps`` steps (``p^T`` = 0.9 on its label, the rest spread evenly; the
        teacher is not sampled then): the consensus of the spectral partitions of their cosine
        k-NN graphs for k = 5, 10, 15, 20, 30 (the default,
        :func:`diffclust.graph.multiscale_partition`), the spectral partition of the 10-NN
        graph alone, or k-means (:func:`diffclust.graph.start_partition`). It is kept in
        ``init_labels_``. None is the paper's start. Measured in docs/DECISIONS.md ("CLUDI: a
        first teacher from the k-NN graph", "CLUDI: a multiscale graph start"): it lifts CLUDI
        above k-means on ImageNet-50, USPS and CIFAR-10 features; on Fashion-MNIST, whose
        classes the graph does not follow, the multiscale start cost 8.4 ACC against the
        paper's start (63.6 against 72.0; k-means 68.7): pass None there.
    init_steps : int or float in [0, 1)
        Steps of ``init_partition``: a count, or a fraction of ``n_steps`` (0.1).
    """

    _thread_cap = 1  # one intra-op thread by default: docs/DECISIONS.md, "Threads"

    _parameter_constraints = {
        **COMMON,
        "embedding_dim": [int_at_least(2), AUTO],
        "noise_scale": [positive], "decoding_noise_scale": [positive],
        "ce_weight": [non_negative], "tau": [positive], "tau_row": [positive],
        "tau_col": [positive], "min_snr_gamma": [positive],
        "n_chains": [int_at_least(1)], "teacher_steps": [int_at_least(1)],
        "n_steps": [int_at_least(1), AUTO], "batch_size": [int_at_least(2)],
        "lr": [positive], "weight_decay": [non_negative], "warmup_steps": [int_at_least(1), AUTO],
        "min_lr": [non_negative], "clip_grad": [positive, None], "dropout": [fraction],
        "self_condition_prob": [unit], "aug_noise": pair, "aug_drop": pair,
        "aug_order": [StrOptions({"noise_then_drop", "drop_then_noise"})],
        "teacher": [StrOptions({"shared", "ema"})],
        "teacher_grad": [StrOptions({"last", "none", "all"}), "boolean", None],
        "ema_decay": [unit], "code_faithful_weighting": flag, "learn_E": flag,
        "n_timesteps": [int_at_least(2)], "schedule": [str], "eval_chains": [int_at_least(1)],
        "eval_steps": [int_at_least(1)], "average": [StrOptions({"probs", "logits"})],
        "predict_batch_size": [int_at_least(1)], "center": flag,
        "neighbor_views": [int_at_least(0), AUTO], "marginal_entropy": [non_negative],
        "init_partition": [StrOptions({"spectral", "multiscale", "kmeans"}), None],
        "init_steps": [int_at_least(0), fraction],
    }

    def __init__(self, n_clusters=10, *, embedding_dim="auto", noise_scale=49.0,
                 decoding_noise_scale=49.0, ce_weight=50.0, tau=0.1, tau_row=0.1, tau_col=0.05,
                 min_snr_gamma=5.0, n_chains=8, teacher_steps=10, n_steps="auto", batch_size=256,
                 lr=1e-3, weight_decay=0.01, warmup_steps="auto", min_lr=1e-6, clip_grad=4.0,
                 dropout=0.15, self_condition_prob=0.5, aug_noise=(0.2, 1.0),
                 aug_drop=(0.05, 0.1), aug_order="noise_then_drop", teacher="shared",
                 teacher_grad="last", ema_decay=0.999, code_faithful_weighting=False,
                 learn_E=False, n_timesteps=1000, schedule="sqrt", eval_chains=8,
                 eval_steps=10, average="probs", predict_batch_size=1024, center=False,
                 neighbor_views=0, marginal_entropy=0.0, init_partition="multiscale",
                 init_steps=0.1, random_state=None,
                 device=None, precision="auto", verbose=True):
        self.n_clusters = n_clusters
        self.embedding_dim = embedding_dim
        self.noise_scale = noise_scale
        self.decoding_noise_scale = decoding_noise_scale
        self.ce_weight = ce_weight
        self.tau = tau
        self.tau_row = tau_row
        self.tau_col = tau_col
        self.min_snr_gamma = min_snr_gamma
        self.n_chains = n_chains
        self.teacher_steps = teacher_steps
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.min_lr = min_lr
        self.clip_grad = clip_grad
        self.dropout = dropout
        self.self_condition_prob = self_condition_prob
        self.aug_noise = aug_noise
        self.aug_drop = aug_drop
        self.aug_order = aug_order
        self.teacher = teacher
        self.teacher_grad = teacher_grad
        self.ema_decay = ema_decay
        self.code_faithful_weighting = code_faithful_weighting
        self.learn_E = learn_E
        self.n_timesteps = n_timesteps
        self.schedule = schedule
        self.eval_chains = eval_chains
        self.eval_steps = eval_steps
        self.average = average
        self.predict_batch_size = predict_batch_size
        self.center = center
        self.neighbor_views = neighbor_views
        self.marginal_entropy = marginal_entropy
        self.init_partition = init_partition
        self.init_steps = init_steps
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.verbose = verbose

    # ------------------------------------------------------------------ resolved settings
    def _z_dim(self):
        if self.embedding_dim == "auto":
            return 64 if self.n_clusters <= 50 else 128
        return int(self.embedding_dim)

    def _resolve_steps(self, n):
        B = min(self.batch_size, n)
        steps = (int(np.clip(60 * n / B, 2000, 50000)) if self.n_steps == "auto"
                 else int(self.n_steps))
        warm = (min(max(steps // 20, 1), max(n // B, 1) * 5 if n >= B else steps // 20)
                if self.warmup_steps == "auto" else int(self.warmup_steps))
        return B, steps, max(warm, 1)

    def _teacher_grad_mode(self):
        mode = {False: "none", True: "all", None: "none"}.get(self.teacher_grad, self.teacher_grad)
        if mode not in ("none", "last", "all"):
            raise ValueError(f"teacher_grad must be 'last', 'none' (or False) or 'all' (or True), "
                             f"got {self.teacher_grad!r}")
        return mode

    def _check_params(self, n):
        """The rule that needs the data (each parameter alone is declared above)."""
        B = min(self.batch_size, n)
        if B < 2 * self.n_clusters:
            import warnings

            warnings.warn(f"batch size {B} < 2·n_clusters ({2 * self.n_clusters}): the "
                          f"Self-Classifier loss needs batches much larger than K; raise "
                          f"batch_size", stacklevel=3)

    # ------------------------------------------------------------------ the step
    def _sample_embeddings(self, net, x, S, n_steps, g, noise_scale, grad_last=False,
                           rows=ONE_PROCESS):
        return sample_embeddings(net, x, S, self.sched_, n_steps, g, noise_scale,
                                 self.amp_dtype_, grad_last, rows)

    def _train_step(self, net, teacher_net, x, g, rows=ONE_PROCESS, gather=None, x_view=None,
                    anchor=None):
        """Loss of one step on the batch ``x`` (this rank's rows ``rows`` of the global batch;
        ``gather``: all-gather of per-rank logits along the batch, for the Self-Classifier CE;
        ``anchor``: labels that stand in for the teacher, see ``init_partition``).
        Returns ``(loss, parts)``, ``parts`` the global-batch loss values (floats)."""
        S, dev = self.n_chains, x.device
        x = F.normalize(x, dim=-1)  # §2.4.1: the augmentation acts on unit-norm features
        # the student's view: x itself (paper) or a k-NN neighbour of x (neighbor_views > 0)
        x_view = x if x_view is None else F.normalize(x_view, dim=-1)
        mode = self._teacher_grad_mode()
        if anchor is not None:  # the initial partition is the teacher: p^T = 0.9 on its label
            c = self.tau * math.log(9.0 * max(self.n_clusters - 1, 1))
            logits_T = c * F.one_hot(anchor, self.n_clusters).float().expand(S, -1, -1)
            mode = "none"
        else:  # --- teacher (eval mode: no dropout), detached unless teacher_grad ---
            teacher_net.eval()
            with torch.set_grad_enabled(mode != "none"), autocast(dev, self.amp_dtype_):
                z0_T = self._sample_embeddings(teacher_net, x, S, self.teacher_steps, g,
                                               self.decoding_noise_scale,
                                               grad_last=mode == "last", rows=rows)
                logits_T = teacher_net.classifier(z0_T).float()
        p_T = torch.softmax(logits_T / self.tau, dim=-1)
        z_tgt = net.reembed(p_T)
        if mode == "none":
            logits_T, z_tgt = logits_T.detach(), z_tgt.detach()
        # --- student ---
        net.train()
        x_aug = feature_view(x_view.expand(S, *x_view.shape), g, self.aug_noise, self.aug_drop,
                             self.aug_order, rows)
        t = torch.randint(0, self.n_timesteps, (S,), generator=g).to(dev)
        eps = rows.randn(z_tgt.shape, g, dev)
        z_t = q_sample(self.sched_, z_tgt, t, noise=eps, noise_scale=self.noise_scale)
        use_sc = torch.rand((), generator=g).item() < self.self_condition_prob
        with autocast(dev, self.amp_dtype_):
            logits_S = net.classifier(net.denoise(z_t, x_aug, t, use_sc)).float()
        z_S = net.reembed(torch.softmax(logits_S / self.tau, dim=-1))
        # --- losses (fp32) ---
        w = min_snr_weight(self.sched_.snr(t), self.min_snr_gamma, "x0") / self.noise_scale
        # the CE on the global batch (identical on every rank; see the module docstring)
        loss, l_emb, l_ce = cludi_loss(
            z_S, z_tgt, logits_S, logits_T, w, ce_weight=self.ce_weight, tau=self.tau,
            tau_row=self.tau_row, tau_col=self.tau_col, marginal_entropy=self.marginal_entropy,
            teacher_weighting=self.code_faithful_weighting, gather_fn=gather)
        if not rows.distributed:
            return loss, {"l_emb": l_emb.item(), "l_ce": l_ce.item(), "loss": loss.item()}
        l_emb_g = all_reduce_mean(l_emb.detach())
        loss_g = l_emb_g + self.ce_weight * l_ce.detach()
        return loss, {"l_emb": l_emb_g.item(), "l_ce": l_ce.item(), "loss": loss_g.item()}

    # ------------------------------------------------------------------ fit / predict
    def _build(self, D):
        torch.manual_seed(self.seed_ if hasattr(self, "seed_") else 0)
        net = CLUDINet(self.n_clusters, D, self._z_dim(), self.dropout, self.learn_E)
        return net.to(self.device_)

    def _make_schedule(self):
        self.sched_ = NoiseSchedule(self.schedule, self.n_timesteps, noise_scale=self.noise_scale)

    def _fit(self, X):
        n, D = X.shape
        self._check_params(n)
        self._make_schedule()
        B, steps, warm = self._resolve_steps(n)
        info = self._setup_distributed(B, n)  # world 1 unless torch.distributed / torchrun
        W = info.world_size
        g = self.generator_
        net = self._build(D)
        if info.distributed:  # dropout masks drawn for the global batch, then sliced
            swap_dropout(net, lambda m: GlobalBatchDropout(m.p, info.rank, W))
        ema = EMA(net, self.ema_decay) if self.teacher == "ema" else None
        # fused AdamW: one kernel for all parameters (3.5× faster than the loop on CPU)
        opt = torch.optim.AdamW(param_groups(net, self.weight_decay), lr=self.lr,
                                betas=(0.9, 0.98), fused=True)
        sched = warmup_cosine(opt, steps, warm, self.min_lr / self.lr)
        X = self._center(X, fitting=True)
        Xt = torch.from_numpy(X).to(self.device_)
        k = self._n_views(n)
        nbrs = self._neighbors(X, k) if k else None
        n_init = self._initial_partition(X, steps, nbrs)
        anchors = torch.from_numpy(self.init_labels_) if n_init else None
        history, t0 = [], time.perf_counter()
        # global batches from the shared generator g (same seed on every rank), drawn exactly
        # as one process draws them; each rank keeps its contiguous slice
        sampler = DistributedBatchSampler(n, B, info=info, generator=g)
        local = sampler.local_slice()
        rows = GlobalBatchRandom.for_rank(B, info, dim=1) if info.distributed else ONE_PROCESS
        gather = (lambda t: all_gather_cat(t, dim=-2)) if info.distributed else None
        # DDP over the whole step (the teacher pass may carry gradients too), or the step as is
        step_fn = wrap_ddp(StepModule(self._train_step, net), info)
        log = LossLog(max(steps // 50, 1), steps)
        state = dict(modules={"net": net, **({"ema": ema.module} if ema else {})},
                     optimizer=opt, scheduler=sched, sampler=sampler, generator=g)
        start, _, extra = self._restore_training(X, state, n_steps=steps)
        history.extend(extra.get("history", []))
        if history:  # a resumed run's clock continues where the checkpointed one stopped
            t0 -= history[-1].get("seconds", 0.0)
        if "log" in extra:
            log.load_state_dict(extra["log"])

        def step(i):
            gidx = sampler.next_global_batch()
            x_view = None
            if nbrs is not None:  # one random neighbour per point, drawn for the global batch
                pick = torch.randint(nbrs.shape[1], (len(gidx),), generator=g)
                x_view = Xt[nbrs[gidx, pick][local].to(self.device_)]
            idx = gidx[local].to(self.device_)
            anchor = anchors[gidx[local]].to(self.device_) if i < n_init else None
            return step_fn(ema.module if ema else net, Xt[idx], g, rows, gather, x_view, anchor)

        def checkpoint(done, _):
            if info.is_main:
                self._checkpoint_training(done, steps, state,
                                          extra={"history": history, "log": log.state_dict()})

        train_steps(step, opt, n_steps=steps, start=start, desc="CLUDI", history=history,
                    log=log, verbose=self.verbose and info.is_main, after_step=checkpoint,
                    clock=lambda: time.perf_counter() - t0, postfix=("loss", "l_ce"),
                    hint=f"lower lr (now {self.lr}) or ce_weight (now {self.ce_weight}), "
                         f"or use precision='fp32'",
                    scheduler=sched, clip_grad=self.clip_grad or None, clip="per_parameter",
                    parameters=net, ema=ema, ema_of=net)
        del step_fn  # drop the DDP wrapper (and its gradient hooks) before the labelling pass
        final = ema.module if ema is not None else net
        if info.distributed:  # back to plain dropout (inactive in eval mode anyway)
            swap_dropout(final, lambda m: nn.Dropout(m.p))
        self.net_ = final.eval()
        self.history_ = history
        self.n_steps_ = steps
        self.fit_seconds_ = time.perf_counter() - t0
        proba = self._predict_proba(X, centered=True)
        self.labels_ = proba.argmax(1)
        self.train_proba_ = proba

    def _center(self, X, fitting=False):
        """``center=True``: subtract the training mean before the unit normalisation (features
        that share a large common component, e.g. raw pixels, then spread over the sphere)."""
        if fitting:
            self.mean_ = (X.mean(0) if self.center else np.zeros(X.shape[1])).astype(np.float32)
        return np.ascontiguousarray(X - self.mean_, dtype=np.float32) if self.center else X

    def _initial_partition(self, X, steps, nbrs=None):
        """The ``init_partition`` of the training features, kept in ``init_labels_``; returns
        the number of first steps it stands in for the teacher (0 without one, or with no more
        points than clusters). ``nbrs``: the neighbour views' k-NN, reused for the graph."""
        self.__dict__.pop("init_labels_", None)  # none left from an earlier fit
        k = self.init_steps
        n_init = min(int(round(k * steps)) if isinstance(k, float) else int(k), steps)
        if self.init_partition is None or n_init == 0 or len(X) <= self.n_clusters:
            return 0
        from ..graph import start_partition

        self.init_labels_ = start_partition(X, self.n_clusters, self.init_partition,
                                            neighbors=nbrs, random_state=self.seed_)
        return n_init

    def _n_views(self, n):
        """k of ``neighbor_views``: ``"auto"`` is 10 when ``n ≥ 100·K``, else 0."""
        k = ((10 if n >= 100 * self.n_clusters else 0) if self.neighbor_views == "auto"
             else int(self.neighbor_views))
        return min(k, n - 1)

    def _neighbors(self, X, k):
        """The ``k`` nearest neighbours (cosine) of every training point."""
        from ..knn import knn_search

        nbrs, _ = knn_search(X, k, metric="cosine", exclude_self=True)
        return torch.as_tensor(np.asarray(nbrs), dtype=torch.int64)

    @torch.no_grad()
    def _predict_proba(self, X, centered=False):
        X = X if centered else self._center(X)
        net = self.net_.eval()
        S = int(self.eval_chains)
        g = torch.Generator().manual_seed(getattr(self, "seed_", 0) + 1)

        def proba(xb):
            with autocast(self.device_, self.amp_dtype_):
                z0 = self._sample_embeddings(net, xb, S, self.eval_steps, g,
                                             self.decoding_noise_scale)
                logits = net.classifier(z0).float()
            if self.average == "logits":
                return torch.softmax(logits.mean(0) / self.tau, dim=-1)
            return torch.softmax(logits / self.tau, dim=-1).mean(0)

        return map_batches(proba, X, self.predict_batch_size, self.device_, "CLUDI predict",
                           self.verbose).numpy().astype(np.float64)

    def transform(self, X):
        """The averaged assignment embedding E[ẑ_0 | x] over ``eval_chains`` chains, (N, d)."""
        X = self._center(self._fitted_input(X))
        g = torch.Generator().manual_seed(getattr(self, "seed_", 0) + 2)

        def embedding(xb):
            with autocast(self.device_, self.amp_dtype_):
                z0 = self._sample_embeddings(self.net_, xb, self.eval_chains, self.eval_steps, g,
                                             self.decoding_noise_scale)
            return z0.float().mean(0)

        with torch.no_grad():
            return map_batches(embedding, X, self.predict_batch_size, self.device_).numpy()

    # ------------------------------------------------------------------ persistence
    _fitted_json = ("n_steps_", "fit_seconds_", "history_", "seed_")

    def _get_state(self):
        return ({"z_dim": self.net_.z_dim},
                dict(named_state(net=self.net_), mean_=torch.from_numpy(self.mean_)))

    def _set_state(self, meta, tensors):
        self._make_schedule()
        mean = tensors.pop("mean_", None)  # models saved before `center` have none
        self.mean_ = (mean.numpy() if mean is not None
                      else np.zeros(self.n_features_in_, np.float32))
        net = CLUDINet(self.n_clusters, self.n_features_in_, meta["z_dim"], self.dropout,
                       self.learn_E)
        load_named_state(tensors, net=net)
        self.net_ = net.to(self.device_).eval()
