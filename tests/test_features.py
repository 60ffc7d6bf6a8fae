"""diffclust.features: preprocessing parity with transformers, tiny random backbones saved
locally (the same loading path as Hub ids), the on-disk cache, unreadable images, resumption."""

import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from PIL import Image  # noqa: E402
from transformers import (BitImageProcessorPil, CLIPConfig, CLIPImageProcessorPil,  # noqa: E402
                          CLIPModel, Dinov2Config, Dinov2Model, ViTConfig,
                          ViTImageProcessorPil, ViTModel)
from diffclust.features import (BackboneLoadError, CallableBackbone, HFBackbone,  # noqa: E402
                                Preprocessor, embed, load_features)
from transformers.image_transforms import convert_to_rgb  # noqa: E402

from diffclust.features.preprocess import load_image_processor  # noqa: E402

VIT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
           image_size=32, patch_size=8)


def _rand_images(n, seed=0, sizes=((40, 52), (61, 33), (32, 32), (20, 90))):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, sizes[i % len(sizes)] + (3,), dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny random ViT (DINO layout), DINOv2 and CLIP checkpoints saved with save_pretrained."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vit = root / "vit"
    ViTModel(ViTConfig(**VIT), add_pooling_layer=False).save_pretrained(vit)
    ViTImageProcessorPil(size={"height": 32, "width": 32},
                         image_mean=[0.485, 0.456, 0.406],
                         image_std=[0.229, 0.224, 0.225]).save_pretrained(vit)
    dv2 = root / "dinov2"
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             mlp_ratio=1, image_size=32, patch_size=8)).save_pretrained(dv2)
    BitImageProcessorPil(size={"shortest_edge": 36}, crop_size=32,
                         image_mean=[0.485, 0.456, 0.406],
                         image_std=[0.229, 0.224, 0.225]).save_pretrained(dv2)
    clip = root / "clip"
    CLIPModel(CLIPConfig(
        text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=20, vocab_size=49408),
        vision_config=dict(VIT), projection_dim=24)).save_pretrained(clip)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32).save_pretrained(clip)
    return {"vit": vit, "dinov2": dv2, "clip": clip}


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "imgs"
    for c in ("cat", "dog"):
        (d / c).mkdir(parents=True)
    for i, im in enumerate(_rand_images(8)):
        Image.fromarray(im).save(d / ("cat" if i < 4 else "dog") / f"{i}.png")
    Image.fromarray(_rand_images(1, seed=5)[0]).save(d / "dog" / "x.JPG", quality=90)
    Image.fromarray(_rand_images(1, seed=6)[0]).save(d / "cat" / "y.webp")
    return d


# ----- preprocessing ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["vit", "dinov2", "clip"])
def test_preprocessing_matches_the_hf_processor(models, kind):
    proc = load_image_processor(models[kind])
    pre = Preprocessor.from_pretrained(models[kind])
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(a) for a in _rand_images(4)]
    imgs.append(Image.fromarray(rng.integers(0, 256, (27, 19), dtype=np.uint8)))  # grey, small
    rgba = rng.integers(0, 256, (35, 44, 4), dtype=np.uint8)
    imgs.append(Image.fromarray(rgba))  # transparency → composited onto white
    for im in imgs:
        # transformers' ViT processor does not convert grey/RGBA to RGB itself (ours always
        # does): feed it transformers' own convert_to_rgb output
        ref_in = im if proc.do_convert_rgb else convert_to_rgb(im, return_numpy=True)
        ref = proc(ref_in, return_tensors="np")["pixel_values"][0]
        ours = pre.process_one(im)
        assert ours.shape == ref.shape == (3, 32, 32)
        np.testing.assert_allclose(ours, ref, atol=1e-6)
    # the batched call on arrays gives the same as on PIL images
    arrs = _rand_images(3)
    np.testing.assert_allclose(pre(arrs).numpy(),
                               proc([Image.fromarray(a) for a in arrs],
                                    return_tensors="np")["pixel_values"], atol=1e-6)


def test_preprocessing_values_come_from_the_config(models):
    p = Preprocessor.from_pretrained(models["dinov2"])
    assert p.size == {"shortest_edge": 36} and p.crop_size == {"height": 32, "width": 32}
    assert p.do_center_crop and p.resample == 3  # BiT default (bicubic) filled in
    v = Preprocessor.from_pretrained(models["vit"])
    assert v.size == {"height": 32, "width": 32} and not v.do_center_crop and v.resample == 2


# ----- features --------------------------------------------------------------------------------
def _reference(models, kind, images):
    proc = load_image_processor(models[kind])
    px = torch.from_numpy(proc([Image.fromarray(a) for a in images],
                               return_tensors="np")["pixel_values"])
    with torch.no_grad():
        if kind == "vit":
            f = ViTModel.from_pretrained(models[kind], add_pooling_layer=False)(px)
            f = f.last_hidden_state[:, 0]
        elif kind == "dinov2":
            f = Dinov2Model.from_pretrained(models[kind])(px).pooler_output
        else:
            f = CLIPModel.from_pretrained(models[kind]).get_image_features(pixel_values=px)
            f = getattr(f, "pooler_output", f)
    return torch.nn.functional.normalize(f, dim=-1).numpy()


@pytest.mark.parametrize("kind,dim", [("vit", 32), ("dinov2", 32), ("clip", 24)])
def test_tiny_backbone_features_shape_norm_and_values(models, kind, dim, tmp_path):
    images = _rand_images(6)
    f = embed(np.stack([np.asarray(Image.fromarray(a).resize((40, 40))) for a in images]),
              str(models[kind]), precision="fp32", batch_size=4, cache_dir=tmp_path,
              verbose=False)
    assert f.x.shape == (6, dim) and f.x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f.x, axis=1), 1.0, atol=1e-5)
    ref = _reference(models, kind, [np.asarray(Image.fromarray(a).resize((40, 40)))
                                    for a in images])
    np.testing.assert_allclose(f.x, ref, atol=2e-5)
    assert list(f.names) == list(range(6)) and f.y is None


def test_bf16_autocast_close_to_fp32(models, tmp_path):
    X = np.stack(_rand_images(8, sizes=((32, 20),)))
    f32 = embed(X, str(models["vit"]), precision="fp32", cache_dir=tmp_path, verbose=False)
    b16 = embed(X, str(models["vit"]), precision="bf16", cache_dir=tmp_path, verbose=False)
    assert b16.meta["precision"] == "bfloat16" and b16.meta["cache_hits"] == 0  # own cache key
    cos = (f32.x * b16.x).sum(1)
    assert cos.min() > 0.99 and not np.allclose(f32.x, b16.x, atol=1e-7)


def test_array_layouts_and_dtypes_agree(models, tmp_path):
    hwc = np.stack(_rand_images(5, sizes=((32, 20),)))
    kw = dict(backbone=str(models["vit"]), precision="fp32", use_cache=False, verbose=False)
    a = embed(hwc, **kw).x
    np.testing.assert_allclose(embed(hwc.transpose(0, 3, 1, 2), **kw).x, a, atol=1e-6)
    np.testing.assert_allclose(embed(hwc / 255.0, **kw).x, a, atol=1e-6)
    grey = hwc[..., 0]
    g = embed(grey, **kw).x
    np.testing.assert_allclose(embed(np.repeat(grey[..., None], 3, -1), **kw).x, g, atol=1e-6)
    with pytest.raises(ValueError, match="feature vectors"):
        embed(np.zeros((4, 384), np.float32), **kw)


def test_shared_npz_dataset_keeps_labels(models, shared_data, tmp_path):
    f = embed("orl_32", str(models["vit"]), data_home=shared_data, cache_dir=tmp_path,
              batch_size=100, verbose=False, out=tmp_path / "orl.npz")
    assert f.x.shape == (400, 32) and len(np.unique(f.y)) == 40
    with np.load(tmp_path / "orl.npz") as z:
        assert set(z.files) == {"x", "names", "y"}
        np.testing.assert_array_equal(z["names"], np.arange(400))
    meta = json.loads((tmp_path / "orl.json").read_text())
    assert meta["model_type"] == "vit" and meta["input"].startswith("dataset orl_32")
    assert meta["preprocessing"]["size"] == {"height": 32, "width": 32} and meta["date"]


# ----- folders, cache, unreadable files, resumption -------------------------------------------
def test_folder_cache_hit_and_changed_file_is_reembedded(models, folder, tmp_path):
    cache = tmp_path / "cache"
    kw = dict(cache_dir=cache, batch_size=4, verbose=False)
    f1 = embed(folder, str(models["vit"]), out=tmp_path / "f.npz", **kw)
    assert len(f1) == 10 and f1.meta["computed"] == 10 and f1.meta["cache_hits"] == 0
    assert f1.class_names == ["cat", "dog"] and f1.y.sum() == 5  # ImageFolder layout
    assert "dog/x.JPG" in set(f1.names) and "cat/y.webp" in set(f1.names)
    f2 = embed(folder, str(models["vit"]), **kw)
    assert f2.meta["computed"] == 0 and f2.meta["cache_hits"] == 10
    np.testing.assert_array_equal(f1.x, f2.x)
    # change one file: only it is embedded again, and its feature changes
    p = folder / "cat" / "1.png"
    Image.fromarray(_rand_images(1, seed=9, sizes=((50, 50),))[0]).save(p)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    f3 = embed(folder, str(models["vit"]), **kw)
    assert f3.meta["computed"] == 1 and f3.meta["cache_hits"] == 9
    j = list(f3.names).index("cat/1.png")
    assert not np.allclose(f3.x[j], f1.x[j])
    others = np.arange(10) != j
    np.testing.assert_array_equal(f3.x[others], f1.x[others])
    # different weights in the model folder → a different cache key → everything recomputed
    torch.manual_seed(1)
    ViTModel(ViTConfig(**VIT), add_pooling_layer=False).save_pretrained(tmp_path / "vit2")
    load_image_processor(models["vit"]).save_pretrained(tmp_path / "vit2")
    f4 = embed(folder, str(tmp_path / "vit2"), **kw)
    assert f4.meta["computed"] == 10 and not np.allclose(f4.x, f3.x)


def test_cached_run_does_not_load_the_model(models, folder, tmp_path, monkeypatch):
    embed(folder, str(models["vit"]), cache_dir=tmp_path, verbose=False)

    def boom(*a, **k):
        raise AssertionError("weights loaded on a fully cached run")

    monkeypatch.setattr(HFBackbone, "_load_model", boom)
    f = embed(folder, str(models["vit"]), cache_dir=tmp_path, verbose=False)
    assert f.meta["computed"] == 0 and f.meta["preprocessing"]["size"]["height"] == 32


def test_unreadable_images_are_reported_and_skipped(models, folder, tmp_path):
    (folder / "cat" / "text.jpg").write_text("not an image")
    (folder / "dog" / "empty.png").write_bytes(b"")
    good = folder / "dog" / "4.png"
    (folder / "dog" / "truncated.png").write_bytes(good.read_bytes()[:200])
    (folder / "notes.txt").write_text("ignored: not an image extension")
    f = embed(folder, str(models["vit"]), cache_dir=tmp_path, batch_size=3, verbose=False,
              out=tmp_path / "f.npz")
    assert len(f) == 10
    bad = {n for n, _ in f.failed}
    assert bad == {"cat/text.jpg", "dog/empty.png", "dog/truncated.png"}
    meta = json.loads((tmp_path / "f.json").read_text())
    assert meta["n_failed"] == 3 and all(r for _, r in meta["failed"])
    # a repeat run reports them again without retrying them
    f2 = embed(folder, str(models["vit"]), cache_dir=tmp_path, verbose=False)
    assert f2.meta["computed"] == 0 and {n for n, _ in f2.failed} == bad
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="no images"):
        embed(tmp_path / "nothing", str(models["vit"]), use_cache=False, verbose=False)


def test_all_unreadable_raises(models, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.png").write_text("x")
    with pytest.raises(ValueError, match="none of the 1 images"):
        embed(d, str(models["vit"]), use_cache=False, verbose=False)


def test_killed_run_resumes_where_it_stopped(tmp_path):
    X = np.stack(_rand_images(20, sizes=((16, 16),)))
    calls, state = [], {"die_at": 4}

    class Dies(Exception):
        pass

    def flaky(images):  # mean colour; "killed" on the 4th batch of the first run
        calls.append(len(images))
        if len(calls) == state["die_at"]:
            raise Dies()
        return np.stack([np.asarray(im, np.float32).mean((0, 1)) + 1 for im in images])

    bb = CallableBackbone(flaky, name="mean-colour-v1")
    with pytest.raises(Dies):
        embed(X, bb, batch_size=3, chunk_size=3, cache_dir=tmp_path, verbose=False,
              num_workers=0)
    assert len(list((tmp_path).rglob("chunk-*.npz"))) == 3  # 3 complete chunks, atomically
    assert not list(tmp_path.rglob("*.tmp*"))
    calls.clear()
    state["die_at"] = None
    f = embed(X, bb, batch_size=3, chunk_size=3, cache_dir=tmp_path, verbose=False)
    assert f.meta["cache_hits"] == 9 and f.meta["computed"] == 11 and sum(calls) == 11
    ref = np.stack([a.astype(np.float32).mean((0, 1)) + 1 for a in X])
    np.testing.assert_allclose(f.x, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-6)


def test_callable_and_module_backbones(tmp_path):
    X = np.stack(_rand_images(5, sizes=((16, 16),)))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 7))
    pre = Preprocessor(size={"height": 16, "width": 16})
    f = embed(X, CallableBackbone(net, preprocess=pre), cache_dir=tmp_path, verbose=False)
    assert f.x.shape == (5, 7)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(net(pre(list(X))), dim=-1).numpy()
    np.testing.assert_allclose(f.x, ref, atol=1e-5)
    with torch.no_grad():  # new weights → new cache key
        net[1].weight.mul_(-1)
    g = embed(X, CallableBackbone(net, preprocess=pre), cache_dir=tmp_path, verbose=False)
    assert g.meta["computed"] == 5
    with pytest.raises(ValueError, match="must return"):
        embed(X, CallableBackbone(lambda ims: np.zeros(3), name="bad"), use_cache=False,
              verbose=False)


# ----- errors and CLI --------------------------------------------------------------------------
def test_backbone_load_errors_name_the_id_and_the_reason(tmp_path):
    with pytest.raises(BackboneLoadError, match="no such local directory"):
        HFBackbone(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneLoadError, match="has no config.json"):
        HFBackbone(str(tmp_path / "empty"))
    with pytest.raises(BackboneLoadError,
                       match=r"'facebook/dino-vits16'.*Hugging Face cache.*downloading is off"):
        HFBackbone("facebook/dino-vits16", local_files_only=True)
    with pytest.raises(ValueError, match="pooling"):
        HFBackbone(str(tmp_path / "empty"), pooling="max")


def test_cli_embed(models, folder, tmp_path):
    from typer.testing import CliRunner

    from diffclust.cli import app

    out = tmp_path / "feats.npz"
    args = ["embed", str(folder), "--backbone", str(models["vit"]), "-o", str(out),
            "--batch-size", "4", "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "-q"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "embedded 10 images" in r.output and "10 computed" in r.output
    f = load_features(out)
    assert f.x.shape == (10, 32) and f.meta["backbone"] == str(models["vit"])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and "10 from cache" in r.output
    r = CliRunner().invoke(app, ["embed", str(folder), "-b", str(tmp_path / "nope" / "m"),
                                 "-o", str(out)])
    assert r.exit_code == 2 and "no such local directory" in r.output
