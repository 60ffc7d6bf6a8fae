"""Image U-Nets: a thin wrapper over diffusers' :class:`~diffusers.UNet2DModel`.

:class:`DiffusionUNet` holds a plain ``UNet2DModel`` (``.unet``) and adds only what the methods
of this library need around it:

* **presets** sized for 16×16 (USPS), 28×28 (MNIST/Fashion-MNIST, padded to 32×32), 32×32
  (CIFAR) and 64×64 inputs, grey or colour, plus a ``tiny`` preset for tests
  (``block_out_channels=(8, 16)``): :func:`unet_config` / :func:`make_unet`;
* **padding**: inputs whose side is not a multiple of the U-Net's total downsampling factor
  (28×28) are padded to ``sample_size`` with the background value −1 *before* noising
  (:meth:`DiffusionUNet.pad`), and outputs cropped back (:meth:`DiffusionUNet.crop`), so the
  diffusion model lives on the padded image;
* **conditioning** on a cluster id, with a *null id* ``n_classes`` for classifier-free guidance
  (diffusers ``num_class_embeds = n_classes + 1``; the id embedding is added to the time
  embedding), or on a continuous vector ``c ∈ R^{cond_dim}`` projected by a linear layer and
  added to the time embedding (diffusers ``class_embed_type="identity"``; METHODS.md §1.7,
  "vector/one-hot condition added to the time embedding");
* **features**: :func:`bottleneck_features` reads the activations of any block for given
  ``(x_t, t)`` — the mid-block (bottleneck, DiEC's Clustering Middle Layer) by running only the
  down path and the mid block, the up blocks through a forward hook that is removed right after;
* **persistence** in diffusers format: :meth:`DiffusionUNet.save_pretrained` writes the U-Net as
  ``save_pretrained`` does (``config.json`` + ``diffusion_pytorch_model.safetensors``) plus a small
  ``diffclust_unet.json`` (and ``cond_proj.safetensors`` for vector conditioning).
  :meth:`DiffusionUNet.from_pretrained` reads our folders, any folder holding a diffusers
  ``UNet2DModel`` (also a pipeline folder with a ``unet/`` subfolder, such as
  ``google/ddpm-cifar10-32``), or a hub id on a machine with internet.

Timesteps are 0-based integers ``t ∈ {0..T−1}`` (the diffusers convention).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .process import check_prediction, eps_from_prediction

__all__ = ["DiffusionUNet", "unet_config", "make_unet", "load_unet", "bottleneck_features", "noisy_features", "PRESETS",
           "unet_block_names"]

EXTRA_NAME = "diffclust_unet.json"
COND_NAME = "cond_proj.safetensors"

# name → (block_out_channels, down_block_types, layers_per_block, norm_num_groups)
# Each preset for side s is sized so that its bottleneck is 4×4 (8×8 for base64); inputs smaller
# than s (28×28 for the 32 presets) are padded to s. "small" presets are what a 2-core CPU can
# pretrain in minutes; "base" ones are for a GPU.
_D, _A = "DownBlock2D", "AttnDownBlock2D"
PRESETS = {
    "tiny": ((8, 16), (_D, _D), 1, 8),
    "small16": ((32, 64, 64), (_D, _D, _D), 1, 8),
    "base16": ((64, 128, 128), (_D, _D, _A), 2, 32),
    "small32": ((32, 64, 128, 128), (_D, _D, _D, _D), 1, 8),
    "base32": ((64, 128, 256, 256), (_D, _A, _D, _D), 2, 32),
    "small64": ((32, 64, 128, 128, 128), (_D, _D, _D, _D, _D), 1, 8),
    "base64": ((64, 128, 256, 256), (_D, _D, _A, _D), 2, 32),
}


def _padded_size(size: int, levels: int) -> int:
    f = 2 ** (levels - 1)
    return -(-size // f) * f


def unet_config(image_size: int, in_channels: int = 1, preset: str = "auto",
                n_classes: int | None = None, **overrides) -> dict:
    """``UNet2DModel`` keyword arguments for square ``image_size`` inputs.

    ``preset``: ``"auto"`` (``small`` for the nearest of 16/32/64), ``"small"``, ``"base"``,
    ``"tiny"`` or a key of :data:`PRESETS`. ``sample_size`` is ``image_size`` rounded up to a
    multiple of the downsampling factor (28 → 32). ``n_classes`` adds ``n_classes + 1`` class
    embeddings (the last one is the null id). Any ``overrides`` go straight to diffusers.
    """
    if image_size < 4:
        raise ValueError(f"image_size must be ≥ 4, got {image_size}")
    side = 0
    if preset in ("auto", "small", "base"):
        side = 16 if image_size <= 20 else 32 if image_size <= 40 else 64
        preset = f"{'base' if preset == 'base' else 'small'}{side}"
    elif preset[-2:].isdigit():
        side = int(preset[-2:])
    if preset not in PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; choose 'auto', 'small', 'base' or one "
                         f"of {sorted(PRESETS)}")
    boc, down, lpb, groups = PRESETS[preset]
    up = tuple(t.replace("Down", "Up") for t in reversed(down))
    sample_size = _padded_size(image_size, len(boc))
    if image_size <= side:
        sample_size = side
    cfg = dict(sample_size=sample_size, in_channels=in_channels,
               out_channels=in_channels, block_out_channels=boc, down_block_types=down,
               up_block_types=up, layers_per_block=lpb, norm_num_groups=groups,
               attention_head_dim=min(32, boc[-1]), add_attention=preset != "tiny",
               dropout=0.0)
    if n_classes is not None:
        cfg["num_class_embeds"] = int(n_classes) + 1
    cfg.update(overrides)
    return cfg


class DiffusionUNet(nn.Module):
    """An image U-Net denoiser: ``forward(x_t, t, class_labels=None, cond=None)`` → ε̂, or v̂
    when ``prediction="v"`` (:meth:`eps` gives ε̂ either way).

    Parameters
    ----------
    unet : diffusers.UNet2DModel
    image_size : int, optional
        Side of the images the user works with (e.g. 28); ``pad``/``crop`` map them to and from
        ``unet.config.sample_size`` (e.g. 32). Defaults to ``sample_size`` (no padding).
    n_classes : int, optional
        Number of real class ids when the U-Net has ``num_class_embeds = n_classes + 1``; the
        id ``n_classes`` is the null (unconditional) id for classifier-free guidance.
    cond_dim : int, optional
        Width of a continuous conditioning vector (needs ``class_embed_type="identity"``); a
        ``Linear(cond_dim, time_embed_dim)`` maps it into the time embedding.
    schedule : dict, optional
        The noise schedule the U-Net was trained with (``NoiseSchedule.to_config()``); saved with
        it. ``None`` means the DDPM default, linear β with T = 1000.
    prediction : {"epsilon", "v"}
        What the network outputs: the noise ε (DDPM, the default) or the velocity
        v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x_0; saved with it.
    """

    def __init__(self, unet, image_size: int | None = None, n_classes: int | None = None,
                 cond_dim: int | None = None, schedule: dict | None = None,
                 prediction: str = "epsilon"):
        super().__init__()
        self.unet = unet
        self.schedule = dict(schedule) if schedule else None
        self.prediction = check_prediction(prediction or "epsilon")
        cfg = unet.config
        ss = cfg.sample_size
        self.sample_size = int(ss if isinstance(ss, int) else ss[0])
        self.image_size = int(image_size or self.sample_size)
        if self.image_size > self.sample_size:
            raise ValueError(f"image_size {self.image_size} is larger than the U-Net's "
                             f"sample_size {self.sample_size}")
        self.n_classes = n_classes
        if n_classes is None and cfg.num_class_embeds is not None and cfg.class_embed_type is None:
            self.n_classes = int(cfg.num_class_embeds) - 1
        self.cond_dim = cond_dim
        self.cond_proj = None
        if cond_dim is not None:
            if cfg.class_embed_type != "identity":
                raise ValueError("vector conditioning needs a UNet2DModel built with "
                                 "class_embed_type='identity' (make_unet(cond_dim=...) does it)")
            temb = cfg.time_embedding_dim or cfg.block_out_channels[0] * 4
            self.cond_proj = nn.Linear(int(cond_dim), temb)

    def noise_schedule(self):
        """The :class:`~diffclust.diffusion.NoiseSchedule` this U-Net was trained with."""
        from .schedules import NoiseSchedule

        cfg = dict(self.schedule or {"name": "linear", "T": 1000})
        return NoiseSchedule(cfg.get("name", "linear"), int(cfg.get("T", 1000)),
                             noise_scale=float(cfg.get("noise_scale", 1.0)),
                             rescale=cfg.get("rescale"), kwargs=dict(cfg.get("kwargs") or {}))

    # ------------------------------------------------------------------ shapes
    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def null_class(self) -> int:
        if self.n_classes is None:
            raise ValueError("this U-Net is not class-conditional")
        return int(self.n_classes)

    def _pads(self):
        d = self.sample_size - self.image_size
        return d // 2, d - d // 2

    def pad(self, x0: torch.Tensor, value: float = -1.0) -> torch.Tensor:
        """Pad clean images ``(B, C, image_size, image_size)`` to ``sample_size`` with the
        background ``value`` (−1 = black in [−1, 1]); identity when no padding is needed."""
        a, b = self._pads()
        if a == 0 and b == 0:
            return x0
        return F.pad(x0, (a, b, a, b), value=value)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self._pads()
        if a == 0 and b == 0:
            return x
        return x[..., a:x.shape[-2] - b, a:x.shape[-1] - b]

    # ------------------------------------------------------------------ conditioning
    def _class_input(self, batch, class_labels, cond, device, dtype):
        cfg = self.unet.config
        if self.cond_proj is not None:
            if cond is None:
                cond = torch.zeros(batch, self.cond_dim, device=device)
            return self.cond_proj(cond.to(device=device, dtype=self.cond_proj.weight.dtype))
        if cfg.num_class_embeds is not None and cfg.class_embed_type is None:
            if class_labels is None:  # unconditional = null id
                class_labels = torch.full((batch,), self.null_class, device=device,
                                          dtype=torch.long)
            class_labels = torch.as_tensor(class_labels, device=device).long()
            if class_labels.ndim == 0:
                class_labels = class_labels.expand(batch)
            return class_labels
        if class_labels is not None or cond is not None:
            raise ValueError("this U-Net is unconditional: do not pass class_labels or cond")
        return None

    def _time(self, t, batch, device):
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        return t

    def forward(self, x_t, t, class_labels=None, cond=None):
        """ε̂(x_t, t[, c]) on padded inputs of side ``sample_size``."""
        B = x_t.shape[0]
        c = self._class_input(B, class_labels, cond, x_t.device, x_t.dtype)
        return self.unet(x_t, self._time(t, B, x_t.device), class_labels=c).sample

    def eps(self, x_t, t, class_labels=None, cond=None, sched=None):
        """ε̂(x_t, t) whatever the parametrisation (``sched``: the U-Net's own by default)."""
        out = self(x_t, t, class_labels=class_labels, cond=cond)
        return eps_from_prediction(self.prediction, sched or self.noise_schedule(), x_t, t, out)

    def embedding(self, t, batch, device, class_labels=None, cond=None):
        """The U-Net's time (+ class) embedding ``emb`` that every resnet block receives."""
        unet = self.unet
        t = self._time(t, batch, device)
        emb = unet.time_embedding(unet.time_proj(t).to(dtype=unet.dtype))
        c = self._class_input(batch, class_labels, cond, device, emb.dtype)
        if unet.class_embedding is not None and c is not None:
            if unet.config.class_embed_type == "timestep":
                c = unet.time_proj(c)
            emb = emb + unet.class_embedding(c).to(dtype=emb.dtype)
        return emb

    def with_classes(self, n_classes: int) -> "DiffusionUNet":
        """This unconditional U-Net conditioned on ``n_classes`` cluster ids (plus the null
        id): the same weights and a zero-initialised id embedding, so it starts as the
        unconditional model. A U-Net already conditioned on ``n_classes`` ids is returned as
        is."""
        from diffusers import UNet2DModel

        cfg = self.unet.config
        if cfg.class_embed_type is None and self.n_classes == int(n_classes):
            return self
        if cfg.num_class_embeds is not None or cfg.class_embed_type is not None:
            what = (f"{self.n_classes} class ids" if self.n_classes is not None
                    else "conditioning vectors")
            raise ValueError(f"the U-Net is conditioned on {what}; pass an unconditional one "
                             f"or one conditioned on {int(n_classes)} cluster ids")
        config = {k: v for k, v in dict(cfg).items() if not k.startswith("_")}
        unet = UNet2DModel.from_config({**config, "num_class_embeds": int(n_classes) + 1})
        missing, unexpected = unet.load_state_dict(self.unet.state_dict(), strict=False)
        if unexpected or set(missing) != {"class_embedding.weight"}:  # pragma: no cover
            raise RuntimeError(f"unexpected U-Net weights: missing {missing}, extra {unexpected}")
        nn.init.zeros_(unet.class_embedding.weight)
        return DiffusionUNet(unet.to(next(self.unet.parameters()).device), self.image_size,
                             int(n_classes), None, self.schedule, self.prediction)

    # ------------------------------------------------------------------ persistence
    def extra_config(self) -> dict:
        extra = {"image_size": self.image_size, "n_classes": self.n_classes,
                 "cond_dim": self.cond_dim, "schedule": self.schedule, "library": "diffclust"}
        if self.prediction != "epsilon":  # absent means ε (every model saved before v existed)
            extra["prediction"] = self.prediction
        return extra

    def save_pretrained(self, path) -> Path:
        """diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) plus
        ``diffclust_unet.json`` (and ``cond_proj.safetensors`` for vector conditioning). The
        diffusers files are written to a temporary folder first and moved in place."""
        import os
        import shutil
        import tempfile

        from safetensors.torch import save

        from ..data.io import atomic_write_bytes, atomic_write_text

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unet_tmp", dir=path))
        try:
            self.unet.save_pretrained(str(tmp), safe_serialization=True)
            for f in tmp.iterdir():
                os.replace(f, path / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if self.cond_proj is not None:
            sd = {k: v.detach().cpu().contiguous() for k, v in self.cond_proj.state_dict().items()}
            atomic_write_bytes(path / COND_NAME, save(sd))
        atomic_write_text(path / EXTRA_NAME, json.dumps(self.extra_config(), indent=2))
        return path

    def to_meta(self) -> dict:
        """The JSON an estimator's ``config.json`` keeps to rebuild this U-Net
        (:meth:`from_meta`): the diffusers config and :meth:`extra_config`."""
        return {"unet_config": json.loads(self.unet.to_json_string()),
                "unet_extra": self.extra_config()}

    @classmethod
    def from_meta(cls, meta: dict) -> "DiffusionUNet":
        """The (untrained) U-Net described by :meth:`to_meta`'s entries in ``meta``."""
        return cls.from_config(meta["unet_config"], meta["unet_extra"])

    @classmethod
    def from_config(cls, config: dict, extra: dict | None = None) -> "DiffusionUNet":
        from diffusers import UNet2DModel

        extra = extra or {}
        unet = UNet2DModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        return cls(unet, extra.get("image_size"), extra.get("n_classes"), extra.get("cond_dim"),
                   extra.get("schedule"), extra.get("prediction", "epsilon"))

    @classmethod
    def from_pretrained(cls, path, image_size: int | None = None, **kw) -> "DiffusionUNet":
        """Load a folder written by :meth:`save_pretrained`, any diffusers ``UNet2DModel``
        folder (or pipeline folder with ``unet/``), or a hub id (needs internet)."""
        from diffusers import UNet2DModel

        kw.setdefault("low_cpu_mem_usage", False)
        p = Path(path)
        sub = None
        if p.is_dir() and not (p / "config.json").exists() and (p / "unet" / "config.json").exists():
            sub = "unet"
            p = p / "unet"
        if Path(path).exists() and not (p / "config.json").exists():
            raise ValueError(f"{path} holds no diffusers UNet2DModel (no config.json and no "
                             f"unet/config.json); save one with DiffusionUNet.save_pretrained "
                             f"or `diffclust pretrain-diffusion`")
        try:
            unet = UNet2DModel.from_pretrained(str(path), subfolder=sub, **kw)
        except (OSError, ValueError, EnvironmentError) as e:
            if sub is None and not Path(path).exists():  # hub pipeline id: the U-Net is in unet/
                try:
                    unet = UNet2DModel.from_pretrained(str(path), subfolder="unet", **kw)
                except (OSError, ValueError, EnvironmentError):
                    raise ValueError(f"could not load a diffusers UNet2DModel from {path!r}: "
                                     f"{e}") from e
            else:
                raise ValueError(f"could not load a diffusers UNet2DModel from {path!r}: "
                                 f"{e}") from e
        extra = {}
        if (p / EXTRA_NAME).exists():
            extra = json.loads((p / EXTRA_NAME).read_text())
        model = cls(unet, image_size or extra.get("image_size"), extra.get("n_classes"),
                    extra.get("cond_dim"), extra.get("schedule"),
                    extra.get("prediction", "epsilon"))
        if model.cond_proj is not None and (p / COND_NAME).exists():
            from safetensors.torch import load_file

            model.cond_proj.load_state_dict(load_file(str(p / COND_NAME)))
        return model


def make_unet(image_size: int, in_channels: int = 1, preset: str = "auto",
              n_classes: int | None = None, cond_dim: int | None = None, seed: int | None = None,
              schedule: dict | None = None, prediction: str = "epsilon",
              **overrides) -> DiffusionUNet:
    """Build a fresh :class:`DiffusionUNet` (see :func:`unet_config`) that will predict
    ``prediction`` ("epsilon" or "v").

    ``n_classes``: cluster-id conditioning with a null id for classifier-free guidance.
    ``cond_dim``: continuous-vector conditioning added to the time embedding.
    ``seed`` makes the initial weights reproducible.
    """
    from diffusers import UNet2DModel

    if n_classes is not None and cond_dim is not None:
        raise ValueError("pass n_classes (cluster ids) or cond_dim (vectors), not both")
    if cond_dim is not None:
        overrides.setdefault("class_embed_type", "identity")
    cfg = unet_config(image_size, in_channels, preset, n_classes, **overrides)
    ctx = torch.random.fork_rng() if seed is not None else _null()
    with ctx:
        if seed is not None:
            torch.manual_seed(int(seed))
        unet = UNet2DModel(**cfg)
        return DiffusionUNet(unet, image_size, n_classes, cond_dim, schedule, prediction)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def unet_block_names(unet) -> list[str]:
    """Names accepted by :func:`bottleneck_features`: ``conv_in``, ``down.i``, ``mid``, ``up.i``."""
    u = unet.unet if isinstance(unet, DiffusionUNet) else unet
    names = ["conv_in"] + [f"down.{i}" for i in range(len(u.down_blocks))]
    if u.mid_block is not None:
        names.append("mid")
    return names + [f"up.{i}" for i in range(len(u.up_blocks))]


def bottleneck_features(unet, x_t: torch.Tensor, t, block: str = "mid", class_labels=None,
                        cond=None) -> torch.Tensor:
    """Activations of one block of the U-Net for inputs ``(x_t, t)``: ``(B, C, h, w)``.

    ``block="mid"`` (default) is the bottleneck, the output of the middle block (DiEC's
    Clustering Middle Layer, METHODS.md §3.2); ``"conv_in"`` and ``"down.i"`` are read the same
    cheap way, running only the down path up to that block. ``"up.i"`` runs the whole U-Net with
    a forward hook on that block, removed before returning (also on errors). Gradients flow as
    usual (wrap the call in ``torch.no_grad()`` when only reading).

    ``unet`` is a :class:`DiffusionUNet` or a plain ``UNet2DModel``; ``x_t`` must already have
    the U-Net's ``sample_size`` (use :meth:`DiffusionUNet.pad` on clean images).
    """
    wrapper = unet if isinstance(unet, DiffusionUNet) else DiffusionUNet(unet)
    u = wrapper.unet
    names = unet_block_names(u)
    if block not in names:
        raise ValueError(f"unknown block {block!r}; this U-Net has {names}")
    B = x_t.shape[0]
    if block.startswith("up."):
        store = {}
        target = u.up_blocks[int(block.split(".")[1])]
        handle = target.register_forward_hook(lambda m, i, o: store.__setitem__(
            "h", o[0] if isinstance(o, tuple) else o))
        try:
            wrapper(x_t, t, class_labels=class_labels, cond=cond)
        finally:
            handle.remove()
        return store["h"]
    emb = wrapper.embedding(t, B, x_t.device, class_labels, cond)
    if u.config.center_input_sample:
        x_t = 2 * x_t - 1.0
    skip = x_t
    h = u.conv_in(x_t)
    if block == "conv_in":
        return h
    stop = len(u.down_blocks) - 1 if block == "mid" else int(block.split(".")[1])
    for i, down in enumerate(u.down_blocks):
        if hasattr(down, "skip_conv"):
            h, _, skip = down(hidden_states=h, temb=emb, skip_sample=skip)
        else:
            h, _ = down(hidden_states=h, temb=emb)
        if i == stop and block != "mid":
            return h
    return u.mid_block(h, emb)


def noisy_features(unet, sched, x0: torch.Tensor, t: int, n_noise: int, generator,
                   block: str = "mid", dtype=None) -> torch.Tensor:
    """Block activations of clean images ``x0`` noised to step ``t`` (DiEC eq. 9–13):
    ``e = vec(h(x_t, t))`` with ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ξ`` for ``n_noise`` draws
    of ξ from ``generator``, as ``(n_noise, B, D_e)`` in fp32; ``dtype``: autocast precision.
    Gradients follow the caller's grad mode."""
    from ..training.runtime import autocast
    from .process import q_sample

    B = x0.shape[0]
    xr = unet.pad(x0).repeat(n_noise, 1, 1, 1)
    eps = torch.randn(xr.shape, generator=generator).to(xr.device)
    tt = torch.full((xr.shape[0],), int(t), device=xr.device, dtype=torch.long)
    with autocast(xr.device, dtype):
        h = bottleneck_features(unet, q_sample(sched, xr, tt, noise=eps), tt, block=block)
    return h.float().reshape(n_noise, B, -1)


def load_unet(src, image_shape) -> tuple[DiffusionUNet, str]:
    """A copy of the U-Net ``src`` (a :class:`DiffusionUNet`, a diffusers ``UNet2DModel``, the
    name of a model shipped with the package (:mod:`diffclust.pretrained`), or a folder / hub id
    of one) checked against images of ``image_shape`` ``(C, H, W)``, and where it
    came from (for the fitted model's record). Smaller images are padded to its sample size."""
    import copy

    from diffusers import UNet2DModel

    from ..pretrained import PRETRAINED, pretrained_path

    C, H, W = image_shape
    if isinstance(src, DiffusionUNet):
        model, where = copy.deepcopy(src), "DiffusionUNet object"
    elif isinstance(src, UNet2DModel):
        model, where = DiffusionUNet(copy.deepcopy(src), image_size=H), "UNet2DModel object"
    elif isinstance(src, str) and (src in PRETRAINED or "/" not in src and not Path(src).exists()):
        # a model shipped with the package (a name that is no folder and no hub id owner/name)
        model = DiffusionUNet.from_pretrained(pretrained_path(src), image_size=None)
        where = f"pretrained:{src}"
    elif isinstance(src, (str, Path)):
        model, where = DiffusionUNet.from_pretrained(src, image_size=None), str(src)
    else:
        raise ValueError(f"unet must be None, a pretrained name, a folder/hub id, a "
                         f"DiffusionUNet or a diffusers UNet2DModel; got {type(src).__name__}")
    if model.in_channels != C:
        raise ValueError(f"the U-Net takes {model.in_channels}-channel images but X has {C} "
                         f"channels")
    if H != W:
        raise ValueError(f"the U-Net needs square images, got {H}×{W}")
    if model.image_size != H:
        if H > model.sample_size:
            raise ValueError(f"images are {H}×{H} but the U-Net was built for "
                             f"{model.sample_size}×{model.sample_size}; resize the images or "
                             f"use a U-Net of that size")
        model.image_size = H  # pad the smaller images to the U-Net's sample_size
    return model, where

