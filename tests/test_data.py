import numpy as np
import pytest
import torch

from diffclust.data import (check_features, check_images, check_n_clusters, load_array,
                            load_dataset)


def test_digits_bundled():
    X, y = load_dataset("digits", return_X_y=True)
    assert X.shape == (1797, 8, 8) and X.dtype == np.uint8 and len(np.unique(y)) == 10
    Xf, _ = load_dataset("digits", return_X_y=True, flatten=True)
    assert Xf.shape == (1797, 64) and 0 <= Xf.min() and Xf.max() <= 1


def test_shared_datasets(shared_data):
    ds = load_dataset("usps", data_home=shared_data)
    assert ds.x.shape == (9298, 16, 16) and ds.is_images
    X, y = load_dataset("imagenet50_dino_vits16_val_dev", data_home=shared_data, return_X_y=True)
    assert X.shape == (1250, 384) and len(np.unique(y)) == 50
    tr = load_dataset("usps", data_home=shared_data, split="train")
    assert len(tr.x) == 7291


def test_missing_data_home_is_explained(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFCLUST_DATA", raising=False)
    monkeypatch.setenv("DIFFCLUST_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="DIFFCLUST_DATA"):
        load_dataset("usps", download=False)  # no network in tests
    with pytest.raises(FileNotFoundError, match="DIFFCLUST_DATA"):
        load_dataset("coil20")  # no public source with a checksum: never downloaded
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("usps", data_home=tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet-1k")


def test_load_array_formats(tmp_path):
    X = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    y = np.arange(20) % 2
    np.save(tmp_path / "a.npy", X)
    np.savez(tmp_path / "b.npz", features=X, labels=y)
    torch.save({"x": torch.from_numpy(X), "y": torch.from_numpy(y)}, tmp_path / "c.pt")
    with open(tmp_path / "d.csv", "w") as f:
        f.write("f0,f1,f2,label\n")
        for row, lab in zip(X, y):
            f.write(",".join(f"{v:.6f}" for v in row) + f",{lab}\n")
    for name in ("a.npy", "b.npz", "c.pt", "d.csv"):
        Xl, yl = load_array(tmp_path / name)
        np.testing.assert_allclose(Xl, X, atol=1e-5)
        if name != "a.npy":
            np.testing.assert_array_equal(yl, y)


def test_load_array_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_array(tmp_path / "missing.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_array(tmp_path / "empty.npy")
    np.savez(tmp_path / "k.npz", foo=np.zeros(3))
    with pytest.raises(KeyError, match="no feature array"):
        load_array(tmp_path / "k.npz")
    (tmp_path / "bad.csv").write_text("1,2,3\n4,abc,6\n")
    with pytest.raises(ValueError, match="non-numeric"):
        load_array(tmp_path / "bad.csv")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_array(tmp_path / "x.json")


def test_check_features_errors():
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_features(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        check_features(np.zeros(5))
    with pytest.raises(ValueError, match="Images"):
        check_features(np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="empty"):
        check_features(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="numeric"):
        check_features(np.array([["a", "b"]]))
    assert check_features(np.ones((2, 2), dtype=np.int64)).dtype == np.float32


def test_check_n_clusters():
    assert check_n_clusters(3, 10) == 3
    with pytest.raises(ValueError, match="n_clusters"):
        check_n_clusters(0, 10)
    with pytest.raises(ValueError, match="larger than the number of samples"):
        check_n_clusters(11, 10)
    with pytest.raises(ValueError, match="integer"):
        check_n_clusters(2.5, 10)


def test_check_images_layouts():
    u8 = np.random.default_rng(0).integers(0, 256, (5, 16, 16), dtype=np.uint8)
    a = check_images(u8)
    assert a.shape == (5, 1, 16, 16) and a.min() >= -1 and a.max() <= 1
    hwc = np.random.default_rng(0).random((5, 8, 8, 3)).astype(np.float32)
    b = check_images(hwc)
    assert b.shape == (5, 3, 8, 8)
    np.testing.assert_allclose(b, hwc.transpose(0, 3, 1, 2) * 2 - 1)
    assert check_images(b).shape == (5, 3, 8, 8)
    with pytest.raises(ValueError, match="images shaped"):
        check_images(np.zeros((5, 64)))
    with pytest.raises(ValueError, match="channel axis"):
        check_images(np.zeros((5, 7, 8, 9)))
    with pytest.raises(ValueError, match="range"):
        check_images(np.full((2, 4, 4), -30.0))
