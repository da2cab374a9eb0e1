"""Training checkpoints that resume exactly after SIGKILL.

A checkpoint holds model, EMA and optimizer states, the step and the RNG states; it is written
to a temporary file and renamed, so a kill leaves the previous checkpoint intact. Loading uses
``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fundusgen.data.shards import atomic_write_file
from fundusgen.errors import FundusgenError


def save_checkpoint(path: Path, **state) -> None:
    atomic_write_file(path, lambda tmp: torch.save(state, tmp))


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


def step_generator(seed: int, step: int) -> torch.Generator:
    """The randomness of one training step, a pure function of (seed, step): resumed runs
    draw exactly the batches, crops, noise and timesteps an uninterrupted run would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)
