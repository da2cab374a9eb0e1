"""Fine-tune an existing diffusers text-to-image pipeline on a prepared fundus folder.

The pipeline's own VAE and text encoder(s) stay frozen: latents and caption states are computed
once and cached (as cache.py does for our own model), and only the denoiser trains, through the
recipe's stages, with the pipeline's own noise schedule and objective, caption dropout, EMA and
checkpoints that resume exactly after a kill. The result is the whole pipeline again, with the
fine-tuned (EMA) denoiser, loadable with ``DiffusionPipeline.from_pretrained``.

Families: Stable Diffusion 1.x/2.x and SDXL (UNet2DConditionModel; SDXL with its pooled text
embeddings and size/crop time ids) and SD3 (flow-matching transformer). Others are refused.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from fundusgen.errors import FundusgenError
from fundusgen.model.flow import sample_t, shift_t
from fundusgen.train.cache import (cache_is_current, caption_sources, captions_for, data_digest, load_cache,
                                   module_digest, save_cache)
from fundusgen.train.checkpoint import load_checkpoint
from fundusgen.train.config import LOSS_MAPS, RecipeConfig
from fundusgen.train.data import load_images, resize, to_model_range
from fundusgen.train.denoiser import ema_weights, make_batch, run_stages
from fundusgen.train.distributed import (block_units, load_full_states, mixed_precision, new_accelerator, prepare,
                                         shard, uses_fsdp)

FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl", "StableDiffusion3Pipeline": "sd3"}
SUPPORTED = "StableDiffusionPipeline (SD 1.x/2.x), StableDiffusionXLPipeline (SDXL), StableDiffusion3Pipeline (SD3)"

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NoisePrediction:
    """DDPM training (Ho et al. 2020): x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, t uniform, with a_t
    the scheduler's cumulative alpha and the target its ``prediction_type``: eps (epsilon),
    v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 (v_prediction, Salimans & Ho 2022) or x_0 (sample)."""

    def __init__(self, scheduler_config: dict):
        scheduler = DDPMScheduler.from_config(scheduler_config)  # its betas, whatever sampler the pipeline ships
        self.alphas_cumprod = scheduler.alphas_cumprod
        self.prediction = scheduler.config.prediction_type
        if self.prediction not in ("epsilon", "v_prediction", "sample"):
            raise FundusgenError(f"scheduler prediction_type {self.prediction!r} is not supported (epsilon | v_prediction | sample)")

    def __call__(self, denoise: Denoise, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        t = torch.randint(len(self.alphas_cumprod), (x0.shape[0],), generator=g)
        eps = torch.randn(x0.shape, generator=g).to(x0)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(x0)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        if self.prediction == "epsilon":
            target = eps
        elif self.prediction == "v_prediction":
            target = a.sqrt() * eps - (1 - a).sqrt() * x0
        else:
            target = x0
        return ((denoise(x_t, t.to(x0.device)).float() - target.float()) ** 2).mean()


class FlowMatching:
    """Rectified flow as SD3 trains (Esser et al. 2024): x_t = (1 - s) x_0 + s eps, target eps - x_0,
    s = shift u / (1 + (shift - 1) u) with u from the recipe's timestep sampling and the
    scheduler's ``shift``; the network sees the timestep 1000 s."""

    def __init__(self, scheduler_config: dict, timestep_sampling: str):
        self.shift = float(scheduler_config.get("shift", 1.0))
        self.steps = int(scheduler_config.get("num_train_timesteps", 1000))
        self.timestep_sampling = timestep_sampling

    def __call__(self, denoise: Denoise, x0: torch.Tensor, g: torch.Generator, stage_shift: float = 1.0) -> torch.Tensor:
        # a recipe stage's time_shift composes with the scheduler's: shifts multiply the odds s / (1 - s)
        u = sample_t(x0.shape[0], g, self.timestep_sampling)
        s = shift_t(u, self.shift * stage_shift).to(x0)
        eps = torch.randn(x0.shape, generator=g).to(x0)
        x_t = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * eps
        return ((denoise(x_t, s * self.steps).float() - (eps - x0).float()) ** 2).mean()


def objective_for(scheduler, timestep_sampling: str) -> NoisePrediction | FlowMatching:
    """The pipeline's own objective: flow matching for FlowMatch schedulers, else its prediction_type."""
    if "FlowMatch" in type(scheduler).__name__:
        return FlowMatching(scheduler.config, timestep_sampling)
    return NoisePrediction(scheduler.config)


def load_pipeline(path: str | Path) -> tuple[DiffusionPipeline, str]:
    """The pipeline and its family ('sd', 'sdxl', 'sd3'); unsupported folders fail before any weights load."""
    folder = Path(path)
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        raise FundusgenError(f"{folder}: not a diffusers pipeline folder (no readable model_index.json)") from None
    name = index.get("_class_name")
    if name not in FAMILIES:
        raise FundusgenError(f"{folder}: {name} cannot be fine-tuned here (supported: {SUPPORTED})")
    # components saved as absent (SD3 without its T5, SD without a safety checker) load as absent
    absent = {k: None for k, v in index.items() if isinstance(v, list) and v[:1] == [None]}
    try:
        pipe = DiffusionPipeline.from_pretrained(str(folder), use_safetensors=True, **absent)
    except (OSError, ValueError, TypeError) as e:
        raise FundusgenError(f"{folder}: cannot load the pipeline ({str(e).splitlines()[0][:160]})") from None
    return pipe, FAMILIES[name]


def _denoiser(pipe: DiffusionPipeline, family: str) -> tuple[str, torch.nn.Module]:
    name = "transformer" if family == "sd3" else "unet"
    return name, getattr(pipe, name)


def _size_multiple(pipe: DiffusionPipeline, family: str) -> int:
    _, net = _denoiser(pipe, family)
    per_latent = net.config.patch_size if family == "sd3" else 2 ** (len(net.config.block_out_channels) - 1)
    return pipe.vae_scale_factor * per_latent


def _too_long(pipe: DiffusionPipeline, captions: list[str]) -> None:
    """Captions over a CLIP tokenizer's limit are cut by the pipeline, as at generation: say so once."""
    for name in ("tokenizer", "tokenizer_2"):
        tok = getattr(pipe, name, None)
        if tok is None:
            continue
        lengths = [len(tok(c).input_ids) for c in captions]
        over = sum(n > tok.model_max_length for n in lengths)
        if over:
            print(f"fundusgen train: {over} of {len(captions)} captions exceed the {tok.model_max_length}-token limit "
                  f"of the pipeline's {name} and are cut (longest: {max(lengths)} tokens)", file=sys.stderr)


@torch.no_grad()
def build_pipeline_cache(data: str | Path, out: Path, pipe: DiffusionPipeline, family: str, resolutions: list[int],
                         variants: int, progress: bool = True, batch: int = 16,
                         exclude_datasets: list[str] | tuple[str, ...] = ()) -> Path:
    """cache.py's layout (latents per resolution, deduplicated caption states, caption ids, quality)
    with the pipeline's VAE and prompt encoding, plus pooled embeddings for SDXL and SD3."""
    path = out / "cache.safetensors"
    stamp = {"data": data_digest(data), "pipeline": str(getattr(pipe, "name_or_path", "")),
             "autoencoder": module_digest(pipe.vae), "resolutions": sorted(resolutions), "variants": variants,
             "exclude_datasets": sorted(exclude_datasets)}
    if cache_is_current(path, stamp):
        return path
    images, metas = load_images(data, "train", progress, exclude_datasets)
    vae, device = pipe.vae, pipe.device
    scale, shift = vae.config.scaling_factor, vae.config.get("shift_factor") or 0.0
    tensors: dict[str, torch.Tensor] = {}
    for res in resolutions:
        zs = []
        for i in tqdm(range(0, len(images), batch), desc=f"latents {res}px", unit="batch", disable=not progress):
            x = resize(to_model_range(images[i:i + batch]), res).to(device)
            zs.append(((vae.encode(x).latent_dist.mean - shift) * scale).half().cpu())
        tensors[f"latents_{res}"] = torch.cat(zs)
    measured, kept = caption_sources(data)
    pairs = [captions_for(m, variants, measured.get(m["key"])) for m in metas]
    unique = sorted({c for p in pairs for pair in p for c in pair} | {""})
    lookup = {c: i for i, c in enumerate(unique)}
    _too_long(pipe, unique)
    extra = {"prompt_2": None, "prompt_3": None} if family == "sd3" else {}
    states, pooled = [], []
    for i in tqdm(range(0, len(unique), batch), desc="caption states", unit="batch", disable=not progress):
        encoded = pipe.encode_prompt(prompt=unique[i:i + batch], device=device, num_images_per_prompt=1,
                                     do_classifier_free_guidance=False, **extra)
        states.append(encoded[0].half().cpu())
        if family != "sd":
            pooled.append(encoded[2].half().cpu())
    tensors["text"] = torch.cat(states)
    if pooled:
        tensors["pooled"] = torch.cat(pooled)
    if pipe.config.get("force_zeros_for_empty_prompt"):  # SDXL's unconditional input at generation is zeros
        for k in ("text", "pooled"):
            tensors[k][lookup[""]] = 0
    tensors["caption_ids"] = torch.tensor([[lookup[c] for pair in p for c in pair] for p in pairs], dtype=torch.int32)
    return save_cache(path, tensors, metas, unique, variants, kept, stamp)


def _conditioned(net: torch.nn.Module, family: str, text: torch.Tensor, pooled: torch.Tensor | None,
                 resolution: int) -> Denoise:
    """The denoiser as a function of (x_t, t) for one batch of captions."""
    if family == "sd3":
        return lambda x, t: net(hidden_states=x, timestep=t, encoder_hidden_states=text, pooled_projections=pooled).sample
    extra = {}
    if family == "sdxl":  # micro-conditioning (Podell et al. 2023): original size, crop corner, target size
        ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], device=text.device)
        extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids.expand(text.shape[0], 6).to(text)}}
    return lambda x, t: net(x, t, encoder_hidden_states=text, **extra).sample


def finetune_pipeline(cfg: RecipeConfig, progress: bool = True) -> Path:
    """Fine-tune ``cfg.base_pipeline``'s denoiser; returns the folder of the fine-tuned pipeline."""
    dc = cfg.denoiser
    out = Path(cfg.out)
    final = out / "pipeline"
    if (final / "model_index.json").exists():
        return final
    for setting in LOSS_MAPS.values():  # its objectives (epsilon or flow) take no spatial weight yet
        if getattr(dc, setting) > 0:
            raise FundusgenError(f"denoiser.{setting} applies to fundusgen's own denoiser, not to a fine-tuned "
                                 "diffusers pipeline (base_pipeline): leave it at 0")
    pipe, family = load_pipeline(cfg.base_pipeline)
    multiple = _size_multiple(pipe, family)
    flow = "FlowMatch" in type(pipe.scheduler).__name__
    for stage in dc.stages:
        if stage.time_shift != 1.0 and not flow:
            raise FundusgenError(f"stage {stage.name!r}: time_shift needs a flow-matching pipeline; "
                                 f"{type(pipe.scheduler).__name__} predicts noise (leave time_shift at 1)")
        if stage.resolution % multiple:
            raise FundusgenError(f"stage {stage.name!r}: resolution {stage.resolution} is not a multiple of {multiple}, "
                                 f"which this pipeline needs")
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(asdict(cfg), indent=2))
    acc = new_accelerator(mixed_precision=mixed_precision(cfg), gradient_accumulation_steps=dc.grad_accumulation)
    pipe.to(acc.device)
    with acc.main_process_first():  # one process writes the cache, the others read it
        cache_path = build_pipeline_cache(cfg.data, out, pipe, family, sorted({s.resolution for s in dc.stages}),
                                          dc.caption_variants, progress and acc.is_main_process,
                                          exclude_datasets=cfg.exclude_datasets)
    cache, info = load_cache(cache_path)
    name, model = _denoiser(pipe, family)
    for part in pipe.components.values():  # frozen, and off the accelerator once their work is cached
        if isinstance(part, torch.nn.Module) and part is not model:
            part.requires_grad_(False).to("cpu")
    model.train().requires_grad_(True)
    plain_cls, config = type(model), model.config
    sharded = uses_fsdp(cfg, acc)
    if sharded:  # its blocks sharded over the processes (distributed.py), before the EMA and optimizer
        model = shard(model, block_units(model))
    objective = objective_for(pipe.scheduler, dc.timestep_sampling)
    ema = EMAModel(model.parameters(), decay=dc.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=dc.stages[0].lr, weight_decay=0.0)
    ckpt_path = out / "checkpoint.pt"
    stage_i, step = 0, 0
    state = load_checkpoint(ckpt_path)
    if state is not None:
        load_full_states(model, ema, opt, state, sharded)
        stage_i, step = int(state["stage"]), int(state["step"])
    model, opt = prepare(acc, model, opt, sharded)
    ema.to(acc.device)
    # make_batch draws images, flips, caption variants and dropout from the step's generator; given
    # caption ids as its 'text' table it returns the drawn ids, so pooled embeddings follow the same draw
    n_captions = cache["text"].shape[0]
    id_table = {**cache, "text": torch.arange(n_captions).view(-1, 1), "text_mask": torch.ones(n_captions, 1)}
    def step_loss(stage, pool, g):
        x0, ids, _, _ = make_batch(id_table, info, pool, stage, dc.caption_dropout, dc.flip, g)
        cap = ids[:, 0].long()
        text = cache["text"][cap].float().to(acc.device)
        pooled = cache["pooled"][cap].float().to(acc.device) if "pooled" in cache else None
        shift = (stage.time_shift,) if flow else ()  # refused above for noise prediction unless 1
        return objective(_conditioned(model, family, text, pooled, stage.resolution), x0.to(acc.device), g, *shift)

    history = run_stages(cfg, acc, model, ema, opt, ckpt_path, (stage_i, step), cache, step_loss, out, "finetune",
                         progress, sharded=sharded)
    weights = ema_weights(acc.unwrap_model(model), ema, sharded) if sharded else None  # gathered by every process
    if acc.is_main_process:
        if sharded:
            net = plain_cls.from_config(config)
            net.load_state_dict(weights)
        else:
            net = acc.unwrap_model(model)
            ema.copy_to(net.parameters())
        setattr(pipe, name, net.eval().to("cpu"))
        tmp = out / ".pipeline.tmp"  # written aside and renamed: a kill never leaves a half-saved pipeline
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        os.replace(tmp, final)
        (out / "loss_history.json").write_text(json.dumps(history))
    acc.wait_for_everyone()  # the pipeline is whole before any process returns it
    return final
