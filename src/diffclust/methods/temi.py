"""TEMI: Transformation-Equivariant Multi-Instance clustering of frozen features
(Adaloglou et al., BMVC 2023), the clusterer of C-EDM (METHODS.md §4.2, C-EDM eq. 1).

Algorithm (one optimiser step):

1. mine once the m = 50 nearest neighbours of every point by cosine similarity (self excluded;
   :func:`diffclust.knn.knn_search`);
2. draw a batch of points x and, for each, a partner x' uniformly among its neighbours
   (redrawn every time, like the reference loader);
3. H DINO-style heads ``Linear(D, 512) → GELU → Linear(512, 256) → L2-normalise →
   weight-normalised Linear(256, C, no bias)`` (trainable gain, "norm_last_layer = false") are
   applied to both views by the student and by the teacher (an EMA of the student, momentum on
   a cosine schedule 0.996 → 1);
4. :func:`diffclust.losses.temi_loss`: the PMI objective with exponent γ = 0.6, weighted by the
   teacher agreement w(x, x'), divided by the EMA cluster prior q̃ (momentum 0.9, updated before
   the loss), symmetrised and averaged over the heads;
5. AdamW (lr 1e-4 · B/256, linear scaling as in the TEMI code; weight decay 1e-4 on weights,
   not biases), linear warm-up then cosine decay to ``min_lr · B/256``; the last layer is frozen
   during the first "epoch".

After training, the head with the lowest mean loss over the last part of training is selected
(``selected_head_``, all losses in ``head_losses_``). ``readout="best_head"`` is the paper's
read-out: ``c*(x) = argmax_c q_t(c|x)`` of that teacher head (C-EDM §3.1). The default
``readout="consensus"`` [PROP] uses all H teacher heads: their partitions of the training set
are combined into one (:func:`diffclust.consensus.consensus_partition`, with as many clusters as
the selected head uses), every head's clusters are relabelled onto it
(:func:`~diffclust.consensus.align_partitions`, ``head_perm_``), and ``q(c|x)`` is the mean of
the relabelled heads' ``q_t`` — measured in docs/DECISIONS.md ("TEMI: a consensus of the
heads"). ``cluster_frequencies_`` is q(c) on the training set
and ``utilization_`` the ratio r_C = C^u / C of §4.3.

Implementation decisions (METHODS.md leaves them open or they are CPU-specific):

* All H heads are *one* module with stacked weights: the first layer of every head is a single
  ``(D, H·512)`` matrix product on the shared input, the second and last layers batched matrix
  products (``bmm``) — no Python loop over heads. The last layer (and the softmax) run in fp32
  even under bf16 autocast.
* ``n_heads=16`` by default, the TEMI README's value; the C-EDM paper's Table 8 uses H = 50
  (``n_heads=50`` reproduces it). 16 heads cost a third of 50 and on the ImageNet-50 features
  selected heads of the same quality (see benchmarks/RESULTS.md, "TEMI").
* Training length in optimiser steps. ``n_steps="auto"`` is the paper's 200 epochs of batch
  512 (``200·N/B``) clipped to [3,000, 50,000]: at least 3,000 steps however small the data
  (200 epochs of 1,250 points are only 400 steps), at most 50,000 steps (200 epochs of
  ~128k points; beyond that the heads have long converged and 1M points get 25 epochs).
  The floor is measured: on the 1,250 ImageNet-50 DINO features (4 heads, seed 0) 1,000 steps
  gave ACC 60.6 / NMI 78.1 and 3,000 steps 84.0 / 89.4 (k-means: 81.3 / 88.3) — the EMA
  teacher and the prior q̃ need a few thousand updates whatever N is.
* The schedules are laid out on those steps: warm-up = 5 % of the steps (10 of the paper's 200
  epochs), last layer frozen for 0.5 % of the steps, at least one epoch when that fits in the
  warm-up (one of 200 epochs), head losses averaged over the last 5 % of steps (at least one
  epoch) for the selection, like the code's last-epoch average.
* Inputs are used raw (``l2_norm=False``, ``embed_norm=False``, the TEMI code's defaults; both
  switchable [PROP]).

Distributed training under ``torchrun``: docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..consensus import align_partitions, consensus_partition
from ..knn import knn_search
from ..losses import temi_loss
from ..models.heads import MultiHeadDINO
from ..training.checkpoint import load_named_state, named_state
from ..training.distributed import (DistributedBatchSampler, all_reduce_mean, broadcast_tensor,
                                    wrap_ddp)
from ..training.loop import LossLog, Step, train_steps
from ..training.optim import EMA, cosine_value, warmup_cosine
from ..training.runtime import Compiled, autocast, map_batches, resolve_compile
from .base import DiffClusterMixin, EmbeddingMixin, ResumableMixin
from .params import (AUTO, COMMON, StrOptions, flag, int_at_least, non_negative, positive, unit,
                     unit_open)

__all__ = ["TEMI", "MultiHeadDINO"]


class TEMI(EmbeddingMixin, ResumableMixin, DiffClusterMixin):
    """TEMI clustering of feature vectors (e.g. DINO ViT embeddings), scikit-learn style.

    Parameters
    ----------
    n_clusters : int
        C.
    n_heads : int
        H, heads trained in parallel; the one with the lowest loss is kept (16; the paper's
        Table 8 uses 50).
    n_neighbors : int or "auto"
        m, mined cosine nearest neighbours a partner x' is drawn from. ``"auto"`` [PROP] is
        ``clip(N / (2C), 5, 50)``: the paper's 50 once clusters hold ≥ 100 points, fewer on small
        data, where 50 neighbours would reach far outside a point's cluster (on 1,250
        ImageNet-50 features, 25 per class, m = 50 drew most partners from other classes).
    gamma : float
        γ of the TEMI loss (0.6; γ = 1 partially collapses).
    student_temp, teacher_temp : float
        τ_s, τ_t (0.1, 0.1).
    probs_momentum : float
        λ of the EMA prior q̃ (0.9, the TEMI code).
    teacher_momentum, max_teacher_momentum : float
        Teacher EMA momentum, cosine from 0.996 to 1.0 over training.
    hidden_dim, bottleneck_dim : int
        Head sizes (512, 256).
    n_steps : int or "auto"
        Optimiser steps; "auto" = clip(200·N/B, 3000, 50000) (see the module docstring).
    batch_size : int
        B (512; the whole data when smaller). Under torch.distributed the global batch, split
        evenly over the ranks (must be divisible by the world size).
    lr : float
        Base learning rate (1e-4), multiplied by B/256 (``lr_scaling=True``).
    weight_decay, min_lr : float
        AdamW weight decay (1e-4) and the final lr of the cosine schedule (1e-6, also scaled).
    warmup_steps, freeze_last_layer_steps : int or "auto"
        Linear warm-up steps (5 % of n_steps) and steps with the last layer frozen (one epoch
        capped at 0.5 % of the steps, at least 1).
    l2_norm, embed_norm : bool
        L2-normalise the inputs / standardise each dimension with the training mean and std
        before the heads (both off, as in the TEMI code).
    knn_backend : {"auto", "torch", "faiss", "faiss_ivf"}
        Backend of the neighbour mining.
    readout : {"consensus", "best_head"}
        How the clusters are read from the trained heads: the mean of all heads relabelled onto
        their consensus partition (default; with fewer than 3 heads the best head), or the
        lowest-loss head alone (the paper).
    compile : bool or "auto"
        ``torch.compile`` the heads for training (1.14–1.28× the step on our 2-core CPU:
        docs/DECISIONS.md, "Compiled TEMI heads"); "auto" compiles fits of ≥ 2,000 steps,
        and a failed compilation falls back to eager with a warning. Compiled and eager
        training round differently: labels are reproducible for one setting.
    """

    _thread_cap = 1  # one intra-op thread by default: docs/DECISIONS.md, "Threads"
    _read_out_params = ("readout",)  # a checkpoint of the training serves either read-out

    _parameter_constraints = {
        **COMMON,
        "n_heads": [int_at_least(1)], "n_neighbors": [int_at_least(1), AUTO],
        "gamma": [unit_open], "student_temp": [positive], "teacher_temp": [positive],
        "probs_momentum": [unit], "teacher_momentum": [unit], "max_teacher_momentum": [unit],
        "hidden_dim": [int_at_least(1)], "bottleneck_dim": [int_at_least(1)],
        "batch_size": [int_at_least(2)], "n_steps": [int_at_least(1), AUTO],
        "warmup_steps": [int_at_least(0), AUTO], "freeze_last_layer_steps": [int_at_least(0), AUTO],
        "lr": [positive], "lr_scaling": flag, "min_lr": [non_negative],
        "weight_decay": [non_negative], "embed_norm": flag, "l2_norm": flag,
        "knn_backend": [StrOptions({"auto", "torch", "faiss", "faiss_ivf"})],
        "readout": [StrOptions({"consensus", "best_head"})],
        "predict_batch_size": [int_at_least(1)], "compile": [AUTO, "boolean"],
    }

    def __init__(self, n_clusters=10, *, n_heads=16, n_neighbors="auto", gamma=0.6,
                 student_temp=0.1, teacher_temp=0.1, probs_momentum=0.9,
                 teacher_momentum=0.996, max_teacher_momentum=1.0, hidden_dim=512,
                 bottleneck_dim=256, n_steps="auto", batch_size=512, lr=1e-4, lr_scaling=True,
                 weight_decay=1e-4, min_lr=1e-6, warmup_steps="auto",
                 freeze_last_layer_steps="auto", l2_norm=False, embed_norm=False,
                 knn_backend="auto", readout="consensus", predict_batch_size=4096,
                 compile="auto", random_state=None, device=None, precision="auto", verbose=True):
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.n_neighbors = n_neighbors
        self.gamma = gamma
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.probs_momentum = probs_momentum
        self.teacher_momentum = teacher_momentum
        self.max_teacher_momentum = max_teacher_momentum
        self.hidden_dim = hidden_dim
        self.bottleneck_dim = bottleneck_dim
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.lr = lr
        self.lr_scaling = lr_scaling
        self.weight_decay = weight_decay
        self.min_lr = min_lr
        self.warmup_steps = warmup_steps
        self.freeze_last_layer_steps = freeze_last_layer_steps
        self.l2_norm = l2_norm
        self.embed_norm = embed_norm
        self.knn_backend = knn_backend
        self.readout = readout
        self.predict_batch_size = predict_batch_size
        self.compile = compile
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.verbose = verbose

    # ------------------------------------------------------------------ resolved settings
    def _n_neighbors(self, n):
        if self.n_neighbors == "auto":
            return int(np.clip(n // (2 * self.n_clusters), 5, 50))
        return int(self.n_neighbors)

    def _resolve_schedule(self, n):
        B = int(min(self.batch_size, n))
        per_epoch = max(n // B, 1)
        steps = (int(np.clip(math.ceil(200 * n / B), 3000, 50000)) if self.n_steps == "auto"
                 else int(self.n_steps))
        warm = (max(round(0.05 * steps), 1) if self.warmup_steps == "auto"
                else int(self.warmup_steps))
        freeze = (max(min(per_epoch, round(0.005 * steps)), 1)
                  if self.freeze_last_layer_steps == "auto"
                  else int(self.freeze_last_layer_steps))
        window = min(max(round(0.05 * steps), per_epoch, 1), steps)
        return B, steps, min(warm, steps), min(freeze, steps), window

    def _preprocess(self, X: np.ndarray) -> torch.Tensor:
        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        if self.l2_norm:
            Xt = F.normalize(Xt, dim=-1)
        if self.embed_norm:
            Xt = (Xt - self.embed_mean_) / self.embed_std_
        return Xt

    def _param_groups(self, net):
        decay = [p for n, p in net.named_parameters() if not n.startswith("b")]
        no_decay = [p for n, p in net.named_parameters() if n.startswith("b")]
        return [{"params": decay, "weight_decay": self.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    # ------------------------------------------------------------------ fit
    def _train_step(self, student, teacher, x, x_pair, q_tilde, batch_mean_fn=None):
        """Steps 3–4 of the algorithm on a batch ``x`` and its mined partners ``x_pair``: both
        views through the student and the EMA teacher (no gradient), then the TEMI loss of every
        head. Returns ``(head_losses (H,), q̃ updated)``."""
        b, dev = len(x), x.device
        views = torch.cat([x, x_pair])  # (2b, D): x then x'
        with torch.no_grad(), autocast(dev, self.amp_dtype_):
            t_logits = teacher(views)
        with autocast(dev, self.amp_dtype_):
            s_logits = student(views)
        return temi_loss(s_logits[:, :b], s_logits[:, b:], t_logits[:, :b], t_logits[:, b:],
                         q_tilde, gamma=self.gamma, student_temp=self.student_temp,
                         teacher_temp=self.teacher_temp, probs_momentum=self.probs_momentum,
                         batch_mean_fn=batch_mean_fn)

    def _fit(self, X):
        n, D = X.shape
        B, steps, warm, freeze, window = self._resolve_schedule(n)
        info = self._setup_distributed(B, n)  # world 1 unless torch.distributed / torchrun
        g, dev = self.generator_, self.device_
        t0 = time.perf_counter()

        if self.embed_norm:
            Xl = torch.from_numpy(X)
            if self.l2_norm:
                Xl = F.normalize(Xl, dim=-1)
            self.embed_mean_ = Xl.mean(0)
            self.embed_std_ = Xl.std(0).clamp_min(1e-6)
        Xt = self._preprocess(X).to(dev)

        # 1. neighbour mining (cosine, self excluded)
        m = min(self._n_neighbors(n), n - 1)
        if m >= 1:
            if info.is_main:  # rank 0 mines, the others receive (all ranks agree exactly)
                nbrs, _ = knn_search(X, m, metric="cosine", exclude_self=True,
                                     backend=self.knn_backend)
                nbrs = torch.from_numpy(nbrs).to(dev)
            else:
                nbrs = torch.empty(n, m, dtype=torch.int64, device=dev)
            nbrs = broadcast_tensor(nbrs) if info.distributed else nbrs
        else:  # a single point: it is its own partner
            nbrs, m = torch.zeros(n, 1, dtype=torch.int64, device=dev), 1
        self.knn_seconds_ = time.perf_counter() - t0

        # 2. student, EMA teacher (same initial weights), optimiser and schedules
        net = MultiHeadDINO(D, self.n_clusters, self.n_heads, self.hidden_dim,
                            self.bottleneck_dim, generator=g).to(dev)
        student = wrap_ddp(net, info)  # DDP (gradients averaged over ranks) or net itself
        teacher = EMA(net, decay=self.teacher_momentum)
        use_compile = resolve_compile(self.compile, steps, dev, info.distributed)
        student_fn, teacher_fn = Compiled(student, use_compile), Compiled(teacher.module, use_compile)
        scale = B / 256.0 if self.lr_scaling else 1.0
        opt = torch.optim.AdamW(self._param_groups(net), lr=self.lr * scale, fused=True)
        sched = warmup_cosine(opt, steps, warm, self.min_lr / self.lr)
        H, C = self.n_heads, self.n_clusters
        q_tilde = torch.full((H, C), 1.0 / C, device=dev)
        last_layer = net.last_layer_parameters()
        # the global-batch mean of the teacher probabilities (q̃ update): mean of the equal-sized
        # local means over ranks; identity when alone
        batch_mean_fn = all_reduce_mean if info.distributed else None

        history, head_sum = [], torch.zeros(H, dtype=torch.float64)
        log = LossLog(max(steps // 50, 1), steps)
        # global batches from the shared generator g (same seed on every rank), interleaved with
        # the partner draws exactly as in one process; each rank keeps its slice of both
        sampler = DistributedBatchSampler(n, B, info=info, generator=g)
        local = sampler.local_slice()
        state = dict(modules={"net": net, "teacher": teacher.module}, optimizer=opt,
                     scheduler=sched, sampler=sampler, generator=g)
        start, saved, extra = self._restore_training(X, state, n_steps=steps)
        if start:
            q_tilde, head_sum = saved["q_tilde"].to(dev), saved["head_sum"]
            history = extra["history"]
            log.load_state_dict(extra["log"])
            if history:  # a resumed run's clock continues where the checkpointed one stopped
                t0 -= history[-1].get("seconds", 0.0)

        def freeze_last_layer():  # cancel_gradients_last_layer: AdamW skips grad-less params
            for p in last_layer:
                p.grad = None

        def step(i):
            nonlocal q_tilde, head_sum
            idx = sampler.next_global_batch()
            j = torch.randint(0, m, (B,), generator=g)
            idx, j = idx[local].to(dev), j[local].to(dev)
            head_losses, q_tilde = self._train_step(student_fn, teacher_fn, Xt[idx],
                                                    Xt[nbrs[idx, j]], q_tilde, batch_mean_fn)
            # global-batch head losses (for the logs and the head selection); same on all ranks
            global_losses = all_reduce_mean(head_losses.detach())
            if i >= steps - window:
                head_sum += global_losses.double().cpu()
            # the local-batch mean: DDP averages its gradient over ranks
            return Step(head_losses.mean(), {"loss": global_losses.mean().item()},
                        extra={"best_head_loss": global_losses.min().item()},
                        update={"before_step": freeze_last_layer if i < freeze else None,
                                "ema_decay": cosine_value(i, steps, self.teacher_momentum,
                                                          self.max_teacher_momentum)})

        def checkpoint(done, _):
            if info.is_main:
                self._checkpoint_training(done, steps, state,
                                          tensors={"q_tilde": q_tilde, "head_sum": head_sum},
                                          extra={"history": history, "log": log.state_dict()})

        train_steps(step, opt, n_steps=steps, start=start, desc="TEMI", history=history, log=log,
                    verbose=self.verbose and info.is_main, after_step=checkpoint,
                    clock=lambda: time.perf_counter() - t0,
                    hint=f"lower lr (now {self.lr}) or use precision='fp32'", scheduler=sched,
                    ema=teacher, ema_of=net)
        del student  # drop the DDP wrapper (and its gradient hooks) before the labelling pass

        # 3. head selection, then the read-out: the best head or the consensus of all heads
        self.head_losses_ = (head_sum / window).numpy()
        self.selected_head_ = int(np.argmin(self.head_losses_))
        self.q_tilde_ = q_tilde[self.selected_head_].cpu()
        self.history_ = history
        self.compiled_ = student_fn.active and teacher_fn.active
        self.n_steps_ = steps
        self.batch_size_ = B
        proba = self._read_out(teacher.module.eval(), X)
        self.fit_seconds_ = time.perf_counter() - t0
        self.labels_ = proba.argmax(1)
        self.train_proba_ = proba
        self._set_cluster_stats()

    def _read_out(self, heads, X):
        """Set ``head_`` and ``head_perm_`` (H, C): the selected head with the identity map, or
        all heads, each relabelled onto the consensus of their partitions of ``X``. Returns
        ``predict_proba(X)``."""
        C = self.n_clusters
        if self.readout == "best_head" or heads.n_heads < 3:  # no majority among two heads
            self.head_ = heads.select(self.selected_head_).eval()
            self.head_perm_ = torch.arange(C)[None]
            return self._predict_proba(X)
        self.head_ = heads
        labels = self._map_heads(lambda P: P.argmax(-1).T, X).numpy()  # (N, H)
        used = len(np.unique(labels[:, self.selected_head_]))
        consensus = consensus_partition(labels, C, n_groups=used, random_state=self.seed_)
        self.head_perm_ = torch.from_numpy(align_partitions(labels, consensus, C))
        # rename the clusters so that those the training set uses are 0, 1, … (scikit-learn's
        # convention; a consensus cluster can lose all its points to the averaged read-out)
        proba = self._predict_proba(X)
        taken = np.unique(proba.argmax(1))
        order = np.concatenate([taken, np.setdiff1d(np.arange(C), taken)])
        self.head_perm_ = torch.from_numpy(np.argsort(order))[self.head_perm_]  # old id → new
        return proba[:, order]

    def _set_cluster_stats(self):
        counts = np.bincount(self.labels_, minlength=self.n_clusters)
        self.cluster_frequencies_ = counts / counts.sum()
        self.n_clusters_used_ = int((counts > 0).sum())
        self.utilization_ = self.n_clusters_used_ / self.n_clusters

    # ------------------------------------------------------------------ predict
    @torch.no_grad()
    def _map_heads(self, fn, X):
        """``fn`` of q_t(c|x) of every head of ``head_`` (H, B, C), batch by batch over ``X``."""
        def batch(xb):
            with autocast(self.device_, self.amp_dtype_):
                logits = self.head_(xb)
            return fn(torch.softmax(logits.float() / self.teacher_temp, dim=-1))

        return map_batches(batch, self._preprocess(X), self.predict_batch_size, self.device_)

    def _predict_proba(self, X):
        def aligned_mean(P):  # head h's cluster c is cluster head_perm_[h, c]
            perm = self.head_perm_.to(P.device)[:, None, :].expand_as(P)
            return torch.zeros_like(P).scatter_(2, perm, P).mean(0)

        return self._map_heads(aligned_mean, X).numpy().astype(np.float64)

    def transform(self, X):
        """The selected teacher head's L2-normalised bottleneck embedding, ``(N, 256)``."""
        X = self._fitted_input(X)
        h = self.selected_head_ if self.head_.n_heads > 1 else 0
        with torch.no_grad(), autocast(self.device_, self.amp_dtype_):
            z = map_batches(lambda xb: self.head_.bottleneck(xb)[h], self._preprocess(X),
                            self.predict_batch_size, self.device_)
        return z.float().numpy()

    # ------------------------------------------------------------------ persistence
    _fitted_json = ("selected_head_", "n_steps_", "batch_size_", "fit_seconds_", "history_",
                    "seed_")
    _fitted_tensors = ("q_tilde_",)

    def _get_state(self):
        meta = {"head_losses_": [float(v) for v in self.head_losses_]}
        tensors = {**named_state(head=self.head_), "head_perm_": self.head_perm_}
        if self.embed_norm:
            tensors["embed_mean_"], tensors["embed_std_"] = self.embed_mean_, self.embed_std_
        return meta, tensors

    def _set_state(self, meta, tensors):
        self.head_losses_ = np.asarray(meta["head_losses_"])
        # models saved before the consensus read-out hold the selected head alone, no map
        self.head_perm_ = tensors.get("head_perm_", torch.arange(self.n_clusters)[None])
        head = MultiHeadDINO(self.n_features_in_, self.n_clusters, len(self.head_perm_),
                             self.hidden_dim, self.bottleneck_dim)
        load_named_state(tensors, head=head)
        self.head_ = head.to(self.device_).eval()
        if self.embed_norm:
            self.embed_mean_, self.embed_std_ = tensors["embed_mean_"], tensors["embed_std_"]
        self._set_cluster_stats()
