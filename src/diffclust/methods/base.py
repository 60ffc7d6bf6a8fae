"""What every diffclust estimator shares: the scikit-learn contract, the runtime (seed, device,
precision) and ``save_pretrained`` / ``from_pretrained`` (config.json + model.safetensors)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..data.io import atomic_write_bytes, atomic_write_text
from ..data.validation import check_features, check_n_clusters
from ..training.runtime import (flush_denormals, resolve_device, resolve_precision,
                                seed_everything, thread_policy)

__all__ = ["DiffClusterMixin", "EmbeddingMixin", "ResumableMixin", "load_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def _jsonable(v):
    if isinstance(v, torch.device):
        return str(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, tuple):
        return list(v)
    return v


class DiffClusterMixin(ClusterMixin, BaseEstimator):
    """Base class. Subclasses implement ``_fit(X)``, ``_predict_proba(X)`` and, for
    persistence, ``_get_state() -> (json_dict, tensor_dict)`` and ``_set_state(json, tensors)``.
    """

    _input_kind = "features"  # or "images"
    #: parameters that may hold an object (a model, an augmentation): config.json records them
    #: as None when they do (the saved weights keep what the object shaped)
    _object_params: tuple = ()
    _thread_cap: int | None = None  # intra-op threads during fit (training/runtime.thread_policy)
    #: a loss with fixed targets (an ELBO), so that one that never went down is worth a warning;
    #: self-distillation losses (CLUDI, TEMI, DEC) chase moving targets and may rise
    _loss_should_decrease = False

    # ----- scikit-learn API -------------------------------------------------------------
    _parameter_constraints: dict = {}  # per estimator; see methods/params.py

    def fit(self, X, y=None):
        self._validate_params()
        X = self._validate_input(X, fitting=True)
        check_n_clusters(self.n_clusters, len(X))
        self._setup_runtime()
        with thread_policy(self._thread_cap), flush_denormals():
            self._fit(X)
        self._warn_if_degenerate()
        return self

    def _warn_if_degenerate(self):
        """Keep (``fit_warnings_``) and issue the diagnostics of a finished fit; methods add
        their own through ``_extra_warnings`` (e.g. a search that ended at its range's edge)."""
        import warnings

        from ..diagnostics import cluster_warnings, loss_warnings

        msgs = cluster_warnings(self.labels_, int(self.n_clusters))
        if self._loss_should_decrease:
            msgs += loss_warnings(getattr(self, "history_", None))
        msgs += self._extra_warnings()
        self.fit_warnings_ = msgs
        for m in msgs:
            warnings.warn(f"{type(self).__name__}: {m}", UserWarning, stacklevel=3)

    def _extra_warnings(self) -> list[str]:
        return []

    def _fitted_input(self, X=None):
        """``X`` validated for the fitted estimator (``NotFittedError`` before ``fit``), with
        the inference runtime (device, precision) set up; ``X=None`` checks only the fit."""
        check_is_fitted(self, "labels_")
        self._ensure_runtime()
        return None if X is None else self._validate_input(X, fitting=False)

    def predict_proba(self, X) -> np.ndarray:
        X = self._fitted_input(X)
        with flush_denormals():
            proba = self._predict_proba(X)
        if not np.isfinite(proba).all():
            raise FloatingPointError(
                f"{type(self).__name__} produced non-finite probabilities for "
                f"{int((~np.isfinite(proba)).any(1).sum())} of {len(proba)} samples; the "
                f"input may be far outside the training data's range (or the model is broken)")
        return proba

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def fit_predict(self, X, y=None, **kw):
        return self.fit(X).labels_

    # ----- shared plumbing --------------------------------------------------------------
    def _validate_input(self, X, fitting: bool):
        if isinstance(X, (str, Path)) and Path(X).is_dir():  # a folder of images
            from ..data import flatten_images, load_image_folder

            X, _ = load_image_folder(X)
            X = flatten_images(X) if self._input_kind == "features" else X
        if self._input_kind == "features":
            X = check_features(X)
            if fitting:
                self.n_features_in_ = X.shape[1]
            elif X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is "
                                 f"expecting {self.n_features_in_} features as input (the "
                                 f"data it was fitted on)")
            return X
        from ..data.validation import check_images

        X = check_images(X)
        if fitting:
            self.input_shape_ = tuple(int(s) for s in X.shape[1:])
            self.n_features_in_ = int(np.prod(X.shape[1:]))
        elif tuple(X.shape[1:]) != tuple(self.input_shape_):
            raise ValueError(f"images of shape {tuple(X.shape[1:])} (C,H,W) do not match the "
                             f"fitted shape {tuple(self.input_shape_)}")
        return X

    def _setup_runtime(self):
        self.seed_ = seed_everything(getattr(self, "random_state", None))
        self.device_ = resolve_device(getattr(self, "device", None))
        self.amp_dtype_ = resolve_precision(getattr(self, "precision", "auto"), self.device_)
        self.generator_ = torch.Generator(device="cpu").manual_seed(self.seed_)

    def _setup_distributed(self, batch_size=None, n=None):
        """For trainers that support DistributedDataParallel (TEMI): join the process group
        (:func:`~diffclust.training.distributed.ensure_distributed`: the user's, or one
        initialised lazily under ``torchrun``), put this rank on ``cuda:LOCAL_RANK`` when
        training on CUDA, and give every rank rank 0's seed (``random_state=None`` draws a
        different one per process). With ``batch_size`` (the global batch, split over the
        ranks) it must be divisible by the world size. Returns the :class:`DistInfo` (single
        process: world 1)."""
        from ..training.distributed import broadcast_object, ensure_distributed

        info = ensure_distributed(self.device_)
        W = info.world_size
        if batch_size is not None and batch_size % W:
            raise ValueError(f"{type(self).__name__} under torch.distributed splits the global "
                             f"batch over the {W} processes: batch_size={batch_size}"
                             f"{' (= n)' if batch_size == n else ''} is not divisible by the "
                             f"world size {W}; choose a multiple of {W}")
        if info.distributed:
            if self.device_.type == "cuda":
                self.device_ = torch.device("cuda", info.local_rank)
            elif info.backend == "nccl":
                raise ValueError(f"the process group uses nccl but {type(self).__name__} was "
                                 f"asked for device={self.device!r}; nccl needs CUDA: use "
                                 f"device='cuda' (or a gloo group for CPU training)")
            seed = int(broadcast_object(self.seed_))
            if seed != self.seed_:
                self.seed_ = seed_everything(seed)
                self.generator_ = torch.Generator(device="cpu").manual_seed(seed)
        return info

    def _ensure_runtime(self):
        if not hasattr(self, "device_"):
            self.device_ = resolve_device(getattr(self, "device", None))
            self.amp_dtype_ = resolve_precision(getattr(self, "precision", "auto"),
                                                self.device_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = getattr(self, "random_state", None) is None
        tags.input_tags.sparse = False
        return tags

    # ----- persistence ------------------------------------------------------------------
    #: fitted attributes that ``save_pretrained`` writes and ``load_pretrained`` restores by
    #: name: JSON values (``config.json``), numpy arrays and tensors (``model.safetensors``);
    #: ``_get_state``/``_set_state`` handle the rest (the networks)
    _fitted_json: tuple[str, ...] = ()
    _fitted_numpy: tuple[str, ...] = ()
    _fitted_tensors: tuple[str, ...] = ()

    def _get_state(self) -> tuple[dict, dict]:
        raise NotImplementedError

    def _set_state(self, meta: dict, tensors: dict):
        raise NotImplementedError

    def save_pretrained(self, path) -> Path:
        """Write ``config.json`` (hyperparameters + fitted metadata) and ``model.safetensors``
        (weights and fitted arrays) to the folder ``path``; no pickles.

        Under ``torch.distributed`` only rank 0 writes; the other ranks return ``path`` at once
        (no barrier, so calling it on rank 0 alone is fine too; call
        :func:`~diffclust.training.distributed.barrier` before another rank reads the folder).
        """
        from safetensors.torch import save

        from ..training.distributed import is_main_process

        check_is_fitted(self, "labels_")
        path = Path(path)
        if not is_main_process():
            return path
        path.mkdir(parents=True, exist_ok=True)
        meta, tensors = self._get_state()
        meta = {**{k: getattr(self, k) for k in self._fitted_json}, **meta, "labels_": None,
                "n_features_in_": int(self.n_features_in_)}
        if self._input_kind == "images":
            meta["input_shape_"] = list(self.input_shape_)
        tensors = {**{k: torch.as_tensor(np.asarray(getattr(self, k))) for k in self._fitted_numpy},
                   **{k: getattr(self, k) for k in self._fitted_tensors}, **tensors,
                   "labels_": torch.as_tensor(np.asarray(self.labels_), dtype=torch.int64)}
        config = {"class": type(self).__name__, "library": "diffclust",
                  "params": {k: None if k in self._object_params
                             and not isinstance(v, (str, Path, type(None))) else _jsonable(v)
                             for k, v in self.get_params().items()},
                  "fitted": {k: _jsonable(v) for k, v in meta.items()}}
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        blob = save(tensors)
        config["format_version"] = FORMAT_VERSION
        config["weights_sha256"] = hashlib.sha256(blob).hexdigest()
        from .. import __version__

        config["diffclust_version"] = __version__
        atomic_write_bytes(path / WEIGHTS_NAME, blob)
        atomic_write_text(path / CONFIG_NAME, json.dumps(config, indent=2))
        return path

    @classmethod
    def from_pretrained(cls, path, device=None):
        """Load an estimator written by :meth:`save_pretrained`."""
        est = load_pretrained(path, device=device)
        if cls is not DiffClusterMixin and not isinstance(est, cls):
            raise ValueError(f"{path} holds a {type(est).__name__}, not a {cls.__name__}; use "
                             f"diffclust.load_pretrained({str(path)!r})")
        return est


def _bad(path, what):
    return ValueError(f"{path} is not a usable diffclust model: {what}")


class ResumableMixin:
    """``fit(X, checkpoint_dir=..., checkpoint_every=...)`` for estimators whose training loop
    checkpoints itself (CLUDI, TEMI, ClusterDDPM) through :mod:`diffclust.training.checkpoint`:
    the loop calls :meth:`_restore_training` before its first step and
    :meth:`_checkpoint_training` after every step (or epoch)."""

    def fit(self, X, y=None, checkpoint_dir=None, checkpoint_every: int = 200):
        """Fit on ``X``. With ``checkpoint_dir`` the training state (weights, EMA, optimiser,
        schedule, every random state, the batch order, the history) is written there every
        ``checkpoint_every`` steps, atomically; a later ``fit`` with the same data, settings
        and folder continues from it and ends with the labels of an uninterrupted run (same
        machine and thread count). A checkpoint written for other data or settings is
        refused."""
        if checkpoint_every is None or int(checkpoint_every) < 1:
            raise ValueError(f"checkpoint_every must be a positive number of steps, got "
                             f"{checkpoint_every!r}")
        self._checkpoint = ((Path(checkpoint_dir), int(checkpoint_every))
                            if checkpoint_dir is not None else None)
        try:
            return super().fit(X, y)
        finally:
            del self._checkpoint

    def _restore_training(self, X, state: dict, **fingerprint_extra):
        """``(start_step, tensors, extra)`` from the checkpoint, if there is one."""
        from ..training.checkpoint import fingerprint, load_training_state

        ck = getattr(self, "_checkpoint", None)
        if ck is None:
            return 0, {}, {}
        self._fingerprint = fingerprint(self, X, **fingerprint_extra)
        return load_training_state(ck[0], fingerprint=self._fingerprint, **state)

    def _saved_step(self) -> int:
        """The step of this fit's checkpoint (0 without one), before restoring it."""
        from ..training.checkpoint import saved_step

        ck = getattr(self, "_checkpoint", None)
        return 0 if ck is None else saved_step(ck[0])

    def _checkpoint_training(self, step: int, total: int, state: dict, tensors=None,
                             extra=None, every=None):
        """Save after ``step`` of ``total`` every ``checkpoint_every`` steps (``every``
        overrides it: loops that checkpoint per epoch pass 1) and at the last step."""
        from ..training.checkpoint import save_training_state

        ck = getattr(self, "_checkpoint", None)
        if ck is not None and (step % (every or ck[1]) == 0 or step == total):
            save_training_state(ck[0], step, fingerprint=self._fingerprint, tensors=tensors,
                                extra=extra, **state)


class EmbeddingMixin(TransformerMixin):
    """For estimators whose ``transform`` returns float32 embeddings (CLUDI, TEMI); comes
    before :class:`DiffClusterMixin` in the bases, as scikit-learn requires."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def load_pretrained(path, device=None):
    """Load any diffclust estimator saved with ``save_pretrained``, verified first: the config's
    schema, version and class, the SHA-256 of the weights written at save time, every tensor
    finite and shaped as the config says, and ``labels_`` within ``[0, n_clusters)``. Every
    failure is a ``ValueError`` (``FileNotFoundError`` for missing files) naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from .registry import get_method_class

    path = Path(path)
    cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise FileNotFoundError(f"{path} is not a saved diffclust model: it needs {CONFIG_NAME} "
                                f"and {WEIGHTS_NAME} (write them with save_pretrained)")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(cfg_path, f"not valid JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("params"), dict) \
            or not isinstance(config.get("fitted", {}), dict) or "class" not in config:
        raise _bad(cfg_path, "it lacks the 'class', 'params' and 'fitted' sections that "
                             "save_pretrained writes")
    version = config.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise _bad(cfg_path, f"format_version {version!r} is newer than this diffclust reads "
                             f"({FORMAT_VERSION}); upgrade diffclust")
    try:
        klass = get_method_class(config["class"])
    except ValueError as e:
        raise _bad(cfg_path, str(e)) from None
    blob = w_path.read_bytes()
    digest = config.get("weights_sha256")
    if digest is not None and hashlib.sha256(blob).hexdigest() != digest:
        raise _bad(w_path, f"its SHA-256 differs from the one {CONFIG_NAME} recorded at save "
                           f"time (the file was changed or truncated)")
    try:
        tensors = load(blob)
    except (SafetensorError, Exception) as e:  # the header parser raises several types
        raise _bad(w_path, f"not a readable safetensors file ({e})") from None
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and
                 not torch.isfinite(v).all())
    if bad:
        raise _bad(w_path, f"tensor(s) {bad[:5]} hold NaN or infinite values")
    params = config["params"]
    for old, new in getattr(klass, "_renamed_params", {}).items():  # models saved before
        if old in params and new not in params:
            params[new] = params.pop(old)
    for old in getattr(klass, "_dropped_params", ()):
        params.pop(old, None)
    defaults = klass().get_params()
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise _bad(cfg_path, f"unknown parameter(s) {unknown} for {klass.__name__}")
    for k, v in params.items():  # JSON has no tuples
        if isinstance(v, list) and isinstance(defaults.get(k), tuple):
            params[k] = tuple(v)
    if device is not None:
        params["device"] = str(device)
    est = klass(**params)
    try:
        est._validate_params()
    except ValueError as e:
        raise _bad(cfg_path, str(e)) from None
    meta = dict(config.get("fitted", {}))
    if "labels_" not in tensors or "n_features_in_" not in meta:
        raise _bad(path, "labels_ or n_features_in_ is missing")
    labels = tensors.pop("labels_").numpy()
    K = est.n_clusters
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= K)):
        raise _bad(w_path, f"labels_ must be 1-D cluster ids in [0, {K}) (n_clusters in "
                           f"{CONFIG_NAME}), found range [{labels.min()}, {labels.max()}]")
    est.labels_ = labels
    est.n_features_in_ = meta.pop("n_features_in_")
    meta.pop("labels_", None)
    est._ensure_runtime()
    try:
        for k in klass._fitted_json:
            setattr(est, k, meta.pop(k))
        for k in klass._fitted_numpy:
            setattr(est, k, tensors.pop(k).numpy())
        for k in klass._fitted_tensors:
            setattr(est, k, tensors.pop(k))
        if klass._input_kind == "images":
            est.input_shape_ = tuple(meta.pop("input_shape_"))
        est._set_state(meta, tensors)
    except (KeyError, RuntimeError, TypeError, ValueError, IndexError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _bad(path, f"{WEIGHTS_NAME} does not match {CONFIG_NAME} ({type(e).__name__}: "
                         f"{msg})") from None
    return est
