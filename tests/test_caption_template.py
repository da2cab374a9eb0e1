import pytest

from fundusgen.caption.template import attributes_from_options, contrast_attributes, contrast_caption, describe
from fundusgen.errors import FundusgenError


@pytest.mark.parametrize("grade,words", [(0, "no"), (1, "mild"), (2, "moderate"), (3, "severe"), (4, "proliferative")])
def test_the_dr_grade_is_always_stated(grade, words):
    for seed in range(6):
        text = describe({"dr_grade": grade}, seed=seed).lower()
        assert "diabetic retinopathy" in text or "npdr" in text or "pdr" in text
        assert words in text or (grade == 4 and "pdr" in text)


def test_eye_is_stated_when_known_and_never_invented():
    assert all("left" in describe({"eye": "left"}, s).lower() for s in range(6))
    assert all("right" in describe({"eye": "right"}, s).lower() for s in range(6))
    assert not any(w in describe({"dr_grade": 2}, s).lower() for s in range(6) for w in ("left", "right"))


def test_unknown_labels_are_not_mentioned():
    text = describe({"eye": "left"}, seed=0).lower()
    for word in ("glaucoma", "cataract", "oedema", "retinopathy", "normal"):
        assert word not in text


def test_phrasings_vary_with_the_seed():
    assert len({describe({"eye": "left", "dr_grade": 2, "dme": True}, s) for s in range(10)}) > 2


def test_attributes_are_validated_against_the_vocabulary():
    assert attributes_from_options(eye="OS", dr_grade="2", cdr=0.6) == {"eye": "left", "dr_grade": 2, "cdr": 0.6}
    with pytest.raises(FundusgenError, match="outside the ICDR"):
        attributes_from_options(dr_grade=7)
    with pytest.raises(FundusgenError, match="eye"):
        attributes_from_options(eye="middle")
    with pytest.raises(FundusgenError, match="cataract"):
        attributes_from_options(cataract="extreme")
    with pytest.raises(FundusgenError, match="cup-to-disc"):
        attributes_from_options(cdr=1.4)


@pytest.mark.parametrize("asked,contrast", [
    ({"eye": "left", "dr_grade": 2}, {"dr_grade": 0}),
    ({"eye": "right", "dr_grade": 0}, {"dr_grade": 3}),
    ({"dr_stage": "none"}, {"dr_grade": 3}),
    ({"dr": True}, {"dr_grade": 0}),
    ({"eye": "left", "cdr": 0.8}, {"cdr": 0.3}),
    ({"cdr": 0.3}, {"cdr": 0.8}),
    ({"glaucoma": True}, {"cdr": 0.3}),
    ({"glaucoma": False, "dr_grade": 0, "cataract_severity": "none"},
     {"glaucoma": True, "dr_grade": 3, "cataract_severity": "severe"}),
    ({"cataract_severity": "severe", "eye": "left"}, {}),  # captions never state a clear lens: nothing to contrast
    ({"dme": False, "amd": True}, {"dme": True}),
    ({"eye": "left", "quality_grade": "good"}, {}),
])
def test_contrast_reverses_the_findings_and_leaves_out_the_eye_and_quality(asked, contrast):
    assert contrast_attributes(asked) == contrast


def test_a_contrast_caption_names_the_reversed_findings_and_no_eye():
    negative = contrast_caption({"eye": "left", "dr_grade": 3}).lower()
    assert "no diabetic retinopathy" in negative or "no signs of diabetic retinopathy" in negative
    assert "left" not in negative and "right" not in negative
    assert "0.3" in contrast_caption({"eye": "right", "cdr": 0.8})
    assert contrast_caption({"eye": "left"}) == ""  # plain classifier-free guidance
