"""A review page: seeded random images of a captioned folder beside their captions, labels and
measurements, so a reader can check that the captions describe the images.

One self-contained HTML file (thumbnails embedded as base64 JPEG; the measured optic disc is
circled and the fovea dotted on each), written with ``fundusgen caption DIR --page out/captions.html``.
The images are those of the prepared folder: keep the page beside the data it shows (for research
datasets, do not publish it).
"""
from __future__ import annotations

import base64
import html
import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from fundusgen.caption.run import read_captions
from fundusgen.data.shards import atomic_write_text
from fundusgen.errors import FundusgenError
from fundusgen.measure.run import input_shards, read_measurements, read_tar

THUMB_SIDE = 320
LABEL_FIELDS = ("eye", "dr_grade", "dr_stage", "dr", "dme", "glaucoma", "cdr", "cataract", "cataract_severity",
                "amd", "myopia", "hypertension", "other")


def pick_keys(captions: dict[str, dict], n: int, seed: int) -> list[str]:
    """``n`` captioned keys drawn at random (seeded, independent of the order shards were read)."""
    keys = sorted(k for k, row in captions.items() if "caption" in row)
    return random.Random(seed).sample(keys, min(n, len(keys)))


def thumbnail(image: bytes, measured: dict | None, side: int = THUMB_SIDE) -> str:
    """A JPEG data URI of the encoded ``image`` with the measured disc circled and fovea dotted."""
    img = Image.open(io.BytesIO(image)).convert("RGB")
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    w = img.width  # measured positions are fractions of the (square) image side
    disc, fovea = (measured or {}).get("disc"), (measured or {}).get("fovea")
    if disc:
        r = disc["diameter"] * w / 2 + 2
        draw.ellipse([disc["x"] * w - r, disc["y"] * w - r, disc["x"] * w + r, disc["y"] * w + r],
                     outline=(0, 255, 0), width=2)
    if fovea:
        draw.ellipse([fovea["x"] * w - 3, fovea["y"] * w - 3, fovea["x"] * w + 3, fovea["y"] * w + 3], fill=(255, 255, 0))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _labels(record: dict) -> str:
    known = [(k, record[k]) for k in LABEL_FIELDS if record.get(k) is not None]
    return ", ".join(f"{k} {v}" for k, v in known) or "none"


def measured_lines(m: dict | None) -> list[str]:
    """The measurements a caption may draw on, one short line each."""
    if not m:
        return ["not measured"]
    q, disc, v = m.get("quality") or {}, m.get("disc") or {}, (m.get("vessels") or {}).get("all") or {}
    lines = [f"quality {q.get('grade')} ({q.get('score', 0):.2f}), haze {(m.get('haze') or {}).get('haze', 0):.2f}",
             f"eye {m.get('eye')} (confidence {m.get('eye_confidence', 0):.2f})"]
    if disc:
        lines.append(f"disc at ({disc['x']:.2f}, {disc['y']:.2f}), diameter {disc['ratio']:.3f} of the FOV")
    if m.get("fovea"):
        lines.append(f"fovea at ({m['fovea']['x']:.2f}, {m['fovea']['y']:.2f})")
    if v:
        names = ("density", "calibre", "tortuosity", "fractal_dimension")
        lines.append("vessels: " + ", ".join(f"{k} {v[k]}" for k in names if v.get(k) is not None))
    for kind, spots in (m.get("lesions") or {}).items():
        where = ", ".join(f"{r} {n}" for r, n in sorted(spots.get("regions", {}).items(), key=lambda kv: -kv[1]))
        lines.append(f"{kind} spots: {spots.get('count', 0)}" + (f" ({where})" if where else ""))
    return lines


_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px;color:#222}
.item{display:flex;gap:1em;border-top:1px solid #ddd;padding:1em 0}
.item img{width:320px;height:auto;flex:none;background:#000}
.caption{font-size:1.05em;line-height:1.4;margin:.2em 0 .6em}
.meta{font-size:.85em;color:#555}.meta ul{margin:.2em 0;padding-left:1.2em}
h1{font-size:1.4em}code{background:#f3f3f3;padding:0 .2em}"""


def render_page(folder: Path, writer: str, items: list[dict], total: int, seed: int) -> str:
    rows = []
    for it in items:
        meas = "".join(f"<li>{html.escape(line)}</li>" for line in measured_lines(it["measured"]))
        rows.append(f"""<div class="item"><img src="{it['thumb']}" alt="{html.escape(it['key'])}">
<div><div class="caption">{html.escape(it['caption'])}</div>
<div class="meta"><b>{html.escape(it['key'])}</b> &middot; {html.escape(str(it['dataset']))}
&middot; split {html.escape(str(it['split']))}<br>
labels: {html.escape(_labels(it['record']))}<br>measured:<ul>{meas}</ul></div></div></div>""")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Captions: {html.escape(folder.name)}</title>
<style>{_STYLE}</style></head><body>
<h1>Captions beside their images</h1>
<p>{len(items)} of {total} images captioned by the <code>{html.escape(writer)}</code> writer in
<code>{html.escape(str(folder))}</code>, drawn at random with seed {seed}. On each image the measured optic disc
is circled in green and the measured fovea is a yellow dot. Check that each caption describes its image:
eye, disc, vessels, lesions, media and the labelled diagnosis.</p>
{''.join(rows)}
</body></html>
"""


def write_caption_page(folder: str | Path, out: str | Path, writer: str = "template", n: int = 20,
                       seed: int = 0) -> Path:
    """Write the review page of ``n`` random captioned images of ``folder`` to ``out``."""
    folder, out = Path(folder), Path(out)
    captions = read_captions(folder, writer)
    keys = pick_keys(captions, n, seed)
    if not keys:
        raise FundusgenError(f"{folder}: no {writer} captions; run `fundusgen caption {folder}` first")
    wanted = set(keys)
    found: dict[str, dict] = {}
    for tar in input_shards(folder):
        measured = read_measurements(folder, tar.stem)
        for s in read_tar(tar):
            if s["__key__"] in wanted:
                meta = json.loads(s["json"])
                found[s["__key__"]] = {"key": s["__key__"], "caption": captions[s["__key__"]]["caption"],
                                       "record": meta["record"], "dataset": meta["record"].get("dataset"),
                                       "split": meta.get("split"), "measured": measured.get(s["__key__"]),
                                       "thumb": thumbnail(s.get("jpg") or s["png"], measured.get(s["__key__"]))}
        if len(found) == len(wanted):
            break
    items = [found[k] for k in keys if k in found]
    total = sum(1 for row in captions.values() if "caption" in row)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render_page(folder, writer, items, total, seed))
    return out
