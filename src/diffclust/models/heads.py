"""The small networks of the clustering methods (the diffusion models are in diffusion/).

* :class:`MultiHeadDINO`: TEMI's H DINO heads with stacked weights (Adaloglou et al., §3);
* :class:`ResidualMapping`: DiEC's ``z = e + g_φ(e)`` (eq. 18);
* :class:`ClusterHead`: GCC's clustering head C (METHODS.md §6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClusterHead", "MultiHeadDINO", "ResidualMapping"]


class MultiHeadDINO(nn.Module):
    """H DINO heads with stacked weights, evaluated together.

    ``forward(x)`` maps ``(B, D)`` features to logits ``(H, B, C)``:
    ``z^i = normalize(W2^i GELU(W1^i x + b1^i) + b2^i)``, ``logits^i = z^i (g^i ⊙ V^i/‖V^i‖)``
    with the weight normalisation over the bottleneck dimension (``torch.nn.utils.weight_norm``
    of a ``Linear(256, C)``, gain initialised to 1).
    """

    def __init__(self, in_dim, n_clusters, n_heads=16, hidden_dim=512, bottleneck_dim=256,
                 generator=None):
        super().__init__()
        H, D, Hd, Bn, C = n_heads, in_dim, hidden_dim, bottleneck_dim, n_clusters
        self.n_heads, self.hidden_dim, self.bottleneck_dim = H, Hd, Bn
        # DINOHead init: trunc_normal(std=0.02) weights, zero biases
        self.W1 = nn.Parameter(self._trunc_normal((D, H * Hd), generator))
        self.b1 = nn.Parameter(torch.zeros(H * Hd))
        self.W2 = nn.Parameter(self._trunc_normal((H, Hd, Bn), generator))
        self.b2 = nn.Parameter(torch.zeros(H, 1, Bn))
        # last layer: nn.Linear's default init of the direction, gain g = 1
        bound = 1.0 / math.sqrt(Bn)
        self.V = nn.Parameter(torch.empty(H, Bn, C).uniform_(-bound, bound, generator=generator))
        self.g = nn.Parameter(torch.ones(H, 1, C))

    @staticmethod
    def _trunc_normal(shape, generator):
        t = torch.empty(shape)
        nn.init.trunc_normal_(t, std=0.02, a=-2.0, b=2.0, generator=generator)
        return t

    def last_layer_parameters(self):
        return [self.V, self.g]

    def bottleneck(self, x):
        """The L2-normalised 256-d bottleneck of every head, ``(H, B, 256)`` (fp32).

        The first layers run as one batched product over the heads on the shared input, so that
        the hidden activations are born head-major ``(H, B, 512)``: a ``(B, H·512)`` product
        transposed to head-major cost a strided copy forward and backward (1.4× slower step)."""
        H, Hd = self.n_heads, self.hidden_dim
        W1 = self.W1.view(-1, H, Hd).transpose(0, 1)  # (H, D, 512), a view
        dev = x.device.type
        if torch.is_autocast_enabled(dev):  # cast (B, D) once, not its H-fold expansion
            x = x.to(torch.get_autocast_dtype(dev))
        h = F.gelu(torch.baddbmm(self.b1.view(H, 1, Hd), x.expand(H, *x.shape), W1))
        z = torch.baddbmm(self.b2, h, self.W2).float()  # (H, B, 256)
        return z * torch.rsqrt((z * z).sum(-1, keepdim=True).clamp_min(1e-24))

    def forward(self, x):
        z = self.bottleneck(x)
        with torch.autocast(z.device.type, enabled=False):
            W = self.g.float() * F.normalize(self.V.float(), dim=1)
            return torch.bmm(z, W)

    @torch.no_grad()
    def select(self, i: int) -> MultiHeadDINO:
        """A one-head module holding head ``i``."""
        D = self.W1.shape[0]
        C = self.V.shape[-1]
        out = MultiHeadDINO(D, C, 1, self.hidden_dim, self.bottleneck_dim)
        Hd = self.hidden_dim
        out.W1.copy_(self.W1[:, i * Hd:(i + 1) * Hd])
        out.b1.copy_(self.b1[i * Hd:(i + 1) * Hd])
        for name in ("W2", "b2", "V", "g"):
            getattr(out, name).copy_(getattr(self, name)[i:i + 1])
        return out.to(self.W1.device)


class ResidualMapping(nn.Module):
    """``z = e + g_φ(e)``, ``g_φ = Linear → ReLU → Linear`` with a zero last layer (eq. 18)."""

    def __init__(self, dim: int, hidden: int = 512):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, e):
        return e + self.fc2(F.relu(self.fc1(e)))


class ClusterHead(nn.Module):
    """C: ``Linear(D, H) → ReLU → Linear(H, K)`` (logits)."""

    def __init__(self, in_dim: int, n_clusters: int, hidden: int = 512):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_dim, hidden), nn.Linear(hidden, n_clusters)

    def forward(self, f):
        return self.fc2(torch.relu(self.fc1(f)))
