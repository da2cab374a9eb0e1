"""FundusGen: prompt in, fundus photographs out.

A model folder, diffusers-style:
    model_index.json        what the parts are, sampling defaults
    autoencoder/            config.json + diffusion_pytorch_model.safetensors
    denoiser/               config.json + diffusion_pytorch_model.safetensors (EMA weights)
    guide/                  optional: a weaker denoiser of the same latents and captions (an earlier,
                            shorter-trained checkpoint) for autoguidance (Karras et al. 2024)
    README.md               the model card
The text encoder is named in model_index.json ('minilm' = the bundled MiniLM, or a path/hub id).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fundusgen.caption.prompt import check_prompt
from fundusgen.data.fundus import aperture as aperture_disk
from fundusgen.errors import FundusgenError
from fundusgen.model.autoencoder import FundusAutoencoder
from fundusgen.model.dit import DiT
from fundusgen.model.flow import SAMPLERS, Projection, guided, known_region, schedule, zero_init
from fundusgen.model.text_encoder import TextEncoder

MODEL_INDEX = "model_index.json"
GUIDE = "guide"
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"
# 'circle': every image gets the circular field of view of a preprocessed photograph (the
# disk inscribed in the square, black outside): the latents outside it are pinned to those of
# that black surround while sampling, and the decoded image is cut to the disk.
APERTURES = ("none", "circle")
# A mean fundus colour (RGB in [-1, 1]) filling the disk of the template whose latents are pinned:
# only the latents well outside the disk are used, so the exact value matters little.
_FUNDUS_RGB = (0.2, -0.45, -0.75)


def check_guide(denoiser: DiT, guide: DiT, where) -> None:
    """A guide network must read the same latents and captions as the denoiser it guides."""
    keys = ("in_channels", "patch_size", "text_dim")
    if any(getattr(guide.config, k) != getattr(denoiser.config, k) for k in keys):
        raise FundusgenError(f"{where}: the guide network does not match the denoiser "
                             "(latent channels, patch size and text width must be the same)")


def cut_to_disk(image: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] black outside the disk inscribed in their square: the 'circle' aperture."""
    disk = torch.from_numpy(aperture_disk(image.shape[-1])).to(image)[None, None]
    return image * disk - (1 - disk)


@dataclass
class GenerationResult:
    images: list[Image.Image]
    metadata: list[dict] = field(default_factory=list)
    latents: torch.Tensor | None = None  # output_type="latent": the sampled latents, denormalised (raw)


class FundusGen:
    def __init__(self, autoencoder: FundusAutoencoder, denoiser: DiT, text_encoder: TextEncoder, config: dict,
                 name: str = "fundusgen", guide: DiT | None = None):
        self.autoencoder = autoencoder.eval()
        self.denoiser = denoiser.eval()
        self.guide = guide.eval() if guide is not None else None
        self.text_encoder = text_encoder
        self.config = config
        self.name = name
        self._apertures = {}  # resolution -> what the 'circle' aperture pins (computed once)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "FundusGen":
        path = Path(path) if path else DEFAULT_MODEL
        index = path / MODEL_INDEX
        if not index.is_file():
            raise FundusgenError(f"{path}: not a fundusgen model folder (no {MODEL_INDEX})")
        try:
            config = json.loads(index.read_text())
        except ValueError as e:
            raise FundusgenError(f"{index}: corrupted ({e})") from None
        try:
            ae = FundusAutoencoder.from_pretrained(str(path / "autoencoder"), torch_dtype=dtype)
            dit = DiT.from_pretrained(str(path / "denoiser"), torch_dtype=dtype)
            guide = DiT.from_pretrained(str(path / GUIDE), torch_dtype=dtype) if (path / GUIDE).is_dir() else None
        except (OSError, ValueError, RuntimeError, EnvironmentError) as e:
            raise FundusgenError(f"{path}: cannot load weights ({str(e).splitlines()[0][:200]})") from None
        te = TextEncoder(config.get("text_encoder", "minilm"), device=device)
        if guide is not None:
            check_guide(dit, guide, path / GUIDE)
        return cls(ae.to(device), dit.to(device), te, config, name=config.get("name", path.name),
                   guide=guide.to(device) if guide is not None else None)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.autoencoder.save_pretrained(str(path / "autoencoder"), safe_serialization=True)
        self.denoiser.save_pretrained(str(path / "denoiser"), safe_serialization=True)
        if self.guide is not None:
            self.guide.save_pretrained(str(path / GUIDE), safe_serialization=True)
        (path / MODEL_INDEX).write_text(json.dumps({"_class_name": "FundusGen", **self.config}, indent=2))

    def _check(self, prompts, num_images, steps, guidance, resolution, sampler, aperture, time_shift,
               negatives=(), interval=(0.0, 1.0), autoguidance=1.0, projection=Projection(1.0), zero_init_steps=0):
        if not 0.1 <= time_shift <= 10.0:
            raise FundusgenError(f"time shift must be 0.1-10 (got {time_shift})")
        lo, hi = interval
        if not 0.0 <= lo < hi <= 1.0:
            raise FundusgenError(f"guidance interval must be two times 0 <= low < high <= 1 (got {lo}, {hi})")
        for p in prompts:
            check_prompt(p)
        for p in negatives:
            if p:  # an empty negative prompt is the unconditional caption
                check_prompt(p, "negative prompt")
        if num_images < 1:
            raise FundusgenError(f"number of images must be at least 1 (got {num_images})")
        if not 1 <= steps <= 1000:
            raise FundusgenError(f"steps must be 1-1000 (got {steps})")
        if not 0 <= zero_init_steps < steps:
            raise FundusgenError(f"zero-init steps must be 0 (off) to {steps - 1}, fewer than the steps (got {zero_init_steps})")
        if not 0.0 <= guidance <= 30.0:
            raise FundusgenError(f"guidance must be 0-30 (got {guidance})")
        if not 0.0 <= autoguidance <= 30.0:
            raise FundusgenError(f"autoguidance must be 0-30 (got {autoguidance})")
        if not 0.0 <= projection.eta <= 1.0:
            raise FundusgenError(f"guidance eta must be 0-1 (got {projection.eta})")
        if not -1.0 < projection.momentum < 1.0:
            raise FundusgenError(f"guidance momentum must be between -1 and 1 (got {projection.momentum})")
        if not projection.threshold >= 0.0:
            raise FundusgenError(f"guidance threshold must be 0 (off) or positive (got {projection.threshold})")
        if autoguidance != 1.0 and self.guide is None:
            raise FundusgenError(f"autoguidance {autoguidance} needs a guide network, and model {self.name!r} has "
                                 f"none (no {GUIDE}/ folder); use 1 (off)")
        f = self.autoencoder.downsampling_factor * self.denoiser.config.patch_size
        if resolution % f or not f <= resolution <= 2048:
            raise FundusgenError(f"resolution must be a multiple of {f} up to 2048 (got {resolution})")
        if sampler not in SAMPLERS:
            raise FundusgenError(f"unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})")
        if aperture not in APERTURES:
            raise FundusgenError(f"unknown aperture {aperture!r} (choose from {', '.join(APERTURES)})")

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_images: int = 1, seed: int | list[int] = 0, steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None, resolution: int | None = None,
                 aperture: str | None = None, time_shift: float | None = None,
                 negative_prompt: str | list[str] | None = None,
                 guidance_interval: tuple[float, float] | None = None, autoguidance: float | None = None,
                 guidance_eta: float | None = None, guidance_momentum: float | None = None,
                 guidance_threshold: float | None = None, zero_star: bool | None = None,
                 zero_init_steps: int | None = None,
                 batch_size: int = 4, callback=None, output_type: str = "pil") -> GenerationResult:
        """``num_images`` images per prompt. Image i of a call uses seed + i, so a given
        (prompt, seed) gives the same image whatever the batch or count (up to one grey level when
        one batch mixes negative prompts of different lengths: float sums round differently).
        ``seed`` may be a list, one per prompt: image i of prompt k then uses seed[k] + i.

        ``negative_prompt`` (one, or one per prompt) replaces the empty caption of the guidance's
        unconditional branch, so guidance pushes away from it (``""``: plain classifier-free
        guidance). ``guidance_interval`` (low, high) applies guidance only at times low < t <= high
        (t = 1 is noise) and the conditional velocity alone elsewhere (Kynkaanniemi et al. 2024).
        ``autoguidance`` w (1: off) adds w - 1 times the difference between the denoiser's velocity and
        its weaker guide network's for the same caption (Karras et al. 2024; the model folder's
        ``guide/``), on top of classifier-free guidance (``guidance`` 1 leaves autoguidance alone).
        ``guidance_eta`` < 1, ``guidance_momentum`` or ``guidance_threshold`` turn classifier-free
        guidance into adaptive projected guidance (Sadat et al. 2024; ``flow.Projection``): eta is the
        share kept of the update parallel to the denoised prediction (1, 0, 0: plain guidance).
        ``zero_star`` scales the unconditional velocity by its least-squares fit to the conditional one
        before guiding, and ``zero_init_steps`` k leaves the noise as it is for the first k steps
        (CFG-Zero*, Fan et al. 2025; ``flow.guided``, ``flow.zero_init``).
        ``output_type`` "latent" returns the sampled latents in the autoencoder's raw units (``latents``,
        no images), as diffusers' pipelines do: what a decoder is refined on (``autoencoder.sample_model``)."""
        if output_type not in ("pil", "latent"):
            raise FundusgenError(f"output_type {output_type!r}: pil or latent")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        one = negative_prompt is None or isinstance(negative_prompt, str)
        negatives = [n or "" for n in ([negative_prompt] * len(prompts) if one else negative_prompt)]  # None: ""
        if len(negatives) != len(prompts):
            raise FundusgenError(f"{len(negatives)} negative prompts for {len(prompts)} prompts "
                                 "(give one, or one each)")
        interval = tuple(self.config.get("guidance_interval", (0.0, 1.0)) if guidance_interval is None
                         else guidance_interval)
        steps = self.config.get("steps", 25) if steps is None else steps
        guidance = self.config.get("guidance", 4.0) if guidance is None else guidance
        autoguidance = self.config.get("autoguidance", 1.0) if autoguidance is None else autoguidance
        projection = Projection(*(self.config.get(k, d) if v is None else v for k, d, v in (
            ("guidance_eta", 1.0, guidance_eta), ("guidance_momentum", 0.0, guidance_momentum),
            ("guidance_threshold", 0.0, guidance_threshold))))
        zero_star = bool(self.config.get("zero_star", False) if zero_star is None else zero_star)
        zero_init_steps = self.config.get("zero_init_steps", 0) if zero_init_steps is None else zero_init_steps
        sampler = sampler or self.config.get("sampler", "euler")
        resolution = resolution or self.config.get("resolution", 256)
        aperture = aperture or self.config.get("aperture", "none")
        time_shift = self.config.get("time_shift", 1.0) if time_shift is None else time_shift
        self._check(prompts, num_images, steps, guidance, resolution, sampler, aperture, time_shift, negatives,
                    interval, autoguidance, projection, zero_init_steps)
        seeds = [seed] * len(prompts) if isinstance(seed, int) else list(seed)
        if len(seeds) != len(prompts):
            raise FundusgenError(f"{len(seeds)} seeds for {len(prompts)} prompts (give one, or one each)")
        jobs = [(p, n, s + i) for p, n, s in zip(prompts, negatives, seeds) for i in range(num_images)]
        images, meta, latents = [], [], []
        done = 0
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            states, mask = self.text_encoder.encode([p for p, _, _ in chunk])
            null_states, null_mask = self.text_encoder.encode([n for _, n, _ in chunk])
            x = self._sample(states, mask, null_states, null_mask, [s for _, _, s in chunk], steps,
                             (guidance, autoguidance), sampler, resolution, aperture, time_shift, interval,
                             projection, zero_star, zero_init_steps, callback=None if callback is None
                             else (lambda i, n, base=done, k=len(chunk): callback(base + k * i / n, len(jobs))))
            done += len(chunk)
            if output_type == "latent":
                latents.append(self.autoencoder.denormalise(x).float())
            else:
                images.extend(self._to_pil(self.decode(x, aperture)))
            for p, n, s in chunk:
                meta.append({"prompt": p, "seed": s, "steps": steps, "guidance": guidance, "sampler": sampler,
                             "resolution": resolution, "aperture": aperture, "time_shift": time_shift,
                             "negative_prompt": n, "guidance_interval": list(interval),
                             "autoguidance": autoguidance, "guidance_eta": projection.eta,
                             "guidance_momentum": projection.momentum, "guidance_threshold": projection.threshold,
                             "zero_star": zero_star, "zero_init_steps": zero_init_steps,
                             "model": self.name})
        return GenerationResult(images, meta, torch.cat(latents) if latents else None)

    def _sample(self, states, mask, null_states, null_mask, seeds, steps, scales, sampler, resolution, aperture,
                time_shift, interval, projection, zero_star, zero_init_steps, callback):
        """Latents sampled (normalised); ``scales`` = (classifier-free scale, autoguidance scale)."""
        dev, dtype = self.device, next(self.denoiser.parameters()).dtype
        c = self.denoiser.config.in_channels
        side = resolution // self.autoencoder.downsampling_factor
        noise = torch.stack([torch.randn((c, side, side), generator=torch.Generator().manual_seed(s)) for s in seeds])
        x = noise.to(dev, dtype)
        b = x.shape[0]
        length = max(states.shape[1], null_states.shape[1])
        pad = lambda t, m: (torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1])),
                            torch.nn.functional.pad(m, (0, length - m.shape[1])))
        cond, cond_mask = pad(states, mask)
        unc, unc_mask = pad(null_states.expand(b, -1, -1), null_mask.expand(b, -1))
        text = torch.cat([cond, unc]).to(dev, dtype)
        text_mask = torch.cat([cond_mask, unc_mask]).to(dev)

        def conditional(x, t):
            return self.denoiser(x, t, text[:b], text_mask[:b])

        cfg, auto = scales

        def velocities(x, t):
            # (conditional, unconditional: one batched pass; then the guide network on the caption)
            if cfg != 1.0:
                v = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), text, text_mask)
                out = (v[:b], v[b:])
            else:
                out = (conditional(x, t),)
            if auto != 1.0:
                out += (self.guide(x, t, text[:b], text_mask[:b]),)
            return out

        active = tuple(s for s in (cfg, auto) if s != 1.0)
        guide_unconditional = cfg != 1.0  # APG and CFG-Zero*'s scale act on the classifier-free term only
        v = (guided(velocities, active, interval, conditional, projection if guide_unconditional else None,
                    zero_star and guide_unconditional) if active else conditional)
        ts = schedule(steps, time_shift).to(dev)
        if zero_init_steps:
            v = zero_init(v, float(ts[zero_init_steps]))
        if aperture == "circle":
            surround, known = self._aperture(resolution)
            v = known_region(v, x, surround.to(x), known)
        return SAMPLERS[sampler](v, x, ts, callback)

    @torch.no_grad()
    def decode(self, x: torch.Tensor, aperture: str = "none") -> torch.Tensor:
        """Normalised latents -> images in [-1, 1], cut to the disk for the 'circle' aperture."""
        dtype = next(self.autoencoder.parameters()).dtype
        image = self.autoencoder.decode(self.autoencoder.denormalise(x).to(dtype)).float()
        if aperture == "circle":
            image = cut_to_disk(image)
        return image

    def _aperture(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents of the black surround, where they are pinned) for 'circle'.
        Latent cells within one cell of the disk stay free, so the network draws the rim."""
        if resolution in self._apertures:
            return self._apertures[resolution]
        dev, dtype = self.device, next(self.autoencoder.parameters()).dtype
        f = self.autoencoder.downsampling_factor
        disk = torch.from_numpy(aperture_disk(resolution)).to(dev)[None, None]
        near = torch.from_numpy(aperture_disk(resolution, margin=f)).to(dev)[None, None]
        known = torch.nn.functional.max_pool2d(near, f) == 0
        template = torch.tensor(_FUNDUS_RGB, device=dev).view(1, 3, 1, 1) * disk - (1 - disk)
        with torch.no_grad():
            surround = self.autoencoder.normalise(self.autoencoder.encode(template.to(dtype)).mean)
        self._apertures[resolution] = surround, known
        return self._apertures[resolution]

    @staticmethod
    def _to_pil(x: torch.Tensor) -> list[Image.Image]:
        arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]
