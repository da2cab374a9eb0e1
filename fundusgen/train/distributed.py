"""Processes and precision for the trainers: which process this is (one, or one of several under
``accelerate launch`` / ``torchrun``), and a fresh Accelerator for each trainer's precision."""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import parse_flag_from_env

from fundusgen.train.config import RecipeConfig


def mixed_precision(cfg: RecipeConfig) -> str:
    """Precision of the denoiser trainers (the autoencoder always trains in fp32)."""
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    return "bf16" if torch.cuda.is_available() else "no"


def process_state() -> PartialState:
    """This process's rank and device. Several processes (``torchrun``, ``accelerate launch``) on a
    machine without CUDA train on the CPU over gloo, which accelerate sees only when told so (its
    ``--cpu``): without it each process would train alone, as the first, on the same files."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or (several and not torch.cuda.is_available()))


def new_accelerator(**kwargs) -> Accelerator:
    """An Accelerator with this trainer's own precision. accelerate fixes the precision per process
    at the first Accelerator, and one ``fundusgen train`` runs the autoencoder in fp32 and then the
    denoiser in bf16 on a GPU: the state is reset first (the distributed state is kept)."""
    process_state()
    AcceleratorState._reset_state()
    return Accelerator(**kwargs)
