"""The dataset download path, against a local HTTP server on 127.0.0.1 that serves files built
from ../shared/data (no network): verified downloads, the real converters (IDX, LIBSVM, CIFAR
binary), a cache hit, and every failure (checksum, truncation, 404, a server gone mid-transfer,
no server) ending in a clear error with nothing cached."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from diffclust import load_dataset
from diffclust.data import download as dl
from diffclust.data.datasets import resolve_data_home

try:
    DATA = resolve_data_home()
except FileNotFoundError:
    DATA = None
needs_data = pytest.mark.skipif(DATA is None, reason="../shared/data (or $DIFFCLUST_DATA) is "
                                                     "absent on this machine")


class _Server:
    """Serves ``routes[path] = (body, mode)``; mode "ok", "truncated" (announces the full
    length, sends half, closes) or "drop" (no length, sends half, closes)."""

    def __init__(self):
        self.routes = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path not in routes:
                    self.send_error(404)
                    return
                body, mode = routes[self.path]
                self.send_response(200)
                if mode != "drop":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if mode == "ok" else body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path, body, mode="ok"):
        self.routes[path] = (body, mode)
        return self.url + path

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _registry(monkeypatch):
    monkeypatch.setattr(dl, "REMOTE_DATASETS", dict(dl.REMOTE_DATASETS))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.delenv("DIFFCLUST_DATA", raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no ../shared/data guess from here


def _sha(b):
    return hashlib.sha256(b).hexdigest()


def _npz_identity(p):
    with np.load(p["file"], allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _nothing_cached(cache, name):
    home = dl.cache_home(cache)
    return not (home / f"{name}.npz").exists() and not list(home.glob(".download-*"))


@needs_data
def test_verified_download_then_cache_hit(server, tmp_path):
    body = (DATA / "usps.npz").read_bytes()
    url = server.add("/usps.npz", body)
    dl.register_remote_dataset("usps_mirror", dl.RemoteDataset(
        {"file": dl.RemoteFile(url, sha256=_sha(body))}, _npz_identity))
    X, y = load_dataset("usps_mirror", cache_dir=tmp_path, return_X_y=True)
    ref = np.load(DATA / "usps.npz")
    assert np.array_equal(X, ref["x"]) and np.array_equal(y, ref["y"])
    server.stop()  # the second load must not need the server
    X2, _ = load_dataset("usps_mirror", cache_dir=tmp_path, return_X_y=True)
    assert np.array_equal(X, X2)
    server.__init__()  # a fresh server for the fixture's teardown


def _idx_gz(arr):
    arr = np.asarray(arr, np.uint8)
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(head + arr.tobytes())


@needs_data
def test_mnist_converter_on_real_images(server, tmp_path):
    z = np.load(DATA / "mnist.npz")
    xtr, ytr, xte, yte = z["x"][:300], z["y"][:300], z["x"][60000:60100], z["y"][60000:60100]
    files = {}
    for role, arr in (("train_images", xtr), ("train_labels", ytr), ("test_images", xte),
                      ("test_labels", yte)):
        b = _idx_gz(arr)
        files[role] = dl.RemoteFile(server.add(f"/{role}.gz", b), sha256=_sha(b))
    dl.register_remote_dataset("mnist_small", dl.RemoteDataset(files, dl._mnist_like()))
    ds = load_dataset("mnist_small", cache_dir=tmp_path)
    assert np.array_equal(ds.x, np.concatenate([xtr, xte]))
    assert np.array_equal(ds.y, np.concatenate([ytr, yte]))
    assert ds.extra["split"].tolist() == [0] * 300 + [1] * 100
    assert load_dataset("mnist_small", cache_dir=tmp_path, split="test").x.shape == (100, 28, 28)


@needs_data
def test_usps_libsvm_converter_on_real_digits(server, tmp_path):
    z = np.load(DATA / "usps.npz")
    xf, y = z["x_float"][:80], z["y"][:80]
    files = {}
    for role, sl in (("train", slice(0, 50)), ("test", slice(50, 80))):
        lines = [f"{y[i] + 1} " + " ".join(f"{j + 1}:{2 * v - 1:.6f}" for j, v in
                                            enumerate(xf[i].ravel()) if v != 0.5)
                 for i in range(80)[sl]]
        b = bz2.compress(("\n".join(lines) + "\n").encode())
        files[role] = dl.RemoteFile(server.add(f"/usps.{role}.bz2", b), md5=hashlib.md5(b)
                                    .hexdigest())
    dl.register_remote_dataset("usps_small", dl.RemoteDataset(files, dl._libsvm_usps))
    ds = load_dataset("usps_small", cache_dir=tmp_path)
    np.testing.assert_allclose(ds.extra["x_float"], xf, atol=1e-6)
    assert np.array_equal(ds.y, y) and ds.x.dtype == np.uint8


@needs_data
def test_cifar_binary_converter_on_real_images(server, tmp_path):
    z = np.load(DATA / "cifar10_lossless_train4000.npz")
    x, y = z["x"][:60], z["y"][:60]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name, data):
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for k, name in enumerate([f"data_batch_{i}.bin" for i in range(1, 6)] +
                                 ["test_batch.bin"]):
            part = slice(10 * k, 10 * k + 10)
            rec = np.concatenate([y[part, None].astype(np.uint8),
                                  x[part].transpose(0, 3, 1, 2).reshape(10, -1)], 1)
            add(name, rec.tobytes())
        add("batches.meta.txt", b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\n"
                                b"ship\ntruck\n")
    b = buf.getvalue()
    dl.register_remote_dataset("cifar_small", dl.RemoteDataset(
        {"archive": dl.RemoteFile(server.add("/c.tar.gz", b), sha256=_sha(b))}, dl._cifar10))
    ds = load_dataset("cifar_small", cache_dir=tmp_path)
    assert np.array_equal(ds.x, x) and np.array_equal(ds.y, y)
    assert ds.extra["split"].sum() == 10 and ds.extra["class_names"][9] == "truck"


@pytest.mark.parametrize("failure", ["checksum", "truncated", "drop", "404", "no server"])
def test_failed_downloads_are_clear_and_cache_nothing(failure, server, tmp_path):
    body = np.arange(200_000, dtype=np.int64).tobytes()
    good = _sha(body)
    url = {"checksum": lambda: server.add("/f", body + b"x"),
           "truncated": lambda: server.add("/f", body, "truncated"),
           "drop": lambda: server.add("/f", body, "drop"),
           "404": lambda: server.url + "/missing",
           "no server": lambda: "http://127.0.0.1:9/f"}[failure]()
    dl.register_remote_dataset("broken", dl.RemoteDataset(
        {"file": dl.RemoteFile(url, sha256=good)}, _npz_identity))
    expect = {"checksum": "SHA-256", "truncated": "truncated|interrupted",
              "drop": "SHA-256|interrupted", "404": "HTTP 404",
              "no server": "could not reach"}[failure]
    with pytest.raises(dl.DownloadError, match=expect):
        load_dataset("broken", cache_dir=tmp_path)
    assert _nothing_cached(tmp_path, "broken")


def test_offline_cli_is_one_error_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from diffclust.cli import app

    dl.register_remote_dataset("offline", dl.RemoteDataset(
        {"file": dl.RemoteFile("http://127.0.0.1:9/x.npz", sha256="0" * 64)}, _npz_identity))
    monkeypatch.setenv("DIFFCLUST_CACHE", str(tmp_path))
    r = CliRunner().invoke(app, ["fit", "offline", "-m", "kmeans", "-k", "3", "-o",
                                 str(tmp_path / "run"), "-q"])
    assert r.exit_code == 2 and r.output.startswith("error: could not reach"), r.output
    assert len(r.output.strip().splitlines()) == 1


def test_registry_has_checksums_for_every_file():
    for name, ds in dl.REMOTE_DATASETS.items():
        for f in ds.files.values():
            assert (f.sha256 and len(f.sha256) == 64) or (f.md5 and len(f.md5) == 32), name
