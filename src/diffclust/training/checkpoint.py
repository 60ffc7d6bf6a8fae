"""Every checkpoint of the library: resumable training state in one folder for the
estimators' own loops (CLUDI, TEMI, ClusterDDPM, DiEC) and the image diffusion loop
(``diffusion/trainer.py``), and the finished stages of multi-stage fits
(:class:`StageCheckpoints`, GCC).

``state.json`` (the step, a fingerprint of the data and settings, the scheduler, the batch
sampler's position, the history and other JSON values) points at ``state-STEP.safetensors``
(module weights, optimiser moments, every random state, the sampler's permutation and any other
tensors). Both are written atomically, the tensors first, so a kill leaves the previous complete
state. A checkpoint whose fingerprint differs from the current fit's is refused.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import numpy as np
import torch

from ..data.io import atomic_write_bytes, atomic_write_text, clean_stale_tmp

__all__ = ["fingerprint", "save_training_state", "load_training_state",
           "load_training_modules", "saved_step",
           "save_checkpoint", "load_checkpoint", "optimizer_to_tensors", "optimizer_from_tensors",
           "stage_fingerprints", "StageCheckpoints", "named_state", "load_named_state"]

STATE_JSON = "state.json"


def named_state(**modules) -> dict:
    """The state dicts of ``modules`` in one flat dict, keys prefixed ``"<name>."``."""
    return {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}


def load_named_state(tensors: dict, **modules):
    """Load each module of ``modules`` from the ``"<name>."`` entries of ``tensors``
    (:func:`named_state`'s layout)."""
    for name, m in modules.items():
        n = len(name) + 1
        m.load_state_dict({k[n:]: v for k, v in tensors.items() if k.startswith(name + ".")})


def fingerprint(est, X, **more) -> dict:
    """What a checkpoint must agree with: the estimator's class and settings (not ``verbose``,
    ``device`` or ``compile``, which choose how the steps run, nor the estimator's
    ``_read_out_params``, which only choose what is read from the trained state), its seed, a
    hash of the data, and ``more``."""
    skip = ("verbose", "device", "compile", *getattr(est, "_read_out_params", ()))
    params = {k: v for k, v in est.get_params().items() if k not in skip}
    return {"method": type(est).__name__, "params": json.loads(json.dumps(params, default=str)),
            "seed": int(est.seed_), **more,
            "data": hashlib.sha1(np.ascontiguousarray(X).tobytes()).hexdigest()[:16]}


def optimizer_to_tensors(opt) -> tuple[dict, dict]:
    """An optimiser's state as (JSON-able meta, flat dict of tensors) for safetensors."""
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state_keys": {}}
    for i, st in sd["state"].items():
        meta["state_keys"][str(i)] = sorted(st)
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v)
    return meta, tensors


def optimizer_from_tensors(opt, meta, tensors):
    """Inverse of :func:`optimizer_to_tensors`."""
    state = {int(i): {k: tensors[f"opt.{i}.{k}"] for k in keys}
             for i, keys in meta["state_keys"].items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _write_state(folder: Path, step: int, tensors: dict, doc: dict):
    """``state-STEP.safetensors``, then ``state.json`` (``doc`` + its name) pointing at it, both
    atomic; older state files go. A kill at any moment leaves the previous complete state."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(folder)  # half-written states of killed runs
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    name = f"state-{step:08d}.safetensors"
    atomic_write_bytes(folder / name, save(tensors))
    atomic_write_text(folder / STATE_JSON, json.dumps(dict(doc, step=int(step), weights=name),
                                                      indent=1, default=float))
    for old in folder.glob("state-*.safetensors"):  # keep the one state.json points at
        if old.name != name:
            old.unlink(missing_ok=True)


def _read_state(folder: Path):
    """``(doc, tensors)`` of the state in ``folder``, or None when there is none; a damaged
    state is one clear error saying to delete the folder."""
    from safetensors.torch import load_file

    js = folder / STATE_JSON
    if not js.exists():
        return None
    try:
        doc = json.loads(js.read_text())
        return doc, load_file(str(folder / doc["weights"]))
    except Exception as e:  # noqa: BLE001 - any damage: say so, with what to do
        raise ValueError(f"the checkpoint in {folder} is damaged ({type(e).__name__}: {e}); "
                         f"delete {folder} to start over") from None


def save_checkpoint(ckdir: Path, step, model, ema, opt, gen, info: dict):
    """The image diffusion loop's state (``diffusion/trainer.py``): weights, EMA, optimiser and
    random states, with ``info`` (settings, history, seconds) in ``state.json``."""
    opt_meta, tensors = optimizer_to_tensors(opt)
    tensors.update(named_state(model=model, ema=ema))
    tensors["rng.generator"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    _write_state(Path(ckdir), step, tensors, dict(info, optimizer=opt_meta))


def load_checkpoint(ckdir: Path):
    """``(info, tensors)`` of :func:`save_checkpoint`'s state in ``ckdir``, or None."""
    return _read_state(Path(ckdir))


def save_training_state(folder, step: int, *, fingerprint: dict, modules: dict, optimizer,
                        generator: torch.Generator, scheduler=None, sampler=None, tensors=None,
                        extra=None):
    """Write the state after ``step`` steps (optimiser steps, or epochs for loops that
    checkpoint per epoch; see the module docstring). ``scheduler`` and ``sampler`` are optional
    (a loop that draws its own permutation from ``generator`` has no sampler)."""
    opt_meta, t = optimizer_to_tensors(optimizer)
    for name, m in modules.items():
        t.update({f"module.{name}.{k}": v for k, v in m.state_dict().items()})
    t.update({f"tensor.{k}": v for k, v in (tensors or {}).items()})
    t["rng.generator"] = generator.get_state()
    t["rng.torch"] = torch.get_rng_state()
    if sampler is not None:
        t["sampler.perm"] = sampler.perm
    _write_state(Path(folder), step, t, {
        "fingerprint": fingerprint, "optimizer": opt_meta,
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "sampler_pos": None if sampler is None else int(sampler.pos), "extra": extra or {}})


def saved_step(folder) -> int:
    """The step of the checkpoint in ``folder`` (0 when there is none), read before restoring
    it, for loops whose objects depend on the phase the run had reached."""
    try:
        return int(json.loads((Path(folder) / STATE_JSON).read_text())["step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return 0


def _matching_state(folder: Path, fingerprint: dict, hint: str | None = None):
    """``(doc, tensors)`` of the state in ``folder`` (None without one), refused (with
    ``hint``: what to do) when it was written for another fingerprint."""
    state = _read_state(folder)
    if state is not None and state[0].get("fingerprint") != fingerprint:
        hint = hint or f"use another checkpoint folder or delete {folder} to start over"
        raise ValueError(f"the checkpoint in {folder} was written for other data or settings "
                         f"than these; {hint}")
    return state


def _load_modules(tensors: dict, modules: dict):
    load_named_state({k[len("module."):]: v for k, v in tensors.items()
                      if k.startswith("module.")}, **modules)


def load_training_modules(folder, *, fingerprint: dict, modules: dict,
                          hint: str = "pass the settings of the run that wrote it") -> int:
    """Only the modules of the training state in ``folder`` (to read a run's weights at a
    checkpoint, e.g. a benchmark probe); returns its step. No optimiser or random state is
    touched; ``hint`` ends the error for a checkpoint of other settings."""
    folder = Path(folder)
    state = _matching_state(folder, fingerprint, hint)
    if state is None:
        raise FileNotFoundError(f"there is no training checkpoint in {folder}")
    _load_modules(state[1], modules)
    return int(state[0]["step"])


def load_training_state(folder, *, fingerprint: dict, modules: dict, optimizer,
                        generator: torch.Generator, scheduler=None, sampler=None):
    """Restore the state in ``folder`` into the given objects; returns ``(step, tensors,
    extra)``, or ``(0, {}, {})`` when the folder holds no checkpoint."""
    folder = Path(folder)
    state = _matching_state(folder, fingerprint)
    if state is None:
        return 0, {}, {}
    doc, t = state
    _load_modules(t, modules)
    optimizer_from_tensors(optimizer, doc["optimizer"], t)
    if scheduler is not None:
        scheduler.load_state_dict(doc["scheduler"])
    if sampler is not None:
        sampler.perm, sampler.pos = t["sampler.perm"].clone(), int(doc["sampler_pos"])
    generator.set_state(t["rng.generator"])
    torch.set_rng_state(t["rng.torch"])
    tensors = {k[len("tensor."):]: v for k, v in t.items() if k.startswith("tensor.")}
    return int(doc["step"]), tensors, doc.get("extra", {})


# ---------------------------------------------------------------- stages of a multi-stage fit
#: parameters that never change what a stage computes
_NOT_FINGERPRINTED = ("checkpoint_dir", "embed_batch_size", "random_state", "device",
                      "precision", "verbose")


def stage_fingerprints(est, X, stages: dict) -> dict:
    """What each stage's saved result must agree with, from the estimator itself (no key
    lists): ``stages`` maps each stage, in order, to its first parameter in ``__init__``'s
    signature; a stage depends on the data, the seed, and every parameter up to the next
    stage's first one. So later stages' settings may change without redoing earlier stages."""
    names = [n for n in inspect.signature(type(est).__init__).parameters
             if n != "self" and n not in _NOT_FINGERPRINTED]
    ends = [names.index(first) for first in list(stages.values())[1:]] + [len(names)]
    base = {"data": hashlib.sha1(np.ascontiguousarray(X).tobytes()).hexdigest()[:16],
            "shape": list(np.shape(X)), "seed": int(est.seed_)}
    return {stage: {**base, **json.loads(json.dumps({k: getattr(est, k) for k in names[:end]},
                                                    default=repr))}
            for stage, end in zip(stages, ends)}


class StageCheckpoints:
    """The finished stages of one fit in ``folder`` (None: keep nothing): ``<stage>.json``
    (written last, atomically) names ``<stage>-<tag>.safetensors`` and holds the stage's
    fingerprint (:func:`stage_fingerprints`) and JSON metadata. A stage saved for other data
    or settings is refused with the keys that differ."""

    def __init__(self, folder, fingerprints: dict):
        self.dir = Path(folder) if folder is not None else None
        self.fingerprints = fingerprints

    def tag(self, stage) -> str:
        """A short hash of ``stage``'s fingerprint (to name a folder of its own)."""
        blob = json.dumps(self.fingerprints[stage], sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:10]

    def save(self, stage, tensors: dict, meta: dict, tag="0"):
        if self.dir is None:
            return
        from safetensors.torch import save

        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{stage}-{tag}.safetensors"
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write_bytes(self.dir / name, save(tensors))
        atomic_write_text(self.dir / f"{stage}.json", json.dumps(
            {"fingerprint": self.fingerprints[stage], "weights": name, "meta": meta}))
        for old in self.dir.glob(f"{stage}-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def load(self, stage):
        """``(meta, tensors)`` of a saved ``stage``, or None when there is none."""
        if self.dir is None or not (self.dir / f"{stage}.json").exists():
            return None
        from safetensors.torch import load_file

        info = json.loads((self.dir / f"{stage}.json").read_text())
        want, got = self.fingerprints[stage], info["fingerprint"]
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        if diff:
            later = list(self.fingerprints)[list(self.fingerprints).index(stage):]
            raise ValueError(f"checkpoint {self.dir / stage}.json was written for other data or "
                             f"settings (differs in {diff}); use another checkpoint_dir or "
                             f"delete {', '.join(f'{s}.json' for s in later)} (the earlier "
                             f"stages are kept)")
        return info["meta"], load_file(str(self.dir / info["weights"]))
