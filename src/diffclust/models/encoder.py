"""ClusterDDPM's encoder f_φ (Yan et al., 2023, §3.2): the down half of a U-Net mapping an
image to the mean and log-variance of its latent code ``z``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

__all__ = ["LatentEncoder"]


class LatentEncoder(nn.Module):
    """f_φ: the first half of a U-Net (``conv_in``, down blocks, mid block; no time input) built
    from a ``UNet2DModel`` config, then GroupNorm → SiLU → flatten → two linear heads giving
    ``μ_φ`` and ``log σ_φ²`` (J each). Inputs are padded images of side ``sample_size``."""

    def __init__(self, config: dict, latent_dim: int):
        super().__init__()
        from diffusers import UNet2DModel

        self.config = dict(config)
        u = UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
        self.conv_in, self.down_blocks, self.mid_block = u.conv_in, u.down_blocks, u.mid_block
        for m in self.modules():  # no time embedding: drop the per-block projections
            if hasattr(m, "time_emb_proj"):
                m.time_emb_proj = None
        ch = int(config["block_out_channels"][-1])
        side = int(config["sample_size"]) // 2 ** (len(config["block_out_channels"]) - 1)
        self.norm = nn.GroupNorm(min(int(config["norm_num_groups"]), ch), ch)
        self.fc_mu = nn.Linear(ch * side * side, int(latent_dim))
        self.fc_logvar = nn.Linear(ch * side * side, int(latent_dim))

    def forward(self, x):
        h = self.conv_in(x)
        for down in self.down_blocks:
            h, _ = down(hidden_states=h, temb=None)
        if self.mid_block is not None:
            h = self.mid_block(h, None)
        h = F.silu(self.norm(h)).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)
