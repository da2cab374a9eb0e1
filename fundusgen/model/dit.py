"""The denoiser: a diffusion transformer (DiT, Peebles & Xie 2023) over latent patches.

Conditioning: adaLN-Zero on the sum of the timestep embedding and the pooled caption, and
cross-attention from image tokens to the caption's token states (as in PixArt-alpha and
Lumina), so fine-grained words reach the image. Positions are 2-D sin-cos embeddings computed
for the grid at hand, so one network trains at low resolution and fine-tunes at high.

Optionally (``refiner_channels > 0``) a small convolutional refiner corrects the transformer's
velocity at latent-pixel resolution, from the noisy latent and that velocity (as U-ViT's final
3x3 convolution, deeper): each token's patch is predicted on its own by a linear layer, and an
under-trained transformer leaves seams at patch borders that a few convolutions across them can
learn away. Its receptive field is local, so the layout stays the transformer's.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_2d(dim: int, h: int, w: int, device=None, grid: int = 0) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (MAE/DiT), shape (h*w, dim). ``grid``: 0, token
    positions are their indices; N, positions are scaled so that every token grid spans the N x N
    grid's range (PixArt-alpha's interpolation: a model trained on N x N tokens sees the positions it
    knows at a finer grid, e.g. 0, 0.5, 1, ... on 2N x 2N)."""
    def axis(n, d):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float32, device=device) / (d / 2))
        pos = torch.arange(n, dtype=torch.float32, device=device) * (grid / n if grid else 1.0)
        out = pos[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)
    ey, ex = axis(h, dim // 2), axis(w, dim // 2)
    return torch.cat([ey[:, None, :].expand(h, w, -1), ex[None, :, :].expand(h, w, -1)], dim=-1).reshape(h * w, dim)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features (scaled to 0..1000 as in DDPM) -> MLP."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = (t.float() * 1000)[:, None] * freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1).to(self.mlp[0].weight.dtype))


class CaptionEmbedder(nn.Module):
    """Caption token states -> cross-attention context, and their masked mean -> a global vector."""

    def __init__(self, text_dim: int, hidden: int):
        super().__init__()
        self.context = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden))
        self.pooled = nn.Sequential(nn.Linear(text_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = mask.unsqueeze(-1).to(states.dtype)
        mean = (states * m).sum(1) / m.sum(1).clamp(min=1)
        return self.context(states), self.pooled(mean)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(context_dim or hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x, context=None, mask=None):
        b, n, d = x.shape
        context = x if context is None else context
        q = self.q(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :].bool()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Self-attention, cross-attention to the caption, MLP; adaLN-Zero modulation and gates."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm_cross = nn.LayerNorm(hidden, eps=1e-6)
        self.cross = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c, context, mask):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + self.cross(self.norm_cross(x), context, mask)
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, c):
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


REFINER_GROUPS = 8  # group norm groups of the refiner: its width must be a multiple


class RefinerBlock(nn.Module):
    """GroupNorm, FiLM on the conditioning vector (zero-initialised: the identity), SiLU, 3x3 conv; residual."""

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(REFINER_GROUPS, width)
        self.film = nn.Linear(cond_dim, 2 * width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, h, c):
        shift, scale = self.film(F.silu(c)).chunk(2, dim=-1)
        y = self.norm(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return h + self.conv(F.silu(y))


class ConvRefiner(nn.Module):
    """v + r(x_t, v, c): a residual correction whose last convolution starts at zero, so a trained
    transformer given a refiner samples exactly as before until the refiner trains."""

    def __init__(self, channels: int, width: int, depth: int, cond_dim: int):
        super().__init__()
        self.inp = nn.Conv2d(2 * channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(RefinerBlock(width, cond_dim) for _ in range(depth))
        self.norm = nn.GroupNorm(REFINER_GROUPS, width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, v, c):
        h = self.inp(torch.cat([x, v], dim=1))
        for block in self.blocks:
            h = block(h, c)
        return v + self.out(F.silu(self.norm(h)))


class DiT(ModelMixin, ConfigMixin):
    """v_theta(x_t, t, caption): predicts the flow velocity for latents x_t (B, C, H, W)."""

    @register_to_config
    def __init__(self, in_channels: int = 4, hidden_size: int = 256, depth: int = 8, num_heads: int = 4,
                 patch_size: int = 2, mlp_ratio: float = 4.0, text_dim: int = 384, refiner_channels: int = 0,
                 refiner_depth: int = 4, pos_grid: int = 0):
        super().__init__()
        self.patch = patch_size
        self.pos_grid = pos_grid  # sincos_2d's grid: 0, positions are token indices at every resolution
        self.x_embed = nn.Conv2d(in_channels, hidden_size, patch_size, patch_size)
        self.t_embed = TimestepEmbedder(hidden_size)
        self.caption = CaptionEmbedder(text_dim, hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(hidden_size, patch_size, in_channels)
        self.refiner = ConvRefiner(in_channels, refiner_channels, refiner_depth, hidden_size) if refiner_channels else None
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
            nn.init.zeros_(block.cross.out.weight)
        nn.init.zeros_(self.final.ada[-1].weight)
        nn.init.zeros_(self.final.ada[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)
        if self.refiner is not None:
            for block in self.refiner.blocks:
                nn.init.zeros_(block.film.weight)
                nn.init.zeros_(block.film.bias)
            nn.init.zeros_(self.refiner.out.weight)
            nn.init.zeros_(self.refiner.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch
        tokens = self.x_embed(x).flatten(2).transpose(1, 2)
        tokens = tokens + sincos_2d(tokens.shape[-1], h // p, w // p, x.device, self.pos_grid).to(tokens.dtype)
        context, pooled = self.caption(text.to(tokens.dtype), text_mask)
        cond = self.t_embed(t) + pooled
        for block in self.blocks:
            tokens = block(tokens, cond, context, text_mask)
        out = self.final(tokens, cond)
        out = out.view(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        return out if self.refiner is None else self.refiner(x, out, cond)


DIT_SIZES = {
    "DiT-T": dict(hidden_size=256, depth=8, num_heads=4),     # the CPU-trained default
    "DiT-S": dict(hidden_size=384, depth=12, num_heads=6),
    "DiT-B": dict(hidden_size=768, depth=12, num_heads=12),
    "DiT-L": dict(hidden_size=1024, depth=24, num_heads=16),
}
