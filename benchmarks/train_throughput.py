"""Training throughput (images/s) of each part of a recipe on this machine: the autoencoder on
its crops and the denoiser at each stage's resolution and batch size (forward, backward, AdamW,
EMA), on random tensors of the right shapes so no data is needed.

    python benchmarks/train_throughput.py [--config configs/cpu.yaml] [--steps 6]
"""
from __future__ import annotations

import argparse
import platform
import time
from dataclasses import asdict

import torch


def timed(step, n):
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/cpu.yaml")
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    from diffusers.training_utils import EMAModel

    from fundusgen.model.autoencoder import AutoencoderLoss, FundusAutoencoder
    from fundusgen.model.dit import DiT
    from fundusgen.model.flow import RectifiedFlowLoss
    from fundusgen.train.denoiser import set_trainable
    from fundusgen.train.config import load_recipe
    cfg = load_recipe(args.config)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"cuda={torch.cuda.is_available()}, torch {torch.__version__}")
    print("| part | input | batch | images/s |\n|---|---|---|---|")

    tc = cfg.autoencoder
    ae = FundusAutoencoder(**asdict(tc.model))
    opt = torch.optim.AdamW(ae.parameters(), lr=tc.lr)
    loss_fn = AutoencoderLoss(tc.loss)
    x = torch.rand(tc.batch_size, 3, tc.crop, tc.crop) * 2 - 1

    def ae_step():
        recon, post = ae(x)
        loss, _ = loss_fn(x, recon, post)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"| autoencoder | {tc.crop} px crops | {tc.batch_size} | {tc.batch_size / timed(ae_step, args.steps):.1f} |")

    dc = cfg.denoiser
    f = ae.downsampling_factor
    dit = DiT(in_channels=tc.model.latent_channels, text_dim=384, **asdict(dc.model))
    ema = EMAModel(dit.parameters(), decay=dc.ema_decay)
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-4)
    flow = RectifiedFlowLoss(dc.timestep_sampling)
    for stage in dc.stages:
        side = stage.resolution // f
        x0 = torch.randn(stage.batch_size, tc.model.latent_channels, side, side)
        text, mask = torch.randn(stage.batch_size, 48, 384), torch.ones(stage.batch_size, 48, dtype=torch.bool)
        g = torch.Generator().manual_seed(0)
        set_trainable(dit, stage)

        def dit_step():
            loss = flow(dit, x0, text, mask, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.step(dit.parameters())
        ips = stage.batch_size / timed(dit_step, args.steps)
        print(f"| denoiser, stage '{stage.name}' | {stage.resolution} px ({side}x{side} latents) | {stage.batch_size} | {ips:.1f} |")


if __name__ == "__main__":
    main()
