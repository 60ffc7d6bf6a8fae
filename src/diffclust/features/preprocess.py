"""A backbone's own image preprocessing, reimplemented with PIL / numpy / torch.

The values (resize target and filter, centre crop, rescale factor, mean/std) come from the
model's Hugging Face preprocessor config, read through ``AutoImageProcessor`` so that the class
defaults a config leaves out are filled in exactly as transformers fills them. The operations
then follow transformers' PIL backend step by step, so the output matches
``processor(images)["pixel_values"]`` (tests/test_features.py checks it), without needing
torchvision:

1. convert to RGB (transparency composited onto white; grey repeated to 3 channels);
2. resize with PIL: to ``(height, width)``, or the shortest edge to ``shortest_edge`` keeping the
   aspect ratio (long edge ``int(s · long / short)``);
3. centre crop to ``crop_size`` (zero-padded when the image is smaller);
4. ``x · rescale_factor`` (computed in float64, stored as float32), then ``(x − mean) / std``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from math import ceil

import numpy as np
import torch

__all__ = ["Preprocessor", "to_rgb_pil"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FIELDS = ("do_convert_rgb", "do_resize", "size", "resample", "do_center_crop", "crop_size",
           "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")


def to_rgb_pil(image):
    """A PIL RGB image from a PIL image or a uint8 array ``(H, W)``, ``(H, W, C)``; transparency is
    composited onto white, as transformers' ``convert_to_rgb`` does."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8, got {image.dtype}")
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        image = Image.fromarray(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        bg = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, image).convert("RGB")
    return image.convert("RGB")


def _size_dict(size, default_to_square: bool):
    if size is None:
        return None
    if isinstance(size, int):
        return ({"height": size, "width": size} if default_to_square
                else {"shortest_edge": size})
    if isinstance(size, (tuple, list)):
        return {"height": int(size[0]), "width": int(size[1])}
    d = {k: int(v) for k, v in dict(size).items() if v is not None}
    return d


@dataclass
class Preprocessor:
    """Resize → centre crop → rescale → normalise, as a backbone's image processor does.

    ``size`` is ``{"height": h, "width": w}`` (resize to exactly that) or
    ``{"shortest_edge": s}`` (keep the aspect ratio); ``resample`` is a PIL filter number
    (2 = bilinear, 3 = bicubic). The default is DINO ViT's: 224×224 bilinear, ImageNet mean/std.
    """

    size: dict = field(default_factory=lambda: {"height": 224, "width": 224})
    resample: int = 2
    do_resize: bool = True
    do_center_crop: bool = False
    crop_size: dict | None = None
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = IMAGENET_MEAN
    image_std: tuple = IMAGENET_STD
    do_convert_rgb: bool = True

    # ----- construction ------------------------------------------------------------------
    @classmethod
    def from_processor(cls, proc) -> "Preprocessor":
        """From a transformers image processor object (its resolved attribute values)."""
        square = bool(getattr(proc, "default_to_square", True))
        kw = {}
        for name in _FIELDS:
            v = getattr(proc, name, None)
            if v is None:
                continue
            if name in ("size", "crop_size"):
                v = _size_dict(v, square if name == "size" else True)
            elif name == "resample":
                v = int(v)
            elif name in ("image_mean", "image_std"):
                v = tuple(float(a) for a in (v if isinstance(v, (list, tuple)) else [v] * 3))
            elif name == "rescale_factor":
                v = float(v)
            else:
                v = bool(v)
            kw[name] = v
        if kw.get("do_convert_rgb") is None:
            kw["do_convert_rgb"] = True
        return cls(**kw)

    @classmethod
    def from_pretrained(cls, path_or_id, local_files_only: bool = False) -> "Preprocessor":
        """Read a model's preprocessor config (``preprocessor_config.json``) through
        ``AutoImageProcessor`` (PIL backend: no torchvision needed)."""
        return cls.from_processor(load_image_processor(path_or_id, local_files_only))

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessor":
        d = {k: v for k, v in d.items() if k in _FIELDS}
        for k in ("image_mean", "image_std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        return d

    # ----- the operations ----------------------------------------------------------------
    def _resize_hw(self, h: int, w: int) -> tuple[int, int]:
        s = self.size
        if "height" in s and "width" in s:
            return s["height"], s["width"]
        if "shortest_edge" in s:
            short, long = (w, h) if w <= h else (h, w)
            new_short = s["shortest_edge"]
            new_long = int(new_short * long / short)
            if "longest_edge" in s and new_long > s["longest_edge"]:
                new_short, new_long = int(s["longest_edge"] * new_short / new_long), \
                    s["longest_edge"]
            return (new_short, new_long) if h <= w else (new_long, new_short)
        raise ValueError(f"unsupported size {s}: expected {{'height', 'width'}} or "
                         f"{{'shortest_edge'}}")

    @staticmethod
    def _center_crop(a: np.ndarray, ch: int, cw: int) -> np.ndarray:
        """``a`` is (H, W, C); transformers' centre crop with zero padding when too small."""
        h, w = a.shape[:2]
        top, left = (h - ch) // 2, (w - cw) // 2
        if top >= 0 and left >= 0 and top + ch <= h and left + cw <= w:
            return a[top:top + ch, left:left + cw]
        nh, nw = max(ch, h), max(cw, w)
        out = np.zeros((nh, nw) + a.shape[2:], dtype=a.dtype)
        tp, lp = ceil((nh - h) / 2), ceil((nw - w) / 2)
        out[tp:tp + h, lp:lp + w] = a
        top, left = top + tp, left + lp
        return out[max(0, top):min(nh, top + ch), max(0, left):min(nw, left + cw)]

    def process_one(self, image) -> np.ndarray:
        """One image (PIL or uint8 array) → float32 ``(3, H, W)``."""
        from PIL import Image

        img = to_rgb_pil(image) if self.do_convert_rgb else (
            image if isinstance(image, Image.Image) else Image.fromarray(image))
        if self.do_resize:
            h, w = self._resize_hw(img.height, img.width)
            img = img.resize((w, h), resample=self.resample)
        a = np.asarray(img)
        if a.ndim == 2:
            a = a[..., None]
        if self.do_center_crop and self.crop_size:
            a = self._center_crop(a, self.crop_size["height"], self.crop_size["width"])
        if self.do_rescale:
            a = (a.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            a = a.astype(np.float32)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)
            std = np.asarray(self.image_std, dtype=np.float32)
            a = (a - mean) / std
        return np.ascontiguousarray(a.transpose(2, 0, 1))

    def __call__(self, images) -> torch.Tensor:
        """A list of images (PIL or uint8 arrays) → float32 tensor ``(B, 3, H, W)``."""
        arrs = [self.process_one(im) for im in images]
        shapes = {a.shape for a in arrs}
        if len(shapes) > 1:
            raise ValueError(f"preprocessed images have different shapes {sorted(shapes)}: this "
                             f"preprocessing has no fixed output size (no crop and no "
                             f"height/width resize); use batch_size=1 or a fixed size")
        return torch.from_numpy(np.stack(arrs)) if arrs else torch.empty(0, 3, 0, 0)


def load_image_processor(path_or_id, local_files_only: bool = False):
    """``AutoImageProcessor.from_pretrained`` with the PIL backend (transformers ≥ 5) or the
    slow processor (4.x); torchvision is never needed."""
    import transformers
    from transformers import AutoImageProcessor

    major = int(transformers.__version__.split(".")[0])
    kw = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    return AutoImageProcessor.from_pretrained(str(path_or_id), local_files_only=local_files_only,
                                              **kw)
