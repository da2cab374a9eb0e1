"""Render docs/default_model_samples.png: the shipped model's images for a few captions, the same
seeds in every row, so what a caption changes (eye, DR grade, cataract, glaucoma) is visible. Each
row is guided away from its reversed findings, as `fundusgen generate` does for attribute prompts
(``--no-contrast``: plain classifier-free guidance).

    python docs/make_samples.py [--model PATH] [--seeds 4] [--no-contrast] [--out docs/default_model_samples.png]
"""
from __future__ import annotations

import argparse

from PIL import Image, ImageDraw

from fundusgen.caption.template import attributes_from_options, contrast_caption, describe
from fundusgen.model.pipeline import FundusGen

ROWS = [
    ("left eye, no DR", dict(eye="left", dr_grade=0)),
    ("right eye, no DR", dict(eye="right", dr_grade=0)),
    ("right eye, PDR + DME", dict(eye="right", dr_grade=4, dme=True)),
    ("left eye, glaucoma, CDR 0.8", dict(eye="left", glaucoma=True, cdr=0.8)),
    ("severe cataract", dict(cataract="severe")),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", default="docs/default_model_samples.png")
    ap.add_argument("--contrast", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    pipe = FundusGen.from_pretrained(args.model)
    thumb, label_w = 192, 230
    sheet = Image.new("RGB", (label_w + thumb * args.seeds, thumb * len(ROWS)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, attrs) in enumerate(ROWS):
        attributes = attributes_from_options(**attrs)
        caption = describe(attributes, seed=0)
        negative = contrast_caption(attributes) if args.contrast else ""
        images = pipe(caption, num_images=args.seeds, seed=0, negative_prompt=negative).images
        draw.text((8, r * thumb + thumb // 2 - 6), label, fill="black")
        for c, img in enumerate(images):
            sheet.paste(img.resize((thumb, thumb), Image.BICUBIC), (label_w + c * thumb, r * thumb))
        print(f"{label}: {caption}" + (f" (negative: {negative})" if negative else ""))
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
