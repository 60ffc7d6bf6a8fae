"""DiEC: Diffusion Embedded Clustering (Hu, arXiv 2512.20905 v1; METHODS.md §3).

The features are the bottleneck activations of a pretrained DDPM U-Net (ε- or v-prediction; the
Clustering Middle Layer, CML) read at one clustering-optimal timestep t*:

1. ``e_i(t) = vec(h_mid(x_{t,i}, t))`` with ``x_{t,i} = sqrt(ᾱ_t) x_{0,i} + sqrt(1 − ᾱ_t) ξ``
   (eq. 9), averaged over R noise draws (eq. 11–13);
2. Optimal Timestep Search: ``t* = argmax_t CH(ē(t), kmeans_K(ē(t)))`` on a subset of m images,
   found with a golden-section search (O(log T) evaluations, eq. 10/14;
   :mod:`diffclust.selection.ots`); [PROP] by default (``ots_criterion="ncut"``) t is scored by
   minus the normalised cut of the spectral partition of ē(t)'s k-NN graph instead
   (:mod:`diffclust.graph`);
3. residual mapping ``z = e + g_φ(e)`` (eq. 18), averaged over M noise draws (eq. 20);
4. DEC self-training: Student-t ``q_ik`` against trainable centroids μ initialised by k-means
   (``partition="kmeans"``) or [PROP] by the means of the spectral partition of the same k-NN
   graph as step 5 (``partition="spectral"``, the default),
   target ``p_ik = (q_ik²/f_k)/Σ_k' (q_ik'²/f_k')`` and ``L_KL = KL(P‖Q)`` (eq. 7–8, 21);
5. adaptive k-NN graph regulariser ``L_Gr = Σ_i Σ_{j∈NB_i} s_ij ‖q_i − q_j‖²`` with row-normalised
   affinities S and the entropy term ``L_En = Σ s_ij log s_ij`` (eq. 22–23);
6. random-timestep denoising loss ``L_Re = E ‖ε − ε_θ(x_{t_rand}, t_rand)‖²`` (eq. 24; on v
   for a v-prediction U-Net);
7. ``L = α L_KL + β L_Gr + γ L_En + L_Re`` (eq. 25), trained end to end over θ (U-Net), φ, μ.

Decisions where the paper is silent ([PROP], METHODS.md §3.5–3.6, all switchable; reasons in
docs/DECISIONS.md, "DiEC"): ``unet=None`` pretrains a U-Net on the data; OTS on one subset
with common random numbers for every t; S in closed form,
``s_ij = softmax_{j∈NB_i}(−β d_ij / γ)``, refreshed with P every epoch (γ L_En logged, not
back-propagated); ``standardize=True``; ``g_φ`` zero-initialised (z = e at the start); DEC's
stopping rule (``tol``). ``fit(X, checkpoint_dir=...)`` resumes per fine-tuning epoch.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion.process import denoiser_target, q_sample
from ..diffusion.unet import DiffusionUNet
from ..knn import knn_search
from ..losses import (dec_kl_loss, dec_soft_assignment, dec_target_distribution, graph_affinities,
                      graph_entropy, graph_loss)
from ..models.heads import ResidualMapping
from ..training.checkpoint import load_named_state, named_state
from ..training.loop import RunningMeans, Step, epoch_batches, train_epoch
from ..training.runtime import autocast, progress
from .base import DiffClusterMixin, ResumableMixin
from .diec_features import DiffusionFeatures
from .params import AUTO, COMMON, StrOptions, flag, int_at_least, non_negative, pair, positive

__all__ = ["DiEC", "ResidualMapping"]


class DiEC(DiffusionFeatures, ResumableMixin, DiffClusterMixin):
    """DiEC clustering of images with a diffusion U-Net's bottleneck features.

    Parameters
    ----------
    n_clusters : int
    unet : None, str/path, DiffusionUNet or diffusers UNet2DModel
        The pretrained DDPM U-Net (ε- or v-prediction): the name of one shipped with the package
        (``diffclust.pretrained.available()``, e.g. ``"usps"``), a folder, or an object.
        ``None``: pretrain one on X first (``pretrain_steps`` steps of batch
        ``pretrain_batch_size``; preset ``unet_preset``).
    t_star : "auto" or int
        ``"auto"`` runs the Optimal Timestep Search; an int fixes t* (0-based).
    partition : {"spectral", "kmeans"}
        How the bottleneck features at t* are partitioned to place the initial centroids μ:
        spectral clustering of their k-NN graph (``n_neighbors``) [PROP], or the paper's
        k-means.
    ots_criterion : {"ncut", "ch"}
        The timestep score, whatever the start: minus the normalised cut of the spectral
        partition of the k-NN graph [PROP], or the paper's CH of k-means (eq. 14), which picks
        noise-dominated t on USPS and Fashion-MNIST (docs/DECISIONS.md). The paper's rule is
        ``partition="kmeans", ots_criterion="ch"``.
    ots_subset, ots_repeats, ots_grid, ots_tol, ots_final, ots_stride, ots_range, ots_n_init
        OTS settings (see the module docstring).
    n_noise_train, n_noise_infer : int
        M, noise draws averaged per image in training / at prediction (4 / 8).
    alpha, beta, gamma : float
        Weights of L_KL, L_Gr, L_En (1, 0.1, 0.01); ``denoise_weight`` is L_Re's (1).
    n_neighbors, knn_rebuild_every : int
        k of the graph (10) and how many target refreshes between graph rebuilds (5).
    update_interval : "epoch" or int
        Target (P, Q_cache, S) refresh every epoch or every so many iterations.
    n_epochs, batch_size, unet_lr, head_lr, tol
        Training length, batch, learning rates and the label-change stopping tolerance.
    finetune_unet : bool
        Train θ end to end (paper). ``False`` trains only g_φ and μ (and skips L_Re).
    block : str
        The feature layer: ``"mid"``, the bottleneck (paper v1); ``"down.i"``/``"up.i"`` for a
        layer search (v3/v4). ``"up.0"`` gives the better k-means start on the shipped U-Nets
        (Fashion-MNIST 70.8 against 66.1) at ~4× the cost (docs/DECISIONS.md).
    """

    _input_kind = "images"

    #: old parameter names read from models saved before the names were unified
    _renamed_params = {"lr_unet": "unet_lr", "lr_head": "head_lr"}

    _parameter_constraints = {
        **COMMON,
        "unet": "no_validation",  # None, a name, a folder, or a U-Net object
        "pretrain_steps": [int_at_least(1)], "pretrain_batch_size": [int_at_least(1)],
        "pretrain_lr": [positive], "unet_preset": [str], "schedule": [str],
        "n_timesteps": [int_at_least(2)], "block": [str], "t_star": [int_at_least(0), AUTO],
        "partition": [StrOptions({"spectral", "kmeans"})],
        "ots_criterion": [StrOptions({"ncut", "ch"})],
        "ots_subset": [int_at_least(2)], "ots_repeats": [int_at_least(1)],
        "ots_grid": [int_at_least(2)], "ots_tol": [int_at_least(1)], "ots_final": [int_at_least(1)],
        "ots_stride": [int_at_least(1)], "ots_range": pair + [None], "ots_n_init": [int_at_least(1)],
        "n_noise_train": [int_at_least(1)], "n_noise_infer": [int_at_least(1)],
        "hidden_dim": [int_at_least(1), AUTO], "standardize": flag, "kmeans_n_init": [int_at_least(1)],
        "alpha": [non_negative], "beta": [non_negative], "gamma": [positive],
        "denoise_weight": [non_negative], "dec_a": [positive], "n_neighbors": [int_at_least(1)],
        "knn_rebuild_every": [int_at_least(1)],
        "update_interval": [int_at_least(1), StrOptions({"epoch"})],
        "n_epochs": [int_at_least(1)], "batch_size": [int_at_least(1)], "unet_lr": [positive],
        "head_lr": [positive], "finetune_unet": flag, "tol": [non_negative],
        "embed_batch_size": [int_at_least(1)],
    }

    def __init__(self, n_clusters=10, *, unet=None, pretrain_steps=4000, pretrain_batch_size=128,
                 pretrain_lr=2e-4, unet_preset="auto", n_timesteps=1000, schedule="linear",
                 block="mid", t_star="auto", partition="spectral", ots_criterion="ncut",
                 ots_subset=5000, ots_repeats=4, ots_grid=8, ots_tol=16, ots_final=5,
                 ots_stride=1, ots_range=None, ots_n_init=3,
                 n_noise_train=4, n_noise_infer=8, hidden_dim="auto", standardize=True,
                 alpha=1.0, beta=0.1, gamma=0.01, n_neighbors=10, knn_rebuild_every=5,
                 update_interval="epoch", n_epochs=20, batch_size=256, unet_lr=1e-5,
                 head_lr=1e-3, dec_a=1.0, denoise_weight=1.0, finetune_unet=True, tol=0.001,
                 kmeans_n_init=10, embed_batch_size=512, random_state=None, device=None,
                 precision="auto", verbose=True):
        self.n_clusters = n_clusters
        self.unet = unet
        self.pretrain_steps = pretrain_steps
        self.pretrain_batch_size = pretrain_batch_size
        self.pretrain_lr = pretrain_lr
        self.unet_preset = unet_preset
        self.n_timesteps = n_timesteps
        self.schedule = schedule
        self.block = block
        self.t_star = t_star
        self.partition = partition
        self.ots_criterion = ots_criterion
        self.ots_subset = ots_subset
        self.ots_repeats = ots_repeats
        self.ots_grid = ots_grid
        self.ots_tol = ots_tol
        self.ots_final = ots_final
        self.ots_stride = ots_stride
        self.ots_range = ots_range
        self.ots_n_init = ots_n_init
        self.n_noise_train = n_noise_train
        self.n_noise_infer = n_noise_infer
        self.hidden_dim = hidden_dim
        self.standardize = standardize
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.n_neighbors = n_neighbors
        self.knn_rebuild_every = knn_rebuild_every
        self.update_interval = update_interval
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.unet_lr = unet_lr
        self.head_lr = head_lr
        self.dec_a = dec_a
        self.denoise_weight = denoise_weight
        self.finetune_unet = finetune_unet
        self.tol = tol
        self.kmeans_n_init = kmeans_n_init
        self.embed_batch_size = embed_batch_size
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.verbose = verbose

    # ------------------------------------------------------------------ checks
    def _check_params(self, X):
        """The rules that need the data (each parameter alone is declared above)."""
        n, H, W = len(X), X.shape[2], X.shape[3]
        if H != W:
            raise ValueError(f"DiEC needs square images (for the U-Net), got {H}×{W}")
        if self.n_neighbors >= n:
            raise ValueError(f"n_neighbors={self.n_neighbors} needs more than that many images "
                             f"(got {n}); lower n_neighbors")

    # ------------------------------------------------------------------ fit
    def _fit(self, X):
        self._check_params(X)
        t_start = time.perf_counter()
        unet = self._resolve_unet(X)
        self.sched_ = unet.noise_schedule()
        T = self.sched_.T
        # --- Optimal Timestep Search ---
        if self.t_star == "auto":
            res = self._search_timestep(unet, X)
            self.t_star_ = int(res.t_star)
            self.ots_scores_ = dict(res.scores)
            self.ots_n_evals_, self.ots_seconds_ = int(res.n_evals), float(res.seconds)
            self.ots_range_ = (int(min(res.scores)), int(max(res.scores))) if res.scores \
                else None
        else:
            if not 0 <= int(self.t_star) < T:
                raise ValueError(f"t_star={self.t_star} is outside [0, {T - 1}]")
            self.t_star_, self.ots_scores_ = int(self.t_star), {}
            self.ots_n_evals_, self.ots_seconds_ = 0, 0.0
        self.unet_ = unet
        # --- initial embedding, standardisation, residual map, k-means centroids ---
        e0 = self._embed_raw(unet, X, self.t_star_, int(self.n_noise_train), self.seed_ + 1,
                             desc="DiEC embed")
        if self.standardize:
            self.feat_mean_ = e0.mean(0)
            self.feat_std_ = e0.std(0).clamp_min(1e-3 * float(e0.std(0).mean()) + 1e-8)
        else:
            self.feat_mean_ = self.feat_std_ = None
        D = e0.shape[1]
        hidden = (512 if D <= 4096 else 256) if self.hidden_dim == "auto" else int(self.hidden_dim)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed_)
            self.g_ = ResidualMapping(D, hidden).to(self.device_)
        Z = self._standardise(e0)  # g = 0 at the start: z = e
        self.init_labels_, mu = self._initial_partition(Z.numpy())
        self.mu_ = nn.Parameter(torch.as_tensor(mu, dtype=torch.float32, device=self.device_))
        self._train(X, Z)
        # --- read-out ---
        proba = self._q_of(self._embed(X, int(self.n_noise_infer), self.seed_ + 2))
        self.train_proba_ = proba.numpy().astype(np.float64)
        self.labels_ = self.train_proba_.argmax(1)
        self.fit_seconds_ = time.perf_counter() - t_start

    def _initial_partition(self, Z):
        """Labels of the features Z at t* and the centroids μ: k-means (paper) or the means of
        the spectral partition of Z's k-NN graph (an empty group: the mean of all Z)."""
        K = self.n_clusters
        if self.partition == "kmeans":
            from sklearn.cluster import KMeans

            km = KMeans(K, n_init=int(self.kmeans_n_init), random_state=self.seed_).fit(Z)
            return km.labels_.astype(np.int64), km.cluster_centers_
        from ..graph import knn_graph, spectral_partition
        from ..mixture import gmm_from_labels

        # the graph L_Gr's first refresh needs too (same Z, k and metric): searched once
        self._init_neighbors = knn_search(Z, int(self.n_neighbors), metric="cosine")[0]
        labels, self.init_ncut_ = spectral_partition(
            Z, K, random_state=self.seed_, graph=knn_graph(Z, neighbors=self._init_neighbors))
        return labels, gmm_from_labels(Z, labels, K)[1]  # the groups' means

    def _q_of(self, Z):
        return dec_soft_assignment(Z.to(self.device_), self.mu_.detach(), self.dec_a).cpu()

    def _step_loss(self, x0, idx, P, Q, nb, S, M, g, denoise):
        """Eq. 25 on one batch ``x0`` (rows ``idx`` of the cached targets): ``α L_KL + β L_Gr``
        on ``z = e + g_φ(e)`` at t* (averaged over M noise draws), plus ``L_Re`` (the
        random-timestep denoising loss) when ``denoise``; γ L_En has no gradient (S is solved in
        closed form at each refresh). Returns ``(loss, (l_kl, l_gr, l_re))``."""
        unet, dev = self.unet_, x0.device
        e = self._features(unet, x0, self.t_star_, M, g, average=False)
        z = self.g_(self._standardise(e)).mean(0)
        q = dec_soft_assignment(z, self.mu_, self.dec_a)
        l_kl = dec_kl_loss(P[idx], q)
        l_gr = graph_loss(q, Q[nb[idx]], S[idx])
        loss = self.alpha * l_kl + self.beta * l_gr
        l_re = torch.zeros(())
        if denoise:
            x0p = unet.pad(x0)
            t_r = torch.randint(0, self.sched_.T, (len(x0p),), generator=g).to(dev)
            eps = torch.randn(x0p.shape, generator=g).to(dev)
            with autocast(dev, self.amp_dtype_):
                pred = unet(q_sample(self.sched_, x0p, t_r, noise=eps), t_r)
            l_re = F.mse_loss(pred.float(),
                              denoiser_target(unet.prediction, self.sched_, x0p, t_r, eps))
            loss = loss + self.denoise_weight * l_re
        return loss, (l_kl, l_gr, l_re)

    def _refresh(self, X, Z, st, it, iters_per_epoch):
        """(a) of the algorithm, every ``update_interval`` iterations (no gradients): the
        embedding Z (recomputed after the first), Q, the target P, the k-NN graph (every
        ``knn_rebuild_every`` refreshes) and the graph affinities S; a history record. Sets
        ``st["stopped"]`` when fewer than ``tol`` of the labels changed."""
        if it > 0:
            Z = self._embed(X, int(self.n_noise_train), self.seed_ + 1000 + st["n_refresh"])
        Q = self._q_of(Z)
        labels = Q.argmax(1).numpy()
        prev = st["prev_labels"]
        changed = float((labels != prev).mean()) if prev is not None else 1.0
        if it == 0 and st["init_nb"] is not None:  # the initial partition's graph of this Z
            st["nb"] = torch.from_numpy(st["init_nb"])
        elif st["n_refresh"] % int(self.knn_rebuild_every) == 0 or st["nb"] is None:
            st["nb"] = torch.from_numpy(knn_search(Z.numpy(), int(self.n_neighbors),
                                                   metric="cosine")[0])
        S, _ = graph_affinities(Q, st["nb"], self.beta, self.gamma)
        rec = {"iter": it, "epoch": it / iters_per_epoch, "label_change": changed,
               "l_en": graph_entropy(S), "seconds": time.perf_counter() - st["t0"]}
        run = st["run"]
        if run.steps:
            rec.update(run.means())
            st["run"] = RunningMeans(run.sums)
        st["history"].append(rec)
        st["n_refresh"] += 1
        st["prev_labels"] = labels
        st.update(Q=Q, P=dec_target_distribution(Q), S=S)
        st["stopped"] = it > 0 and changed < self.tol

    def _train(self, X, Z):
        n, dev = len(X), self.device_
        B = min(int(self.batch_size), n)
        unet, g = self.unet_, self.generator_
        finetune = bool(self.finetune_unet) and self.denoise_weight is not None
        params = [{"params": list(self.g_.parameters()) + [self.mu_], "lr": self.head_lr}]
        if self.finetune_unet:
            params.append({"params": list(unet.parameters()), "lr": self.unet_lr})
        else:
            unet.requires_grad_(False)
        opt = torch.optim.Adam(params)
        iters_per_epoch = math.ceil(n / B)
        interval = iters_per_epoch if self.update_interval == "epoch" else int(self.update_interval)
        total_iters = int(self.n_epochs) * iters_per_epoch
        M, Xt = int(self.n_noise_train), torch.from_numpy(X)
        st = dict(history=[], prev_labels=None, nb=None, n_refresh=0, it=0, stopped=False,
                  t0=time.perf_counter(), run=RunningMeans(("l_kl", "l_gr", "l_re", "loss")),
                  Q=None, P=None, S=None, init_nb=self.__dict__.pop("_init_neighbors", None))
        bar = progress(range(total_iters), desc="DiEC", verbose=self.verbose)
        # resumable per epoch (fit(X, checkpoint_dir=...)); what precedes this loop (the U-Net,
        # t*, the first embedding, k-means) is recomputed or reloaded deterministically
        ck_state = dict(modules={"unet": unet, "g": self.g_}, optimizer=opt, generator=g)
        epoch, tens, extra = self._restore_training(X, ck_state)
        if epoch:
            with torch.no_grad():
                self.mu_.copy_(tens["mu"])
            st.update({k: tens[k] for k in ("Q", "P", "S", "nb")},
                      prev_labels=tens["prev_labels"].numpy(),
                      **{k: extra[k] for k in ("history", "n_refresh", "it", "stopped")})
            st["run"] = RunningMeans(extra["run"])
            st["run"].weight = st["run"].steps = extra["run_n"]
            bar.update(st["it"])
        dev_targets = {}

        def step(idx):
            if st["stopped"] or st["it"] >= total_iters:
                return None
            if st["it"] % interval == 0:
                self._refresh(X, Z, st, st["it"], iters_per_epoch)
                if st["stopped"]:
                    return None
                dev_targets.update({k: st[k].to(dev) for k in ("P", "Q", "nb", "S")})
            elif not dev_targets:
                dev_targets.update({k: st[k].to(dev) for k in ("P", "Q", "nb", "S")})
            unet.train(self.finetune_unet)
            d = dev_targets
            loss, (l_kl, l_gr, l_re) = self._step_loss(
                Xt[idx].to(dev), idx.to(dev), d["P"], d["Q"], d["nb"], d["S"], M, g,
                denoise=finetune and self.denoise_weight > 0)
            parts = {k: float(v.detach()) for k, v in
                     (("l_kl", l_kl), ("l_gr", l_gr), ("l_re", l_re), ("loss", loss))}
            st["run"].add(parts)  # the means between two refreshes (the history records)
            st["it"] += 1
            return Step(loss, parts)

        while st["it"] < total_iters and not st["stopped"]:
            train_epoch(step, epoch_batches(n, B, g), opt, bar=bar,
                        what=f"DiEC training in the epoch from iteration {st['it']}",
                        hint="lower unet_lr/head_lr or use precision='fp32'",
                        postfix=lambda p: {"kl": f"{p['l_kl']:.4f}", "re": f"{p['l_re']:.4f}"})
            epoch += 1
            self._checkpoint_training(
                epoch, int(self.n_epochs), ck_state, every=1,
                tensors={"mu": self.mu_, **{k: st[k] for k in ("Q", "P", "S", "nb")},
                         "prev_labels": torch.as_tensor(st["prev_labels"])},
                extra={"run": st["run"].sums, "run_n": st["run"].weight,
                       **{k: st[k] for k in ("history", "n_refresh", "it", "stopped")}})
        bar.close()
        unet.requires_grad_(True)
        self.unet_ = unet.eval()
        self.history_ = st["history"]
        self.n_iter_ = st["it"]
        self.converged_ = st["stopped"]
        self.train_seconds_ = time.perf_counter() - st["t0"]

    def _predict_proba(self, X):
        Z = self._embed(X, int(self.n_noise_infer), getattr(self, "seed_", 0) + 2)
        return self._q_of(Z).numpy().astype(np.float64)

    def transform(self, X):
        """The clustering representation ``z = mean_m (ẽ + g(ẽ))`` at t*, (N, D_e)."""
        X = self._fitted_input(X)
        return self._embed(X, int(self.n_noise_infer), getattr(self, "seed_", 0) + 2).numpy()

    # ------------------------------------------------------------------ persistence
    _object_params = ("unet",)  # a U-Net object: its fine-tuned weights are saved anyway
    _fitted_json = ("t_star_", "ots_n_evals_", "ots_seconds_", "history_", "n_iter_",
                    "converged_", "fit_seconds_", "pretrain_seconds_", "seed_", "unet_source_")
    _fitted_numpy = ("init_labels_",)

    def _get_state(self):
        meta = {"ots_scores_": [[int(t), float(s)] for t, s in self.ots_scores_.items()],
                **self.unet_.to_meta(),
                "g_dims": [self.g_.fc1.in_features, self.g_.fc1.out_features],
                "standardized": self.feat_mean_ is not None}
        tensors = named_state(unet=self.unet_, g=self.g_)
        tensors["mu"] = self.mu_.detach()
        if self.feat_mean_ is not None:
            tensors["feat_mean"], tensors["feat_std"] = self.feat_mean_, self.feat_std_
        return meta, tensors

    def _set_state(self, meta, tensors):
        self.ots_scores_ = {int(t): float(s) for t, s in meta["ots_scores_"]}
        unet, self.g_ = DiffusionUNet.from_meta(meta), ResidualMapping(*meta["g_dims"])
        load_named_state(tensors, unet=unet, g=self.g_)
        self.unet_ = unet.to(self.device_).eval()
        self.sched_ = unet.noise_schedule()
        self.g_ = self.g_.to(self.device_)
        self.mu_ = nn.Parameter(tensors["mu"].to(self.device_))
        if meta["standardized"]:
            self.feat_mean_, self.feat_std_ = tensors["feat_mean"], tensors["feat_std"]
        else:
            self.feat_mean_ = self.feat_std_ = None
