"""Embedding throughput of ``diffclust embed`` for a ViT-S/16 at 224 px: fp32 vs bf16 autocast.

The weights of facebook/dino-vits16 cannot be downloaded here, so the model is a randomly
initialised ``ViTConfig`` of exactly its shape (hidden 384, 12 layers, 6 heads, MLP 1536, patch
16, 224 px: same FLOPs, same code path), saved with ``save_pretrained`` next to DINO's own
preprocessor config (224×224 bilinear resize, ImageNet mean/std) and loaded from that folder.

Two numbers per precision:
* ``forward``: the model alone on preprocessed batches (images/s);
* ``end_to_end``: ``diffclust.features.embed`` on real images (CIFAR-10 test JPEG copy, 32 px
  upsampled to 224 px), decode + preprocess + forward, cache off.

    python benchmarks/embed_throughput.py                     # ~3-6 min on 2 shared cores
    python benchmarks/embed_throughput.py --n-images 128 --batch-size 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_HOME, append_results, command_line, machine, peak_mem_mb  # noqa: E402

from diffclust.features import embed  # noqa: E402
from diffclust.features.backbones import HFBackbone  # noqa: E402

VITS16 = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
              intermediate_size=1536, image_size=224, patch_size=16, qkv_bias=True)


def build_vits16(folder: Path):
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(**VITS16), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 224, "width": 224}, resample=2,
                         image_mean=[0.485, 0.456, 0.406],
                         image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)


def time_forward(model_dir, precision, batch_size, n_batches):
    bb = HFBackbone(str(model_dir), device="cpu", precision=precision)
    x = torch.randn(batch_size, 3, 224, 224)
    bb.forward_pixels(x)  # warm-up (and weight loading)
    t = time.perf_counter()
    for _ in range(n_batches):
        bb.forward_pixels(x)
    return batch_size * n_batches / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=256, help="real images for end-to-end")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--forward-batches", type=int, default=4)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    with np.load(Path(DATA_HOME) / "cifar10_jpeg_test.npz") as z:
        images = z["x"][: args.n_images]
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "vit-s16-random"
        build_vits16(model_dir)
        for prec in args.precisions:
            fwd = time_forward(model_dir, prec, args.batch_size, args.forward_batches)
            t = time.perf_counter()
            f = embed(images, str(model_dir), precision=prec, batch_size=args.batch_size,
                      use_cache=False, device="cpu", verbose=False)
            e2e_s = time.perf_counter() - t
            rec = {"method": "embed", "backbone": "ViT-S/16 shape (random init)",
                   "dataset": f"cifar10_jpeg_test[:{len(images)}] -> 224px",
                   "n": len(images), "image_size": 224, "precision": prec,
                   "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                   "forward_images_per_s": round(fwd, 2),
                   "end_to_end_images_per_s": round(len(f) / e2e_s, 2),
                   "end_to_end_seconds": round(e2e_s, 2), "dim": int(f.x.shape[1]),
                   "peak_mem_mb": round(peak_mem_mb(), 1), "device": "cpu",
                   "machine": machine() + ", shared with other jobs",
                   "command": command_line(), "date": time.strftime("%Y-%m-%d")}
            print(f"{prec}: forward {fwd:.1f} img/s, end-to-end {rec['end_to_end_images_per_s']}"
                  f" img/s ({e2e_s:.1f}s for {len(f)} images)", flush=True)
            records.append(rec)
    if not args.no_save:
        print("appended to", append_results("embed", records))


if __name__ == "__main__":
    main()
