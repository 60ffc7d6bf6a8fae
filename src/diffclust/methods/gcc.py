"""GCC: Generative Calibration Clustering (Xia, Huang & Ding; METHODS.md §6).

The clustering network is ``C∘F``: a ResNet-18-style feature extractor F
(:class:`~diffclust.models.ResNet18`) and a two-layer FC head C; the labels are ``argmax C(F(x))``.
A cluster-conditional DDPM G (:func:`~diffclust.diffusion.pretrain.pretrain_ddpm`, a
:class:`~diffclust.diffusion.unet.DiffusionUNet` with a cluster-id embedding added to the time
embedding) generates labelled images that calibrate the clustering.

Stage I (cornerstone):

1. SimCLR pretraining of F with an MLP projection head and NT-Xent (eq. 1,
   :func:`~diffclust.losses.nt_xent_loss`) on two :class:`~diffclust.augment.SimCLRAugment` views;
2. k-means on F's (L2-normalised) features → pseudo-labels (the paper); by default [PROP] the
   consensus of the spectral partitions of their cosine k-NN graphs (``partition``);
3. C trained with cross-entropy on the pseudo-labels with F frozen (eq. 2; Adam 1e-4, 100 epochs);
4. G trained on (X, argmax C(F(X))) with F and C frozen (eq. 3–6; standard DDPM, T = 1000,
   linear β, ``p_uncond`` null-label dropout).

Stage II (``n_rounds`` rounds, G frozen within a round):

* a pool of generated images is sampled per round with DDIM; each real batch is paired with
  generated images drawn from the pool with the *same* pseudo-labels (same per-cluster counts);
* ``L_d`` (:func:`classwise_mmd`, eq. 9 restored): class-wise multi-bandwidth Gaussian MMD
  between real and generated features of F;
* ``L_cwm`` (:func:`category_matching_loss`, eq. 10): mean cosine similarity of generated
  features across different labels minus that within the same label;
* ``L_ml`` (:func:`reliable_metric_loss`, eq. 11): squared hinge pushing every class scored above
  the conditioning label below it, on the generated samples;
* ``min_{F,C} L_d + L_cwm + L_ml`` (eq. 12) for ``calib_epochs``; then G is fine-tuned for
  ``gen_epochs`` on the real images with the new labels ``argmax C(F(X))``.

Decisions where the paper is silent ([PROP]; reasons and numbers in docs/DECISIONS.md, "GCC"):
SimCLR with AdamW and milder views for digits; k-means on L2-normalised features; the pool drawn
from the current pseudo-labels, a real image paired with a pool image of its label, labels fixed
per round (``label_update``), F's BatchNorm frozen; ``L_d`` averaged over the clusters present
(``mmd_reduce``); the anchor (``anchor_weight``): the Stage-I cross-entropy on the confident real
images, added to eq. 12. The paper's exact Stage II: ``anchor_weight=0, mmd_reduce="sum",
label_update="batch"``.

``fit(X, checkpoint_dir=...)`` checkpoints every stage (SimCLR and Stage II per epoch / round);
a refit resumes after the last one, and a stage is redone only when its settings changed
(``_stages``, :func:`~diffclust.training.checkpoint.stage_fingerprints`).
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import SimCLRAugment
from ..models.heads import ClusterHead
from ..models.resnet import ResNet18
from ..training.checkpoint import (StageCheckpoints, load_named_state, named_state,
                                   stage_fingerprints)
from ..training.contrastive import projection_head, train_simclr
from ..training.loop import epoch_batches, train_epoch
from ..training.runtime import autocast, map_batches, progress
from .base import DiffClusterMixin, ResumableMixin
from .gcc_calibration import GenerativeCalibration
from .params import (AUTO, COMMON, StrOptions, flag, fraction, int_at_least, non_negative, pair,
                     positive, unit)

__all__ = ["GCC", "ClusterHead"]


class GCC(GenerativeCalibration, ResumableMixin, DiffClusterMixin):
    """Generative Calibration Clustering of images (see the module docstring).

    Parameters
    ----------
    n_clusters : int
    backbone_width : int
        Width of the ResNet-18-style F (64 = ResNet-18; 16–32 for CPU runs).
    proj_dim, temperature, clr_epochs, clr_batch_size, clr_lr, clr_weight_decay
        SimCLR pretraining (128, 0.1, 500, 512, 1e-3, 1e-4).
    augment : None or SimCLRAugment
        The view generator; ``None`` = ``SimCLRAugment.for_images(C, H)``.
    partition : {"multiscale", "spectral", "kmeans"}
        [PROP] How F's Stage-I features become the head's pseudo-labels: the consensus of the
        spectral partitions of their cosine k-NN graphs for k = 5 … 30
        (:func:`diffclust.graph.multiscale_partition`, the default), the 10-NN graph's alone,
        or k-means on the L2-normalised features (the paper's step 2). Measured in
        docs/DECISIONS.md ("GCC: pseudo-labels from the k-NN graph"). k-means is fitted in
        every case (``kmeans_labels_``, the "pretext + k-means" baseline).
    kmeans_n_init : int
    head_hidden, head_epochs, head_lr, head_batch_size
        C and its initial cross-entropy training (512, 100, 1e-4, 256).
    unet : None, str/path, DiffusionUNet or diffusers UNet2DModel
        [PROP] Where G starts: None builds a fresh U-Net (``unet_preset``, ``unet_dropout``,
        ``n_timesteps``); a model shipped with the package (``"usps"``, ``"mnist"``,
        ``"fashion_mnist"``), a folder or a U-Net object starts G from that unconditional DDPM
        with a zero-initialised cluster-id embedding (:meth:`DiffusionUNet.with_classes`), so
        its ``ddpm_epochs`` only have to learn the clusters; its schedule is kept. Measured on
        USPS: 10 epochs from ``"usps"`` learnt the clusters too little for Stage II (pool
        fidelity 0.12, docs/DECISIONS.md); give it more ``ddpm_epochs``.
    unet_preset, unet_dropout, n_timesteps, ddpm_epochs, ddpm_batch_size, ddpm_lr, p_uncond
        The generator G and its training (auto, 0.1, 1000, 300, 128, 2e-4, 0.1).
    n_rounds, calib_epochs, gen_epochs : int
        Stage II: rounds (10), epochs of (F, C) calibration (5) and of G fine-tuning (2) per round.
    calib_lr, batch_size : Adam lr of F and C in Stage II (1e-4) and the real batch (256).
    n_generate : "auto" or int
        Generated pool per round ("auto" = N images).
    sample_steps, guidance : DDIM steps (100) and the classifier-free guidance weight w
        (0: the conditional model) for the pool. w = 2 or 4 changed Stage II by −1.1 to +0.9
        ACC on MNIST and USPS at 2–3× the sampling cost (docs/DECISIONS.md).
    use_mmd, use_cwm, use_ml : bool
        The three Stage-II losses (ablation switches).
    mmd_bandwidths : tuple, multiples of the median distance; ``ml_on`` : "proba" | "logits".
    mmd_reduce : "mean" (default, [PROP]) or "sum" (eq. 9) over the clusters present.
    label_update : "round" (default, [PROP]), "epoch" or "batch" (eq. 7–9 literally)
        When the real images' pseudo-labels are recomputed during the calibration.
    anchor_weight, anchor_threshold : float
        [PROP] weight (1; 0 = the paper's eq. 12) and confidence threshold (0.9) of the
        cross-entropy anchor on the real images' round-start pseudo-labels.
    min_pool_fidelity : float in [0, 1]
        [PROP] A round calibrates F and C only when at least this share of its generated pool
        lands, under C∘F, in the cluster it was generated for (``pool_fidelity`` in
        ``history_``); below it only G is fine-tuned, and the fit warns. 0 calibrates always
        (the paper).
    embed_batch_size : batch for feature extraction / prediction.
    random_state, device, precision, verbose
    """

    _input_kind = "images"
    #: parameters of models saved before they were removed (``checkpoint_dir``: now fit's)
    _dropped_params = ("checkpoint_dir",)

    #: the fit's stages, in order, each with its first parameter in ``__init__``'s order: a
    #: stage's checkpoint depends on its parameters and all those before it
    _stages = {"stage1_contrastive": "backbone_width", "stage1_head": "partition",
               "stage1_ddpm": "unet", "stage2": "n_rounds"}

    _parameter_constraints = {
        **COMMON,
        "backbone_width": [int_at_least(1)], "proj_dim": [int_at_least(1)],
        "temperature": [positive], "clr_epochs": [int_at_least(0)],
        "clr_batch_size": [int_at_least(2)], "clr_lr": [positive],
        "clr_weight_decay": [non_negative], "augment": [None, callable],
        "partition": [StrOptions({"multiscale", "spectral", "kmeans"})],
        "kmeans_n_init": [int_at_least(1)], "head_hidden": [int_at_least(1)],
        "head_epochs": [int_at_least(0)], "head_batch_size": [int_at_least(1)],
        "head_lr": [positive], "unet": "no_validation",  # None, a name, a folder, a U-Net
        "unet_preset": [str], "unet_dropout": [fraction],
        "n_timesteps": [int_at_least(2)], "ddpm_epochs": [int_at_least(1)],
        "ddpm_batch_size": [int_at_least(1)], "ddpm_lr": [positive],
        "p_uncond": [fraction], "n_rounds": [int_at_least(0)],
        "calib_epochs": [int_at_least(0)], "gen_epochs": [int_at_least(0)],
        "calib_lr": [positive], "batch_size": [int_at_least(1)],
        "n_generate": [int_at_least(1), AUTO], "sample_steps": [int_at_least(1)],
        "guidance": [non_negative], "use_mmd": flag, "use_cwm": flag, "use_ml": flag,
        "mmd_bandwidths": pair, "mmd_reduce": [StrOptions({"sum", "mean"})],
        "ml_on": [StrOptions({"proba", "logits"})],
        "label_update": [StrOptions({"round", "epoch", "batch"})],
        "anchor_weight": [non_negative], "anchor_threshold": [fraction],
        "min_pool_fidelity": [unit],
        "embed_batch_size": [int_at_least(1)],
    }

    def __init__(self, n_clusters=10, *, backbone_width=64, proj_dim=128, temperature=0.1,
                 clr_epochs=500, clr_batch_size=512, clr_lr=1e-3, clr_weight_decay=1e-4,
                 augment=None, partition="multiscale", kmeans_n_init=10, head_hidden=512,
                 head_epochs=100, head_lr=1e-4, head_batch_size=256, unet=None,
                 unet_preset="auto", unet_dropout=0.1, n_timesteps=1000, ddpm_epochs=300,
                 ddpm_batch_size=128, ddpm_lr=2e-4, p_uncond=0.1, n_rounds=10, calib_epochs=5,
                 gen_epochs=2, calib_lr=1e-4, batch_size=256, n_generate="auto",
                 sample_steps=100, guidance=0.0, use_mmd=True, use_cwm=True, use_ml=True,
                 mmd_bandwidths=(0.5, 1.0, 2.0, 4.0, 8.0), ml_on="proba", mmd_reduce="mean",
                 label_update="round", anchor_weight=1.0, anchor_threshold=0.9,
                 min_pool_fidelity=0.3, embed_batch_size=512, random_state=None, device=None,
                 precision="auto", verbose=True):
        self.n_clusters = n_clusters
        self.backbone_width = backbone_width
        self.proj_dim = proj_dim
        self.temperature = temperature
        self.clr_epochs = clr_epochs
        self.clr_batch_size = clr_batch_size
        self.clr_lr = clr_lr
        self.clr_weight_decay = clr_weight_decay
        self.augment = augment
        self.partition = partition
        self.kmeans_n_init = kmeans_n_init
        self.head_hidden = head_hidden
        self.head_epochs = head_epochs
        self.head_lr = head_lr
        self.head_batch_size = head_batch_size
        self.unet = unet
        self.unet_preset = unet_preset
        self.unet_dropout = unet_dropout
        self.n_timesteps = n_timesteps
        self.ddpm_epochs = ddpm_epochs
        self.ddpm_batch_size = ddpm_batch_size
        self.ddpm_lr = ddpm_lr
        self.p_uncond = p_uncond
        self.n_rounds = n_rounds
        self.calib_epochs = calib_epochs
        self.gen_epochs = gen_epochs
        self.calib_lr = calib_lr
        self.batch_size = batch_size
        self.n_generate = n_generate
        self.sample_steps = sample_steps
        self.guidance = guidance
        self.use_mmd = use_mmd
        self.use_cwm = use_cwm
        self.use_ml = use_ml
        self.mmd_bandwidths = mmd_bandwidths
        self.ml_on = ml_on
        self.mmd_reduce = mmd_reduce
        self.label_update = label_update
        self.anchor_weight = anchor_weight
        self.anchor_threshold = anchor_threshold
        self.min_pool_fidelity = min_pool_fidelity
        self.embed_batch_size = embed_batch_size
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.verbose = verbose

    # ------------------------------------------------------------------ checks
    def _check_params(self, X):
        """The rules that need the data (each parameter alone is declared above)."""
        if X.shape[2] != X.shape[3]:
            raise ValueError(f"GCC needs square images (for the U-Net), got "
                             f"{X.shape[2]}×{X.shape[3]}")
        if len(X) < 2 * self.n_clusters:
            raise ValueError(f"GCC needs at least 2·n_clusters = {2 * self.n_clusters} images, "
                             f"got {len(X)}")

    # ------------------------------------------------------------------ helpers
    def _build_backbone(self, seed):
        with torch.random.fork_rng():
            torch.manual_seed(int(seed))
            C, H = self.input_shape_[0], self.input_shape_[1]
            return ResNet18(C, int(self.backbone_width), H).to(self.device_)

    @torch.no_grad()
    def _features(self, backbone, X, head=None, desc=None):
        """Eval-mode features F(X) (and logits C(F(X)) when ``head``) of a numpy array."""
        backbone.eval()

        def features(xb):
            with autocast(self.device_, self.amp_dtype_):
                f = backbone(xb).float()
            return f if head is None else (f, head(f).float())

        return map_batches(features, X, self.embed_batch_size, self.device_, desc or None,
                           self.verbose)

    # ------------------------------------------------------------------ fit
    def _fit(self, X):
        self._check_params(X)
        t_start = time.perf_counter()
        self.augment_ = self.augment or SimCLRAugment.for_images(X.shape[1], X.shape[2])
        folder = self._checkpoint[0] if getattr(self, "_checkpoint", None) else None
        ck = StageCheckpoints(folder, stage_fingerprints(self, X, self._stages))
        self.stage_seconds_ = {}
        self.resumed_from_ = None
        g_start = None  # where G starts: loaded now, so a bad ``unet`` fails before SimCLR
        if self.unet is not None:
            from ..diffusion.unet import load_unet

            g_start = load_unet(self.unet, X.shape[1:])
        # ---- Stage I.1: SimCLR
        t = time.perf_counter()
        self.backbone_ = self._stage_contrastive(X, ck)
        self.stage_seconds_["contrastive"] = time.perf_counter() - t
        # ---- Stage I.2-3: k-means + head
        t = time.perf_counter()
        self._stage_head(X, ck)
        self.stage_seconds_["head"] = time.perf_counter() - t
        # ---- Stage I.4: the conditional DDPM
        t = time.perf_counter()
        self._stage_ddpm(X, ck, g_start)
        self.stage_seconds_["ddpm"] = time.perf_counter() - t
        # ---- Stage II
        t = time.perf_counter()
        self._stage_calibrate(X, ck)
        self.stage_seconds_["calibration"] = time.perf_counter() - t
        _, logits = self._features(self.backbone_, X, self.head_)
        self.train_proba_ = torch.softmax(logits, 1).numpy().astype(np.float64)
        self.labels_ = self.train_proba_.argmax(1)
        self.fit_seconds_ = time.perf_counter() - t_start

    # ---------------------------------------------------------- Stage I.1
    def _stage_contrastive(self, X, ck):
        F_ = self._build_backbone(self.seed_)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed_ + 1)
            proj = projection_head(F_.out_dim, int(self.proj_dim)).to(self.device_)

        def load():
            state = ck.load("stage1_contrastive")
            if state is not None:
                self.resumed_from_ = f"contrastive epoch {int(state[0]['epoch'])}"
            return state

        self.clr_history_ = train_simclr(
            F_, proj, X, self.augment_, epochs=int(self.clr_epochs),
            batch_size=int(self.clr_batch_size), lr=self.clr_lr,
            weight_decay=self.clr_weight_decay, temperature=self.temperature,
            generator=torch.Generator().manual_seed(self.seed_ + 11), device=self.device_,
            amp_dtype=self.amp_dtype_, verbose=self.verbose, desc="GCC SimCLR", load=load,
            hint="lower clr_lr or use precision='fp32'",
            save=lambda t, meta, ep: ck.save("stage1_contrastive", t, meta, tag=str(ep)))
        return F_.eval()

    # ---------------------------------------------------------- Stage I.2-3
    def _stage_head(self, X, ck):
        K, dev = int(self.n_clusters), self.device_
        state = ck.load("stage1_head")
        feats = self._features(self.backbone_, X, desc="GCC features")
        with torch.random.fork_rng():
            torch.manual_seed(self.seed_ + 2)
            head = ClusterHead(feats.shape[1], K, int(self.head_hidden)).to(dev)
        if state is not None:
            meta, tens = state
            load_named_state(tens, C=head)
            self.kmeans_labels_ = tens["kmeans_labels"].numpy()
            self.kmeans_centers_ = tens["kmeans_centers"]
            self.init_labels_ = tens["pseudo_labels"].numpy()
            self.head_history_ = meta["history"]
        else:
            from sklearn.cluster import KMeans

            fn = F.normalize(feats, dim=1).numpy()
            km = KMeans(K, n_init=int(self.kmeans_n_init), random_state=self.seed_).fit(fn)
            self.kmeans_labels_ = km.labels_.astype(np.int64)
            self.kmeans_centers_ = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
            if self.partition == "kmeans":
                y = torch.from_numpy(self.kmeans_labels_)
            else:
                from ..graph import start_partition

                y = torch.from_numpy(start_partition(fn, K, self.partition,
                                                     random_state=self.seed_))
            self.init_labels_ = y.numpy()
            opt = torch.optim.Adam(head.parameters(), lr=self.head_lr)
            g = torch.Generator().manual_seed(self.seed_ + 3)
            n, B = len(X), min(int(self.head_batch_size), len(X))
            fd, yd = feats.to(dev), y.to(dev)
            self.head_history_ = []

            def step(idx):
                idx = idx.to(dev)
                return F.cross_entropy(head(fd[idx]), yd[idx]), {}

            for ep in progress(range(int(self.head_epochs)), desc="GCC head",
                               verbose=self.verbose):
                means = train_epoch(step, epoch_batches(n, B, g), opt, weighted=True,
                                    what=f"GCC head in epoch {ep}", hint="lower head_lr")
                self.head_history_.append({"epoch": ep + 1, "ce": means["loss"]})
            ck.save("stage1_head", {**named_state(C=head), "pseudo_labels": y.clone(),
                                    "kmeans_labels": torch.from_numpy(self.kmeans_labels_),
                                    "kmeans_centers": self.kmeans_centers_},
                    {"history": self.head_history_})
        self.head_ = head.eval()
        with torch.no_grad():
            self.stage1_labels_ = head(feats.to(dev)).argmax(1).cpu().numpy().astype(np.int64)
        # Stage-I copies for comparisons (kept in memory only; not saved by save_pretrained)
        self.stage1_backbone_ = copy.deepcopy(self.backbone_).eval()
        self.stage1_head_ = copy.deepcopy(self.head_).eval()

    # ---------------------------------------------------------- Stage I.4
    def _ddpm_kwargs(self, X):
        return dict(batch_size=int(self.ddpm_batch_size), lr=self.ddpm_lr, p_uncond=self.p_uncond,
                    n_timesteps=int(self.n_timesteps), device=self.device_,
                    precision=self.precision, verbose=self.verbose, n_samples=0)

    def _ddpm_steps(self, n, epochs):
        return max(1, int(epochs) * math.ceil(n / min(int(self.ddpm_batch_size), n)))

    def _stage_ddpm(self, X, ck, start=None):
        """G trained on Stage I's labels: a fresh U-Net, or ``start`` = ``(U-Net, source)``
        from ``load_unet`` given a cluster-id embedding."""
        from ..diffusion.pretrain import pretrain_ddpm
        from ..diffusion.schedules import NoiseSchedule
        from ..diffusion.unet import make_unet

        C, H = X.shape[1], X.shape[2]
        if start is None:
            sched = NoiseSchedule("linear", int(self.n_timesteps))
            unet = make_unet(H, C, self.unet_preset, n_classes=int(self.n_clusters),
                             seed=self.seed_ + 4, schedule=sched.to_config(),
                             dropout=float(self.unet_dropout))
            self.unet_source_ = None
        else:
            unet, self.unet_source_ = start
            unet = unet.with_classes(int(self.n_clusters))
        # the folder is named after everything that shapes G's training (pretrain_ddpm resumes
        # from its own step checkpoints there)
        out = None if ck.dir is None else ck.dir / f"stage1_ddpm-{ck.tag('stage1_ddpm')}"
        torch.manual_seed(self.seed_ + 6)  # U-Net dropout draws from the global generator
        steps = self._ddpm_steps(len(X), self.ddpm_epochs)
        res = pretrain_ddpm(X, out, unet=unet, labels=self.stage1_labels_, n_steps=steps,
                            warmup_steps=min(200, max(1, steps // 10)), seed=self.seed_ + 5,
                            checkpoint_every=max(1, min(500, steps // 4)), resume=True,
                            **self._ddpm_kwargs(X))
        self.generator_unet_ = res.unet.eval()
        self.ddpm_history_ = res.history

    # ------------------------------------------------------------------ inference
    def _predict_proba(self, X):
        _, logits = self._features(self.backbone_, X, self.head_)
        return torch.softmax(logits, 1).numpy().astype(np.float64)

    def transform(self, X):
        """F's pooled features ``(N, 8·backbone_width)``."""
        X = self._fitted_input(X)
        return self._features(self.backbone_, X).numpy()

    def predict_stage1(self, X):
        """Labels of the Stage-I network (head after k-means initialisation) and of k-means on
        the Stage-I features (nearest centre on L2-normalised features): ``(head, kmeans)``.
        Only available right after ``fit`` (the Stage-I copies are not saved)."""
        if not hasattr(self, "stage1_backbone_"):
            raise AttributeError("the Stage-I networks are only kept in memory after fit; they "
                                 "are not part of save_pretrained")
        X = self._validate_input(X, fitting=False)
        f, logits = self._features(self.stage1_backbone_, X, self.stage1_head_)
        km = torch.cdist(F.normalize(f, dim=1), self.kmeans_centers_).argmin(1)
        return logits.argmax(1).numpy(), km.numpy()

    # ------------------------------------------------------------------ persistence
    _object_params = ("augment", "unet")
    _fitted_json = ("seed_", "history_", "clr_history_", "head_history_", "fit_seconds_",
                    "stage_seconds_")
    _fitted_numpy = ("stage1_labels_", "kmeans_labels_")
    _fitted_tensors = ("kmeans_centers_",)

    def _get_state(self):
        u = self.generator_unet_
        meta = {"backbone_config": self.backbone_.config,
                "head_dims": [self.head_.fc1.in_features, self.head_.fc1.out_features],
                **u.to_meta()}
        return meta, named_state(F=self.backbone_, C=self.head_, G=u)

    def _set_state(self, meta, tensors):
        from ..diffusion.unet import DiffusionUNet

        bc = meta["backbone_config"]
        self.backbone_ = ResNet18(bc["in_channels"], bc["width"], bc["image_size"],
                                  tuple(bc["blocks"]))
        load_named_state(tensors, F=self.backbone_)
        self.backbone_ = self.backbone_.to(self.device_).eval()
        D, H = meta["head_dims"]
        self.head_ = ClusterHead(D, int(self.n_clusters), H)
        load_named_state(tensors, C=self.head_)
        self.head_ = self.head_.to(self.device_).eval()
        unet = DiffusionUNet.from_meta(meta)
        load_named_state(tensors, G=unet)
        self.generator_unet_ = unet.to(self.device_).eval()
