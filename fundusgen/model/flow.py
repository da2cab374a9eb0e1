"""Flow matching: the rectified-flow objective, timestep schedules, guidance and samplers.

Convention (Liu et al. 2023; Esser et al. 2024, SD3): t = 0 is data, t = 1 is noise,
    x_t = (1 - t) x_0 + t eps,   and the network predicts the velocity v = eps - x_0.
Sampling integrates dx/dt = v from t = 1 down to t = 0. Samplers are plain functions of a
velocity function, in the k-diffusion style: no state, easy to test, easy to add one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance
from diffusers.guiders.classifier_free_zero_star_guidance import cfg_zero_star_scale

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_t(n: int, g: torch.Generator, mode: str = "logit_normal") -> torch.Tensor:
    """Training timesteps: uniform, or logit-normal (SD3): t = sigmoid(u), u ~ N(0, 1)."""
    if mode == "uniform":
        return torch.rand(n, generator=g)
    if mode == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=g))
    raise ValueError(f"unknown timestep sampling {mode!r} (uniform | logit_normal)")


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution time shift, t' = shift t / (1 + (shift - 1) t): shift > 1 moves times towards
    pure noise, where a larger image still keeps its coarse layout (shift = sqrt(tokens / base tokens))."""
    return shift * t / (1 + (shift - 1) * t)


class RectifiedFlowLoss:
    """L = E_{t, eps} || v_theta(x_t, t, c) - (eps - x_0) ||^2, with t drawn from ``timestep_sampling``
    and then time-shifted (``shift``, per call: a recipe's high-resolution stage trains shifted).

    With ``weight`` (B, 1, h, w), a spatial weight per latent cell, the squared error is averaged with
    those weights, L = sum w ||v_theta - (eps - x_0)||^2 / (C sum w): the loss keeps its scale, and
    cells that weigh more (vessels, ``denoiser.vessel_weight``; disc and macula, ``anatomy_weight``) count more."""

    def __init__(self, timestep_sampling: str = "logit_normal"):
        self.timestep_sampling = timestep_sampling

    def __call__(self, model, x0: torch.Tensor, text, text_mask, g: torch.Generator,
                 shift: float = 1.0, weight: torch.Tensor | None = None) -> torch.Tensor:
        t = shift_t(sample_t(x0.shape[0], g, self.timestep_sampling), shift).to(x0)
        eps = torch.randn(x0.shape, generator=g).to(x0)
        te = t.view(-1, 1, 1, 1)
        x_t = (1 - te) * x0 + te * eps
        v = model(x_t, t, text, text_mask)
        squared = (v.float() - (eps - x0).float()) ** 2
        if weight is None:
            return squared.mean()
        weight = weight.float().expand_as(squared)
        return (weight * squared).sum() / weight.sum()


def schedule(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps+1 times from 1 to 0. shift > 1 spends more steps at high noise (SD3's time shift,
    t' = shift t / (1 + (shift - 1) t)), which larger images need."""
    return shift_t(torch.linspace(1.0, 0.0, steps + 1), shift)


@dataclass(frozen=True)
class Projection:
    """Adaptive projected guidance (APG; Sadat et al. 2024) of the classifier-free term, on the
    denoised predictions x0 = x_t - t v. The difference d = x0_c - x0_u is split into its part
    parallel to x0_c, which mostly raises contrast and saturation at high scales, and the
    orthogonal rest; guidance keeps ``eta`` of the parallel part:
        x0 = x0_c + (s - 1) (d_orth + eta d_par),   d <- d + momentum d_prev,   d <- d min(1, r / |d|)
    with r = ``threshold`` (0: no rescaling). eta 1, momentum 0, threshold 0 is classifier-free
    guidance exactly. The momentum is over velocity evaluations (two per step for Heun)."""
    eta: float = 0.0
    momentum: float = 0.0
    threshold: float = 0.0

    @property
    def off(self) -> bool:
        return self.eta == 1.0 and self.momentum == 0.0 and self.threshold == 0.0

    def guide(self, scale: float, buffer: MomentumBuffer | None) -> Callable:
        """(x, t, v_c, v_u) -> the guided velocity; ``buffer`` holds the momentum of one sampling run.
        The projection itself is diffusers' (``normalized_guidance``, the APG guider's maths)."""
        def v(x, t, vc, vu):
            tt = t.view(-1, *[1] * (x.dim() - 1))
            x0c, x0u = x - tt * vc, x - tt * vu
            # diffusers' "original formulation" is x0_c + w (update), Ho & Salimans' w: here s - 1
            x0 = normalized_guidance(x0c, x0u, scale - 1.0, buffer, self.eta, self.threshold,
                                     use_original_formulation=True)
            return (x - x0) / tt
        return v


def guided(velocities: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
           scale: float | tuple[float, ...], interval: tuple[float, float] = (0.0, 1.0),
           conditional: Velocity | None = None, projection: Projection | None = None,
           zero_star: bool = False) -> Velocity:
    """Guidance on every latent channel: v = v_c + sum_k (s_k - 1) (v_c - v_k), with
    ``velocities(x, t) -> (v_c, v_1, ...)`` and one scale s_k per reference velocity v_k.

    With one reference, the unconditional velocity v_u, this is classifier-free guidance (Ho &
    Salimans 2022), v = v_u + s (v_c - v_u). With the same caption given to a weaker version of the
    network as the reference, it is autoguidance (Karras et al. 2024), v = v_g + w (v_c - v_g): it
    pushes away from what the weaker network gets wrong rather than from the average image. Both
    references at once add both terms.

    Guidance in an interval (Kynkaanniemi et al. 2024): only at times low < t <= high; elsewhere
    v = v_c, from ``conditional(x, t)`` (the conditional pass alone) when given.

    ``projection`` (the first reference being the unconditional velocity) replaces the
    classifier-free term by adaptive projected guidance (``Projection``); other references add
    their plain terms. ``zero_star`` scales the unconditional velocity by the least-squares factor
    s* = <v_c, v_u> / |v_u|^2 (per image) before guiding, v = s* v_u + s (v_c - s* v_u): CFG-Zero*
    (Fan et al. 2025), whose point is that an imperfectly trained flow's v_u is off in scale
    early on (``zero_init`` is its other half)."""
    scales = (scale,) if isinstance(scale, (int, float)) else tuple(scale)
    low, high = interval
    always = low <= 0.0 and high >= 1.0
    apg = None if projection is None or projection.off else projection.guide(
        scales[0], MomentumBuffer(projection.momentum) if projection.momentum else None)

    def v(x, t):
        if not always and not low < float(t[0]) <= high:
            return conditional(x, t) if conditional is not None else velocities(x, t)[0]
        vc, *refs = velocities(x, t)
        if len(refs) != len(scales):
            raise ValueError(f"{len(refs)} reference velocities for {len(scales)} guidance scales")
        if zero_star:
            refs[0] = refs[0] * cfg_zero_star_scale(vc.flatten(1), refs[0].flatten(1)).view(-1, *[1] * (vc.dim() - 1))
        if apg is None and len(refs) == 1:  # the classic form v_r + s (v_c - v_r): the same floats as before
            return refs[0] + scales[0] * (vc - refs[0])
        # APG replaces the classifier-free term; every other reference adds its plain term
        out, rest = (apg(x, t, vc, refs[0]), 1) if apg is not None else (vc, 0)
        for s, vr in zip(scales[rest:], refs[rest:]):
            out = out + (s - 1) * (vc - vr)
        return out
    return v


def zero_init(v: Velocity, after: float) -> Velocity:
    """CFG-Zero*'s zero initialisation (Fan et al. 2025): velocity 0 at times t > ``after``, so the
    first steps leave the noise as it is; the network's first, least reliable estimates (at pure
    noise) are not followed. The network is not run there. (Heun's corrector for the last zeroed
    step evaluates the network at that step's end, so there the step is half a step.)"""
    def zeroed(x, t):
        return torch.zeros_like(x) if float(t[0]) > after else v(x, t)
    return zeroed


def known_region(v: Velocity, noise: torch.Tensor, x0: torch.Tensor, known: torch.Tensor) -> Velocity:
    """Pin the latents where the image is known (``known`` True, broadcast over channels) to
    their straight path x_t = (1 - t) x0 + t noise, whose velocity is the constant noise - x0:
    inpainting by replacement (RePaint, Lugmayr et al. 2022) without resampling. Sampling must
    start from ``noise``; the network still sees the whole latent, so it draws the rest in
    agreement with the known part."""
    target = noise - x0

    def pinned(x, t):
        return torch.where(known, target, v(x, t))
    return pinned


def sample_euler(v: Velocity, x: torch.Tensor, ts: torch.Tensor, callback=None) -> torch.Tensor:
    """Euler's method: x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i)."""
    for i in range(len(ts) - 1):
        x = x + (ts[i + 1] - ts[i]) * v(x, ts[i].expand(x.shape[0]).to(x))
        if callback:
            callback(i + 1, len(ts) - 1)
    return x


def sample_heun(v: Velocity, x: torch.Tensor, ts: torch.Tensor, callback=None) -> torch.Tensor:
    """Heun's method (EDM, Karras et al. 2022, Alg. 1): Euler predictor, trapezoidal corrector;
    the last step to t = 0 is plain Euler."""
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        d = v(x, t.expand(x.shape[0]).to(x))
        x_pred = x + (t_next - t) * d
        if t_next > 0:
            d_next = v(x_pred, t_next.expand(x.shape[0]).to(x))
            x = x + (t_next - t) * (d + d_next) / 2
        else:
            x = x_pred
        if callback:
            callback(i + 1, len(ts) - 1)
    return x


def sample_midpoint(v: Velocity, x: torch.Tensor, ts: torch.Tensor, callback=None) -> torch.Tensor:
    """Explicit midpoint (RK2): evaluate the velocity half a step ahead."""
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        h = t_next - t
        d = v(x, t.expand(x.shape[0]).to(x))
        x = x + h * v(x + h / 2 * d, (t + h / 2).expand(x.shape[0]).to(x))
        if callback:
            callback(i + 1, len(ts) - 1)
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "midpoint": sample_midpoint}
