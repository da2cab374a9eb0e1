"""Training checkpoints that resume exactly after SIGKILL.

A checkpoint holds model, EMA and optimizer states, the step and the RNG states; it is written
to a temporary file and renamed, so a kill leaves the previous checkpoint intact. Loading uses
``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles.
The model folders a run saves (stages, snapshots, final/) are written aside and renamed the same way.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from fundusgen.data.shards import atomic_write_file
from fundusgen.errors import FundusgenError


def save_checkpoint(path: Path, **state) -> None:
    atomic_write_file(path, lambda tmp: torch.save(state, tmp))


def save_model_folder(net, folder: Path) -> None:
    """``net.save_pretrained(folder)``, atomically: written beside it, then renamed into place."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, do not train from garbage
        raise FundusgenError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def stages_behind(path: Path, n_stages: int) -> bool:
    """Whether the checkpoint at ``path`` stops short of a recipe's ``n_stages``: a run still
    training, or a finished one whose recipe has gained a stage since. Reads the file memory-mapped,
    so asking costs the two integers, not the model and optimizer states."""
    if not path.exists():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        state = load_checkpoint(path)  # says which file is unreadable, in one line
    return int(state["stage"]) < n_stages


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The randomness of one training step, a pure function of (seed, step, process rank): resumed
    runs draw exactly the batches, crops, noise and timesteps an uninterrupted run would. Under
    ``accelerate launch`` each process draws its own (one draw for all would have N processes
    compute the same gradient N times); the first process draws what a single process would. The
    others' seeds are hashed: torch seeds the CPU generator with the low 32 bits only, so an offset
    above them would be lost."""
    base = seed * 1_000_003 + step
    if rank:
        base = int.from_bytes(hashlib.sha256(f"{base}:{rank}".encode()).digest()[:4], "big")
    return torch.Generator().manual_seed(base)
