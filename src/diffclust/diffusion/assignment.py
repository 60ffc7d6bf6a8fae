"""CLUDI's diffusion over assignment embeddings (METHODS.md §2.3–2.4): the network and its sampler.

:class:`CLUDINet` holds the denoiser ẑ_θ(z_t, x, t, z_sc) (:class:`~diffclust.diffusion.mlp.
VectorDenoiser`), the classifier ``(W, b)`` and the embedding matrix ``E``;
:func:`sample_embeddings` runs S self-conditioned DDIM(η = 1) chains per point from
``z_T ~ N(0, F² I)`` to ``ẑ_0`` (S, B, d), the teacher's targets and the prediction's samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..training.distributed import GlobalBatchRandom
from .mlp import VectorDenoiser
from .samplers import ddim_sample, ddim_time_pairs

__all__ = ["CLUDINet", "sample_embeddings"]

# per-point tensors are (chains, batch, dim): the batch is dimension 1
ONE_PROCESS = GlobalBatchRandom(dim=1)


class CLUDINet(nn.Module):
    """Denoiser ẑ_θ, classifier (W, b) and the embedding matrix E (frozen unless learned)."""

    def __init__(self, n_clusters, cond_dim, z_dim=64, dropout=0.15, learn_E=False, n_blocks=5):
        super().__init__()
        self.denoiser = VectorDenoiser(z_dim, cond_dim, n_blocks=n_blocks, dropout=dropout)
        self.classifier = nn.Linear(z_dim, n_clusters)
        E = torch.randn(n_clusters, z_dim)
        if learn_E:
            self.E = nn.Parameter(E)
        else:
            self.register_buffer("E", E)
        self.z_dim = z_dim

    def denoise(self, z_t: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                self_condition: bool) -> torch.Tensor:
        """Training-time ẑ_0 of ``z_t`` (S, B, d) given features ``x`` (B|S×B, D) at steps ``t``
        (S,): with ``self_condition``, a first pass without a graph gives ``z_sc`` for the
        second (Chen et al.'s self-conditioning), else ``z_sc = 0``."""
        den = self.denoiser
        h_cond, h_time = den.prepare(x), den.time_bias(t)
        z_sc = None
        if self_condition:
            with torch.no_grad():
                z_sc = den.step(z_t, h_cond, h_time, None).detach()
        return den.step(z_t, h_cond, h_time, z_sc)

    def reembed(self, p: torch.Tensor) -> torch.Tensor:
        """z̃ = sqrt(d) · normalize(p Ē), Ē = E with unit-norm rows (eq. 13)."""
        E_bar = F.normalize(self.E.float(), dim=-1)
        return math.sqrt(self.z_dim) * F.normalize(p.float() @ E_bar, dim=-1)


def sample_embeddings(net: CLUDINet, x, S: int, sched, n_steps: int, generator,
                      noise_scale: float, dtype=None, grad_last: bool = False,
                      rows: GlobalBatchRandom = ONE_PROCESS) -> torch.Tensor:
    """Reverse diffusion of S chains for every row of ``x`` → the final ẑ_0 (S, B, d).

    Self-conditioned DDIM(η = 1) on ``sched``'s grid of ``n_steps`` (``ddim_time_pairs``),
    ẑ_0 clipped to [−1, 1] at every step. ``rows``: this rank's rows of the global batch (z_T
    and every step's noise are drawn for all of them). ``grad_last``: truncated
    back-propagation, every step but the last without a graph (CLUDI's ``teacher_grad="last"``).
    ``dtype``: the autocast dtype the graph-free steps fold and cast the weights to once.
    """
    den = net.denoiser
    h_cond, dev, cache = den.prepare(x), x.device, {}
    # the steps without a graph fold and cast the weights once, not at every step
    weights = None if torch.is_grad_enabled() and not grad_last else den.inference_weights(dtype)

    def model_x0(z, t, z_sc):
        if t not in cache:
            cache[t] = den.time_bias(torch.tensor([t], device=dev))
        return den.step(z, h_cond, cache[t], z_sc, weights=weights).float()

    def ddim(z, pairs):
        return ddim_sample(model_x0, sched, z.shape, eta=1.0, noise_scale=noise_scale, clip=1.0,
                           self_condition=True, time_pairs=pairs, x_T=z,
                           noise_fn=lambda shape, d, dt: rows.randn(shape, generator, d, dtype=dt))

    z_T = noise_scale * rows.randn((S, len(x), net.z_dim), generator, dev)
    pairs = ddim_time_pairs(sched.T, n_steps)
    if not grad_last:
        return ddim(z_T, pairs)[1]
    with torch.no_grad():
        z_t, z_sc = ddim(z_T, pairs[:-1])
    weights = None  # the last step back-propagates into the parameters (read at call time)
    z_sc = torch.zeros_like(z_t) if z_sc is None else z_sc
    return model_x0(z_t, pairs[-1][0], z_sc).clamp(-1.0, 1.0)
