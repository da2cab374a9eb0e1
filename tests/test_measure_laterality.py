import json

import numpy as np
import pytest

from fundusgen.errors import FundusgenError
from fundusgen.measure import laterality as lat
from fundusgen.measure.disc import anatomy
from fundusgen.measure.laterality import (EyeSet, LateralityTrainConfig, _batch, bce, build_laterality_net,
                                          image_input, load_eye_set, load_laterality_net, summarise,
                                          train_laterality_net)
from tests.measure_fixtures import retina_square, write_prepared, train_killed_then_resumed


def _retina_set(n: int = 8) -> EyeSet:
    """skimage's retina (a left eye) and its mirror image (a right eye), alternately."""
    image, fov = retina_square(256)
    x = image_input(image, fov)
    inputs = np.stack([x if i % 2 == 0 else x[:, :, ::-1] for i in range(n)]).astype(np.float16)
    return EyeSet([str(i) for i in range(n)], ["fixture"] * n, ["train"] * n,
                  np.array([i % 2 for i in range(n)], np.float32), inputs)


def test_the_logit_is_odd_under_a_horizontal_flip(one_thread):
    import torch
    torch.manual_seed(0)
    net = build_laterality_net(8).eval()
    x = torch.randn(3, 4, lat.INPUT, lat.INPUT)
    with torch.no_grad():
        a, b = net(x), net(x.flip(-1))
    assert torch.allclose(b, -a, atol=1e-6) and a.abs().max() > 0


def test_the_input_of_a_mirrored_photo_is_the_mirrored_input():
    image, fov = retina_square(256)
    x = image_input(image, fov)
    assert x.shape == (4, lat.INPUT, lat.INPUT) and x.dtype == np.float32
    mirrored = image_input(image[:, ::-1].copy(), fov[:, ::-1].copy())[:, :, ::-1]
    np.testing.assert_allclose(mirrored[:3], x[:3], atol=1e-3)
    # the classical vessel response is mirror-symmetric only nearly (CLAHE's rounding)
    assert np.abs(mirrored[3] - x[3]).mean() < 0.05


def _train_mode_loss(net, batch) -> float:
    import torch
    net.train()
    with torch.no_grad():
        return float(bce(net(batch[0]), batch[1]))


def test_training_lowers_the_loss_and_saves_safetensors(tmp_path, one_thread):
    import torch
    from fundusgen.train.checkpoint import step_generator
    data = _retina_set()
    cfg = LateralityTrainConfig(data="unused", out=str(tmp_path / "net"), steps=30, batch_size=8, channels=4,
                                lr=5e-3, checkpoint_every=30)
    batch = _batch(data, np.arange(len(data.keys)), 16, step_generator(123, 0))
    torch.manual_seed(cfg.seed)
    untrained = build_laterality_net(cfg.channels)
    out = train_laterality_net(cfg, progress=False, data=data)
    assert (out / "model.safetensors").is_file()
    cfg_json = json.loads((out / "config.json").read_text())
    assert cfg_json["kind"] == lat.KIND and cfg_json["trained"]["steps"] == 30
    trained = load_laterality_net(out)
    assert _train_mode_loss(trained, batch) < 0.5 * _train_mode_loss(untrained, batch)
    right, conf = lat.network_laterality(trained, *_working(retina_square(256)))
    assert right == "left" and 0.5 < conf <= 1.0


def _working(pair):
    from fundusgen.measure.disc import working_copy
    from fundusgen.measure.vessels import classical_vessels
    small, sfov, _ = working_copy(*pair)
    return small, sfov, classical_vessels(small, sfov)[0]


def test_training_resumes_exactly_after_a_kill(tmp_path, monkeypatch, one_thread):
    import torch
    data = _retina_set(4)
    small = dict(data="unused", steps=4, batch_size=2, channels=4, checkpoint_every=2)
    straight = train_laterality_net(LateralityTrainConfig(out=str(tmp_path / "a"), **small), progress=False, data=data)
    resumed = train_killed_then_resumed(
        lambda: train_laterality_net(LateralityTrainConfig(out=str(tmp_path / "b"), **small), progress=False, data=data), monkeypatch)
    from safetensors.torch import load_file
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_eye_set_of_a_prepared_folder(tmp_path):
    root = write_prepared(tmp_path / "prep")
    data, classical = load_eye_set(root, datasets=("fixture",), classical=True, progress=False)
    assert data.keys == ["fixture__a", "fixture__b", "fixture__e"]  # those with a known eye
    assert data.right.tolist() == [0.0, 1.0, 0.0] and data.inputs.shape == (3, 4, lat.INPUT, lat.INPUT)
    assert [e for e, _ in classical] == ["left", "right", "left"]


def test_loading_refuses_other_models(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"kind": "vessel-unet"}))
    with pytest.raises(FundusgenError, match="not a laterality network"):
        load_laterality_net(tmp_path)
    with pytest.raises(FundusgenError, match="config.json"):
        load_laterality_net(tmp_path / "missing")


def test_anatomy_falls_back_to_the_classical_cues_without_weights(monkeypatch):
    lat.shipped_laterality_net.cache_clear()
    monkeypatch.setattr(lat, "SHIPPED", lat.SHIPPED.parent / "absent-for-this-test")
    try:
        image, fov = retina_square(256)
        a = anatomy(image, fov)
        assert a.eye_method == "classical" and a.eye == "left"
        with pytest.raises(FundusgenError, match="not installed"):
            anatomy(image, fov, laterality_method="network")
    finally:
        lat.shipped_laterality_net.cache_clear()


@pytest.mark.skipif(not (lat.SHIPPED / "model.safetensors").is_file(), reason="laterality weights not shipped")
def test_the_shipped_network_tells_the_eyes_of_the_scikit_image_retina():
    image, fov = retina_square(512)
    a = anatomy(image, fov)
    assert a.eye_method == "network" and a.eye == "left" and a.eye_confidence > 0.9
    b = anatomy(image[:, ::-1].copy(), fov[:, ::-1].copy())
    assert b.eye == "right" and abs(b.eye_confidence - a.eye_confidence) < 0.02
    assert b.fovea_x is not None and b.fovea_x < b.disc_x  # searched temporal to the disc of a right eye
    assert anatomy(image, fov, laterality_method="classical").eye_method == "classical"


def test_summarise_counts_coverage_at_each_confidence():
    s = summarise([True, True, False, True], [0.99, 0.92, 0.6, 0.3])
    assert s["images"] == 4 and s["accuracy"] == 0.75 and s["errors"] == 1
    assert s["when_confident"]["0.9"] == {"coverage": 0.5, "accuracy": 1.0}
    assert s["when_confident"]["0.5"] == {"coverage": 0.75, "accuracy": round(2 / 3, 4)}


def test_evaluate_scores_against_corrected_and_source_labels(tmp_path):
    """skimage's retina (a left eye) and its mirror: photo c's source called it a right eye and an
    erratum corrected it, so the report scores each method against both and names photo c."""
    from fundusgen.data import shards
    from fundusgen.data.record import FundusRecord
    image, fov = retina_square(256)
    samples = []
    for rid, flip, eye, said in (("a", False, "left", None), ("b", True, "right", None), ("c", False, "left", "right")):
        record = FundusRecord("fixture", rid, f"/nowhere/{rid}.png", eye=eye,
                              corrections={"eye": {"label": said, "reason": "r", "errata": "e.csv"}} if said else {})
        meta = {"key": f"fixture__{rid}", "split": "test", "record": record.to_json()}
        im, mask = (image[:, ::-1].copy(), fov[:, ::-1].copy()) if flip else (image, fov)
        samples.append({"__key__": f"fixture__{rid}", "jpg": shards.encode_image(im),
                        "fov.png": shards.encode_png(mask.astype("uint8") * 255), "json": json.dumps(meta)})
    shards.write_shard(tmp_path / "shards" / "fundus-000000.tar", samples)
    report = lat.evaluate(tmp_path, lat.shipped_laterality_net(), datasets=("fixture",), progress=False)["fixture"]
    assert report["network"]["test"]["accuracy"] == 1.0
    assert report["network, source labels"]["test"]["accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    assert report["classical"]["test"]["images"] == 3 and "classical, source labels" in report
    assert report["corrected"] == {"fixture__c": "test"}
