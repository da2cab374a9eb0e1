"""``fundusgen train --config recipe.yaml``: autoencoder -> cached latents -> denoiser stages -> model folder.

Each part is skipped when its output exists, and each resumes from its checkpoint, so the same
command continues a killed run.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from fundusgen.errors import FundusgenError
from fundusgen.model.autoencoder import FundusAutoencoder, latent_space_difference
from fundusgen.model.dit import DiT
from fundusgen.model.pipeline import MODEL_INDEX, FundusGen, check_guide
from fundusgen.model.text_encoder import TextEncoder
from fundusgen.train.autoencoder import train_autoencoder
from fundusgen.train.cache import (build_anatomy_maps, build_cache, build_network_maps, dr_labelled,
                                   gate_lesion_maps, load_cache, network_maps_needed)
from fundusgen.train.checkpoint import load_checkpoint, stages_behind
from fundusgen.train.config import RecipeConfig, recipe_from_dict
from fundusgen.train.denoiser import stage_folder, train_denoiser
from fundusgen.train.distributed import process_state
from fundusgen.train.finetune_diffusers import finetune_pipeline


def train(cfg: RecipeConfig, progress: bool = True) -> Path:
    if cfg.base_pipeline:
        return finetune_pipeline(cfg, progress)
    out = Path(cfg.out)
    state = process_state()  # this process's rank and device under `accelerate launch`; one process otherwise
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.json").write_text(json.dumps(asdict(cfg), indent=2))
    ae_dir = train_autoencoder(cfg, progress)
    if not cfg.denoiser.stages:  # an autoencoder-only recipe (e.g. a probe another recipe starts from)
        return ae_dir
    vae = FundusAutoencoder.from_pretrained(str(ae_dir)).to(state.device).eval()
    text_encoder = TextEncoder(cfg.text_encoder, device=state.device)
    resolutions = sorted({s.resolution for s in cfg.denoiser.stages})
    with state.main_process_first():  # one process makes the caches, the others then read them
        shown = progress and state.is_main_process
        cache_path = build_cache(cfg.data, out, vae, text_encoder, resolutions, cfg.denoiser.caption_variants, shown,
                                 exclude_datasets=cfg.exclude_datasets)
        cache, info = load_cache(cache_path)
        sides = {r: cache[f"latents_{r}"].shape[-1] for r in resolutions}
        # the maps that need the vessel network come from one pass over the images
        kinds = network_maps_needed(cfg.denoiser)
        if kinds:
            for path in build_network_maps(cfg.data, out, info["keys"], sides, kinds, shown).values():
                cache.update(load_file(path))
            if cfg.denoiser.lesion_gate == "dr":
                gate_lesion_maps(cache, dr_labelled(cfg.data, info["keys"]))
        if cfg.denoiser.anatomy_weight > 0:
            cache.update(load_file(build_anatomy_maps(cfg.data, out, info["keys"], sides)))
    dit_dir = train_denoiser(cfg, cache, info, text_encoder.dim, vae.config.latent_channels, progress)
    model_dir = out / "model"
    if state.is_main_process:
        _assemble(out, cfg, vae.cpu(), DiT.from_pretrained(str(dit_dir)), text_encoder,
                  max(resolutions)).save_pretrained(model_dir)
    state.wait_for_everyone()
    return model_dir


def _assemble(out: Path, cfg: RecipeConfig, vae: FundusAutoencoder, dit: DiT, text_encoder: TextEncoder,
              resolution: int, shift: float | None = None) -> FundusGen:
    # sample with the time shift the denoiser last trained with at this resolution
    if shift is None:
        shift = next((s.time_shift for s in reversed(cfg.denoiser.stages) if s.resolution == resolution), 1.0)
    return FundusGen(vae, dit, text_encoder, {
        "name": out.name, "text_encoder": cfg.text_encoder, "resolution": resolution,
        "steps": 25, "guidance": 4.0, "sampler": "euler", "time_shift": float(shift),
        "aperture": cfg.aperture})


def model_from_run(run: str | Path, stage: str | None = None) -> FundusGen:
    """The model a training run folder holds now: its finished ``model/``, or, while the denoiser is
    still training, the trained autoencoder with the EMA weights of the denoiser's latest checkpoint
    at the highest resolution trained so far. A run stopped at a deadline (a GPU lease, a job's wall
    time) still gives a usable model; it resumes as before.

    ``stage``: the model as that stage of the recipe left it (its EMA weights at its end, at its
    resolution), kept when the stage ended, whatever the stages after it did."""
    run = Path(run)
    try:
        cfg = recipe_from_dict(json.loads((run / "recipe.json").read_text()), str(run / "recipe.json"))
    except (OSError, ValueError) as e:
        if (run / "model" / "model_index.json").is_file() and stage is None:
            return FundusGen.from_pretrained(run / "model")
        raise FundusgenError(f"{run}: not a training run folder (no readable recipe.json: {e})") from None
    stages = cfg.denoiser.stages
    if stage is not None:
        return _stage_model(run, cfg, stage)
    ckpt = run / "denoiser" / "checkpoint.pt"
    # a finished run whose recipe has gained a stage holds the old model/ and final/ until that
    # stage ends: then the checkpoint is the newer one
    continuing = stages_behind(ckpt, len(stages))
    if (run / "model" / "model_index.json").is_file() and not continuing:
        return FundusGen.from_pretrained(run / "model")
    if not (run / "autoencoder" / "final" / "config.json").is_file():
        raise FundusgenError(f"{run}: its autoencoder has not finished training yet: nothing to export")
    vae = FundusAutoencoder.from_pretrained(str(run / "autoencoder" / "final")).eval()
    text_encoder = TextEncoder(cfg.text_encoder)
    if (run / "denoiser" / "final" / "config.json").is_file() and not continuing:
        return _assemble(run, cfg, vae, DiT.from_pretrained(str(run / "denoiser" / "final")), text_encoder,
                         max(s.resolution for s in stages))
    state = load_checkpoint(ckpt)
    if state is None:
        raise FundusgenError(f"{run}: the denoiser has no checkpoint yet: nothing to export")
    stage, step = int(state["stage"]), int(state["step"])
    trained = stages[:stage + (1 if step else 0)]
    dit = DiT(in_channels=vae.config.latent_channels, text_dim=text_encoder.dim, **asdict(cfg.denoiser.model))
    for p, shadow in zip(dit.parameters(), state["ema"]["shadow_params"]):
        p.data.copy_(shadow)
    pipe = _assemble(run, cfg, vae, dit.eval(), text_encoder, max(s.resolution for s in trained))
    # which checkpoint this is, in the model folder: a run cut by a deadline cannot say it later
    last = trained[-1]
    pipe.config["checkpoint"] = {"stage": last.name, "stage_index": len(trained) - 1, "step": step or last.steps,
                                 "of": last.steps}
    return pipe


def _stage_model(run: Path, cfg: RecipeConfig, name: str) -> FundusGen:
    stages = cfg.denoiser.stages
    index = next((i for i, s in enumerate(stages) if s.name == name), None)
    if index is None:
        raise FundusgenError(f"{run}: its recipe has no stage {name!r} (stages: {', '.join(s.name for s in stages)})")
    stage = stages[index]
    folder = stage_folder(run / "denoiser", index, stage)
    if not (folder / "config.json").is_file():
        raise FundusgenError(f"{run}: stage {name!r} has not ended yet (no {folder})")
    vae = FundusAutoencoder.from_pretrained(str(run / "autoencoder" / "final")).eval()
    pipe = _assemble(run, cfg, vae, DiT.from_pretrained(str(folder)).eval(), TextEncoder(cfg.text_encoder),
                     stage.resolution, stage.time_shift)
    pipe.config["checkpoint"] = {"stage": name, "stage_index": index, "step": stage.steps, "of": stage.steps}
    return pipe


def _denoiser_folder(model: Path) -> DiT:
    """The denoiser of a model folder, or one clear error."""
    try:
        return DiT.from_pretrained(str(model / "denoiser"))
    except (OSError, ValueError, RuntimeError) as e:
        raise FundusgenError(f"{model}: no loadable denoiser/ ({str(e).splitlines()[0][:200]})") from None


def soup_weights(n: int, weights: list[float] | None) -> list[float]:
    """The shares of ``n`` merged models (``weights``, or a uniform soup: 1 / (n + 1) each), checked:
    each 0-1 and together at most 1, the rest being the model's own."""
    weights = [1.0 / (n + 1)] * n if not weights else list(weights)
    if len(weights) != n:
        raise FundusgenError(f"--weight: give one per --merge model ({n}), or none for a uniform soup "
                             f"(got {len(weights)})")
    if any(not 0.0 <= w <= 1.0 for w in weights) or sum(weights) > 1.0 + 1e-9:
        raise FundusgenError(f"--weight must be 0-1 each and at most 1 together (got {', '.join(map(str, weights))})")
    return weights


def _merge_parts(folder: Path) -> tuple[FundusAutoencoder, DiT]:
    """The autoencoder and denoiser of a model or run folder to merge: a model folder's alone, since
    its whole pipeline would load a text encoder the merge does not use."""
    if (folder / "recipe.json").is_file():
        pipe = model_from_run(folder)
        return pipe.autoencoder, pipe.denoiser
    if not (folder / MODEL_INDEX).is_file():
        raise FundusgenError(f"{folder}: not a fundusgen model folder (no {MODEL_INDEX}) nor a training run folder")
    try:
        autoencoder = FundusAutoencoder.from_pretrained(str(folder / "autoencoder"))
    except (OSError, ValueError, RuntimeError) as e:
        raise FundusgenError(f"{folder}: no loadable autoencoder/ ({str(e).splitlines()[0][:200]})") from None
    return autoencoder, _denoiser_folder(folder)


def swap_decoder(pipe: FundusGen, folder: Path) -> None:
    """Give ``pipe`` the autoencoder in ``folder``, whose encoder side must be ``pipe``'s own (to
    float16 rounding) and its latent scaling the same: the denoiser learned those latents, so only a
    decoder refined on them may replace the one it has."""
    try:
        new = FundusAutoencoder.from_pretrained(str(folder))
    except (OSError, ValueError, RuntimeError) as e:
        raise FundusgenError(f"--autoencoder {folder}: not an autoencoder folder ({str(e).splitlines()[0][:200]})") from None
    what = latent_space_difference(pipe.autoencoder, new)
    if what:
        raise FundusgenError(f"--autoencoder {folder}: {what} differs from the model's, so its latents are not the "
                             "ones the denoiser learned (refine the decoder alone: autoencoder.init with steps: 0)")
    pipe.autoencoder = new.to(pipe.autoencoder.device).eval()


def merge_weights(pipe: FundusGen, others: list[tuple[FundusAutoencoder, DiT]], weights: list[float],
                  where: list) -> None:
    """Weight-space averaging of fine-tunes of one model, in place on ``pipe``'s denoiser:
    theta = (1 - sum_i w_i) theta_pipe + sum_i w_i theta_i; one other model is WiSE-FT's
    interpolation (Wortsman et al. 2022), several a model soup (Wortsman et al. 2022). All must
    share the autoencoder, since their denoisers must have learned the same latents."""
    ours, a = pipe.autoencoder.state_dict(), pipe.denoiser.state_dict()
    merged = {k: (1.0 - sum(weights)) * v.float() for k, v in a.items() if v.is_floating_point()}
    for (autoencoder, denoiser), w, name in zip(others, weights, where):
        theirs, b = autoencoder.state_dict(), denoiser.state_dict()
        if ours.keys() != theirs.keys() or any(not torch.equal(ours[k].float(), theirs[k].float()) for k in ours):
            raise FundusgenError(f"{name}: its autoencoder differs from the model's; only fine-tunes of one model "
                                 "(same autoencoder, so the same latents) can be merged")
        if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
            raise FundusgenError(f"{name}: its denoiser has another architecture than the model's (weights differ "
                                 "in names or shapes); only fine-tunes of one model can be merged")
        for k in merged:
            merged[k] += w * b[k].float()
    pipe.denoiser.load_state_dict({k: merged[k].to(v.dtype) if k in merged else v for k, v in a.items()})


def export_fp16(src: str | Path, dst: str | Path, guide: str | Path | None = None, stage: str | None = None,
                merge: list[str | Path] = (), weights: list[float] | None = None,
                autoencoder: str | Path | None = None) -> dict:
    """Copy a model folder, or what a training run folder holds now (``model_from_run``; with
    ``stage``, as that stage left it), with its weights in float16 (half the size; loads back as
    float32). Returns the written model's config (with ``checkpoint``, the stage and step, when it
    was taken from a run still training or from one of its stages).

    ``guide``: a model or run folder whose denoiser becomes the copy's guide network for
    autoguidance (``generate --autoguidance W``), typically an earlier export of the same run.

    ``merge``: model or run folders, fine-tunes of the same model, whose denoiser weights are averaged
    with the copy's (``merge_weights``; ``weights``: their shares, by default a uniform soup).

    ``autoencoder``: an autoencoder folder with the copy's encoder and a refined decoder (``fundusgen
    train --only autoencoder`` with ``steps: 0``) that replaces the copy's (``swap_decoder``)."""
    load = lambda p: model_from_run(p) if (Path(p) / "recipe.json").is_file() else FundusGen.from_pretrained(p)
    if weights and not merge:
        raise FundusgenError("--weight is the share of a --merge model: give --merge FOLDER too")
    weights = soup_weights(len(merge), weights)  # checked before anything loads
    if stage is not None and not (Path(src) / "recipe.json").is_file():
        raise FundusgenError(f"--stage {stage}: {src} is not a training run folder (no recipe.json)")
    pipe = model_from_run(src, stage) if stage is not None else load(Path(src))
    if merge:
        merge_weights(pipe, [_merge_parts(Path(m)) for m in merge], weights, merge)
        pipe.config["merged"] = [{"with": str(m), "weight": w} for m, w in zip(merge, weights)]
    if autoencoder is not None:
        swap_decoder(pipe, Path(autoencoder))
        pipe.config["autoencoder_from"] = str(autoencoder)
    if guide is not None:
        # a model folder's denoiser alone: loading its whole pipeline would load a second text encoder
        pipe.guide = (load(Path(guide)).denoiser if (Path(guide) / "recipe.json").is_file()
                      else _denoiser_folder(Path(guide))).eval()
        check_guide(pipe.denoiser, pipe.guide, guide)
    for part in (pipe.autoencoder, pipe.denoiser, pipe.guide):
        if part is not None:
            part.half()
    pipe.save_pretrained(dst)
    return pipe.config
