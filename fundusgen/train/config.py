"""Training recipes: dataclasses with working defaults, loaded from YAML with strict key checks.

A typo'd key is an error naming the file, the key, and the closest valid key, never silently
ignored (a silently ignored `lerning_rate` costs a training run).
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fundusgen.errors import FundusgenError
from fundusgen.model.autoencoder import AutoencoderLossWeights
from fundusgen.model.dit import REFINER_GROUPS
from fundusgen.model.pipeline import APERTURES

PARALLEL = ("ddp", "fsdp")  # how several processes share the denoiser (RecipeConfig.parallel)


@dataclass
class AutoencoderModelConfig:
    latent_channels: int = 4
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    layers_per_block: int = 1
    norm_num_groups: int = 16
    patch: int = 2


@dataclass
class AutoencoderTrainConfig:
    model: AutoencoderModelConfig = field(default_factory=AutoencoderModelConfig)
    loss: AutoencoderLossWeights = field(default_factory=AutoencoderLossWeights)
    steps: int = 2000
    batch_size: int = 8         # per process, as the stages' batch_size
    crop: int = 128            # trained on random crops (fully convolutional), used at any size
    resolution: int = 0        # > 0: images resized to this side first (the model's resolution, from a
                               # folder prepared larger); 0: as prepared
    lr: float = 2e-4
    adversarial_start: int = 0  # step at which the discriminator joins, when loss.adversarial > 0 (either phase)
    decoder_steps: int = 0      # then refine the decoder alone, encoder frozen: the latent space stays as it is
    decoder_lr: float = 2e-4
    init: str | None = None     # start from this trained autoencoder folder (e.g. a model's autoencoder/);
                                # with steps: 0 only its decoder is refined and its latent scaling kept
    ema_decay: float = 0.0      # > 0: keep an exponential moving average of the weights and save it (as
                                # GAN generators are): the adversarial term makes the raw weights oscillate
    snapshot_every: int = 0     # > 0: also keep the (averaged) weights every N steps as step_N/ model folders,
                                # to pick one by measurement (benchmarks/autoencoder_quality.py --realism)
    latent_noise: float = 0.0   # > 0 (decoder phase): each latent the decoder sees gets Gaussian noise of a
                                # standard deviation drawn uniformly in [0, latent_noise] times the latents' own
                                # (the denoiser's unit-variance units), so it learns to draw photographs from
                                # latents as far off the encoder's as a denoiser's samples are
    sample_model: str | None = None  # (decoder phase, with loss.adversarial) a model folder whose encoder is this
                                # autoencoder's: the decoder also learns to draw that model's own samples
                                # (latents it draws for training captions) as the discriminator takes for photographs
    sample_n: int = 256         # latents drawn once for that (sample_latents.safetensors in the run's autoencoder/)
    sample_weight: float = 1.0  # the samples' adversarial term, relative to the reconstructions' one

    def __post_init__(self):
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: no average), not {self.ema_decay}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be 0 (none) or a number of steps, not {self.snapshot_every}")
        if self.latent_noise < 0:
            raise ValueError(f"latent_noise must be 0 (none) or a positive noise level, not {self.latent_noise}")
        if self.latent_noise > 0 and self.decoder_steps == 0:
            raise ValueError("latent_noise trains the decoder alone: it needs decoder_steps > 0")
        if self.sample_model:
            if self.decoder_steps == 0 or self.steps > 0 or not self.init:
                raise ValueError("sample_model refines a decoder on its model's latents: it needs init (that "
                                 "model's autoencoder), steps: 0 and decoder_steps > 0")
            if self.loss.adversarial <= 0:
                raise ValueError("sample_model teaches the decoder through the discriminator: it needs loss.adversarial > 0")
            if self.sample_n < self.batch_size or self.sample_weight <= 0:
                raise ValueError(f"sample_n must be at least batch_size ({self.batch_size}) and sample_weight > 0 "
                                 f"(got {self.sample_n}, {self.sample_weight})")


@dataclass
class DenoiserModelConfig:
    hidden_size: int = 256
    depth: int = 8
    num_heads: int = 4
    patch_size: int = 2
    mlp_ratio: float = 4.0
    refiner_channels: int = 0  # > 0: a convolutional refiner of this width after the transformer (dit.py)
    refiner_depth: int = 4
    pos_grid: int = 0  # > 0: positions interpolated to this token grid's range at every resolution (dit.sincos_2d)

    def __post_init__(self):
        if self.pos_grid < 0:
            raise ValueError(f"pos_grid must be 0 (token indices) or a token grid side (got {self.pos_grid})")
        if self.refiner_channels < 0 or self.refiner_channels % REFINER_GROUPS:
            raise ValueError(f"refiner_channels must be 0 or a multiple of {REFINER_GROUPS} (its group norm), "
                             f"not {self.refiner_channels!r}")


@dataclass
class StageConfig:
    """One step of the RetinaLogos recipe."""
    name: str = "pretrain"
    resolution: int = 128      # image side; latents are resolution / downsampling
    subset: str = "all"        # all | purified
    steps: int = 1000
    batch_size: int = 32        # per process: `accelerate launch` with N processes trains on N x batch_size a step
    lr: float = 3e-4
    warmup: int = 100
    decay: str = "none"        # none | cosine: after warmup, lr follows a half cosine to zero at the last step
    time_shift: float = 1.0    # SD3 time shift of the training timesteps (2 for 4x the tokens); the model
                               # samples with its last stage's shift
    train: str = "all"         # all | refiner: what learns; 'refiner' freezes the transformer, whose
                               # forward pass then costs no backward

    def __post_init__(self):
        if self.decay not in ("none", "cosine"):
            raise ValueError(f"decay must be 'none' or 'cosine', not {self.decay!r}")
        if self.train not in ("all", "refiner"):
            raise ValueError(f"train must be 'all' or 'refiner', not {self.train!r}")
        if not float(self.time_shift) > 0:
            raise ValueError(f"time_shift must be positive, not {self.time_shift!r}")


# The cached maps that weigh the denoiser's loss per latent cell, and the recipe setting of each
# (cache.py makes them, denoiser.make_batch adds them up).
LOSS_MAPS = {"vessels": "vessel_weight", "anatomy": "anatomy_weight", "lesions": "lesion_weight",
             "dark_spots": "dark_spot_weight"}


@dataclass
class DenoiserTrainConfig:
    model: DenoiserModelConfig = field(default_factory=DenoiserModelConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [
        StageConfig("pretrain", 128, "all", 1000), StageConfig("purified", 128, "purified", 300),
        StageConfig("highres", 256, "purified", 300, batch_size=16, lr=1e-4)])
    caption_dropout: float = 0.1
    timestep_sampling: str = "logit_normal"   # logit_normal | uniform
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    grad_accumulation: int = 1
    caption_variants: int = 2    # captions cached per image (different seeded phrasings)
    flip: bool = True            # horizontal flip with left/right swapped in the caption
    min_quality: float = 0.5     # purified subset: quality score at least this
    init: str | None = None      # start from this trained denoiser folder (e.g. a model's denoiser/); layers
                                 # it lacks (a refiner added since) keep their initialisation
    vessel_weight: float = 0.0   # > 0: each latent cell's loss weighs 1 + vessel_weight x its vessel fraction
                                 # (the vessel network's, cached once), so thin vessels are not averaged away
    anatomy_weight: float = 0.0  # > 0: and + anatomy_weight x its share of the measured optic disc and of the
                                 # macula around the measured fovea (`fundusgen measure`), the layout the
                                 # anatomy check asks of every image
    lesion_weight: float = 0.0   # > 0: and + lesion_weight where the cell holds a bright or dark spot of the
                                 # measured lesion cues (exudates, microaneurysms, haemorrhages), the few cells
                                 # that show a DR grade
    dark_spot_weight: float = 0.0  # > 0: and + dark_spot_weight where the cell holds a dark spot (microaneurysms,
                                   # haemorrhages) only: the DR cue, where the bright one also fires on reflections
    lesion_gate: str = "none"    # none | dr: the lesion weights only in photographs labelled with DR
                                 # (fundusgen.train.cache.gate_lesion_maps), not on spots the detector finds
                                 # in the others

    def __post_init__(self):
        for name in LOSS_MAPS.values():
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be 0 or more, not {getattr(self, name)!r}")
        if self.lesion_gate not in ("none", "dr"):
            raise ValueError(f"lesion_gate must be none or dr, not {self.lesion_gate!r}")


@dataclass
class RecipeConfig:
    data: str = "data/prepared"            # a folder written by `fundusgen prepare`
    out: str = "runs/default"
    seed: int = 0
    text_encoder: str = "minilm"          # 'minilm' (bundled) or a local path / hub id
    autoencoder: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)
    denoiser: DenoiserTrainConfig = field(default_factory=DenoiserTrainConfig)
    checkpoint_every: int = 200
    log_every: int = 20
    mixed_precision: str = "auto"        # auto: bf16 on GPU, fp32 on CPU
    parallel: str = "ddp"                # several processes: 'ddp' (each holds the whole denoiser) or 'fsdp'
                                         # (each holds a shard of weights, EMA and optimizer state: distributed.py)
    base_pipeline: str | None = None     # a local diffusers pipeline folder: fine-tune it instead (finetune_diffusers.py)
    exclude_datasets: list[str] = field(default_factory=list)  # datasets held out of training whole: an
                                                               # external real set for `fundusgen evaluate`
    aperture: str = "none"               # the trained model's sampling default (model_index.json): 'circle'
                                         # pins a round field of view while sampling (pipeline.py)

    def __post_init__(self):
        if self.aperture not in APERTURES:
            raise ValueError(f"aperture must be one of {', '.join(APERTURES)}, not {self.aperture!r}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel must be one of {', '.join(PARALLEL)}, not {self.parallel!r}")


def _build(cls, data, where: str):
    if not dataclasses.is_dataclass(cls):
        return data
    if not isinstance(data, dict):
        raise FundusgenError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise FundusgenError(f"{where}: unknown key {key!r}{hint}")
    kwargs = {}
    for key, value in data.items():
        t = hints[key]
        origin = typing.get_origin(t)
        if origin is list and dataclasses.is_dataclass(typing.get_args(t)[0]):
            kwargs[key] = [_build(typing.get_args(t)[0], v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
        elif dataclasses.is_dataclass(t):
            kwargs[key] = _build(t, value, f"{where}.{key}")
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except ValueError as e:  # a value a dataclass refuses in __post_init__
        raise FundusgenError(f"{where}: {e}") from None


def load_recipe(path: str | Path, overrides: dict | None = None) -> RecipeConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FundusgenError(f"{path}: recipe not found") from None
    except yaml.YAMLError as e:
        raise FundusgenError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    data.update(overrides or {})
    return _build(RecipeConfig, data, str(path))


def recipe_from_dict(data: dict, where: str) -> RecipeConfig:
    """A recipe from its dictionary form (``recipe_to_dict``; a run folder's recipe.json)."""
    return _build(RecipeConfig, data, where)


def recipe_to_dict(cfg: RecipeConfig) -> dict:
    return dataclasses.asdict(cfg)
