"""Train the flow-matching denoiser on cached latents: the three RetinaLogos steps in a row.

Stages run in order (pretrain on everything at low resolution, continue on the purified
subset, fine-tune at high resolution); the checkpoint records the stage and step, so a killed
run resumes exactly where it stopped, in the middle of any stage.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from fundusgen.errors import FundusgenError
from fundusgen.model.dit import DiT
from fundusgen.model.flow import RectifiedFlowLoss
from fundusgen.train.cache import caption_states
from fundusgen.train.checkpoint import (load_checkpoint, save_checkpoint, save_model_folder, stages_behind,
                                        step_generator)
from fundusgen.train.config import LOSS_MAPS, RecipeConfig, StageConfig
from fundusgen.train.distributed import (full_states, load_full_states, mixed_precision, new_accelerator,
                                         prepare, shard, uses_fsdp)


def subset_indices(cache: dict, stage: StageConfig, min_quality: float) -> torch.Tensor:
    """'all', or 'purified' (RetinaLogos step 2): images ``fundusgen purify`` kept (every image
    of a folder it has not run on) whose quality score is at least ``min_quality``."""
    n = cache["caption_ids"].shape[0]
    if stage.subset == "all":
        return torch.arange(n)
    if stage.subset == "purified":
        good = cache["quality"].cpu() >= min_quality
        kept = cache["purified"].cpu().bool() if "purified" in cache else torch.ones_like(good)  # older caches: none
        pool = torch.nonzero(good & kept).flatten()
        if len(pool) == 0:  # said before the first step, not as an empty draw inside it
            raise FundusgenError(f"stage {stage.name!r}: its 'purified' subset is empty: of the {n} training images "
                                 f"{int(kept.sum())} were kept by `fundusgen purify` and {int(good.sum())} have a "
                                 f"quality score of at least denoiser.min_quality {min_quality}")
        return pool
    raise FundusgenError(f"stage {stage.name!r}: unknown subset {stage.subset!r} (all | purified)")


def make_batch(cache: dict, info: dict, idx_pool: torch.Tensor, stage: StageConfig, dropout: float, flip: bool,
               g: torch.Generator, map_weights: dict[str, float] | None = None):
    """Latents, caption states, mask and loss weights for one step, all drawn from the step's generator.
    ``map_weights``: cached map name (a key of ``LOSS_MAPS``) -> its weight; the loss weights are None
    unless one is > 0, else 1 + the sum of weight x each latent cell's cached share of the map (vessel
    fraction; disc and macula), mirrored with its latents."""
    b = stage.batch_size
    dev = cache["caption_ids"].device  # draws come from the CPU generator wherever the cache lives
    idx = idx_pool[torch.randint(len(idx_pool), (b,), generator=g)].to(dev)
    x0 = cache[f"latents_{stage.resolution}"][idx].float()
    mirror = ((torch.rand(b, generator=g) < 0.5) if flip else torch.zeros(b, dtype=torch.bool)).to(dev)
    x0 = torch.where(mirror.view(-1, 1, 1, 1), x0.flip(-1), x0)
    variant = torch.randint(info["variants"], (b,), generator=g).to(dev)
    cap = cache["caption_ids"][idx, variant * 2 + mirror.long()].long()
    drop = (torch.rand(b, generator=g) < dropout).to(dev)
    cap = torch.where(drop, torch.full_like(cap, info["null_caption"]), cap)
    map_weights = map_weights or {}
    if set(map_weights) - set(LOSS_MAPS):
        raise ValueError(f"unknown loss maps {sorted(set(map_weights) - set(LOSS_MAPS))}: expected {list(LOSS_MAPS)}")
    weight = None
    for name in LOSS_MAPS:  # a fixed order: the same sum, bit for bit, however the dict was built
        w = map_weights.get(name, 0.0)
        if w > 0:
            share = cache[f"{name}_{stage.resolution}"][idx].float()
            share = torch.where(mirror.view(-1, 1, 1, 1), share.flip(-1), share)
            weight = (1.0 if weight is None else weight) + w * share
    return (x0, *caption_states(cache, cap), weight)


def lr_at(stage: StageConfig, step: int) -> float:
    """Linear warmup over ``stage.warmup`` steps, then constant or a half cosine to zero at the last step."""
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    if stage.decay == "cosine":
        done = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
        return stage.lr * 0.5 * (1.0 + math.cos(math.pi * done))
    return stage.lr


def train_denoiser(cfg: RecipeConfig, cache: dict, info: dict, text_dim: int, latent_channels: int,
                   progress: bool = True) -> Path:
    """Returns the folder of the trained denoiser's EMA weights (a diffusers model folder)."""
    dc = cfg.denoiser
    out = Path(cfg.out) / "denoiser"
    final = out / "final"
    ckpt_path = out / "checkpoint.pt"
    if (final / "config.json").exists() and not stages_behind(ckpt_path, len(dc.stages)):
        return final  # done; a recipe given more stages since goes on from the checkpoint
    for stage in dc.stages:  # every stage's inputs checked before the first one trains
        if f"latents_{stage.resolution}" not in cache:
            raise FundusgenError(f"stage {stage.name!r}: no cached latents at {stage.resolution} px")
        subset_indices(cache, stage, dc.min_quality)
        for maps, setting in LOSS_MAPS.items():
            if getattr(dc, setting) > 0 and f"{maps}_{stage.resolution}" not in cache:
                raise FundusgenError(f"stage {stage.name!r}: {setting} is set but no {maps} maps are cached at "
                                     f"{stage.resolution} px")
    acc = new_accelerator(mixed_precision=mixed_precision(cfg), gradient_accumulation_steps=dc.grad_accumulation)
    if any(s.train == "refiner" for s in dc.stages):
        if not dc.model.refiner_channels:
            raise FundusgenError("a stage trains the refiner ('train: refiner') but the denoiser has none: "
                                 "set denoiser.model.refiner_channels")
        if acc.num_processes > 1 and len({s.train for s in dc.stages}) > 1:
            raise FundusgenError("stages that train different parts ('train: all' and 'train: refiner') run in one "
                                 "process only (DDP fixes the trained parameters when it wraps the model): run "
                                 "them as separate recipes, the second with denoiser.init")
    torch.manual_seed(cfg.seed)  # the initial weights are part of what a seed reproduces
    model = DiT(in_channels=latent_channels, text_dim=text_dim, **asdict(dc.model))
    if dc.init and not ckpt_path.exists():
        load_init(model, dc.init)
    sharded = uses_fsdp(cfg, acc)
    if sharded:  # before the EMA and the optimizer, which then hold shards too
        model = shard(model.to(acc.device), [*model.blocks, *([model.refiner] if model.refiner is not None else [])])
    ema = EMAModel(model.parameters(), decay=dc.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=dc.stages[0].lr, weight_decay=0.0)
    loss_fn = RectifiedFlowLoss(dc.timestep_sampling)
    stage_i, step = 0, 0
    state = load_checkpoint(ckpt_path)
    if state is not None:
        load_full_states(model, ema, opt, state, sharded)
        stage_i, step = int(state["stage"]), int(state["step"])
    set_trainable(model, dc.stages[min(stage_i, len(dc.stages) - 1)])  # before DDP wraps it: DDP fixes what trains
    model, opt = prepare(acc, model, opt, sharded)
    ema.to(acc.device)
    if acc.device.type != "cpu":
        # batches gathered on the host kept an H100 at 32% busy (6 steps/s instead of 16); the
        # cache (latents and caption states, fp16) fits in accelerator memory many times over
        cache = {k: v.to(acc.device) for k, v in cache.items()}

    map_weights = {maps: getattr(dc, setting) for maps, setting in LOSS_MAPS.items()}

    def step_loss(stage, pool, g):
        batch = make_batch(cache, info, pool, stage, dc.caption_dropout, dc.flip, g, map_weights)
        x0, text, mask, weight = (t if t is None else t.to(acc.device) for t in batch)
        return loss_fn(model, x0, text, mask, g, stage.time_shift, weight)

    def save_ema(folder: Path) -> None:  # every process calls it: under FSDP the shards are gathered
        weights = ema_weights(acc.unwrap_model(model), ema, sharded)
        if acc.is_main_process:
            net = DiT.from_config(acc.unwrap_model(model).config)
            net.load_state_dict(weights)
            save_model_folder(net, folder)

    # each stage's EMA weights as a model folder of their own (``model_from_run(run, stage=NAME)``,
    # ``fundusgen export RUN DST --stage NAME``): a later stage, at another resolution or cut short
    # by a deadline, does not take the earlier one's model away
    history = run_stages(cfg, acc, model, ema, opt, ckpt_path, (stage_i, step), cache, step_loss, out, "denoiser",
                         progress, lambda stage: set_trainable(acc.unwrap_model(model), stage),
                         lambda index, stage: save_ema(stage_folder(out, index, stage)), sharded)
    save_ema(final)
    if acc.is_main_process:
        (out / "loss_history.json").write_text(json.dumps(history))
    acc.wait_for_everyone()  # the other processes read the folder next
    return final


def ema_weights(net, ema: EMAModel, sharded: bool) -> dict:
    """The EMA weights by name, whole and on the CPU (under FSDP gathered: every process calls it)."""
    shadows = [(s.full_tensor() if sharded else s).detach().cpu() for s in ema.shadow_params]
    weights = dict(zip((n for n, _ in net.named_parameters()), shadows))
    return {**weights, **{n: v.detach().cpu() for n, v in net.state_dict().items() if n not in weights}}  # + buffers


def stage_folder(out: Path, index: int, stage: StageConfig) -> Path:
    """Where a denoiser run keeps stage ``index``'s EMA weights (``out`` is the run's ``denoiser/``)."""
    return out / "stages" / f"{index + 1}_{stage.name}"


def set_trainable(model: DiT, stage: StageConfig) -> None:
    """What a stage trains: everything, or ('train: refiner') the refiner alone, the transformer frozen,
    so that its forward pass records no graph and costs no backward."""
    for name, p in model.named_parameters():
        p.requires_grad_(stage.train == "all" or name.startswith("refiner."))


def load_init(model: DiT, folder: str) -> None:
    """Copy a trained denoiser folder's weights into ``model``. Only a refiner may be missing from
    the folder (a refiner added to a trained transformer); any other mismatch is an error."""
    try:
        trained = DiT.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise FundusgenError(f"denoiser.init {folder}: not a denoiser folder ({str(e).splitlines()[0][:160]})") from None
    ours, theirs = model.state_dict(), trained.state_dict()
    wrong = [k for k in ours if k not in theirs and not k.startswith("refiner.")]
    wrong += [k for k in theirs if k not in ours or theirs[k].shape != ours[k].shape]
    if wrong:
        raise FundusgenError(f"denoiser.init {folder}: its architecture differs from the recipe's "
                             f"(e.g. {wrong[0]!r}); only a refiner may be added")
    model.load_state_dict(theirs, strict=False)


def run_stages(cfg: RecipeConfig, acc: Accelerator, model, ema: EMAModel, opt, ckpt_path: Path,
               start: tuple[int, int], cache: dict, step_loss, out: Path, tag: str, progress: bool,
               on_stage=None, on_stage_end=None, sharded: bool = False) -> list[float]:
    """The recipe's stages from (stage, step) on: learning rate, accumulation, clipping, EMA, logs and
    exact-resume checkpoints. ``step_loss(stage, pool, g)`` draws the step's batch from ``g`` and
    returns its loss; it is all that differs between trainers (``on_stage(stage)``, when given, is
    called as each stage starts; ``on_stage_end(index, stage)`` on every process as each ends,
    before the checkpoint that moves on to the next; ``sharded``: the model, EMA and optimizer are
    FSDP shards, gathered whole for each checkpoint). Returns the losses of this run."""
    dc = cfg.denoiser
    stage_i, step = start
    writer = SummaryWriter(str(out / "logs")) if acc.is_main_process else None
    history = []
    offset = sum(s.steps for s in dc.stages[:stage_i])
    while stage_i < len(dc.stages):
        stage = dc.stages[stage_i]
        if on_stage is not None:
            on_stage(stage)
        pool = subset_indices(cache, stage, dc.min_quality)
        bar = tqdm(range(step, stage.steps), initial=step, total=stage.steps, unit="step",
                   desc=f"{tag} {stage_i + 1}/{len(dc.stages)} {stage.name} {stage.resolution}px",
                   disable=not progress or not acc.is_main_process)
        t0, first = time.time(), step
        for step in bar:
            g = step_generator(cfg.seed, offset + step, acc.process_index)
            for group in opt.param_groups:
                group["lr"] = lr_at(stage, step)
            with acc.accumulate(model), acc.autocast():
                loss = step_loss(stage, pool, g)
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(model.parameters(), dc.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            ema.step(acc.unwrap_model(model).parameters())
            history.append(loss.detach())  # read back only every log_every steps: each read stalls a GPU
            last = step + 1 == stage.steps
            if step % cfg.log_every == 0 or last:
                value = float(history[-1])
                bar.set_postfix(loss=f"{value:.4f}")
                if writer:
                    writer.add_scalar(f"{tag}/{stage.name}/loss", value, offset + step)
                    writer.add_scalar(f"{tag}/images_per_s", (step + 1 - first) * stage.batch_size * acc.num_processes
                                      / (time.time() - t0),
                                      offset + step)
            if (step + 1) % cfg.checkpoint_every == 0 or last:
                acc.wait_for_everyone()
                if last and on_stage_end is not None:
                    on_stage_end(stage_i, stage)
                if sharded or acc.is_main_process:  # gathering shards takes every process; else the main one's
                    weights, averaged, optimizer = full_states(acc.unwrap_model(model), ema, opt, sharded)
                if acc.is_main_process:
                    nxt = (stage_i + 1, 0) if last else (stage_i, step + 1)
                    save_checkpoint(ckpt_path, model=weights, ema=averaged, optimizer=optimizer,
                                    stage=nxt[0], step=nxt[1])
        offset += stage.steps
        stage_i, step = stage_i + 1, 0
    if writer:
        writer.close()
    return torch.stack(history).float().cpu().tolist() if history else []
