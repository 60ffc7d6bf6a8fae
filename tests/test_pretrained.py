"""U-Nets shipped with the package: loaded by name, verified, trained further."""

import hashlib
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import diffclust.pretrained as pre
from diffclust.cli import app
from diffclust.diffusion.unet import DiffusionUNet, load_unet, make_unet


@pytest.mark.parametrize("name", pre.available())
def test_every_shipped_model_verifies_loads_and_has_a_card(name):
    size, _ = pre.PRETRAINED[name]
    folder = pre.pretrained_path(name)
    assert (folder / "README.md").exists()
    assert (folder / pre.WEIGHTS).stat().st_size <= 25 * 2**20
    unet, where = load_unet(name, (1, size, size))
    assert where == f"pretrained:{name}"
    x = unet.pad(torch.zeros(2, 1, size, size))  # e.g. 28 → 32 for the 4-level U-Nets
    with torch.no_grad():
        assert unet(x, torch.tensor([10, 500])).shape == x.shape


@pytest.fixture
def tiny_registered(tmp_path, monkeypatch):
    """A tiny U-Net registered as a shipped model named "tiny-test"."""
    root = tmp_path / "pretrained"
    make_unet(8, 1, "tiny", seed=0).save_pretrained(root / "tiny-test")
    (root / "tiny-test" / "README.md").write_text("test model\n")
    digest = hashlib.sha256((root / "tiny-test" / pre.WEIGHTS).read_bytes()).hexdigest()
    monkeypatch.setattr(pre, "HERE", root)
    monkeypatch.setitem(pre.PRETRAINED, "tiny-test", (8, digest))
    return root / "tiny-test"


def test_a_name_loads_the_shipped_weights_and_damage_is_refused(tiny_registered):
    ref = DiffusionUNet.from_pretrained(tiny_registered)
    unet, where = load_unet("tiny-test", (1, 8, 8))
    assert where == "pretrained:tiny-test"
    for a, b in zip(unet.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
    w = tiny_registered / pre.WEIGHTS
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="SHA-256"):
        load_unet("tiny-test", (1, 8, 8))
    w.unlink()
    with pytest.raises(FileNotFoundError, match="reinstall"):
        load_unet("tiny-test", (1, 8, 8))
    with pytest.raises(ValueError, match="no pretrained U-Net named"):
        pre.pretrained_path("no-such-model")


def test_diec_and_pretrain_diffusion_start_from_a_name(tiny_registered, tmp_path):
    from diffclust import DiEC

    rng = np.random.default_rng(0)
    X = (rng.random((40, 8, 8)) * 255).astype(np.uint8)
    m = DiEC(2, unet="tiny-test", t_star=10, n_epochs=1, n_noise_train=1, n_noise_infer=1,
             batch_size=20, embed_batch_size=40, random_state=0, verbose=False).fit(X)
    assert m.unet_source_ == "pretrained:tiny-test" and m.labels_.shape == (40,)
    np.save(tmp_path / "imgs.npy", X)
    out = tmp_path / "further"
    r = CliRunner().invoke(app, ["pretrain-diffusion", str(tmp_path / "imgs.npy"), "--out",
                                 str(out), "--init", "tiny-test", "--steps", "3",
                                 "--batch-size", "8", "--n-samples", "0", "-q"])
    assert r.exit_code == 0, r.output
    trained = DiffusionUNet.from_pretrained(out)
    ref = DiffusionUNet.from_pretrained(tiny_registered)
    assert trained.unet.config.block_out_channels == ref.unet.config.block_out_channels
    moved = [float((a - b).detach().abs().max()) for a, b in zip(trained.parameters(), ref.parameters())]
    assert 0 < max(moved) < 0.1  # it trained on from those weights, not from scratch
    shutil.rmtree(out)
    r = CliRunner().invoke(app, ["pretrain-diffusion", str(tmp_path / "imgs.npy"), "--out",
                                 str(out), "--init", "nope", "--steps", "1", "-q"])
    assert r.exit_code != 0 and "no pretrained U-Net named" in r.output


def test_with_classes_starts_as_the_unconditional_unet(tiny_registered):
    unet, _ = load_unet("tiny-test", (1, 8, 8))
    cond = unet.with_classes(3)
    assert cond.n_classes == 3 and cond.null_class == 3 and unet.n_classes is None
    assert cond.with_classes(3) is cond
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([5, 50, 500, 900])
    with torch.no_grad():
        ref = unet(x, t)
        for labels in (torch.tensor([0, 1, 2, 3]), torch.tensor([2, 2, 0, 1])):
            torch.testing.assert_close(cond(x, t, class_labels=labels), ref)
    with pytest.raises(ValueError, match="conditioned on 3 class ids"):
        cond.with_classes(5)
