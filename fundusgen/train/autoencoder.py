"""Train the fundus autoencoder on random crops of the training split.

Two phases: the whole autoencoder for ``steps``, then (``decoder_steps`` > 0) the decoder alone
with the encoder frozen, as Stable Diffusion's ft-EMA/ft-MSE decoders were refined: sharper
reconstructions from the same latents, so cached latents and a denoiser trained on them stay valid.
The patch discriminator (``loss.adversarial`` > 0) joins at ``adversarial_start`` in either phase:
L1, SSIM and the edge term alone pull a decoder towards the blurred mean of what a latent could be.
With it the weights oscillate, so ``ema_decay`` saves their moving average instead and
``snapshot_every`` keeps it every N steps (``step_N/``), to be picked by measurement. ``latent_noise``
perturbs the latents the decoder sees in its phase, as a denoiser's samples are off the encoder's.
``sample_model`` has the discriminator also judge the decoder's drawings of a model's own samples
(latents it draws once for training captions; no photograph pairs with them, so only the discriminator
teaches there), so the decoder learns to draw what the denoiser draws as photographs look.

Always fp32 (TF32 matrix units on a GPU): a bf16-autocast run of this trainer on an H100 (recipe
configs/default.yaml, 4,600 steps) ended with green and blue reconstructed far off (L1 1.38 on
[-1, 1]), while fp32 runs converge; the autoencoder is small, so fp32 costs little.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import DistributedDataParallelKwargs
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from fundusgen.data.shards import atomic_write_file
from fundusgen.errors import FundusgenError
from fundusgen.model.autoencoder import (ENCODER_SIDE, AutoencoderLoss, FundusAutoencoder, PatchDiscriminator,
                                         discriminator_hinge_loss, latent_space_difference)
from fundusgen.model.pipeline import FundusGen, cut_to_disk
from fundusgen.train.cache import (cache_is_current, caption_sources, captions_for, data_digest, module_digest,
                                   stamp_text)
from fundusgen.train.checkpoint import load_checkpoint, save_checkpoint, save_model_folder, step_generator
from fundusgen.train.config import RecipeConfig
from fundusgen.train.data import load_images, resize, to_model_range
from fundusgen.train.distributed import new_accelerator


def _batch(images: torch.Tensor, size: int, crop: int, g: torch.Generator) -> torch.Tensor:
    idx = torch.randint(len(images), (size,), generator=g)
    side = images.shape[-1]
    out = []
    for i in idx.tolist():
        y, x = torch.randint(side - crop + 1, (2,), generator=g).tolist()
        img = images[i, :, y:y + crop, x:x + crop]
        if torch.rand((), generator=g) < 0.5:
            img = img.flip(-1)
        out.append(img)
    return to_model_range(torch.stack(out))


def resize_uint8(images: torch.Tensor, size: int, batch: int = 256) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> side ``size`` with the trainer's ``resize`` (area when shrinking), uint8."""
    return torch.cat([((resize(to_model_range(images[i:i + batch]), size) + 1) * 127.5).round().clamp(0, 255).byte()
                      for i in range(0, len(images), batch)])


def train_autoencoder(cfg: RecipeConfig, progress: bool = True) -> Path:
    """Returns the folder of the trained autoencoder (a diffusers model folder)."""
    tc = cfg.autoencoder
    out = Path(cfg.out) / "autoencoder"
    final = out / "final"
    if (final / "config.json").exists():
        return final
    # the decoder phase freezes the encoder after DDP has wrapped the model: DDP must then look
    # for parameters without gradients (a no-op in one process)
    acc = new_accelerator(mixed_precision="no",
                          kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=tc.decoder_steps > 0)])
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    images, metas = load_images(cfg.data, "train", progress, cfg.exclude_datasets)
    if tc.resolution:
        images = resize_uint8(images, tc.resolution)
    if tc.crop > images.shape[-1]:
        raise FundusgenError(f"autoencoder.crop {tc.crop} is larger than the training images "
                             f"({images.shape[-1]} px{' after autoencoder.resolution' if tc.resolution else ''})")
    torch.manual_seed(cfg.seed)  # the initial weights are part of what a seed reproduces
    model = FundusAutoencoder(**asdict(tc.model))
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.5, 0.9), weight_decay=0.0)
    use_gan = tc.loss.adversarial > 0
    disc = PatchDiscriminator() if use_gan else None
    opt_d = torch.optim.AdamW(disc.parameters(), lr=tc.lr, betas=(0.5, 0.9)) if use_gan else None
    loss_fn = AutoencoderLoss(tc.loss)
    ckpt_path = out / "checkpoint.pt"
    samples, sample_aperture = None, "none"
    if tc.sample_model:
        if acc.is_main_process:  # drawn once, by the first process; the others read them back
            samples, sample_aperture = sample_latents(cfg, metas, acc.device, progress)
        acc.wait_for_everyone()
        if not acc.is_main_process:
            samples, sample_aperture = sample_latents(cfg, metas, acc.device, progress)
    start = 0
    state = load_checkpoint(ckpt_path)
    init = _load_init(tc, model) if tc.init and state is None else None
    kept_scaling = None
    if tc.init and tc.steps == 0:  # the encoder is the init's: so are its latents and their scale
        source = init or FundusAutoencoder.from_pretrained(tc.init)
        kept_scaling = {"scaling_factor": source.config.scaling_factor, "shift_factor": source.config.shift_factor}
    if state is not None:
        start = int(state["step"])
        model.load_state_dict(state["model"])
        if start > tc.steps:  # saved inside the decoder phase: its optimizer holds the decoder only
            opt = _decoder_phase(model, tc)
        opt.load_state_dict(state["optimizer"])
        if use_gan and "disc" in state:
            disc.load_state_dict(state["disc"])
            opt_d.load_state_dict(state["optimizer_d"])
        elif use_gan:  # saved before the recipe set loss.adversarial: the discriminator joins fresh
            print(f"{ckpt_path}: saved without a discriminator; a fresh one joins from step {start}", file=sys.stderr)
    # the average starts from the weights training starts or resumes from (a checkpoint saved before
    # ema_decay was set has none: it starts there)
    ema = EMAModel(model.parameters(), decay=tc.ema_decay) if tc.ema_decay > 0 else None
    if ema is not None:
        if state is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        ema.to(acc.device)
    total = tc.steps + tc.decoder_steps
    model, opt = acc.prepare(model, opt)
    if use_gan:
        disc, opt_d = acc.prepare(disc, opt_d)
    writer = SummaryWriter(str(out / "logs")) if acc.is_main_process else None
    bar = tqdm(range(start, total), initial=start, total=total, desc="autoencoder", unit="step",
               disable=not progress or not acc.is_main_process)
    t0 = time.time()
    noise_std = None  # the raw latents' standard deviation, for latent_noise (the encoder is frozen by then)
    for step in bar:
        if step == tc.steps:  # the decoder phase begins
            opt = acc.prepare(_decoder_phase(acc.unwrap_model(model), tc))
        g = step_generator(cfg.seed, step, acc.process_index)
        x = _batch(images, tc.batch_size, tc.crop, g).to(acc.device)
        noise = None
        if tc.latent_noise > 0 and step >= tc.steps:
            if noise_std is None:
                noise_std = (1.0 / kept_scaling["scaling_factor"] if kept_scaling
                             else latent_std(acc.unwrap_model(model), images, acc.device))
            noise = _latent_noise(len(x), tc, acc.unwrap_model(model).downsampling_factor, noise_std, g)
        drawn = None
        if samples is not None:
            drawn = samples[torch.randint(len(samples), (tc.batch_size,), generator=g)].to(acc.device)
        with acc.autocast():
            # through the DDP wrapper, which averages gradients across processes only for its own
            # forward; in the decoder phase the frozen encoder records no graph
            recon, posterior, *decoded = model(x, generator=g, latent_noise=noise, latents=drawn)
            gan_on = use_gan and step >= tc.adversarial_start
            loss, terms = loss_fn(x, recon, posterior, disc if gan_on else None,
                                  last_layer=acc.unwrap_model(model).vae.decoder.conv_out.weight)
            fake = None  # the samples as the model would show them
            if decoded:
                fake = cut_to_disk(decoded[0]) if sample_aperture == "circle" else decoded[0]
            if fake is not None and gan_on:  # lambda: the reconstructions' adaptive weight, so both pull alike
                gan = -disc(fake).mean()
                loss = loss + tc.loss.adversarial * tc.sample_weight * terms.get("adversarial_lambda", 1.0) * gan
                terms["sample_adversarial"] = float(gan.detach())
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        if gan_on:
            with acc.autocast():
                d_loss = discriminator_hinge_loss(disc, x, recon if fake is None else torch.cat([recon, fake]))
            opt_d.zero_grad(set_to_none=True)
            acc.backward(d_loss)
            opt_d.step()
            terms["disc"] = float(d_loss.detach())
        if ema is not None:
            ema.step(acc.unwrap_model(model).parameters())
        if writer and step % cfg.log_every == 0:
            for k, v in terms.items():
                writer.add_scalar(f"autoencoder/{k}", v, step)
            writer.add_scalar("autoencoder/images_per_s",
                              (step + 1 - start) * tc.batch_size * acc.num_processes / (time.time() - t0), step)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", l1=f"{terms['l1']:.4f}")
        if tc.snapshot_every and (step + 1) % tc.snapshot_every == 0 and acc.is_main_process:
            # before the checkpoint: a run resumed from step N has its step_N/
            _save_folder(acc.unwrap_model(model), ema, kept_scaling, images, acc.device, out / f"step_{step + 1}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 in (tc.steps, total):
            acc.wait_for_everyone()
            if acc.is_main_process:
                extra = {"disc": acc.unwrap_model(disc).state_dict(), "optimizer_d": opt_d.state_dict()} if use_gan else {}
                if ema is not None:
                    extra["ema"] = ema.state_dict()
                save_checkpoint(ckpt_path, model=acc.unwrap_model(model).state_dict(), optimizer=opt.state_dict(),
                                step=step + 1, **extra)
    model = acc.unwrap_model(model)
    if acc.is_main_process:
        _save_folder(model, ema, kept_scaling, images, acc.device, final)
        (out / "train_config.json").write_text(json.dumps(asdict(tc), indent=2))
    if writer:
        writer.close()
    acc.wait_for_everyone()  # the other processes read the folder next
    return final


def _save_folder(model: FundusAutoencoder, ema: EMAModel | None, kept_scaling: dict | None,
                 images: torch.Tensor, device, folder: Path) -> None:
    """The weights (their moving average with ``ema``) as a diffusers model folder with its latent scaling:
    ``kept_scaling`` (the init's, whose encoder was kept) or measured on ``images``."""
    if folder.exists():  # a snapshot written before a stop: the same weights
        return
    net = copy.deepcopy(model)  # not a fresh model: its initialisation would draw from the global generator
    if ema is not None:
        ema.copy_to(net.parameters())
    net.to(device).eval()
    net.register_to_config(**(kept_scaling or {"scaling_factor": float(1.0 / latent_std(net, images, device))}))
    save_model_folder(net, folder)


def sample_latents(cfg: RecipeConfig, metas: list[dict], device, progress: bool = True) -> tuple[torch.Tensor, str]:
    """(raw latents, aperture): ``sample_n`` latents the model ``autoencoder.sample_model`` draws with its own
    settings at the crop's side, for a caption each of as many training records (picked, and seeded, by
    the recipe's seed). Drawn once into the run's autoencoder/sample_latents.safetensors, read back while
    its stamp (the model's weights and settings, the data's captions, count, seed, side) still holds; the
    model's encoder must be the init's, whose latents they are."""
    tc = cfg.autoencoder
    path = Path(cfg.out) / "autoencoder" / "sample_latents.safetensors"
    try:
        pipe = FundusGen.from_pretrained(tc.sample_model, device=str(device))
    except (OSError, ValueError, RuntimeError, FundusgenError) as e:
        raise FundusgenError(f"autoencoder.sample_model {tc.sample_model}: not a model folder "
                             f"({str(e).splitlines()[0][:160]})") from None
    what = latent_space_difference(pipe.autoencoder, FundusAutoencoder.from_pretrained(tc.init))
    if what:
        raise FundusgenError(f"autoencoder.sample_model {tc.sample_model}: {what} differs from autoencoder.init "
                             f"{tc.init}'s, so its samples are not latents of the decoder refined")
    networks = (pipe.autoencoder, pipe.denoiser, pipe.guide)
    stamp = {"model": [module_digest(m) for m in networks if m is not None], "settings": pipe.config,
             "data": data_digest(cfg.data), "n": tc.sample_n, "seed": cfg.seed, "side": tc.crop}
    if cache_is_current(path, stamp):
        with safe_open(str(path), "pt") as f:
            return f.get_tensor("latents"), f.metadata()["aperture"]
    g = torch.Generator().manual_seed(cfg.seed)
    chosen = torch.randperm(len(metas), generator=g)[:tc.sample_n].tolist()
    measured, _ = caption_sources(cfg.data)
    prompts = [captions_for(metas[i], 1, measured.get(metas[i]["key"]))[0][0] for i in chosen]
    seeds = torch.randint(2 ** 31, (len(prompts),), generator=g).tolist()
    zs = []
    for i in tqdm(range(0, len(prompts), 8), desc=f"sampling {tc.sample_model}", unit="batch", disable=not progress):
        zs.append(pipe(prompts[i:i + 8], seed=seeds[i:i + 8], resolution=tc.crop, batch_size=8,
                       output_type="latent").latents.cpu())
    latents, aperture = torch.cat(zs).contiguous(), pipe.config.get("aperture", "none")
    atomic_write_file(path, lambda tmp: save_file({"latents": latents}, str(tmp),
                                                  metadata={"stamp": stamp_text(stamp), "aperture": aperture}))
    return latents, aperture


def _latent_noise(n: int, tc, factor: int, latent_std: float, g: torch.Generator) -> torch.Tensor:
    """n latents' worth of Gaussian noise, each of a standard deviation drawn uniformly in
    [0, ``tc.latent_noise``] times the latents' own (``latent_std``, raw units)."""
    side = tc.crop // factor
    sigma = torch.rand(n, generator=g) * tc.latent_noise * latent_std
    return torch.randn((n, tc.model.latent_channels, side, side), generator=g) * sigma.view(-1, 1, 1, 1)


def _load_init(tc, model: FundusAutoencoder) -> FundusAutoencoder:
    """Copy the weights of the autoencoder folder ``tc.init`` into ``model`` (same architecture)."""
    try:
        init = FundusAutoencoder.from_pretrained(tc.init)
    except (OSError, ValueError) as e:
        raise FundusgenError(f"autoencoder.init {tc.init}: not an autoencoder folder ({str(e).splitlines()[0][:160]})") from None
    ours = {k: v for k, v in model.config.items() if k in asdict(tc.model)}
    theirs = {k: init.config[k] for k in ours}
    if {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in ours.items()} != \
            {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in theirs.items()}:
        raise FundusgenError(f"autoencoder.init {tc.init}: its architecture {theirs} differs from the recipe's "
                             f"autoencoder.model {ours}")
    model.load_state_dict({k: v.float() for k, v in init.state_dict().items()})
    return init


def _decoder_phase(model: FundusAutoencoder, tc) -> torch.optim.Optimizer:
    """Freeze the encoder side (encoder + quant_conv) and return the decoder's optimizer."""
    decoder = []
    for name, p in model.named_parameters():
        frozen = name.startswith(ENCODER_SIDE)
        p.requires_grad_(not frozen)
        if not frozen:
            decoder.append(p)
    return torch.optim.AdamW(decoder, lr=tc.decoder_lr, betas=(0.9, 0.99), weight_decay=0.0)


@torch.no_grad()
def latent_std(model: FundusAutoencoder, images: torch.Tensor, device, n: int = 256) -> float:
    """Standard deviation of latents over a fixed sample: the LDM scaling factor is 1/std."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(images), generator=g)[:n]
    zs = [model.encode(to_model_range(images[idx[i:i + 32]]).to(device)).mode() for i in range(0, len(idx), 32)]
    return float(torch.cat(zs).float().std())
