"""The fundus autoencoder (KL-regularised, 8x downsampling) and its edge-aware training loss.

The network is diffusers' ``AutoencoderKL`` (a well-kept implementation that saves as a
diffusers model folder); what is specific to fundus images is the loss: L1 + SSIM keep colour
and structure, and an edge term on the green channel, where vessels have most contrast, keeps
vessels sharp (the MIUA 2025 edge-aware autoencoder finding). A PatchGAN discriminator is
optional.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config


class FundusAutoencoder(ModelMixin, ConfigMixin):
    """diffusers' AutoencoderKL behind a 2x2 pixel-unshuffle.

    Folding 2x2 pixels into channels first (as in patch-based tokenisers) runs the widest
    convolutions at half resolution: about 4x cheaper at 256 px, which is what makes training
    it on a CPU feasible, while the KL latent and the decoder stay diffusers' own.
    Total downsampling = patch * 2**(levels - 1) (2 * 4 = 8 by default).
    """

    @register_to_config
    def __init__(self, latent_channels: int = 4, block_out_channels: tuple[int, ...] = (64, 128, 128),
                 layers_per_block: int = 1, norm_num_groups: int = 32, attention: bool = False,
                 patch: int = 2, scaling_factor: float = 1.0, shift_factor: float = 0.0):
        super().__init__()
        n, c = len(block_out_channels), 3 * patch * patch
        self.vae = AutoencoderKL(
            in_channels=c, out_channels=c, latent_channels=latent_channels,
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups, mid_block_add_attention=attention)

    @property
    def downsampling_factor(self) -> int:
        return self.config.patch * 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, x: torch.Tensor):
        """Images in [-1, 1] (B, 3, H, W) -> diagonal Gaussian posterior over latents."""
        return self.vae.encode(F.pixel_unshuffle(x, self.config.patch)).latent_dist

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.vae.decode(z).sample, self.config.patch)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent -> the unit-variance latent the denoiser works in (LDM's scaling factor)."""
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.config.scaling_factor + self.config.shift_factor

    def forward(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None,
                latent_noise: torch.Tensor | None = None, latents: torch.Tensor | None = None):
        """Reconstruction and posterior; ``generator`` draws the sample's noise (diffusers draws with
        a CPU generator on the CPU, so a seed gives the same sample on any device). ``latent_noise``
        (raw latent units) is added to the latent before decoding: a decoder trained so learns to
        draw a photograph from a latent a little off the encoder's, as a denoiser's samples are.
        ``latents`` (raw, the same side as x's) are decoded in the same batch and returned third:
        a denoiser's samples, whose decoding a discriminator judges (``autoencoder.sample_model``)."""
        posterior = self.encode(x)
        z = posterior.sample(generator=generator) if sample else posterior.mode()
        if latent_noise is not None:
            z = z + latent_noise.to(z)
        if latents is None:
            return self.decode(z), posterior
        decoded = self.decode(torch.cat([z, latents.to(z)]))
        return decoded[:len(z)], posterior, decoded[len(z):]


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of images in [0, 1], Gaussian window."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - window // 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window).contiguous()

    def blur(t):
        return F.conv2d(t, kernel, padding=window // 2, groups=x.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean()


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def green_edges(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the green channel (vessels are darkest and sharpest there)."""
    g = x[:, 1:2]
    kx = _SOBEL.to(x)[None, None]
    gx = F.conv2d(g, kx, padding=1)
    gy = F.conv2d(g, kx.transpose(2, 3), padding=1)
    return torch.sqrt(gx ** 2 + gy ** 2 + 1e-6)


ENCODER_SIDE = ("vae.encoder.", "vae.quant_conv.")  # what makes the latents: a refined decoder keeps it


def latent_space_difference(a: FundusAutoencoder, b: FundusAutoencoder) -> str | None:
    """None when ``b`` makes ``a``'s latents (the same encoder side, to float16 rounding, and latent
    scaling), else what differs: "its architecture" or "its encoder or latent scaling"."""
    ours, theirs = a.state_dict(), b.state_dict()
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        return "its architecture"
    if any(not torch.equal(ours[k].half().cpu(), theirs[k].half().cpu()) for k in ours if k.startswith(ENCODER_SIDE)) \
            or (a.config.scaling_factor, a.config.shift_factor) != (b.config.scaling_factor, b.config.shift_factor):
        return "its encoder or latent scaling"
    return None


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017): a real/fake logit per overlapping patch."""

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        mods, c = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)], channels
        for _ in range(layers - 1):
            mods += [nn.Conv2d(c, c * 2, 4, 2, 1), nn.GroupNorm(8, c * 2), nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x)


@dataclass
class AutoencoderLossWeights:
    l1: float = 1.0
    ssim: float = 0.5
    edge: float = 1.0           # 0 switches the edge term off (ablation)
    kl: float = 1e-6
    adversarial: float = 0.0    # >0 enables the patch discriminator
    adversarial_adaptive: bool = False  # scale it by the gradient-norm ratio at the decoder's last layer (VQGAN)


class AutoencoderLoss:
    """L = l1*|x-x'| + ssim*(1-SSIM) + edge*|S(x)-S(x')| + kl*KL [+ adv * lambda * -D(x')] on images in [-1, 1].

    lambda is 1, or with ``adversarial_adaptive`` the adaptive weight of Esser et al. 2021 (VQGAN, eq. 7):
    lambda = |grad_G L_rec| / (|grad_G L_GAN| + delta) at the decoder's last layer G, so the
    discriminator's pull stays in proportion to the reconstruction's whatever their scales.
    """

    def __init__(self, weights: AutoencoderLossWeights):
        self.w = weights

    def __call__(self, x, recon, posterior, disc: nn.Module | None = None,
                 last_layer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        x01, r01 = (x + 1) / 2, (recon + 1) / 2
        terms = {"l1": (recon - x).abs().mean(), "ssim": 1 - ssim(r01, x01)}
        if self.w.edge:
            terms["edge"] = (green_edges(r01) - green_edges(x01)).abs().mean()
        terms["kl"] = posterior.kl().mean() / x[0].numel()
        loss = sum(getattr(self.w, k) * v for k, v in terms.items())
        if self.w.adversarial and disc is not None:
            terms["adversarial"] = gan = -disc(recon).mean()
            weight = self.w.adversarial
            if self.w.adversarial_adaptive and last_layer is not None and torch.is_grad_enabled():
                lam = adaptive_weight(loss, gan, last_layer)
                terms["adversarial_lambda"] = lam
                weight = weight * lam
            loss = loss + weight * gan
        return loss, {k: float(v.detach()) for k, v in terms.items()}


def adaptive_weight(rec: torch.Tensor, gan: torch.Tensor, last_layer: torch.Tensor, delta: float = 1e-4) -> torch.Tensor:
    """VQGAN's lambda = |grad rec| / (|grad gan| + delta) at ``last_layer``, clamped to [0, 1e4], no gradient."""
    g_rec = torch.autograd.grad(rec, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + delta)).clamp(0.0, 1e4).detach()


def discriminator_hinge_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the discriminator (Lim & Ye 2017)."""
    return F.relu(1 - disc(real)).mean() + F.relu(1 + disc(fake.detach())).mean()
