"""Generation to a folder: PNGs, a JSON sidecar per image, a contact sheet. Writes are atomic,
and images already written by an interrupted run (same prompt, seed, settings) are kept.

A sidecar holds the prompt, seed and sampling settings, and, when the prompt was written from
attributes (``--dr-grade 3 --eye left``), those attributes under ``attributes``: they are the
image's labels where a synthetic set trains a classifier (``fundusgen.eval.downstream``) and what
caption faithfulness checks the image against (``fundusgen.eval.faithfulness``).

With ``anatomy_retries`` > 0 every image goes through the evaluation's anatomy check
(``fundusgen.eval.anatomy``: one optic disc, a fovea where real photographs have it, a vessel
tree, a round field of view) and an invalid one is drawn again from the next retry seed (retry k
of seed s samples seed ``s + k * RETRY_STRIDE``, so the same seed still gives the same image),
up to that many times; the sidecar's ``anatomy`` holds the verdict, the attempts and the seed
sampled. When every attempt fails, the attempt with the fewest reasons is kept and says so.
Rejection sampling changes which images a seed gives, not the model: the evaluation reports the
model's own share of valid images from a run without retries."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from fundusgen.caption.prompt import check_prompt
from fundusgen.data.shards import atomic_write_bytes, atomic_write_text
from fundusgen.errors import FundusgenError


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(images: list[Image.Image], columns: int | None = None, thumb: int = 256) -> Image.Image:
    columns = columns or min(len(images), max(1, math.ceil(math.sqrt(len(images)))))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * thumb, rows * thumb))
    for i, img in enumerate(images):
        sheet.paste(img.resize((thumb, thumb), Image.BICUBIC), ((i % columns) * thumb, (i // columns) * thumb))
    return sheet


# retry seeds meet the seeds of a run's other images (seed + i, or seed + p*n + i) only past a million images;
# not a multiple of 2**32: the CPU generator keeps a seed's low 32 bits
RETRY_STRIDE = 1_000_003


def sample_checked(pipe, prompt: str, seed: int, retries: int, **settings):
    """(image, metadata) of one prompt and seed; with ``retries`` > 0 resampled while the anatomy
    check finds it invalid (module docstring), the verdict under ``metadata["anatomy"]``."""
    import numpy as np
    result = pipe(prompt, num_images=1, seed=seed, **settings)
    if retries <= 0:
        return result.images[0], result.metadata[0]
    from fundusgen.eval.anatomy import check_image
    best, drawn = None, 0
    while drawn <= retries:
        if drawn:
            result = pipe(prompt, num_images=1, seed=seed + drawn * RETRY_STRIDE, **settings)
        check = check_image(np.asarray(result.images[0]))
        if best is None or len(check.reasons) < len(best[2].reasons):
            best = (result, drawn, check)
        drawn += 1
        if check.valid:
            break
    result, kept, check = best
    meta = {**result.metadata[0], "seed": seed, "sampled_seed": seed + kept * RETRY_STRIDE,
            "anatomy": {"valid": check.valid, "reasons": check.reasons, "attempts": drawn, "retries": retries}}
    return result.images[0], meta


def _same_draw(anatomy: dict | None, retries: int) -> bool:
    """Whether an image written with the check ``anatomy`` (None: unchecked) is the one ``retries``
    would give: the same setting, or a valid draw that came within these retries too."""
    if anatomy is None or retries == 0:
        return anatomy is None and retries == 0
    return anatomy["retries"] == retries or (anatomy["valid"] and anatomy["attempts"] <= retries + 1)


def generate_to_folder(prompts: list[str], out: Path, model=None, num_images: int = 4, seed: int = 0,
                       progress: bool = True, attributes: list[dict] | None = None, anatomy_retries: int = 0,
                       negative_prompts: list[str] | None = None, contrast: bool = True,
                       seed_per_prompt: bool = False, **settings) -> list[Path]:
    """Images for every prompt, ``num_images`` each: image i of a prompt uses seed + i, the same
    seeds for every prompt (so prompts compare image for image), or with ``seed_per_prompt`` image i
    of prompt p uses seed + p * num_images + i, so no two images start from the same noise (a
    synthetic dataset, or a sample compared with real photographs: 100 prompts drawn from one
    seed share their layout and look less varied than they are).
    ``negative_prompts``: one per prompt (else ``settings["negative_prompt"]``, or none, for all).
    ``contrast``: prompts written from ``attributes`` and given no negative prompt get the caption
    of their reversed findings as one (``fundusgen.caption.template.contrast_caption``).

    ``attributes``, one dict per prompt when the prompts were written from attributes (eye, DR
    grade, CDR ...), go into each sidecar under ``"attributes"``: evaluation reads what an image
    was asked to show from there (caption faithfulness, class labels of synthetic training data)."""
    from fundusgen.model.pipeline import FundusGen
    if num_images < 1:
        raise FundusgenError(f"-n {num_images}: the number of images must be at least 1")
    if anatomy_retries < 0:
        raise FundusgenError(f"--anatomy-retries {anatomy_retries}: expected 0 (no check) or more")
    if attributes is not None and len(attributes) != len(prompts):
        raise ValueError(f"{len(attributes)} attribute sets for {len(prompts)} prompts")
    if negative_prompts is not None and len(negative_prompts) != len(prompts):
        raise ValueError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts")
    if contrast and attributes is not None and negative_prompts is None and settings.get("negative_prompt") is None:
        from fundusgen.caption.template import contrast_caption
        negative_prompts = [contrast_caption(a) for a in attributes]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FundusgenError(f"{out}: cannot create output folder ({e.strerror})") from None
    pipe = FundusGen.from_pretrained(model)
    for text in prompts:  # every prompt checked before the first image is drawn
        check_prompt(text)
    for text in [*(negative_prompts or []), settings.get("negative_prompt")]:
        if text:  # an empty negative prompt is the unconditional caption
            check_prompt(text, "negative prompt")
    settings = {k: v for k, v in settings.items() if v is not None}
    written, images = [], []
    bar = tqdm(total=len(prompts) * num_images, unit="img", desc="generate", disable=not progress)
    for p_i, prompt in enumerate(prompts):
        first = seed + p_i * num_images if seed_per_prompt else seed
        for i in range(num_images):
            stem = f"{p_i:03d}_{i:03d}_seed{first + i}" if len(prompts) > 1 else f"{i:03d}_seed{first + i}"
            png, sidecar = out / f"{stem}.png", out / f"{stem}.json"
            these = settings if negative_prompts is None else {**settings, "negative_prompt": negative_prompts[p_i]}
            expected = {"prompt": prompt, "seed": first + i, **these}
            if attributes is not None:
                expected["attributes"] = attributes[p_i]
            if png.exists() and sidecar.exists():
                meta = json.loads(sidecar.read_text())
                if all(meta.get(k) == v for k, v in expected.items()) and _same_draw(meta.get("anatomy"), anatomy_retries):
                    images.append(Image.open(png).convert("RGB"))
                    written.append(png)
                    bar.update(1)
                    continue
            image, meta = sample_checked(pipe, prompt, first + i, anatomy_retries, **these)
            atomic_write_bytes(png, _png(image))
            meta = {**meta, "file": png.name}
            if attributes is not None:
                meta["attributes"] = attributes[p_i]
            atomic_write_text(sidecar, json.dumps(meta, indent=2))
            images.append(image)
            written.append(png)
            bar.update(1)
    bar.close()
    atomic_write_bytes(out / "contact_sheet.png", _png(contact_sheet(images)))
    return written
