"""Tiny fixtures for model tests: a prepared folder of retina variants and a random-weight model."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write_retina_folder(root: Path, n_per_class: int = 4, size: int = 160) -> Path:
    """An ImageFolder dataset (classes 0 and 2 = ICDR grades) of jittered copies of skimage's retina."""
    from skimage import data
    base = Image.fromarray(data.retina()).resize((size, size), Image.BICUBIC)
    rng = np.random.default_rng(0)
    for cls in ("0", "2"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = np.asarray(base).astype(np.float32) * rng.uniform(0.85, 1.15, size=3)
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
            if i % 2:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            img.save(root / cls / f"img{i}_{'left' if i % 2 else 'right'}.png")
    return root


def write_measurements(prepared: Path, measurements: dict) -> None:
    """``measure/<shard>.jsonl`` giving every image of a prepared folder the same ``measurements``, as
    ``fundusgen measure`` lays them out (for tests that need measured images, not the measuring)."""
    import json
    from fundusgen.data.prepare import read_index
    (prepared / "measure").mkdir(exist_ok=True)
    for shard, rows in read_index(prepared).groupby("shard"):
        (prepared / "measure" / shard.replace(".tar", ".jsonl")).write_text(
            "".join(json.dumps({"key": k, "measurements": measurements}) + "\n" for k in rows["key"]))


def tiny_model(path: Path, resolution: int = 64) -> Path:
    """A random-weight FundusGen model folder (tests only: its images are noise)."""
    import torch
    from fundusgen.model.autoencoder import FundusAutoencoder
    from fundusgen.model.dit import DiT
    from fundusgen.model.pipeline import FundusGen
    from fundusgen.model.text_encoder import TextEncoder
    torch.manual_seed(0)
    ae = FundusAutoencoder(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=4)
    dit = DiT(hidden_size=32, depth=1, num_heads=2, text_dim=384)
    FundusGen(ae, dit, TextEncoder("minilm"), {"name": "tiny", "text_encoder": "minilm", "resolution": resolution,
                                              "steps": 2, "guidance": 2.0, "sampler": "euler"}).save_pretrained(path)
    return path


def torchrun(args: list[str], out: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node 2 ARGS`` on the CPU (gloo), writing to
    ``out``. gloo on CPUs, rarely, kills a process with SIGSEGV inside a collective (once in CI,
    PyTorch 2.13, in a launch that passes on rerun; never in Python): such a launch runs once more
    from a copy of ``out`` as it stood before, so what a test compares is still one whole run."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    before = out.with_name(out.name + ".before")
    if out.exists():
        shutil.copytree(out, before)
    for retry in (False, True):
        done = subprocess.run(launch, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode == 0 or "(SIGSEGV)" not in done.stderr or retry:
            break
        print(f"torchrun: a process died with SIGSEGV; running {' '.join(args)} once more", file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
        if before.exists():
            shutil.copytree(before, out)
    shutil.rmtree(before, ignore_errors=True)
    return done
