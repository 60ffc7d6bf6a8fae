"""Seeding, device and precision resolution, and the progress bar."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

__all__ = ["thread_policy", "flush_denormals", "seed_everything", "resolve_device",
           "resolve_precision", "autocast", "progress", "cpu_has_bf16", "resolve_compile",
           "Compiled"]


def seed_everything(random_state) -> int:
    """Seed python, numpy and torch from ``random_state`` (``None`` draws a fresh seed) and
    return the integer seed used, so a run can always be repeated."""
    if isinstance(random_state, np.random.RandomState):
        seed = int(random_state.randint(0, 2**31 - 1))
    elif random_state is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0] % (2**31 - 1))
    else:
        seed = int(random_state)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return seed


def resolve_device(device=None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or "
                         f"None (auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use "
                         f"device='cpu' or None")
    return dev


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AMX or AVX-512 BF16): on the 2-core AVX-512
    BF16 machine we develop on, a 2048² bf16 matmul is 4× faster than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """``'auto'`` → bf16 autocast on AMX CPUs and bf16-capable GPUs, fp32 otherwise;
    ``'bf16'``, ``'fp16'`` (CUDA only) or ``'fp32'`` force it. Returns the autocast dtype or
    ``None`` for plain fp32."""
    if precision in ("fp32", "float32", None):
        return None
    if precision in ("bf16", "bfloat16"):
        return torch.bfloat16
    if precision in ("fp16", "float16"):
        if device.type != "cuda":
            raise ValueError("precision='fp16' needs CUDA; use 'bf16' or 'fp32' on CPU")
        return torch.float16
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    raise ValueError(f"precision must be 'auto', 'bf16', 'fp16' or 'fp32', got {precision!r}")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def progress(iterable=None, total=None, desc=None, verbose=True, **kw):
    """A tqdm bar, silenced by ``verbose=False``, ``TQDM_DISABLE=1`` or
    ``DIFFCLUST_NO_PROGRESS=1``, and shown on rank 0 only under torchrun."""
    from tqdm.auto import tqdm

    disable = ((not verbose) or os.environ.get("DIFFCLUST_NO_PROGRESS") == "1"
               or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
               or os.environ.get("RANK", "0") != "0")
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False,
                dynamic_ncols=True, **kw)


def map_batches(fn, X, batch_size: int, device=None, desc=None, verbose=True):
    """``fn`` over the rows of ``X`` (a numpy array or a tensor) in batches of ``batch_size``
    moved to ``device``; the outputs (a tensor, or a tuple of tensors) concatenated on the CPU,
    in order. A progress bar when ``desc`` is given (silenced as :func:`progress`)."""
    bs = max(1, int(batch_size))
    starts = range(0, len(X), bs)
    outs = []
    for i in progress(starts, total=len(starts), desc=desc, verbose=verbose and desc is not None):
        outs.append(fn(torch.as_tensor(X[i:i + bs]).to(device)))
    if isinstance(outs[0], tuple):
        return tuple(torch.cat([o[k].cpu() for o in outs]) for k in range(len(outs[0])))
    return torch.cat([o.cpu() for o in outs])


@contextlib.contextmanager
def thread_policy(cap: int | None = None):
    """Torch's intra-op thread count for the duration of a fit (restored afterwards).

    ``$DIFFCLUST_THREADS``: an integer sets it; ``"torch"`` keeps whatever torch uses.
    Unset (``"auto"``): the estimator's ``cap`` (CLUDI and TEMI: see docs/DECISIONS.md,
    "Threads" — their many small matmuls each end in a thread barrier, and a descheduled
    thread stalls every barrier when another process shares the cores), unless
    ``OMP_NUM_THREADS`` is set (the user's choice wins) or the estimator has no cap.
    """
    spec = os.environ.get("DIFFCLUST_THREADS", "auto")
    before = torch.get_num_threads()
    if spec == "torch" or (spec == "auto" and ("OMP_NUM_THREADS" in os.environ or not cap)):
        want = before
    elif spec == "auto":
        want = min(before, int(cap))
    else:
        try:
            want = max(1, int(spec))
        except (TypeError, ValueError):
            raise ValueError(f"DIFFCLUST_THREADS must be an integer, 'auto' or 'torch', got "
                             f"{spec!r}") from None
    if want != before:
        torch.set_num_threads(want)
    try:
        yield want
    finally:
        if want != before:
            torch.set_num_threads(before)


_FLUSH_DEPTH = [0]


@contextlib.contextmanager
def flush_denormals():
    """Subnormal floats flushed to zero on the CPU for the duration of a fit or prediction.

    Trained networks make subnormal values (below 1.2e-38: tiny softmax probabilities and the
    gradients through them), and each costs the CPU a slow assist: one CLUDI step of a model
    trained on Fashion-MNIST took 0.447 s, 0.286 s with flushing (docs/DECISIONS.md, "Subnormal
    floats"). They become 0, a change far below bf16's and fp32's resolution of the values
    that matter. ``$DIFFCLUST_FLUSH_DENORMAL=0`` leaves torch's mode alone. The mode belongs to
    the calling thread (all of the work at CLUDI's and TEMI's one intra-op thread); torch cannot
    read it, so it is switched off afterwards (torch's default).
    """
    on = os.environ.get("DIFFCLUST_FLUSH_DENORMAL", "1") != "0" and _FLUSH_DEPTH[0] == 0
    if on:
        torch.set_flush_denormal(True)
    _FLUSH_DEPTH[0] += 1
    try:
        yield
    finally:
        _FLUSH_DEPTH[0] -= 1
        if on:
            torch.set_flush_denormal(False)


#: training steps from which ``compile="auto"`` compiles: the first call costs ~20 s of
#: compilation on our 2-core CPU (seconds once cached), repaid after ~1,500 TEMI steps
COMPILE_MIN_STEPS = 2000


def resolve_compile(compile, n_steps: int, device: torch.device, distributed: bool) -> bool:
    """Whether a fit of ``n_steps`` compiles its networks: ``True``/``False`` as given (never
    under torch.distributed, where the DDP wrapper would need compiling too); ``"auto"``
    compiles fits of at least :data:`COMPILE_MIN_STEPS` steps on CPU or CUDA.
    ``$DIFFCLUST_COMPILE=0`` turns it off everywhere."""
    if distributed or os.environ.get("DIFFCLUST_COMPILE", "1") == "0":
        return False
    if compile == "auto":
        return device.type in ("cpu", "cuda") and n_steps >= COMPILE_MIN_STEPS
    return bool(compile)


def _own_code(fn):
    """``fn`` behind a wrapper whose code object is its own. TorchDynamo keeps its compiled
    graphs per code object and stops compiling one after 8 graphs; with a shared code object
    (``Module.forward``), a process fitting networks of many sizes (the C_max search: one
    network per C, with and without gradients) would reach that limit and silently run the
    rest eagerly. A fresh one per fit holds that fit's graphs and goes with it."""
    def call(*args, **kwargs):
        return fn(*args, **kwargs)

    call.__code__ = call.__code__.replace()
    return call


_COMPILE_FAILED: list = []  # the first compilation failure of this process, if any


class Compiled:
    """``torch.compile(fn)`` that falls back to ``fn`` itself, with one warning, when the
    compilation fails (no C++ compiler, a platform TorchInductor does not support); after a
    failure the process does not try again. Compilation happens at the first call, so only
    that call falls back; later errors are real ones. ``enabled=False``: ``fn`` unchanged. The
    compiled code rounds differently from the eager one: the same seed gives the same labels
    with the same setting."""

    def __init__(self, fn, enabled: bool = True):
        enabled = enabled and not _COMPILE_FAILED
        self.fn = fn
        self._compiled = torch.compile(_own_code(fn)) if enabled else None
        self._first = enabled
        self.active = enabled

    def __call__(self, *args, **kwargs):
        if self._compiled is None:
            return self.fn(*args, **kwargs)
        if not self._first:
            return self._compiled(*args, **kwargs)
        if _COMPILE_FAILED:  # another network of this process failed since this one was made
            self._compiled, self.active = None, False
            return self.fn(*args, **kwargs)
        try:
            out = self._compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 -- a compiler failure if eager then runs
            out = self.fn(*args, **kwargs)  # a real error (bad input) raises here, as it is
            import warnings

            first_line = (str(e).splitlines() or [""])[0][:200]
            if not _COMPILE_FAILED:
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {first_line}); "
                              f"running without compilation from now on in this process "
                              f"(pass compile=False to skip the attempt)", RuntimeWarning,
                              stacklevel=2)
                _COMPILE_FAILED.append(first_line)
            self._compiled, self.active = None, False
            return out
        self._first = False
        return out
