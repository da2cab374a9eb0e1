"""The template caption writer: a clinical sentence set per image from its labels and measurements.

Every claim comes from a label or a measurement (``attributes["measurements"]``, the output of
``fundusgen.measure.attributes.measure``); what is unknown is not said, and where both speak
the label wins: measured lesion cues are named by the type the labels allow and dropped where
the labels say the retina is free of them, measured haze is not mentioned when the cataract is
labelled, the measured eye is used only when no label gives it. Each attribute has several phrasings, picked by a seeded RNG, so a model learns the
meaning rather than one template. Grade-defining ICDR findings (microaneurysms for grade 1,
neovascularisation for grade 4, ...) are stated because the grade itself asserts them.
"""
from __future__ import annotations

import random
from typing import Any

from fundusgen.caption.lesions import LESION_MIN_SPOTS, spots_off_disc
from fundusgen.vocab import (DR_GRADE_PHRASES, CataractSeverity, DRGrade, DRStage, Eye, VocabularyError,
                             has_dr, parse_dr_grade, parse_eye)

_OPENINGS = {
    None: ["Colour fundus photograph.", "Fundus photograph of the retina.", "Retinal fundus image."],
    Eye.LEFT: ["Colour fundus photograph of the left eye.", "Left eye fundus photograph.", "Fundus image, left eye (OS)."],
    Eye.RIGHT: ["Colour fundus photograph of the right eye.", "Right eye fundus photograph.", "Fundus image, right eye (OD)."],
}
_QUALITY = {
    "good": ["Good image quality, evenly illuminated and in focus.", "Sharp, well exposed image.", "High quality photograph."],
    "usable": ["Acceptable image quality.", "Image quality is adequate though not ideal.", "Usable quality, slightly uneven illumination."],
}
_GRADE_FINDINGS = {
    DRGrade.NONE: ["no microaneurysms or haemorrhages", "no diabetic lesions"],
    DRGrade.MILD_NPDR: ["microaneurysms only", "a few scattered microaneurysms"],
    DRGrade.MODERATE_NPDR: ["microaneurysms with dot and blot haemorrhages", "microaneurysms, haemorrhages and possibly hard exudates"],
    DRGrade.SEVERE_NPDR: ["extensive intraretinal haemorrhages in all quadrants", "numerous haemorrhages with venous beading"],
    DRGrade.PDR: ["neovascularisation", "new vessels with possible preretinal haemorrhage"],
}
_GRADE_SHORT = {DRGrade.MILD_NPDR: "mild NPDR", DRGrade.MODERATE_NPDR: "moderate NPDR",
                DRGrade.SEVERE_NPDR: "severe NPDR", DRGrade.PDR: "PDR"}
_CATARACT = {
    CataractSeverity.MILD: ["mild media opacity from cataract; the retinal details are slightly hazy",
                            "slight haze over the whole image, consistent with a mild cataract"],
    CataractSeverity.MODERATE: ["moderate cataract haze; the optic disc and large vessels are visible but blurred",
                                "a hazy, dull image from a moderate cataract, small vessels hard to see"],
    CataractSeverity.SEVERE: ["dense cataract: the fundus is very hazy and only the optic disc glow is visible",
                              "severe media opacity; retinal details are almost completely obscured"],
}


def _pick(rng: random.Random, options: list[str]) -> str:
    return options[rng.randrange(len(options))]


def _dr_sentence(a: dict, rng: random.Random) -> str | None:
    grade, stage, present = a.get("dr_grade"), a.get("dr_stage"), a.get("dr")
    if grade is not None:
        grade = DRGrade(int(grade))
        if grade == DRGrade.NONE:
            return _pick(rng, ["No diabetic retinopathy", "No signs of diabetic retinopathy",
                               "No diabetic retinopathy (ICDR grade 0)"]) + f", {_pick(rng, _GRADE_FINDINGS[grade])}."
        name = _pick(rng, [DR_GRADE_PHRASES[grade], _GRADE_SHORT[grade] + f" (ICDR grade {int(grade)})"])
        return f"{name[0].upper()}{name[1:]} with {_pick(rng, _GRADE_FINDINGS[grade])}."
    if stage is not None:
        stage = DRStage(stage)
        if stage == DRStage.NONE:
            return "No diabetic retinopathy."
        if stage == DRStage.PDR:
            return f"Proliferative diabetic retinopathy with {_pick(rng, _GRADE_FINDINGS[DRGrade.PDR])}."
        return _pick(rng, ["Non-proliferative diabetic retinopathy.", "NPDR with microaneurysms and haemorrhages."])
    if present:
        return _pick(rng, ["Diabetic retinopathy.", "Signs of diabetic retinopathy.", "Diabetic retinopathy is present."])
    return None


def describe(attributes: dict[str, Any], seed: int = 0) -> str:
    """A caption for an image with these attributes (record fields; unknown ones None/absent),
    and, under ``measurements``, what was measured on it."""
    rng = random.Random(seed)
    a = {k: v for k, v in attributes.items() if v is not None}
    m = a.pop("measurements", None) or {}
    if m:
        a = _with_measured_labels(a, m)
    eye = Eye(a["eye"]) if "eye" in a else None
    parts = [_pick(rng, _OPENINGS[eye])]
    if a.get("quality_grade") in _QUALITY:
        parts.append(_pick(rng, _QUALITY[a["quality_grade"]]))
    if m:
        # a separate stream, so label-only captions stay exactly what they were
        parts += measured_sentences(a, m, random.Random(f"{seed}/measured"))
    findings = []
    dr = _dr_sentence(a, rng)
    if dr:
        findings.append(dr)
    if a.get("dme") is True:
        findings.append(_pick(rng, ["Diabetic macular oedema with exudates near the fovea.",
                                    "Macular oedema is present.", "Clinically significant macular oedema."]))
    elif a.get("dme") is False and a.get("dr") is True:
        findings.append(_pick(rng, ["No macular oedema.", "The macula is free of oedema."]))
    if a.get("glaucoma") is True:
        findings.append(_pick(rng, ["Glaucomatous optic disc with an enlarged cup.",
                                    "Signs of glaucoma: large cup-to-disc ratio and thinned neuroretinal rim.",
                                    "Glaucoma, with optic disc cupping."]))
    if a.get("cdr") is not None:
        findings.append(f"Vertical cup-to-disc ratio about {float(a['cdr']):.1f}.")
    sev = a.get("cataract_severity")
    if sev is not None and CataractSeverity(sev) != CataractSeverity.NONE:
        text = _pick(rng, _CATARACT[CataractSeverity(sev)])
        findings.append(text[0].upper() + text[1:] + ".")
    elif a.get("cataract") is True:
        findings.append(_pick(rng, ["Cataract: the image is hazy and low in contrast.",
                                    "Media opacity from cataract blurs the fundus."]))
    if a.get("amd") is True:
        findings.append("Age-related macular degeneration with drusen at the macula.")
    if a.get("myopia") is True:
        findings.append("Myopic fundus with a tessellated background.")
    if a.get("hypertension") is True:
        findings.append("Hypertensive retinopathy with narrowed arterioles.")
    if a.get("other") is True:
        findings.append("Advanced eye disease.")
    healthy = (a.get("dr_grade") == 0 or a.get("dr_stage") == "none") and not any(
        a.get(k) is True for k in ("dme", "glaucoma", "cataract", "amd", "myopia", "hypertension", "other"))
    if healthy and a.get("glaucoma") is False:
        findings.insert(0, _pick(rng, ["Normal fundus.", "Healthy retina.", "A normal-looking fundus."]))
    return " ".join(parts + findings)


def attributes_from_options(**options) -> dict[str, Any]:
    """Validate attributes given by a user (command line, web form) into record-style values."""
    a: dict[str, Any] = {}
    if options.get("eye") is not None:
        a["eye"] = parse_eye(options["eye"]).value
    if options.get("dr_grade") is not None:
        a["dr_grade"] = int(parse_dr_grade(options["dr_grade"]))
    for flag in ("dme", "glaucoma", "amd", "myopia", "hypertension"):
        if options.get(flag) is not None:
            a[flag] = bool(options[flag])
    if options.get("cataract") is not None:
        try:
            sev = CataractSeverity(str(options["cataract"]).lower())
        except ValueError:
            raise VocabularyError(f"cataract {options['cataract']!r}: expected one of "
                                  f"{', '.join(s.value for s in CataractSeverity)}") from None
        a["cataract_severity"] = sev.value
    if options.get("cdr") is not None:
        cdr = float(options["cdr"])
        if not 0.0 < cdr < 1.0:
            raise VocabularyError(f"cup-to-disc ratio {cdr} is outside 0-1")
        a["cdr"] = cdr
    if options.get("quality") is not None:
        if options["quality"] not in _QUALITY:
            raise VocabularyError(f"quality {options['quality']!r}: expected one of {', '.join(_QUALITY)}")
        a["quality_grade"] = options["quality"]
    return a


def contrast_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """The findings a prompt written from ``attributes`` is steered away from (contrastive guidance):
    each finding reversed, where the reversal is something ``describe`` states; no eye and no image
    quality, so that guidance still pushes towards the eye asked for. Empty: nothing to contrast.

    DR of any grade is contrasted with no DR, and no DR with severe NPDR (the grade whose captions
    name the most lesions); glaucoma with a small cup (CDR 0.3), a cup-to-disc ratio with the other
    end of the scale; no cataract with a severe one, and an absent flag (DME, AMD, ...) with its
    presence. A present cataract or flag has no contrast: captions never state their absence."""
    a = {k: v for k, v in attributes.items() if v is not None}
    c: dict[str, Any] = {}
    if "dr_grade" in a:
        c["dr_grade"] = int(DRGrade.NONE if int(a["dr_grade"]) else DRGrade.SEVERE_NPDR)
    elif "dr_stage" in a:
        c["dr_grade"] = int(DRGrade.SEVERE_NPDR if DRStage(a["dr_stage"]) == DRStage.NONE else DRGrade.NONE)
    elif "dr" in a:
        c["dr_grade"] = int(DRGrade.NONE if a["dr"] else DRGrade.SEVERE_NPDR)
    if "cdr" in a:
        c["cdr"] = 0.3 if float(a["cdr"]) >= 0.5 else 0.8
    if a.get("glaucoma") is True and "cdr" not in a:
        c["cdr"] = 0.3
    elif a.get("glaucoma") is False:
        c["glaucoma"] = True
    if a.get("cataract_severity") == CataractSeverity.NONE.value or a.get("cataract") is False:
        c["cataract_severity"] = CataractSeverity.SEVERE.value
    for flag in ("dme", "amd", "myopia", "hypertension"):
        if a.get(flag) is False:
            c[flag] = True
    return c


def contrast_caption(attributes: dict[str, Any], seed: int = 0) -> str:
    """The negative prompt of a prompt written from ``attributes``: ``describe`` of its contrast, or
    "" (plain classifier-free guidance) when there is nothing to contrast."""
    c = contrast_attributes(attributes)
    return describe(c, seed=seed) if c else ""


# --- sentences from measurements -------------------------------------------------------------

# the measured eye is stated from this confidence: right for 98.2% of the 82% of Mexican-set photos
# that reach it, 99.8% of the 98% on the 10-class set (fundusgen.measure.validate)
EYE_CONFIDENCE = 0.9
GLAUCOMA_CDR = 0.6        # a measured CDR below this is not stated beside a glaucoma label (0.7 and up not beside "no glaucoma")
# word bands of the measured vessel figures (calibre in px at a 512 px FOV)
CALIBRE_BANDS = (2.6, 4.0)
TORTUOSITY_BANDS = (1.10, 1.18)
DENSITY_BANDS = (0.07, 0.14)
DISC_RATIO_BANDS = (0.11, 0.20)
HAZE_BANDS = (0.25, 0.6)


def _band(value: float | None, bands: tuple[float, float]) -> int | None:
    if value is None:
        return None
    return 0 if value < bands[0] else (1 if value <= bands[1] else 2)


def _with_measured_labels(a: dict, m: dict) -> dict:
    """Fill what the labels leave unknown from confident measurements (labels win)."""
    a = dict(a)
    if "eye" not in a and m.get("eye") and m.get("eye_confidence", 0) >= EYE_CONFIDENCE:
        a["eye"] = m["eye"]
    grade = (m.get("quality") or {}).get("grade")
    if "quality_grade" not in a and grade in _QUALITY:
        a["quality_grade"] = grade
    disc = m.get("disc") or {}
    if "cdr" not in a and disc.get("cdr") is not None and grade != "reject" and disc.get("method") == "network":
        # the disc/cup network's vertical CDR (Drishti-GS1 test: mean absolute error 0.05), unless
        # it would argue with a glaucoma label
        said = round(float(disc["cdr"]), 1)
        argues = (a.get("glaucoma") is True and said < GLAUCOMA_CDR) or (a.get("glaucoma") is False and said >= GLAUCOMA_CDR + 0.1)
        if not argues and 0.1 <= said <= 0.9:
            a["cdr"] = said
    return a


def _labelled_free_of_lesions(a: dict) -> bool:
    return has_dr(a) is False and a.get("amd") is not True and a.get("other") is not True and a.get("hypertension") is not True


_REGION_WORDS = {"macula": "at the macula", "peripapillary": "around the optic disc",
                 "superior_arcade": "along the superior arcade", "inferior_arcade": "along the inferior arcade",
                 "periphery": "in the periphery", "nasal": "nasal", "temporal_to_fovea": "temporal to the fovea"}


def _where(regions: dict[str, int]) -> str:
    """The (at most two) regions holding most spots; the peripapillary ring is not counted."""
    top = [r for r, _ in sorted(regions.items(), key=lambda kv: -kv[1]) if r != "peripapillary"][:2]
    return " and ".join(_REGION_WORDS[r] for r in top if r in _REGION_WORDS)


def _lesion_sentences(a: dict, m: dict, rng: random.Random) -> list[str]:
    """Lesions named from the measured cues only at counts about one no-DR photograph in ten
    reaches (``fundusgen.caption.lesions``), by the type the labels allow."""
    lesions = m.get("lesions") or {}
    if _labelled_free_of_lesions(a):
        return []
    out = []
    bright, dark = lesions.get("bright") or {}, lesions.get("dark") or {}
    dr = has_dr(a) is True
    if spots_off_disc(bright) >= LESION_MIN_SPOTS["bright"]:
        name = ("hard exudates" if dr else "drusen" if a.get("amd") is True
                else _pick(rng, ["bright spots", "small yellow-white deposits"]))
        out.append(_cue_sentence(bright, "bright", name, ["Some", "Several"], rng))
    if spots_off_disc(dark) >= LESION_MIN_SPOTS["dark"] and has_dr(a) is not False:
        name = (_pick(rng, ["microaneurysms and dot haemorrhages", "red dots and blot haemorrhages"]) if dr
                else _pick(rng, ["small dark red spots", "dark red dots"]))
        out.append(_cue_sentence(dark, "dark", name, ["Scattered", "Several"], rng))
    return out


def _cue_sentence(cue: dict, kind: str, name: str, few_words: list[str], rng: random.Random) -> str:
    """'Some hard exudates at the macula.': twice the threshold's spots make them numerous."""
    few = spots_off_disc(cue) < 2 * LESION_MIN_SPOTS[kind]
    return f"{_pick(rng, few_words if few else ['Numerous', 'Many'])} {name} {_where(cue.get('regions', {}))}".rstrip() + "."


def measured_sentences(a: dict, m: dict, rng: random.Random) -> list[str]:
    """Anatomy, vessels, lesions and media in words, from measurements, never against the labels."""
    out = []
    if (m.get("quality") or {}).get("grade") == "reject":
        return out  # what is measured on an unusable photo is not worth saying
    disc = m.get("disc") or {}
    size = _band(disc.get("ratio"), DISC_RATIO_BANDS)
    if size is not None and a.get("glaucoma") is not True:
        word = [_pick(rng, ["small", "smallish"]), _pick(rng, ["normal-sized", "average-sized"]),
                _pick(rng, ["large", "large-appearing"])][size]
        out.append(_pick(rng, [f"The optic disc is {word} with distinct margins.",
                               f"{'An' if word[0] in 'aeiou' else 'A'} {word} optic disc is visible.",
                               f"The optic disc appears {word}."]))
    if m.get("fovea"):
        out.append(_pick(rng, ["The macula and fovea are in view.", "The fovea is visible temporal to the disc.",
                               "The macular region is visible."]))
    v = (m.get("vessels") or {}).get("all") or {}
    calibre, tort, dens = (_band(v.get("calibre"), CALIBRE_BANDS), _band(v.get("tortuosity"), TORTUOSITY_BANDS),
                           _band(v.get("density"), DENSITY_BANDS))
    words = []
    if calibre is not None and a.get("hypertension") is not True:
        words.append(["thin", "normal calibre", "wide"][calibre])
    if tort is not None:
        words.append(["straight", "mildly tortuous", "tortuous"][tort])
    if dens is not None:
        words.append(["a sparse vessel tree", "a normal vessel density", "a dense vessel tree"][dens])
    if words:
        lead = _pick(rng, ["Retinal vessels", "The vessels", "Blood vessels"])
        out.append(f"{lead}: {', '.join(words)}.")
    out += _lesion_sentences(a, m, rng)
    hz = _band((m.get("haze") or {}).get("haze"), HAZE_BANDS)
    if hz is not None and a.get("cataract") is None and a.get("cataract_severity") is None:
        if hz == 2:
            out.append(_pick(rng, ["The image is hazy and low in contrast.", "Hazy media blur the fundus details."]))
        elif hz == 0:
            out.append(_pick(rng, ["Clear media with crisp detail.", "The media are clear."]))
    return out
