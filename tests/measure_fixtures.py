"""A tiny prepared folder (shards as `fundusgen prepare` writes them) of labelled retina variants."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fundusgen.data import shards
from fundusgen.data.fundus import preprocess
from fundusgen.data.quality import assess
from fundusgen.data.record import FundusRecord

# (id, labels, flip): skimage's retina has its disc on the image's left, a left eye; flipped, a right eye
LABELS = [
    ("a", {"eye": "left", "dr_grade": 0, "glaucoma": False}, False),
    ("b", {"eye": "right", "dr_grade": 2, "dme": True}, True),
    ("c", {"cataract_severity": "moderate"}, False),
    ("d", {"dr_stage": "pdr"}, True),
    ("e", {"eye": "left", "glaucoma": True, "cdr": 0.7}, False),
]


def retina_square(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    from skimage import data
    image, fov, _ = preprocess(data.retina(), size)
    return image, fov


def write_prepared(root: Path, size: int = 256, per_shard: int = 3, vessels: bool = False) -> Path:
    """Shards of ``per_shard`` samples; ``vessels`` adds a classical vessel mask to each (training tests)."""
    from fundusgen.measure.vessels import classical_vessels
    base, fov = retina_square(size)
    samples = []
    for i, (rid, labels, flip) in enumerate(LABELS):
        image = base[:, ::-1].copy() if flip else base
        mask = fov[:, ::-1].copy() if flip else fov
        record = FundusRecord(dataset="fixture", id=rid, image=f"/nowhere/{rid}.png", **labels)
        key = shards.sample_key("fixture", rid)
        q = assess(image, mask)
        meta = {"key": key, "split": "train", "size": size, "record": record.to_json(), "crop": {},
                "quality": q.to_json()}
        sample = {"__key__": key, "jpg": shards.encode_image(image), "fov.png": shards.encode_png(mask.astype("uint8") * 255),
                  "json": json.dumps(meta, sort_keys=True)}
        if vessels:
            sample["vessels.png"] = shards.encode_png(classical_vessels(image, mask)[1].astype("uint8") * 255)
        samples.append(sample)
    for k in range(0, len(samples), per_shard):
        shards.write_shard(root / "shards" / f"fundus-{k // per_shard:06d}.tar", samples[k:k + per_shard])
    return root


def write_drishti(root: Path, n_train: int = 4, n_test: int = 2, seed: int = 0) -> Path:
    """Synthetic photographs in Drishti-GS1's native layout: an orange field of view with dark
    vessel lines, a pale disc and a whiter cup at random places and sizes; soft maps whose edges
    blur like expert agreement; four "experts'" CDRs near the drawn one."""
    import cv2
    from PIL import Image
    rng = np.random.default_rng(seed)
    h, w = 140, 160
    yy, xx = np.mgrid[:h, :w]
    for i in range(n_train + n_test):
        part, name = ("Training" if i < n_train else "Test"), f"drishtiGS_{i + 1:03d}"
        image = np.zeros((h, w, 3), np.float32)
        image[np.hypot(xx - w / 2, yy - h / 2) < 0.55 * w] = (170, 80, 40)
        cx, cy, r = rng.uniform(60, 100), rng.uniform(55, 85), rng.uniform(14, 20)
        ratio = rng.uniform(0.3, 0.7)
        disc = (np.hypot(xx - cx, (yy - cy) / 1.1) < r).astype(np.float32)
        cup = (np.hypot(xx - cx, (yy - cy) / 1.1) < ratio * r).astype(np.float32)
        image += disc[..., None] * (60, 90, 60) + cup[..., None] * (25, 60, 80)
        for _ in range(4):
            angle = rng.uniform(0, 2 * np.pi)
            end = (int(cx + 90 * np.cos(angle)), int(cy + 90 * np.sin(angle)))
            cv2.line(image, (int(cx), int(cy)), end, (90, 20, 15), 2)
        image = np.clip(cv2.GaussianBlur(image, (0, 0), 1.0) + rng.normal(0, 4, image.shape), 0, 255)
        (root / "data" / part / "Images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(root / "data" / part / "Images" / f"{name}.png")
        gt = root / "data" / part / "GT" / name
        (gt / "SoftMap").mkdir(parents=True, exist_ok=True)
        for kind, mask in (("OD", disc), ("cup", cup)):
            soft = (cv2.GaussianBlur(mask, (0, 0), 1.5) * 255).astype(np.uint8)
            Image.fromarray(soft).save(gt / "SoftMap" / f"{name}_{kind}segSoftmap.png")
        (gt / f"{name}_cdrValues.txt").write_text(" ".join(f"{ratio + rng.normal(0, 0.02):.2f}" for _ in range(4)))
    return root


def train_killed_then_resumed(train, monkeypatch):
    """Run ``train()`` killed right after its first checkpoint (KeyboardInterrupt from
    ``save_checkpoint``), then again to completion; returns the second run's result."""
    import pytest

    from fundusgen.train import checkpoint
    save = checkpoint.save_checkpoint

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    return train()
