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


# FSDP (recipe `parallel: fsdp`): PyTorch's fully_shard (FSDP2) applied here rather than through
# accelerate's FSDP plugin, which accelerate refuses on CPUs (it falls back to DDP there), so the same
# code is tested with two CPU processes over gloo and runs on GPUs; accelerate still does precision,
# accumulation and the optimizer. Weights, EMA and optimizer state are sharded over the processes;
# checkpoints hold them whole, so a run resumes under any process count and exports as before.

def uses_fsdp(cfg: RecipeConfig, acc: Accelerator) -> bool:
    """Whether this run shards its denoiser: ``parallel: fsdp`` and more than one process."""
    return cfg.parallel == "fsdp" and acc.num_processes > 1


def prepare(acc: Accelerator, model, opt, sharded: bool):
    """accelerate's ``prepare`` for the trainers: the model and optimizer, or, when FSDP shards the
    model already, the optimizer alone (accumulation and precision stay accelerate's)."""
    if sharded:
        return model, acc.prepare(opt)
    return acc.prepare(model, opt)


def shard(model: torch.nn.Module, units) -> torch.nn.Module:
    """Shard ``model`` over the processes: each unit (a transformer block, the refiner) gathers its
    weights around its own forward and backward only; the root keeps the rest (embeddings, head)."""
    from torch.distributed.fsdp import fully_shard
    for unit in units:
        fully_shard(unit)
    return fully_shard(model)


def block_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """A diffusers denoiser's repeated blocks (UNet down/mid/up blocks, a transformer's blocks): the
    units ``shard`` gathers one at a time."""
    units = []
    for name, child in model.named_children():
        if isinstance(child, torch.nn.ModuleList) and name.endswith("blocks"):
            units += list(child)
        elif name == "mid_block" and child is not None:
            units.append(child)
    return units


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def _renumber(optimizer: dict, keys: list) -> dict:
    """An optimizer state keyed by parameter name (torch.distributed.checkpoint's) as one keyed by
    parameter index (``Optimizer.state_dict``'s), or back (``keys``: the names or the indices, in the
    model's parameter order), so a checkpoint has one layout whether or not it was sharded."""
    old = [n for g in optimizer["param_groups"] for n in g["params"]]
    new = {o: keys[i] for i, o in enumerate(old)}
    return {"state": {new[k]: v for k, v in optimizer["state"].items()},
            "param_groups": [{**g, "params": [new[n] for n in g["params"]]} for g in optimizer["param_groups"]]}


def full_states(model, ema, opt, sharded: bool) -> tuple[dict, dict, dict]:
    """Whole (unsharded) model, EMA and optimizer states for a checkpoint, laid out as without FSDP
    (so a run resumes with or without it, under any process count). Under FSDP every process must
    call it (the shards are gathered); the CPU copies land on the main process only."""
    if not sharded:
        return model.state_dict(), ema.state_dict(), opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    weights = get_model_state_dict(model, options=_options(cpu_offload=True))
    optimizer = get_optimizer_state_dict(model, getattr(opt, "optimizer", opt), options=_options(cpu_offload=True))
    averaged = ema.state_dict()
    averaged["shadow_params"] = [p.full_tensor().cpu() for p in averaged["shadow_params"]]
    if optimizer:  # the main process's; the others hold none
        optimizer = _renumber(optimizer, list(range(sum(1 for _ in model.parameters()))))
    return weights, averaged, optimizer


def load_full_states(model, ema, opt, state: dict, sharded: bool) -> None:
    """The inverse of ``full_states``: each process takes its shard of the whole states."""
    if not sharded:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    from torch.distributed.tensor import distribute_tensor
    set_model_state_dict(model, state["model"], options=_options())
    by_name = _renumber(state["optimizer"], [n for n, _ in model.named_parameters()])
    set_optimizer_state_dict(model, getattr(opt, "optimizer", opt), by_name, options=_options())
    ema.load_state_dict(state["ema"])
    ema.shadow_params = [distribute_tensor(s.to(p.device), p.device_mesh, p.placements)
                         for s, p in zip(ema.shadow_params, model.parameters())]

