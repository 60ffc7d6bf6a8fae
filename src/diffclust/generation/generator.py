"""Training and sampling a cluster-conditioned EDM generator (C-EDM, METHODS.md §4.4).

:func:`train_generator` trains an EDM (:mod:`.edm`) whose U-Net is conditioned on cluster ids
from any clusterer (``clusterer.labels_``), from an id array, or from the ``cluster_ids`` +
``freq`` files the C-EDM authors publish (:func:`load_cluster_files`). Without ids it trains
the unconditional baseline with the same architecture (no class embedding).

RUN_DIR layout (what ``train_generator(..., out_dir=RUN_DIR)`` writes and
``diffclust generate RUN_DIR`` / :func:`load_generator` read):

* ``unet/`` — the EMA U-Net in diffusers format (``DiffusionUNet.save_pretrained``); for a
  conditional generator it has ``n_classes + 1`` class embeddings, the last is the null id;
* ``generator.json`` — ``format``, ``n_classes``, ``freq`` (q(c), the training cluster
  frequencies), the EDM parameters (``sigma_data``, ``P_mean``, ``P_std``, ``sigma_min``,
  ``sigma_max``, ``rho``, ``n_steps``), ``p_uncond``, the training settings, the loss history;
* ``samples.png`` — a grid drawn with c ~ q(c); ``checkpoint/`` — resumable training state.

Decisions marked [PROP] (the paper does not fix them for this setting):

* condition dropout ``p_uncond = 0.1`` (C-EDM uses 0, no guidance; the issue asks for
  classifier-free guidance, and 0.1 is ClusterDDPM's value, METHODS.md §1.7). Pass 0 for the
  paper's setting.
* Adam (0.9, 0.999), lr 1e-3 (C-EDM CIFAR, Table 7) with a linear warm-up of 200 steps instead
  of EDM's 10 Mimg ramp-up, and an EMA with decay 0.999 warmed up as ``min(d, (1+s)/(10+s))``
  instead of the 0.5 Mimg half-life: both sized for runs of a few thousand steps.
  No label augmentation pipeline, no dropout (the U-Net presets have none).
* sampling: per-sample seeds: sample i uses ``torch.Generator().manual_seed(seeds[i])`` to draw
  first its start noise, then (for ``clusters="freq"``/``"uniform"``) its cluster id, so a sample
  depends only on its seed (not on the batch it is drawn in) and the conditional and the
  unconditional generator see the *same* start noise for the same seed (C-EDM Fig. 8).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..data.io import atomic_write_text
from ..diffusion.pretrain import _prepare_images
from ..diffusion.trainer import CKPT_DIR, setup_distributed, train_denoiser
from ..diffusion.unet import DiffusionUNet, make_unet
from ..training.distributed import barrier
from ..training.runtime import progress, resolve_device, resolve_precision
from .edm import EDM_DEFAULTS, EDMDenoiser, edm_loss, heun_sample

__all__ = [
    "ClusterGenerator",
    "GeneratorResult",
    "cluster_frequencies",
    "load_cluster_files",
    "load_generator",
    "sample",
    "train_generator",
]

FORMAT = "diffclust-cedm-1"
JSON_NAME = "generator.json"
UNET_DIR = "unet"


# ---------------------------------------------------------------------- cluster ids and q(c)
def _load_vector(path: Path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} not found")
    suf = path.suffix.lower()
    if suf == ".npy":
        a = np.load(path, allow_pickle=False)
    elif suf == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if len(z.files) != 1:
                raise ValueError(f"{path} holds {z.files}; save a single array")
            a = z[z.files[0]]
    elif suf in (".pt", ".pth"):
        a = torch.load(path, map_location="cpu", weights_only=True)
        a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    elif suf in (".txt", ".csv", ""):
        a = np.loadtxt(path, delimiter="," if suf == ".csv" else None, ndmin=1)
    else:
        raise ValueError(f"cannot read {what} from {path}: use .npy, .npz, .pt or .txt/.csv")
    a = np.asarray(a)
    if a.ndim != 1:
        a = a.reshape(-1) if a.ndim == 2 and 1 in a.shape else a
    if a.ndim != 1:
        raise ValueError(f"{what} in {path} must be a vector, got shape {a.shape}")
    return a


def cluster_frequencies(cluster_ids, n_classes: int | None = None) -> np.ndarray:
    """q(c): the empirical histogram of the hard ids (C-EDM §3.1), summing to 1."""
    ids = np.asarray(cluster_ids).astype(np.int64).reshape(-1)
    n = int(ids.max()) + 1 if n_classes is None else int(n_classes)
    return np.bincount(ids, minlength=n).astype(np.float64) / len(ids)


def load_cluster_files(cluster_ids, freq=None) -> tuple[np.ndarray, np.ndarray]:
    """Read the C-EDM authors' conditioning files: ``cluster_ids`` (one int id per training
    image, in dataset order) and optionally ``freq`` (one weight per cluster: counts or
    probabilities; normalised here). Each is a path to .npy/.npz/.pt/.txt/.csv, or an array.
    Without ``freq`` the empirical q(c) of the ids is used. Returns ``(ids, q)``."""
    ids = _load_vector(cluster_ids, "cluster_ids") if isinstance(cluster_ids, (str, Path)) \
        else np.asarray(cluster_ids).reshape(-1)
    if ids.size == 0:
        raise ValueError("cluster_ids is empty")
    if not np.all(np.isfinite(ids.astype(np.float64))) or np.any(ids != np.round(ids)):
        raise ValueError("cluster_ids must be integers")
    ids = ids.astype(np.int64)
    if ids.min() < 0:
        raise ValueError(f"cluster ids must be ≥ 0, got {ids.min()}")
    if freq is None:
        return ids, cluster_frequencies(ids)
    q = _load_vector(freq, "freq") if isinstance(freq, (str, Path)) \
        else np.asarray(freq, dtype=np.float64).reshape(-1)
    q = q.astype(np.float64)
    if not np.all(np.isfinite(q)) or (q < 0).any() or q.sum() <= 0:
        raise ValueError("freq must be finite, non-negative and not all zero")
    if ids.max() >= len(q):
        raise ValueError(f"cluster id {ids.max()} has no entry in freq (length {len(q)})")
    return ids, q / q.sum()


# ---------------------------------------------------------------------- the model bundle
class ClusterGenerator:
    """A trained (cluster-conditioned or unconditional) EDM generator.

    ``unet``: the EMA :class:`DiffusionUNet`; ``freq``: q(c) (``None`` when unconditional);
    ``edm``: the EDM parameters (:data:`~diffclust.generation.edm.EDM_DEFAULTS` keys).
    """

    def __init__(self, unet: DiffusionUNet, freq=None, edm: dict | None = None,
                 info: dict | None = None):
        self.unet = unet
        self.edm = dict(EDM_DEFAULTS, **(edm or {}))
        self.info = dict(info or {})
        if unet.n_classes is not None:
            q = np.full(unet.n_classes, 1.0 / unet.n_classes) if freq is None \
                else np.asarray(freq, dtype=np.float64).reshape(-1)
            if len(q) != unet.n_classes:
                raise ValueError(f"freq has {len(q)} entries, the U-Net has {unet.n_classes} "
                                 f"cluster ids")
            self.freq = q / q.sum()
        else:
            if freq is not None:
                raise ValueError("an unconditional generator takes no freq")
            self.freq = None

    @property
    def n_classes(self):
        return self.unet.n_classes

    @property
    def conditional(self) -> bool:
        return self.unet.n_classes is not None

    def denoiser(self, amp=None) -> EDMDenoiser:
        return EDMDenoiser(self.unet, self.edm["sigma_data"], amp=amp)

    def sample(self, n: int, **kw):
        """See :func:`sample`."""
        return sample(self, n, **kw)

    def to_config(self) -> dict:
        return {"format": FORMAT, "conditional": self.conditional, "n_classes": self.n_classes,
                "freq": None if self.freq is None else [float(v) for v in self.freq],
                "image_size": self.unet.image_size, "in_channels": self.unet.in_channels,
                "edm": self.edm, **self.info}

    def save(self, run_dir) -> Path:
        run = Path(run_dir)
        self.unet.save_pretrained(run / UNET_DIR)
        atomic_write_text(run / JSON_NAME, json.dumps(self.to_config(), indent=1))
        return run

    def __repr__(self):
        kind = f"{self.n_classes} clusters" if self.conditional else "unconditional"
        return f"ClusterGenerator({kind}, {self.unet.in_channels}×{self.unet.image_size}²)"


def load_generator(run_dir) -> ClusterGenerator:
    """Load the RUN_DIR written by :func:`train_generator` (or :meth:`ClusterGenerator.save`)."""
    run = Path(run_dir)
    js = run / JSON_NAME
    if not js.exists():
        raise ValueError(f"{run} is not a generator run directory (no {JSON_NAME}); train one "
                         f"with diffclust.generation.train_generator(..., out_dir={str(run)!r})")
    cfg = json.loads(js.read_text())
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{js} has format {cfg.get('format')!r}, expected {FORMAT!r}")
    unet = DiffusionUNet.from_pretrained(run / UNET_DIR).eval()
    info = {k: v for k, v in cfg.items() if k not in
            ("format", "conditional", "n_classes", "freq", "image_size", "in_channels", "edm")}
    return ClusterGenerator(unet, cfg.get("freq"), cfg.get("edm"), info)


# ---------------------------------------------------------------------- sampling
def _seeds(n, seed, seeds):
    if seeds is not None:
        s = [int(v) for v in np.asarray(seeds).reshape(-1)]
        if len(s) != n:
            raise ValueError(f"seeds has {len(s)} entries for n={n} samples")
        return s
    return [int(seed) + i for i in range(n)]


@torch.no_grad()
def sample(generator: ClusterGenerator, n: int, clusters="freq", guidance: float = 0.0,
           seed: int = 0, seeds=None, n_steps: int | None = None, batch_size: int = 256,
           device=None, precision: str = "auto", return_clusters: bool = False,
           verbose: bool = False):
    """Draw ``n`` images ``(n, C, H, W)`` in [−1, 1] with the deterministic EDM Heun sampler.

    Parameters
    ----------
    clusters : ``"freq"`` (c ~ q(c), the training frequencies, as C-EDM samples), ``"uniform"``
        (c uniform over the ids), an int (every sample from that cluster) or an array of ``n``
        ids, or ``None`` (the null id: a conditional U-Net's unconditional branch). For an
        unconditional generator ``"freq"``/``"uniform"``/``None`` all mean "no condition";
        giving it ids is an error.
    guidance : w in ``D_c + w (D_c − D_∅)``; 0 (default) is the plain conditional model.
    seed, seeds : sample i uses seed ``seeds[i]`` (default ``seed + i``) for its start noise
        and then its cluster draw, so it is reproducible on its own.
    n_steps : Heun steps N (NFE 2N − 1); default the generator's (18).
    return_clusters : also return the ``(n,)`` cluster ids used (−1 when unconditional).
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    unet = generator.unet
    dev = resolve_device(device)
    amp = resolve_precision(precision, dev)
    unet.to(dev).eval()
    S, C = unet.sample_size, unet.in_channels
    seeds = _seeds(n, seed, seeds)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    noise = torch.stack([torch.randn((C, S, S), generator=g) for g in gens])
    if not generator.conditional:
        if clusters not in ("freq", "uniform", None):
            raise ValueError("this generator is unconditional: it takes no cluster ids")
        labels = None
        if guidance != 0:
            raise ValueError("guidance needs a cluster-conditional generator")
    else:
        K = generator.n_classes
        if isinstance(clusters, str):
            if clusters not in ("freq", "uniform"):
                raise ValueError(f"clusters must be 'freq', 'uniform', an id or ids; got "
                                 f"{clusters!r}")
            p = torch.as_tensor(generator.freq if clusters == "freq" else np.full(K, 1.0 / K),
                                dtype=torch.float64)
            labels = torch.stack([torch.multinomial(p, 1, generator=g)[0] for g in gens])
        elif clusters is None:  # the null id: the conditional U-Net's unconditional branch
            if guidance != 0:
                raise ValueError("guidance needs cluster ids (clusters=None means the null id)")
            labels = None
        else:
            labels = torch.as_tensor(np.asarray(clusters)).long().reshape(-1)
            if labels.numel() == 1:
                labels = labels.expand(n).clone()
            if len(labels) != n:
                raise ValueError(f"got {len(labels)} cluster ids for n={n} samples")
            if int(labels.min()) < 0 or int(labels.max()) >= K:
                raise ValueError(f"cluster ids must lie in [0, {K - 1}], got "
                                 f"[{int(labels.min())}, {int(labels.max())}]")
    den = generator.denoiser(amp)
    e = generator.edm
    steps = int(n_steps or e["n_steps"])
    out = []
    bar = progress(total=steps * math.ceil(n / batch_size), desc="sampling", verbose=verbose)
    for i0 in range(0, n, batch_size):
        cl = None if labels is None else labels[i0:i0 + batch_size]
        x = heun_sample(den, noise[i0:i0 + batch_size].to(dev), cl, guidance, steps,
                        e["sigma_min"], e["sigma_max"], e["rho"], progress=bar)
        out.append(unet.crop(x).clamp(-1, 1).float().cpu())
    bar.close()
    imgs = torch.cat(out)
    if return_clusters:
        used = torch.full((n,), -1, dtype=torch.long) if labels is None else labels.clone()
        return imgs, used
    return imgs


# ---------------------------------------------------------------------- training
class GeneratorResult:
    """What :func:`train_generator` returns: ``generator`` (EMA weights), ``history``
    (``[{"step", "loss", "seconds"}]``), ``steps``, ``seconds``, ``out_dir``."""

    def __init__(self, generator, history, steps, seconds, out_dir):
        self.generator, self.history, self.steps = generator, history, steps
        self.seconds, self.out_dir = seconds, out_dir

    def __repr__(self):
        return (f"GeneratorResult({self.generator!r}, steps={self.steps}, "
                f"seconds={self.seconds:.1f}, out_dir={self.out_dir})")


def _resolve_ids(N, cluster_ids, clusterer, freq):
    if cluster_ids is not None and clusterer is not None:
        raise ValueError("pass cluster_ids or clusterer, not both")
    if clusterer is not None:
        if not hasattr(clusterer, "labels_"):
            raise ValueError("the clusterer is not fitted (no labels_): fit it on features of "
                             "the same images first, e.g. TEMI(C).fit(features)")
        cluster_ids = clusterer.labels_
        if freq is None and getattr(clusterer, "cluster_frequencies_", None) is not None:
            freq = clusterer.cluster_frequencies_
    if cluster_ids is None:
        if freq is not None:
            raise ValueError("freq was given without cluster ids")
        return None, None
    ids, q = load_cluster_files(cluster_ids, freq)
    if len(ids) != N:
        raise ValueError(f"{len(ids)} cluster ids for {N} images")
    return ids, q


def train_generator(images, cluster_ids=None, *, clusterer=None, freq=None, out_dir=None,
                    unet: DiffusionUNet | None = None, preset: str = "auto",
                    p_uncond: float = 0.1, n_steps: int = 5000, batch_size: int = 128,
                    lr: float = 1e-3, warmup_steps: int = 200, ema_decay: float = 0.999,
                    clip_grad: float | None = 1.0, sigma_data: float = 0.5,
                    P_mean: float = -1.2, P_std: float = 1.2, sample_steps: int = 18,
                    checkpoint_every: int = 500, resume: bool = True,
                    max_seconds: float | None = None, n_samples: int = 64, seed: int = 0,
                    device=None, precision: str = "auto", verbose: bool = True,
                    callback=None, callback_every: int = 0) -> GeneratorResult:
    """Train a (cluster-conditioned) EDM generator on ``images`` (C-EDM, METHODS.md §4.4).

    Parameters
    ----------
    images : (N, H, W), (N, H, W, C) or (N, C, H, W); uint8 or floats in [0, 1]/[−1, 1]; square.
    cluster_ids : one id per image (array or path, see :func:`load_cluster_files`); ``None``
        with no ``clusterer`` trains the **unconditional** baseline (same U-Net, no class
        embedding).
    clusterer : a fitted clusterer (``labels_``, optionally ``cluster_frequencies_``), e.g.
        :class:`~diffclust.TEMI` or :class:`~diffclust.KMeansClusterer` fitted on features of
        the same images in the same order.
    freq : q(c) (array or path); default ``clusterer.cluster_frequencies_`` or the histogram.
    p_uncond : probability of replacing a cluster id by the null id during training (label
        dropout for classifier-free guidance). [PROP] 0.1; C-EDM uses 0.
    lr, warmup_steps, ema_decay : Adam lr (C-EDM Table 7: 1e-3), linear warm-up, EMA decay.
    sigma_data, P_mean, P_std : EDM σ_d and the log-normal training σ distribution.
    sample_steps : Heun steps N stored with the model for sampling (C-EDM: 18).
    checkpoint_every, resume, max_seconds : crash-safe checkpoints in ``out_dir/checkpoint``
        (resuming gives the same weights as an uninterrupted run) and a training-time limit.
    callback, callback_every : ``callback(step, loss, generator)`` every ``callback_every``
        steps (and after the last), where ``generator`` is a :class:`ClusterGenerator` on the
        current EMA weights (e.g. to measure a Fréchet distance during training); it must not
        modify the weights. Sampling in the callback does not touch the training randomness.

    Under ``torchrun`` (DistributedDataParallel, see :mod:`diffclust.diffusion.trainer`)
    ``batch_size`` is the global batch, every rank trains the same weights, ``callback`` runs
    on every rank, and only rank 0 writes ``out_dir`` (complete on every rank on return).
    """
    X = _prepare_images(images)
    N, C, H, _ = X.shape
    ids, q = _resolve_ids(N, cluster_ids, clusterer, freq)
    n_classes = None if ids is None else len(q)
    if not 0.0 <= p_uncond < 1.0:
        raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond}")
    if n_steps < 1 or batch_size < 1:
        raise ValueError(f"n_steps and batch_size must be ≥ 1 (got {n_steps}, {batch_size})")
    dist, dev = setup_distributed(resolve_device(device))  # under torchrun: this rank's device
    amp = resolve_precision(precision, dev)
    edm = dict(EDM_DEFAULTS, sigma_data=float(sigma_data), P_mean=float(P_mean),
               P_std=float(P_std), n_steps=int(sample_steps))
    schedule = {"name": "edm", "T": 0, "sigma_data": float(sigma_data)}
    if unet is None:
        unet = make_unet(H, C, preset, n_classes=n_classes, seed=seed, schedule=schedule)
    if unet.in_channels != C or unet.image_size != H:
        raise ValueError(f"the U-Net expects {unet.in_channels}×{unet.image_size}² images, got "
                         f"{C}×{H}²")
    if (unet.n_classes is None) != (n_classes is None) or \
            (n_classes is not None and unet.n_classes != n_classes):
        raise ValueError(f"the U-Net has n_classes={unet.n_classes}, the cluster ids need "
                         f"{n_classes}")
    B = int(min(batch_size, N))
    out = Path(out_dir) if out_dir is not None else None
    ckdir = out / CKPT_DIR if out is not None else None
    unet = unet.to(dev)
    opt = torch.optim.Adam(unet.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    settings = dict(preset=preset, n_steps=n_steps, batch_size=B, lr=lr,
                    warmup_steps=warmup_steps, ema_decay=ema_decay, clip_grad=clip_grad,
                    p_uncond=p_uncond, edm=edm, seed=seed, n_images=N, image_shape=[C, H, H],
                    n_classes=n_classes)
    den = EDMDenoiser(unet, sigma_data, amp=amp)
    info = {"train": settings}

    def on_step(step, loss, ema_module):
        if callback is not None and callback_every and (step % callback_every == 0
                                                        or step == n_steps):
            callback(step, loss, ClusterGenerator(ema_module, q, edm, info))

    def loss_fn(net, x0, cl, rng):  # net: ``den``, DDP-wrapped under torchrun
        return edm_loss(net, x0, cl, rng, P_mean, P_std, sigma_data=den.sigma_data)

    res = train_denoiser(
        unet, torch.from_numpy(X), loss_fn, opt, model=den, n_steps=n_steps, batch_size=B,
        lr=lr, seed=seed, settings=settings,
        labels=None if ids is None else torch.from_numpy(ids), p_uncond=p_uncond,
        warmup_steps=warmup_steps, ema_decay=ema_decay, clip_grad=clip_grad, ckdir=ckdir,
        checkpoint_every=checkpoint_every if ckdir is not None else 0, resume=resume,
        check_keys=("batch_size", "seed", "n_images", "image_shape", "n_classes", "edm",
                    "p_uncond"),
        max_seconds=max_seconds, device=dev,
        desc="C-EDM train" if ids is not None else "EDM train", verbose=verbose,
        on_step=on_step)
    step, history, seconds, stopped_early = res.step, res.history, res.seconds, res.stopped_early
    info.update(steps_done=step, train_seconds=seconds, stopped_early=stopped_early,
                history=history, device=str(dev), precision=str(amp))
    model = ClusterGenerator(res.ema, q, edm, info)
    model.unet.eval()
    if out is not None and dist.is_main:  # under torchrun rank 0 writes, the others wait
        if n_samples:
            ts = time.perf_counter()
            imgs = sample(model, n_samples, seed=int(seed) + 12345, device=dev,
                          precision=precision)
            from ..viz.images import save_image_grid

            save_image_grid(out / "samples.png", imgs)
            info["sample_seconds"] = time.perf_counter() - ts
        model.save(out)
    if out is not None:
        barrier()
    return GeneratorResult(model, history, step, seconds, out)
