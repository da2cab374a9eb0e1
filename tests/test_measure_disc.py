import numpy as np

from fundusgen.data.fundus import apply_crop, load_mask, load_rgb, preprocess
from fundusgen.measure.attributes import measure
from tests.measure_fixtures import retina_square


def test_disc_fovea_and_eye_of_the_scikit_image_retina():
    image, fov = retina_square(512)
    m = measure(image, fov)
    assert m["disc"]["x"] < 0.3 and 0.3 < m["disc"]["y"] < 0.7  # its disc is on the left, mid-height
    assert m["fovea"]["x"] > m["disc"]["x"] + 2 * m["disc"]["diameter"]
    assert m["eye"] == "left" and m["eye_confidence"] > 0.5


def test_a_mirrored_photograph_is_the_other_eye():
    image, fov = retina_square(512)
    m = measure(image[:, ::-1].copy(), fov[:, ::-1].copy())
    assert m["eye"] == "right" and m["disc"]["x"] > 0.7


def test_positions_do_not_depend_on_the_resolution():
    a, b = (measure(*retina_square(s)) for s in (256, 512))
    assert abs(a["disc"]["x"] - b["disc"]["x"]) < 0.03 and abs(a["disc"]["y"] - b["disc"]["y"]) < 0.03


def test_disc_centre_falls_inside_the_experts_disc_on_drishti(shared_data):
    from fundusgen.data.sources import read_source
    records = [r for r in read_source("drishti_gs1", shared_data / "drishti_gs1") if "disc" in r.masks][:4]
    for r in records:
        image, fov, crop = preprocess(load_rgb(r.image), 512)
        truth = apply_crop(load_mask(r.masks["disc"]), crop, 512)
        m = measure(image, fov)
        assert truth[int(m["disc"]["y"] * 512), int(m["disc"]["x"] * 512)], r.id
        d_true = 2 * np.sqrt(truth.sum() / np.pi)
        assert abs(m["disc"]["diameter"] * 512 - d_true) / d_true < 0.35, r.id


def test_laterality_matches_the_file_names_of_the_10_class_set(shared_data):
    from fundusgen.data.sources import read_source
    records = [r for r in read_source("srahim_dr", shared_data / "srahim_dr") if r.eye is not None][::100][:6]
    hits = [measure(*preprocess(load_rgb(r.image), 384)[:2])["eye"] == r.eye.value for r in records]
    assert sum(hits) >= len(hits) - 1  # 97-99% on samples of 80-150 of them


def test_vessels_converge_at_the_centre_of_radial_lines():
    import cv2
    from fundusgen.measure.disc import convergence, vessel_orientation
    lines = np.zeros((128, 128), np.float32)
    for t in np.linspace(0, np.pi, 6, endpoint=False):
        d = 60 * np.array([np.cos(t), np.sin(t)])
        cv2.line(lines, tuple(int(v) for v in (64 - d[0], 64 - d[1])), tuple(int(v) for v in (64 + d[0], 64 + d[1])), 1.0, 2)
    mask = lines > 0
    c = convergence(*vessel_orientation(cv2.GaussianBlur(lines, (0, 0), 1.0), mask), mask, 20.0)
    y, x = np.unravel_index(int(np.argmax(c)), c.shape)
    assert abs(x - 64) <= 2 and abs(y - 64) <= 2 and c[64, 64] > 0.8


def test_the_arcades_alone_tell_the_eye_and_flip_with_the_image():
    from fundusgen.measure.disc import arcade_orientation, vessel_orientation
    from fundusgen.measure.vessels import classical_vessels
    image, fov = retina_square(256)  # a left eye
    signs = []
    for im, f in ((image, fov), (image[:, ::-1].copy(), fov[:, ::-1].copy())):
        response, mask = classical_vessels(im, f)
        signs.append(np.sign(arcade_orientation(response, f, vessel_orientation(response, mask)[1])))
    assert signs == [1, -1]  # '<' for a left eye, '>' for a right eye


def test_laterality_of_a_seeded_sample_of_the_mexican_set(shared_data):
    import random
    from fundusgen.data.fundus import ImageError
    from fundusgen.data.sources import read_source
    from fundusgen.measure.disc import anatomy
    records = [r for r in read_source("mex_dme_dr", shared_data / "mex_dme_dr") if r.eye is not None]
    hits = []
    for r in random.Random(0).sample(records, 60):
        try:
            image, fov, _ = preprocess(load_rgb(r.image), 512)
        except ImageError:
            continue
        a = anatomy(image, fov)
        hits.append((a.eye == r.eye.value, a.eye_confidence >= 0.9))
    confident = [ok for ok, sure in hits if sure]
    assert sum(ok for ok, _ in hits) >= 0.9 * len(hits)  # 95.4% over all 1,548 photos
    assert len(confident) >= 0.7 * len(hits) and sum(confident) >= len(confident) - 1  # 98.2% at 82% coverage
