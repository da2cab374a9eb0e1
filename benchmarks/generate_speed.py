"""Generation speed and memory of a model on this machine, and our sampling loop against the
same denoiser driven through diffusers' FlowMatchEulerDiscreteScheduler.

    python benchmarks/generate_speed.py [--model PATH] [--images 4] [--steps 25] [--guidance 4]
                                        [--pairs 8] [--anatomy-retries 3 --checked-images 20]

Targets (issue 4, 2-core CPU, default model at 256 px, 25 steps, guidance on): at most 5 s per
image, at most 2 GB peak memory, our loop no slower than diffusers' scheduler (ratio <= 1.05).

The ratio is timed in interleaved pairs (one image by each loop, the same seed, the order swapped
every pair) and reported as the median of the pairs' ratios with its range, so that a shared
machine's slow spells, which last longer than one pair, fall on both loops alike.
"""
from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--pairs", type=int, default=8, help="interleaved image pairs timed for the ratio")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--anatomy-retries", type=int, default=0,
                    help="also time `generate --anatomy-retries K` (the anatomy check and its redraws)")
    ap.add_argument("--checked-images", type=int, default=20, help="images (seeds 0..) for the checked run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fundusgen.model.pipeline import FundusGen
    pipe = FundusGen.from_pretrained(args.model)
    prompt = "left eye, moderate non-proliferative diabetic retinopathy, hard exudates temporal to the fovea"
    pipe(prompt, num_images=1, steps=2, guidance=args.guidance)  # warm-up
    aperture = pipe.config.get("aperture", "none")

    def ours(seed, aperture="none"):
        pipe(prompt, num_images=1, seed=seed, steps=args.steps, guidance=args.guidance, aperture=aperture)

    t0 = time.perf_counter()
    for i in range(args.images):
        ours(i, aperture)  # as `fundusgen generate` runs it
    per_image = (time.perf_counter() - t0) / args.images
    res = pipe.config.get("resolution", 256)

    # The same denoiser, the same guidance, stepped by diffusers' scheduler instead of sample_euler,
    # with the same work around the loop as a pipeline call: the prompt and the empty caption
    # encoded, the latents decoded, the image turned to 8 bits.
    den, ae = pipe.denoiser, pipe.autoencoder
    side = res // ae.downsampling_factor

    @torch.no_grad()
    def diffusers_loop(seed):
        states, mask = pipe.text_encoder.encode([prompt])
        null, null_mask = pipe.text_encoder.encode([""])
        length = max(states.shape[1], null.shape[1])
        pad = lambda t, m: (torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1])),
                            torch.nn.functional.pad(m, (0, length - m.shape[1])))
        (c, cm), (u, um) = pad(states, mask), pad(null, null_mask)
        text, text_mask = torch.cat([c, u]), torch.cat([cm, um])
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=pipe.config.get("time_shift", 1.0))
        sched.set_timesteps(args.steps)
        x = torch.randn((1, den.config.in_channels, side, side), generator=torch.Generator().manual_seed(seed))
        for t in sched.timesteps:
            tt = (t / 1000).expand(2)
            v = den(torch.cat([x, x]), tt, text, text_mask)
            v = v[1:] + args.guidance * (v[:1] - v[1:])
            x = sched.step(v, t, x).prev_sample
        return pipe._to_pil(ae.decode(ae.denormalise(x)).float())

    def timed(run, seed):
        t0 = time.perf_counter()
        run(seed)
        return time.perf_counter() - t0

    diffusers_loop(0)
    times = {ours: [], diffusers_loop: []}
    for i in range(args.pairs):
        for run in ((ours, diffusers_loop) if i % 2 == 0 else (diffusers_loop, ours)):
            times[run].append(timed(run, i))
    ours_s, theirs_s = times[ours], times[diffusers_loop]
    ratios = sorted(o / d for o, d in zip(ours_s, theirs_s))
    plain, per_image_diffusers = statistics.median(ours_s), statistics.median(theirs_s)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"model: {pipe.name}, {res} px, {args.steps} steps, guidance {args.guidance}")
    print(f"fundusgen sampling, aperture {aperture} (the model's): {per_image:.2f} s/image (target <= 5 s)")
    print(f"fundusgen sampling, aperture none (the same work as diffusers'): {plain:.2f} s/image (median of {args.pairs})")
    print(f"diffusers FlowMatchEulerDiscreteScheduler, same denoiser: {per_image_diffusers:.2f} s/image (median of {args.pairs})")
    print(f"ratio ours / diffusers, median of {args.pairs} interleaved pairs: {statistics.median(ratios):.3f} "
          f"(range {ratios[0]:.3f}-{ratios[-1]:.3f}; target <= 1.05)")
    if args.anatomy_retries:
        from fundusgen.generate import sample_checked
        sample_checked(pipe, prompt, 0, 1, steps=2, guidance=args.guidance)  # loads the measurement networks
        t0, draws, valid = time.perf_counter(), 0, 0
        for i in range(args.checked_images):
            _, meta = sample_checked(pipe, prompt, i, args.anatomy_retries, steps=args.steps, guidance=args.guidance)
            draws += meta["anatomy"]["attempts"]
            valid += meta["anatomy"]["valid"]
        checked = (time.perf_counter() - t0) / args.checked_images
        check = (checked * args.checked_images - draws * per_image) / draws
        print(f"with --anatomy-retries {args.anatomy_retries}, {args.checked_images} images: {checked:.2f} s/image, "
              f"{draws / args.checked_images:.2f} draws per image, {valid} valid; the check about {check:.2f} s per draw")
    print(f"peak memory (RSS): {peak_rss_mb():.0f} MB (target <= 2048 MB)")


if __name__ == "__main__":
    main()
