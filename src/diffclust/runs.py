"""Run directories that are complete or absent.

A run is staged in a hidden sibling folder (``.NAME.partial-PID-XXXX``) and renamed into place
in one ``os.rename`` once every file is written; its last file is the manifest ``run.json``
(every file's size and SHA-256). Readers (:func:`open_run`) refuse a folder without a valid
manifest. A refit into an existing run refuses unless ``overwrite=True``, which swaps the new
run in under a lock (the old one is moved aside, then deleted), so two fits into one folder
never mix their files. Stale staging folders of dead processes are removed on the next write.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

__all__ = ["MANIFEST", "RunError", "check_output_location", "staged_run", "open_run",
           "write_manifest", "sha256_file", "clean_stale", "add_to_run", "write_labels_csv",
           "write_run_files"]

MANIFEST = "run.json"
_PARTIAL, _OLD = ".partial-", ".old-"


class RunError(ValueError):
    """A run directory that cannot be written or read (the message says why and what to do)."""


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path):
    """Remove staging (``.NAME.partial-PID-*``) and swapped-out (``.NAME.old-PID-*``) folders
    of ``out`` whose process is gone."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{out.name}.*-*"):
        tag = p.name[len(out.name) + 1:]
        if not (tag.startswith(_PARTIAL) or tag.startswith(_OLD)):
            continue
        try:
            pid = int(tag.split("-")[1])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def check_output_location(out, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output folder that cannot receive a run: a file in its
    place or above it, an existing run or non-empty folder without ``overwrite``, or a parent
    that is not writable. Returns the absolute path."""
    out = Path(out).expanduser().absolute()
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == out else f"is under {parent}, which is a file"
            raise RunError(f"--out {out} {where}; choose a folder path for the run")
        if parent.exists():
            break
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "a run" if (out / MANIFEST).exists() or (out / "labels.csv").exists() else "files"
        raise RunError(f"{out} already holds {what}; pass --overwrite (overwrite=True) to "
                       f"replace it, or choose another --out")
    existing = next(p for p in [out, *out.parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"cannot write the run to {out}: {existing} is not writable; choose "
                       f"another --out")
    return out


def write_manifest(folder: Path, info: dict | None = None) -> Path:
    """Write ``run.json`` listing every file under ``folder`` (size, SHA-256): the run's
    completion marker, written last."""
    from .data.io import atomic_write_text

    folder = Path(folder)
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.startswith("."):
            rel = p.relative_to(folder).as_posix()
            files[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    from . import __version__

    doc = {"complete": True, "diffclust_version": __version__, **(info or {}), "files": files}
    return atomic_write_text(folder / MANIFEST, json.dumps(doc, indent=2))


@contextlib.contextmanager
def _lock(out: Path):
    with open(out.parent / f".{out.name}.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def crash_point(name: str):
    """Fault injection for the crash tests: ``DIFFCLUST_CRASH_AT=name`` kills this process
    (SIGKILL, as ``kill -9`` would) when it reaches the named point of a run's write."""
    if os.environ.get("DIFFCLUST_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _commit(tmp: Path, out: Path, overwrite: bool):
    with _lock(out):
        if out.exists() and not (out.is_dir() and not any(out.iterdir())):
            if not overwrite:
                raise RunError(f"{out} was written by another run while this one was fitting; "
                               f"pass --overwrite to replace it, or choose another --out")
            old = out.parent / f".{out.name}{_OLD}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            crash_point("swap")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()
            os.rename(tmp, out)


@contextlib.contextmanager
def staged_run(out, overwrite: bool = False, info: dict | None = None):
    """``with staged_run(out) as tmp:`` write the run's files into ``tmp``; on success the
    manifest is added and ``tmp`` becomes ``out`` in one rename; on any error (or a kill) ``out``
    is left as it was. The location is checked, and the staging folder made, on entry."""
    out = check_output_location(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = out.parent / f".{out.name}{_PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
    except OSError as e:
        raise RunError(f"cannot write the run to {out}: {e.strerror}; choose another --out") \
            from None
    try:
        yield tmp
        crash_point("files")
        write_manifest(tmp, info)
        crash_point("manifest")
        _commit(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_run(run_dir, verify: bool = False) -> dict:
    """The manifest of a complete run directory, or a :class:`RunError` saying why the folder
    is not one. ``verify`` also checks every listed file's SHA-256 (sizes are always checked)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a run directory (no such folder); write one with "
                       f"`diffclust fit ... --out {run_dir}`")
    m = run_dir / MANIFEST
    if not m.exists():
        raise RunError(f"{run_dir} is not a complete run: it has no {MANIFEST} (the fit that "
                       f"wrote it was interrupted, or an older diffclust wrote it); refit it "
                       f"with `diffclust fit ... --out {run_dir} --overwrite`")
    try:
        doc = json.loads(m.read_text())
        files = doc["files"]
        assert doc.get("complete") is True and isinstance(files, dict)
    except (json.JSONDecodeError, KeyError, AssertionError, TypeError):
        raise RunError(f"{m} is damaged (not a run manifest); refit the run with --overwrite") \
            from None
    for rel, meta in files.items():
        p = run_dir / rel
        if not p.is_file():
            raise RunError(f"{run_dir} is incomplete: {rel}, listed in {MANIFEST}, is missing; "
                           f"refit the run with --overwrite")
        if p.stat().st_size != meta.get("bytes") or (verify and sha256_file(p) != meta.get(
                "sha256")):
            raise RunError(f"{p} changed after the run was written (size or checksum differs "
                           f"from {MANIFEST}); refit the run with --overwrite")
    return doc


def add_to_run(run_dir, rel: str, write) -> Path:
    """Write a file into a complete run after the fit (``predictions.csv``, ``metrics.json``,
    ``report.html``): ``write(path)`` writes it atomically, then the manifest lists it, under
    the run's lock, so :func:`open_run` keeps accepting the run."""
    from .data.io import atomic_write_text

    run_dir = Path(run_dir)
    with _lock(run_dir.absolute()):
        doc = open_run(run_dir)
        path = Path(write(run_dir / rel))
        doc["files"][rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        atomic_write_text(run_dir / MANIFEST, json.dumps(doc, indent=2))
    return path


def write_labels_csv(path, labels, proba=None) -> Path:
    """``labels.csv``: ``index, cluster, confidence`` (the largest probability), atomically."""
    import csv
    import io

    import numpy as np

    from .data.io import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "cluster", "confidence"])
    conf = proba.max(1) if proba is not None else np.ones(len(labels))
    for i, (c, p) in enumerate(zip(labels, conf)):
        w.writerow([i, int(c), f"{float(p):.6f}"])
    return atomic_write_text(path, buf.getvalue())


def write_run_files(folder, est, X, y=None, *, method: str, data: str, seed, fit_seconds: float,
                    warnings=()) -> dict | None:
    """Everything a fitted run holds, into ``folder`` (the staging folder of
    :func:`staged_run`): ``model/``, ``labels.csv``, ``metrics.jsonl``, ``config.json`` and,
    with true labels ``y``, ``metrics.json``. Returns the metrics (or ``None``)."""
    from datetime import date

    import numpy as np

    from .data.io import atomic_write_text
    from .metrics import evaluate

    folder = Path(folder)
    est.save_pretrained(folder / "model")
    crash_point("model")
    proba = est.train_proba_ if hasattr(est, "train_proba_") else est.predict_proba(X)
    write_labels_csv(folder / "labels.csv", est.labels_, proba)
    hist = getattr(est, "history_", [])
    atomic_write_text(folder / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in hist))
    cfg = {"method": method, "data": data, "n_samples": int(len(X)),
           "n_features": int(getattr(est, "n_features_in_", np.shape(X)[-1])),
           "n_clusters": int(est.n_clusters), "seed": seed, "params": est.get_params(),
           "fit_seconds": fit_seconds, "date": date.today().isoformat(),
           "warnings": list(warnings)}
    atomic_write_text(folder / "config.json", json.dumps(cfg, indent=2, default=str))
    if y is None:
        return None
    m = evaluate(y, est.labels_, extended=True)
    atomic_write_text(folder / "metrics.json", json.dumps(m, indent=2))
    return m
