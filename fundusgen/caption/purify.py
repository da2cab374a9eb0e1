"""``fundusgen purify DIR``: keep only captions whose claims agree with their image's labels.

Claims are read back from a caption's words (eye, DR stage/grade, oedema, glaucoma, cataract
and its severity, a normal fundus, diabetic lesions) and checked against the labels, the
measurements and, when present, the second writer's caption. A caption that contradicts a
label, or an image of rejected quality, is dropped; disagreements with measurements or between
writers are flagged (kept, with the flag), or dropped too with ``strict`` (``--strict``): the
generator's later training steps then see no image whose measured appearance disagrees with its
caption. On the shared data this matters for laterality: in the 10-class eye-diseases set the
measured eye agrees with the file name's for 98% of normal and glaucoma photos but for only 62% of
the DR photos and 72% of the cataract photos, which come mirrored from their sources about as
often as not. Outputs, in the prepared folder:

- ``purified.parquet``: the kept list, columns ``key, dataset, split, shard, writer, caption, flags``;
- ``purify/decisions.csv``: every image with its decision and reasons;
- ``purify/report.json``: counts per reason and the CSDI expert-description comparison.
"""
from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from fundusgen.caption.run import read_captions
from fundusgen.data.shards import atomic_write_bytes, atomic_write_text
from fundusgen.errors import FundusgenError
from fundusgen.measure.run import input_shards, read_measurements, read_tar
from fundusgen.vocab import CataractSeverity

EYE_FLAG_CONFIDENCE = 0.95  # a measured eye this sure that disagrees with the label is flagged (a label to check)
HAZE_FLAG = 0.6

_SEVERITY_WORDS = [("severe", CataractSeverity.SEVERE), ("dense", CataractSeverity.SEVERE),
                   ("moderate", CataractSeverity.MODERATE), ("mild", CataractSeverity.MILD),
                   ("slight", CataractSeverity.MILD)]


def claims(text: str) -> dict:
    """What a caption asserts, in label terms (absent = not asserted)."""
    t = text.lower()
    c: dict = {}
    eyes = set(re.findall(r"\b(left|right) eye\b", t)) | {"left" if m == "os" else "right"
                                                         for m in re.findall(r"\((os|od)\)", t)}
    if len(eyes) == 1:
        c["eye"] = eyes.pop()
    if re.search(r"\bno (signs of )?diabetic retinopathy\b", t):
        c["dr"] = False
    elif re.search(r"diabetic retinopathy|\bn?pdr\b", t):
        c["dr"] = True
        if re.search(r"\bnon-proliferative|\bnpdr\b", t):
            c["dr_stage"] = "npdr"
        elif re.search(r"(?<!non-)\bproliferative diabetic|\bpdr\b", t):
            c["dr_stage"] = "pdr"
        for i, w in enumerate(("mild", "moderate", "severe"), start=1):
            if re.search(rf"\b{w} (non-proliferative|npdr)", t):
                c["dr_grade"] = i
    if re.search(r"\bno macular oedema|free of oedema|no (diabetic )?macular edema", t):
        c["dme"] = False
    elif re.search(r"macular (o)?edema", t):
        c["dme"] = True
    if re.search(r"\bno (signs of )?glaucoma", t):
        c["glaucoma"] = False
    elif "glaucom" in t:
        c["glaucoma"] = True
    if "cataract" in t or "media opacity" in t:
        c["cataract"] = True
        sentence = next((s for s in re.split(r"[.;]", t) if "cataract" in s or "opacity" in s), "")
        for word, sev in _SEVERITY_WORDS:
            if re.search(rf"\b{word}", sentence):
                c["cataract_severity"] = sev.value
                break
    if re.search(r"\bnormal fundus|\bhealthy retina|\bnormal-looking fundus", t):
        c["healthy"] = True
    if re.search(r"(?<!no )\b(microaneurysms|haemorrhages|hemorrhages|hard exudates|neovascularisation)\b", t) \
            and not re.search(r"\bno (microaneurysms|diabetic lesions)", t):
        c["dr_lesions"] = True
    return c


def contradictions(c: dict, labels: dict) -> list[str]:
    """Names of the labels a caption's claims ``c`` contradict."""
    out = []
    if "eye" in c and labels.get("eye") not in (None, c["eye"]):
        out.append("eye")
    dr = labels.get("dr")
    if "dr" in c and dr is not None and c["dr"] != dr:
        out.append("dr")
    if "dr_stage" in c and labels.get("dr_stage") not in (None, "none") and c["dr_stage"] != labels["dr_stage"]:
        out.append("dr_stage")
    if "dr_grade" in c and labels.get("dr_grade") is not None and c["dr_grade"] != labels["dr_grade"]:
        out.append("dr_grade")
    if c.get("dr_lesions") and dr is False:
        out.append("dr_lesions")
    for k in ("dme", "glaucoma", "cataract"):
        if k in c and labels.get(k) is not None and c[k] != labels[k]:
            out.append(k)
    if "cataract_severity" in c and labels.get("cataract_severity") not in (None, c["cataract_severity"]):
        out.append("cataract_severity")
    if c.get("healthy") and any(labels.get(k) is True for k in ("dr", "dme", "glaucoma", "cataract", "amd",
                                                                 "hypertension", "myopia", "other")):
        out.append("healthy")
    return out


def expert_severity(description: str) -> str | None:
    """The cataract severity an expert description states in words (CSDI), or None."""
    t = description.lower()
    for word, sev in _SEVERITY_WORDS:
        if re.search(rf"\b{word}(ly)? (cataract|lens opacity|opacity|haze|haziness|blur)", t):
            return sev.value
    if re.search(r"no (significant |obvious )?(signs of )?cataract|clear (media|lens)", t):
        return CataractSeverity.NONE.value
    return None


def judge(labels: dict, measured: dict | None, caption: str | None, quality_grade: str | None,
          second: str | None = None) -> tuple[list[str], list[str]]:
    """(drop reasons, flags) for one image."""
    drop, flags = [], []
    if caption is None:
        drop.append("no caption")
    else:
        drop += [f"caption contradicts label: {k}" for k in contradictions(claims(caption), labels)]
    if quality_grade == "reject" or ((measured or {}).get("quality") or {}).get("grade") == "reject":
        drop.append("rejected image quality")
    m = measured or {}
    if labels.get("eye") and m.get("eye") and m.get("eye_confidence", 0) >= EYE_FLAG_CONFIDENCE \
            and m["eye"] != labels["eye"]:
        flags.append("measured eye disagrees with label")
    if labels.get("cataract") is False and (m.get("haze") or {}).get("haze", 0) >= HAZE_FLAG:
        flags.append("hazy image labelled without cataract")
    if second is not None and caption is not None:
        a, b = claims(caption), claims(second)
        for k in sorted(set(a) & set(b)):
            if a[k] != b[k]:
                flags.append(f"writers disagree: {k}")
        if contradictions(b, labels):
            flags.append("second writer contradicts labels")
    return drop, flags


def purify_folder(folder: str | Path, writer: str = "template", second: str | None = "vlm", strict: bool = False) -> dict:
    folder = Path(folder)
    shards = input_shards(folder)  # a folder `prepare` did not write is said first
    primary = read_captions(folder, writer)
    if not primary:  # every image would be dropped for "no caption": say what is missing instead
        raise FundusgenError(f"{folder}: no {writer} captions to check (run `fundusgen caption {folder} "
                             f"--writer {writer}` first)")
    other = read_captions(folder, second) if second else {}
    rows, expert = [], []
    for tar in shards:
        measured = read_measurements(folder, tar.stem)
        for s in read_tar(tar):
            meta = json.loads(s["json"])
            key, record = s["__key__"], meta["record"]
            cap = primary.get(key, {}).get("caption")
            drop, flags = judge(record, measured.get(key), cap, (meta.get("quality") or {}).get("grade"),
                                other.get(key, {}).get("caption"))
            if strict:
                drop += [f"strict: {f}" for f in flags]
            rows.append({"key": key, "dataset": record["dataset"], "split": meta.get("split"), "shard": tar.name,
                         "writer": writer, "caption": cap, "kept": not drop, "reasons": "; ".join(drop),
                         "flags": "; ".join(flags)})
            if record.get("description"):
                expert.append({"key": key, "label": record.get("cataract_severity"),
                               "expert_words": expert_severity(record["description"]),
                               "caption_words": claims(cap or "").get("cataract_severity"),
                               "expert_contradicts_labels": contradictions(claims(record["description"]), record)})
    df = pd.DataFrame(rows, columns=["key", "dataset", "split", "shard", "writer", "caption", "kept", "reasons", "flags"])
    kept = df[df.kept][["key", "dataset", "split", "shard", "writer", "caption", "flags"]]
    buf = io.BytesIO()
    kept.to_parquet(buf, index=False)
    atomic_write_bytes(folder / "purified.parquet", buf.getvalue())
    atomic_write_text(folder / "purify" / "decisions.csv", df.to_csv(index=False))
    reasons = Counter(r for text in df.reasons for r in text.split("; ") if r)
    flags = Counter(f for text in df["flags"] for f in text.split("; ") if f)
    report = {"images": len(df), "kept": int(df.kept.sum()), "dropped": int((~df.kept).sum()), "strict": strict,
              "drop_reasons": dict(reasons), "flags": dict(flags),
              "kept_per_dataset": {k: int(v) for k, v in kept.groupby("dataset").size().items()},
              "csdi": _expert_report(expert)}
    atomic_write_text(folder / "purify" / "report.json", json.dumps(report, indent=2, sort_keys=True))
    return report


def _expert_report(expert: list[dict]) -> dict:
    """How the expert descriptions' severity words compare with the label bands and our captions."""
    if not expert:
        return {}
    worded = [e for e in expert if e["expert_words"]]
    return {"descriptions": len(expert), "with_severity_words": len(worded),
            "expert_words_match_label_band": sum(e["expert_words"] == e["label"] for e in worded),
            "expert_words_match_caption": sum(e["expert_words"] == e["caption_words"] for e in worded
                                              if e["caption_words"]),
            "captions_with_severity_words": sum(1 for e in expert if e["caption_words"]),
            "caption_matches_label_band": sum(e["caption_words"] == e["label"] for e in expert if e["caption_words"]),
            "expert_descriptions_contradicting_labels": sum(bool(e["expert_contradicts_labels"]) for e in expert),
            "confusion_expert_vs_label": dict(Counter(f"{e['expert_words']}->{e['label']}" for e in worded))}
