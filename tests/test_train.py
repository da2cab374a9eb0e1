"""The training recipe end to end on a tiny prepared set: it runs on CPU, the loss falls, a
typo'd recipe is refused, and a run killed with SIGKILL resumes to exactly the same weights."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fundusgen.cli import main
from fundusgen.errors import FundusgenError
from fundusgen.model.dit import DiT
from fundusgen.model.pipeline import FundusGen
from fundusgen.train.config import load_recipe
from model_fixtures import torchrun, write_measurements, write_retina_folder

TINY = {
    "checkpoint_every": 3,
    "autoencoder": {"model": {"block_out_channels": [8, 16], "norm_num_groups": 4}, "steps": 4,
                    "batch_size": 2, "crop": 32},
    "denoiser": {"model": {"hidden_size": 32, "depth": 1, "num_heads": 2}, "caption_variants": 2,
                 "stages": [{"name": "pretrain", "resolution": 32, "subset": "all", "steps": 40, "batch_size": 8,
                             "lr": 2e-3, "warmup": 2},
                            {"name": "purified", "resolution": 32, "subset": "purified", "steps": 4, "batch_size": 8,
                             "lr": 1e-3, "warmup": 0},
                            {"name": "highres", "resolution": 64, "subset": "purified", "steps": 4, "batch_size": 4,
                             "lr": 1e-3, "warmup": 0, "time_shift": 2.0}]},
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    write_retina_folder(root / "raw", n_per_class=6)
    assert main(["prepare", "--source", f"image_folder={root / 'raw'}", "--out", str(root / "prepared"),
                 "--size", "64", "--workers", "1", "--quiet"]) == 0
    return root / "prepared"


def _recipe(path: Path, data: Path, out: Path, **extra) -> Path:
    path.write_text(yaml.safe_dump({**TINY, "data": str(data), "out": str(out), **extra}))
    return path


def test_tiny_recipe_trains_end_to_end_and_the_loss_falls(prepared, tmp_path):
    recipe = _recipe(tmp_path / "tiny.yaml", prepared, tmp_path / "run")
    assert main(["train", "--config", str(recipe), "--quiet"]) == 0
    history = json.loads((tmp_path / "run" / "denoiser" / "loss_history.json").read_text())
    assert len(history) == 48
    assert sum(history[32:40]) / 8 < 0.85 * sum(history[:8]) / 8  # within the pretrain stage
    pipe = FundusGen.from_pretrained(tmp_path / "run" / "model")
    assert pipe("left eye, no diabetic retinopathy", steps=2).images[0].size == (64, 64)
    assert pipe.config["time_shift"] == 2.0  # samples with the shift its last stage trained with
    assert (tmp_path / "run" / "denoiser" / "logs").is_dir()  # TensorBoard


def test_a_finished_run_given_another_stage_trains_only_that_stage(prepared, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--config", str(_recipe(tmp_path / "r.yaml", prepared, run)), "--quiet"]) == 0
    before = FundusGen.from_pretrained(run / "model").denoiser.state_dict()
    more = {**TINY["denoiser"], "stages": TINY["denoiser"]["stages"] + [
        {"name": "highres2", "resolution": 64, "subset": "purified", "steps": 3, "batch_size": 4, "lr": 1e-3,
         "warmup": 0, "decay": "cosine"}]}
    longer = _recipe(tmp_path / "longer.yaml", prepared, run, denoiser=more)
    assert main(["train", "--config", str(longer), "--quiet"]) == 0
    assert len(json.loads((run / "denoiser" / "loss_history.json").read_text())) == 3  # the new stage only
    after = FundusGen.from_pretrained(run / "model").denoiser.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert main(["train", "--config", str(longer), "--quiet"]) == 0  # all done: nothing more to train
    again = FundusGen.from_pretrained(run / "model").denoiser.state_dict()
    assert all(torch.equal(after[k], again[k]) for k in after)


def test_export_of_a_finished_run_continuing_with_a_new_stage_takes_its_newer_checkpoint(prepared, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--config", str(_recipe(tmp_path / "r.yaml", prepared, run)), "--quiet"]) == 0
    recipe = json.loads((run / "recipe.json").read_text())  # as `fundusgen train` writes a longer recipe at its start
    recipe["denoiser"]["stages"].append({**recipe["denoiser"]["stages"][-1], "name": "highres2"})
    (run / "recipe.json").write_text(json.dumps(recipe))
    ckpt = run / "denoiser" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    moved = [p + 1.0 for p in state["ema"]["shadow_params"]]  # as if killed two steps into the new stage
    torch.save({**state, "ema": {**state["ema"], "shadow_params": moved}, "stage": 3, "step": 2}, ckpt)
    assert (run / "model" / "model_index.json").is_file() and (run / "denoiser" / "final").is_dir()  # the old ones
    assert main(["export", str(run), str(tmp_path / "now")]) == 0
    exported = FundusGen.from_pretrained(tmp_path / "now")
    for p, m in zip(exported.denoiser.parameters(), moved):
        assert torch.equal(p, m.half().float())


def test_a_recipe_without_denoiser_stages_trains_the_autoencoder_only(prepared, tmp_path):
    recipe = _recipe(tmp_path / "ae.yaml", prepared, tmp_path / "run", denoiser={"stages": []})
    assert main(["train", "--config", str(recipe), "--quiet"]) == 0
    assert (tmp_path / "run" / "autoencoder" / "final" / "config.json").is_file()
    assert not (tmp_path / "run" / "denoiser").exists() and not (tmp_path / "run" / "cache.safetensors").exists()


def test_a_refiner_trains_alone_on_a_trained_transformer_given_by_init(prepared, tmp_path, capsys):
    base = tmp_path / "base"
    assert main(["train", "--config", str(_recipe(tmp_path / "b.yaml", prepared, base)), "--quiet"]) == 0
    trained = FundusGen.from_pretrained(base / "model").denoiser.state_dict()
    refiner = {**TINY["denoiser"], "init": str(base / "model" / "denoiser"),
               "model": {**TINY["denoiser"]["model"], "refiner_channels": 8, "refiner_depth": 2},
               "stages": [{"name": "refiner", "resolution": 64, "subset": "all", "steps": 6, "batch_size": 4,
                           "lr": 1e-2, "warmup": 0, "train": "refiner"}]}
    run = tmp_path / "refined"
    recipe = _recipe(tmp_path / "r.yaml", prepared, run, denoiser=refiner, aperture="circle")
    assert main(["train", "--config", str(recipe), "--quiet"]) == 0
    assert FundusGen.from_pretrained(run / "model").config["aperture"] == "circle"  # the recipe's sampling default
    after = FundusGen.from_pretrained(run / "model").denoiser.state_dict()
    assert all(torch.equal(trained[k].half(), after[k].half()) for k in trained)  # the transformer stayed frozen
    assert any(torch.count_nonzero(after[k]) for k in after if k.startswith("refiner.out."))  # the refiner learned
    assert len(json.loads((run / "denoiser" / "loss_history.json").read_text())) == 6

    wider = {**refiner, "model": {**refiner["model"], "hidden_size": 64}}  # not the init's architecture
    bad = _recipe(tmp_path / "wide.yaml", prepared, tmp_path / "wide", denoiser=wider)
    assert main(["train", "--config", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "denoiser.init" in err[0] and "only a refiner may be added" in err[0]
    none = {**refiner, "model": TINY["denoiser"]["model"]}  # 'train: refiner' and no refiner
    bad = _recipe(tmp_path / "none.yaml", prepared, tmp_path / "none", denoiser=none)
    assert main(["train", "--config", str(bad), "--quiet"]) == 2
    assert "refiner_channels" in capsys.readouterr().err


def test_a_vessel_weighted_loss_caches_vessel_maps_once_and_mirrors_them_with_the_latents(prepared, tmp_path, capsys):
    from fundusgen.train.cache import build_network_maps, load_cache
    from fundusgen.train.config import StageConfig
    from fundusgen.train.denoiser import make_batch
    stage = {"name": "highres", "resolution": 64, "subset": "all", "steps": 4, "batch_size": 8, "lr": 1e-3, "warmup": 0}
    denoiser = {**TINY["denoiser"], "vessel_weight": 4.0, "stages": [stage]}
    run = tmp_path / "run"
    assert main(["train", "--config", str(_recipe(tmp_path / "v.yaml", prepared, run, denoiser=denoiser)), "--quiet"]) == 0
    assert len(json.loads((run / "denoiser" / "loss_history.json").read_text())) == 4
    cache, info = load_cache(run / "cache.safetensors")
    maps = load_file(run / "vessels.safetensors")["vessels_64"].float()
    latents = cache["latents_64"].float()
    assert maps.shape == (latents.shape[0], 1, *latents.shape[-2:])
    assert 0 <= float(maps.min()) and float(maps.max()) <= 1
    means = maps.mean(dim=(1, 2, 3))
    assert float(means.min()) > 0.01  # skimage's retina has vessels; the network finds them in every copy
    # the fixture's odd copies are mirrored photographs: their maps are the mirror of the others'
    assert not torch.allclose(maps[0], maps[0].flip(-1), atol=0.02)

    # each drawn latent carries its own map, mirrored when the latent is
    cache["vessels_64"] = maps.half()
    x0, _, _, weight = make_batch(cache, info, torch.arange(len(maps)), StageConfig(**stage), 0.0, True,
                                  torch.Generator().manual_seed(3), {"vessels": 4.0})
    flips = 0
    for b in range(len(x0)):
        i, flipped = next((i, f) for i in range(len(latents)) for f in (False, True)
                          if torch.equal(x0[b], latents[i].flip(-1) if f else latents[i]))
        assert torch.allclose(weight[b], 1 + 4 * (maps[i].flip(-1) if flipped else maps[i]))
        flips += flipped
    assert 0 < flips < len(x0)
    assert make_batch(cache, info, torch.arange(len(maps)), StageConfig(**stage), 0.0, True,
                      torch.Generator().manual_seed(3))[3] is None  # no weight unless asked

    before = (run / "vessels.safetensors").stat().st_mtime_ns  # cached: a second build reads nothing again
    build_network_maps(prepared, run, info["keys"], {64: latents.shape[-1]}, ("vessels",), progress=False)
    assert (run / "vessels.safetensors").stat().st_mtime_ns == before

    negative = {**denoiser, "vessel_weight": -1}
    assert main(["train", "--config", str(_recipe(tmp_path / "n.yaml", prepared, tmp_path / "n", denoiser=negative)),
                 "--quiet"]) == 2
    assert "vessel_weight must be 0 or more" in capsys.readouterr().err
    diffusers = _recipe(tmp_path / "d.yaml", prepared, tmp_path / "d", denoiser=denoiser, base_pipeline=str(tmp_path))
    assert main(["train", "--config", str(diffusers), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vessel_weight" in err[0] and "base_pipeline" in err[0]
    for anatomy in (-0.5, 2.0):  # the layout's weight: refused below 0, and for a diffusers pipeline
        spec = {**TINY["denoiser"], "anatomy_weight": anatomy, "stages": [stage]}
        recipe = _recipe(tmp_path / "a.yaml", prepared, tmp_path / "a", denoiser=spec, base_pipeline=str(tmp_path))
        assert main(["train", "--config", str(recipe), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("anatomy_weight must be 0 or more" in err[0] if anatomy < 0 else
                                  "anatomy_weight" in err[0] and "base_pipeline" in err[0])


@pytest.mark.parametrize("recipe", sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_reads_with_the_strict_key_check(recipe):
    cfg = load_recipe(recipe)
    assert cfg.denoiser.stages or cfg.autoencoder.steps  # each recipe trains something


def test_a_typo_in_the_recipe_names_the_file_the_key_and_the_fix(tmp_path, capsys):
    bad = tmp_path / "typo.yaml"
    bad.write_text("denoiser:\n  caption_dropuot: 0.2\n")
    with pytest.raises(FundusgenError, match=r"typo.yaml.denoiser: unknown key 'caption_dropuot' \(did you mean 'caption_dropout'"):
        load_recipe(bad)
    assert main(["train", "--config", str(bad)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("setting, error", [
    ("ema_decay: 1.0", r"ema_decay must be in \[0, 1\) \(0: no average\), not 1.0"),
    ("snapshot_every: -5", r"snapshot_every must be 0 \(none\) or a number of steps, not -5"),
    ("latent_noise: -0.1", r"latent_noise must be 0 \(none\) or a positive noise level, not -0.1"),
    ("latent_noise: 0.2", r"latent_noise trains the decoder alone: it needs decoder_steps > 0"),
    ("sample_model: m\n  decoder_steps: 5\n  steps: 0\n  loss: {adversarial: 0.5}", r"sample_model refines a "
     r"decoder on its model's latents: it needs init \(that model's autoencoder\), steps: 0 and decoder_steps > 0"),
    ("sample_model: m\n  init: m/autoencoder\n  decoder_steps: 5\n  steps: 0", r"sample_model teaches the decoder "
     r"through the discriminator: it needs loss.adversarial > 0"),
    ("sample_model: m\n  init: m/autoencoder\n  decoder_steps: 5\n  steps: 0\n  loss: {adversarial: 0.5}\n  sample_n: 2",
     r"sample_n must be at least batch_size \(8\) and sample_weight > 0 \(got 2, 1.0\)")])
def test_an_autoencoder_average_snapshot_or_noise_setting_out_of_range_is_one_clear_error(tmp_path, setting, error):
    bad = tmp_path / "ema.yaml"
    bad.write_text(f"autoencoder:\n  {setting}\n")
    with pytest.raises(FundusgenError, match=r"ema.yaml.autoencoder: " + error):
        load_recipe(bad)


def test_stage_learning_rate_warms_up_then_stays_or_follows_a_half_cosine_to_zero(tmp_path):
    from fundusgen.train.config import StageConfig
    from fundusgen.train.denoiser import lr_at
    flat = StageConfig(steps=110, lr=1e-3, warmup=10)
    assert [lr_at(flat, s) for s in (0, 4, 9, 60, 109)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    cos = StageConfig(steps=110, lr=1e-3, warmup=10, decay="cosine")
    assert lr_at(cos, 4) == pytest.approx(5e-4) and lr_at(cos, 10) == pytest.approx(1e-3)
    assert lr_at(cos, 60) == pytest.approx(5e-4)  # half way through the decay
    assert lr_at(cos, 109) < 1e-6 and all(lr_at(cos, s) >= lr_at(cos, s + 1) for s in range(10, 109))
    bad = tmp_path / "decay.yaml"
    bad.write_text("denoiser:\n  stages:\n    - {name: pretrain, decay: linear}\n")
    with pytest.raises(FundusgenError, match=r"decay.yaml.denoiser.stages\[0\]: decay must be 'none' or 'cosine', not 'linear'"):
        load_recipe(bad)
    bad.write_text("denoiser:\n  stages:\n    - {name: pretrain, train: decoder}\n")
    with pytest.raises(FundusgenError, match=r"train must be 'all' or 'refiner', not 'decoder'"):
        load_recipe(bad)


def _train_cmd(recipe: Path) -> list[str]:
    return [sys.executable, "-m", "fundusgen.cli", "train", "--config", str(recipe), "--quiet"]


def test_training_killed_with_sigkill_resumes_to_exactly_the_same_weights(prepared, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = _recipe(tmp_path / "a.yaml", prepared, tmp_path / "a")
    subprocess.run(_train_cmd(straight), check=True, env=env, capture_output=True)

    killed = _recipe(tmp_path / "b.yaml", prepared, tmp_path / "b")
    proc = subprocess.Popen(_train_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "b" / "denoiser" / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (tmp_path / "b" / "model").exists(), "the kill came too late to test resuming"
    subprocess.run(_train_cmd(killed), check=True, env=env, capture_output=True)

    for part in ("autoencoder", "denoiser"):
        a = load_file(str(next((tmp_path / "a" / "model" / part).glob("*.safetensors"))))
        b = load_file(str(next((tmp_path / "b" / "model" / part).glob("*.safetensors"))))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{part} weights differ after resuming"


def test_two_processes_train_one_run_each_drawing_its_own_batches(prepared, tmp_path):
    """DDP on the CPU (gloo): one process makes the caches, both train, the first writes the model.
    Each process draws its own batches, so the weights differ from one process's; the autoencoder
    goes into its decoder phase (the encoder frozen under DDP) on the way."""
    small = {**TINY, "autoencoder": {**TINY["autoencoder"], "steps": 3, "decoder_steps": 2},
             "denoiser": {**TINY["denoiser"], "stages": [dict(TINY["denoiser"]["stages"][0], steps=6),
                                                          dict(TINY["denoiser"]["stages"][2], steps=2)]}}
    runs = {}
    for name in ("one", "two"):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(yaml.safe_dump({**small, "data": str(prepared), "out": str(tmp_path / name)}))
        runs[name] = recipe
    subprocess.run(_train_cmd(runs["one"]), check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    # torchrun: what `accelerate launch --multi_gpu` starts on GPUs (accelerate's --cpu launcher wants MPI)
    done = torchrun(_train_cmd(runs["two"])[1:], tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "making it again" not in done.stderr  # the second process read the first one's caches
    history = json.loads((tmp_path / "two" / "denoiser" / "loss_history.json").read_text())
    assert len(history) == 8
    pipe = FundusGen.from_pretrained(tmp_path / "two" / "model")
    assert pipe("left eye", steps=2).images[0].size == (64, 64)
    for part in ("autoencoder", "denoiser"):
        one = load_file(str(next((tmp_path / "one" / "model" / part).glob("*.safetensors"))))
        two = load_file(str(next((tmp_path / "two" / "model" / part).glob("*.safetensors"))))
        assert not all(torch.equal(one[k], two[k]) for k in one), f"{part}: both processes drew one process's batches"


def test_fsdp_trains_what_ddp_trains_and_resumes_exactly_from_whole_checkpoints(prepared, tmp_path):
    """``parallel: fsdp`` with two CPU processes (gloo): weights, EMA and optimizer state sharded, the
    same batches per process as DDP, so the same model to float rounding; its checkpoints hold whole
    states, so a run stopped between stages goes on to exactly the weights of one that was not."""
    stages = [dict(TINY["denoiser"]["stages"][0], steps=6), dict(TINY["denoiser"]["stages"][2], steps=3)]
    small = {**TINY, "checkpoint_every": 2, "autoencoder": {**TINY["autoencoder"], "steps": 2},
             "denoiser": {**TINY["denoiser"], "model": {**TINY["denoiser"]["model"], "depth": 2, "refiner_channels": 8,
                                                         "refiner_depth": 1}, "stages": stages}}

    def train(name: str, **extra) -> Path:
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(yaml.safe_dump({**small, "data": str(prepared), "out": str(tmp_path / "runs" / name), **extra}))
        done = torchrun(_train_cmd(recipe)[1:], tmp_path / "runs" / name)
        assert done.returncode == 0, done.stderr[-3000:]
        return tmp_path / "runs" / name

    def weights(run: Path) -> dict:
        return load_file(str(next((run / "model" / "denoiser").glob("*.safetensors"))))

    ddp, fsdp = weights(train("ddp")), weights(train("fsdp", parallel="fsdp"))
    assert ddp.keys() == fsdp.keys() and any(k.startswith("refiner.") for k in ddp)
    # the same losses step for step; the weights equal to the rounding of sums taken in another order,
    # which Adam's normalisation magnifies on near-zero gradients (the zero-initialised refiner's
    # biases: 2e-4 where the steps moved them by about 0.02)
    assert json.loads((tmp_path / "runs" / "ddp" / "denoiser" / "loss_history.json").read_text()) == pytest.approx(
        json.loads((tmp_path / "runs" / "fsdp" / "denoiser" / "loss_history.json").read_text()), rel=1e-5)
    assert all(torch.allclose(ddp[k], fsdp[k], atol=5e-4) for k in ddp)
    ckpt = torch.load(tmp_path / "runs" / "fsdp" / "denoiser" / "checkpoint.pt", weights_only=True)
    assert all(ckpt["model"][k].shape == ddp[k].shape for k in ddp)  # whole, not one process's shard
    assert len(ckpt["ema"]["shadow_params"]) == len(ddp)
    # the same run stopped after its first stage, then given its second: exactly the same weights
    train("later", parallel="fsdp", denoiser={**small["denoiser"], "stages": stages[:1]})
    later = weights(train("later", parallel="fsdp"))
    assert all(torch.equal(fsdp[k], later[k]) for k in fsdp)
    # checkpoints have one layout: a DDP run's first stage goes on under FSDP, and an FSDP run's under DDP
    train("switch", denoiser={**small["denoiser"], "stages": stages[:1]})
    assert all(torch.allclose(ddp[k], v, atol=5e-4) for k, v in weights(train("switch", parallel="fsdp")).items())
    train("back", parallel="fsdp", denoiser={**small["denoiser"], "stages": stages[:1]})
    assert all(torch.allclose(ddp[k], v, atol=5e-4) for k, v in weights(train("back")).items())


def test_anatomy_maps_mark_the_measured_disc_and_macula_and_add_to_the_vessel_weights(prepared, tmp_path):
    from fundusgen.train.cache import MACULA_RADIUS_DD, anatomy_map, build_anatomy_maps, load_cache
    # a disc of diameter 0.2 at (0.8, 0.5) and a fovea 2.5 disc diameters to its left
    disc, fovea = {"x": 0.8, "y": 0.5, "diameter": 0.2}, {"x": 0.3, "y": 0.5}
    m = anatomy_map({"disc": disc, "fovea": fovea}, 16)
    assert m.shape == (16, 16) and 0 <= float(m.min()) and float(m.max()) == 1
    assert float(m[8, 12]) == 1 and float(m[8, 4]) == 1 and float(m[8, 9]) == 0 and float(m[1, 1]) == 0
    area = 3.14159 * (0.1 ** 2 + (MACULA_RADIUS_DD * 0.2) ** 2)
    assert float(m.mean()) == pytest.approx(area, rel=0.05)  # the cells' shares add up to the two disks' area
    assert torch.equal(anatomy_map({"disc": disc}, 16), anatomy_map({"disc": disc, "fovea": None}, 16))
    assert float(anatomy_map({"disc": None, "fovea": fovea}, 16).sum()) == 0  # no disc: no scale for the macula

    data = tmp_path / "prepared"
    shutil.copytree(prepared, data)
    stage = {"name": "highres", "resolution": 64, "subset": "all", "steps": 2, "batch_size": 4, "lr": 1e-3, "warmup": 0}
    denoiser = {**TINY["denoiser"], "anatomy_weight": 3.0, "stages": [stage]}
    recipe = _recipe(tmp_path / "a.yaml", data, tmp_path / "run", denoiser=denoiser)
    with pytest.raises(FundusgenError, match=r"anatomy_weight needs `fundusgen measure` .* run `fundusgen measure"):
        from fundusgen.train.run import train
        train(load_recipe(recipe), progress=False)
    write_measurements(data, {"disc": disc, "fovea": fovea})  # every image measured with the same disc and fovea
    assert main(["train", "--config", str(recipe), "--quiet"]) == 0
    assert len(json.loads((tmp_path / "run" / "denoiser" / "loss_history.json").read_text())) == 2
    cache, info = load_cache(tmp_path / "run" / "cache.safetensors")
    side = cache["latents_64"].shape[-1]
    maps = load_file(tmp_path / "run" / "anatomy.safetensors")["anatomy_64"]
    assert maps.shape == (len(info["keys"]), 1, side, side)
    assert torch.allclose(maps[0, 0].float(), anatomy_map({"disc": disc, "fovea": fovea}, side), atol=1e-3)
    before = (tmp_path / "run" / "anatomy.safetensors").stat().st_mtime_ns
    build_anatomy_maps(data, tmp_path / "run", info["keys"], {64: side})  # current: not made again
    assert (tmp_path / "run" / "anatomy.safetensors").stat().st_mtime_ns == before

    # both weights together: 1 + 2 x vessels + 3 x anatomy, each mirrored with its latent
    from fundusgen.train.config import StageConfig
    from fundusgen.train.denoiser import make_batch
    cache["anatomy_64"], cache["vessels_64"] = maps, torch.rand(maps.shape).half()
    x0, _, _, weight = make_batch(cache, info, torch.arange(len(maps)), StageConfig(**stage), 0.0, True,
                                  torch.Generator().manual_seed(1), {"vessels": 2.0, "anatomy": 3.0})
    latents = cache["latents_64"].float()
    for b in range(len(x0)):
        i, flipped = next((i, f) for i in range(len(latents)) for f in (False, True)
                          if torch.equal(x0[b], latents[i].flip(-1) if f else latents[i]))
        v, a = cache["vessels_64"][i].float(), maps[i].float()
        assert torch.allclose(weight[b], 1 + 2 * (v.flip(-1) if flipped else v) + 3 * (a.flip(-1) if flipped else a))
    with pytest.raises(ValueError, match=r"unknown loss maps \['vessel'\]"):  # a misspelt map is not silently unweighted
        make_batch(cache, info, torch.arange(len(maps)), StageConfig(**stage), 0.0, True, torch.Generator(),
                   {"vessel": 2.0})


def test_lesion_maps_mark_the_cells_of_the_measured_spots():
    import cv2
    from fundusgen.measure.attributes import measure
    from fundusgen.train.cache import lesion_map, lesion_mask
    from tests.measure_fixtures import retina_square
    image, fov = retina_square(512)
    centres = [(330 + 25 * i, 330 + 12 * (i % 2)) for i in range(6)]
    painted = image.copy()
    for x, y in centres:
        cv2.circle(painted, (x, y), 3, (70, 10, 10), -1)  # dark spots: microaneurysm-sized at 512 px
    m = measure(painted, fov)
    mask = lesion_mask(painted, fov, m)
    assert mask.shape == fov.shape and mask.dtype == torch.bool
    cells = lesion_map(mask, 64)
    assert set(cells.unique().tolist()) <= {0.0, 1.0}  # a cell's presence, not its share
    assert all(float(cells[y // 8, x // 8]) == 1 for x, y in centres)
    assert float(lesion_map(lesion_mask(image, fov, measure(image, fov)), 64).sum()) <= float(cells.sum()) - 6
    # the spots are those measure counts: one connected patch of the mask each
    def patches(mask):
        return cv2.connectedComponents(mask.numpy().astype("uint8"), connectivity=8)[0] - 1
    assert patches(mask) == m["lesions"]["bright"]["count"] + m["lesions"]["dark"]["count"]
    dark, bright = lesion_mask(painted, fov, m, kinds=("dark",)), lesion_mask(painted, fov, m, kinds=("bright",))
    assert patches(dark) == m["lesions"]["dark"]["count"] >= 6 and torch.equal(dark | bright, mask)
    assert all(float(lesion_map(dark, 64)[y // 8, x // 8]) == 1 for x, y in centres)   # painted dark: in the dark map


def test_a_lesion_weighted_loss_caches_its_maps_in_the_vessel_maps_pass_and_adds_them_up(prepared, tmp_path, capsys):
    from fundusgen.measure.vessels import network_vessels, shipped_vessel_net
    from fundusgen.data.shards import iter_samples
    from fundusgen.train.cache import build_network_maps, lesion_map, lesion_mask, load_cache
    from fundusgen.train.config import StageConfig
    from fundusgen.train.denoiser import make_batch
    data = tmp_path / "prepared"
    shutil.copytree(prepared, data)
    stage = {"name": "highres", "resolution": 64, "subset": "all", "steps": 2, "batch_size": 4, "lr": 1e-3, "warmup": 0}
    denoiser = {**TINY["denoiser"], "vessel_weight": 2.0, "lesion_weight": 5.0, "dark_spot_weight": 7.0, "stages": [stage]}
    recipe = _recipe(tmp_path / "l.yaml", data, tmp_path / "run", denoiser=denoiser)
    assert main(["train", "--config", str(recipe), "--quiet"]) == 2  # never measured: one line saying what to run
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lesion_weight needs `fundusgen measure`" in err[0] and str(data) in err[0]
    measurements = {"disc": {"x": 0.75, "y": 0.5, "diameter": 0.15, "ratio": 0.15}, "fovea": {"x": 0.4, "y": 0.5}}
    write_measurements(data, measurements)
    assert main(["train", "--config", str(recipe), "--quiet"]) == 0
    run = tmp_path / "run"
    assert len(json.loads((run / "denoiser" / "loss_history.json").read_text())) == 2
    cache, info = load_cache(run / "cache.safetensors")
    side = cache["latents_64"].shape[-1]
    lesions = load_file(run / "lesions.safetensors")["lesions_64"]
    dark = load_file(run / "dark_spots.safetensors")["dark_spots_64"]
    vessels = load_file(run / "vessels.safetensors")["vessels_64"]
    assert lesions.shape == dark.shape == vessels.shape == (len(info["keys"]), 1, side, side)
    # each image's maps are what the vessel network and the detector give it, in the cache's order
    net, row = shipped_vessel_net(), {k: i for i, k in enumerate(info["keys"])}
    for sample in iter_samples(data, "train", keep=lambda m: m["key"] in row):
        prob, mask = network_vessels(net, sample["image"], sample["fov"])
        i = row[sample["key"]]
        spots = lesion_map(lesion_mask(sample["image"], sample["fov"], measurements, mask.astype(bool)), side)
        assert torch.equal(lesions[i, 0], spots.half())
        assert torch.equal(dark[i, 0], lesion_map(lesion_mask(sample["image"], sample["fov"], measurements,
                                                              mask.astype(bool), kinds=("dark",)), side).half())
        assert torch.equal(vessels[i], torch.nn.functional.adaptive_avg_pool2d(
            torch.from_numpy(prob)[None, None].float(), side)[0].half())
    kinds = ("vessels", "lesions", "dark_spots")
    stamps = {k: (run / f"{k}.safetensors").stat().st_mtime_ns for k in kinds}
    build_network_maps(data, run, info["keys"], {64: side}, kinds, progress=False)
    assert stamps == {k: (run / f"{k}.safetensors").stat().st_mtime_ns for k in kinds}
    (run / "lesions.safetensors").unlink()   # made again with the detector in three threads: the same maps
    build_network_maps(data, run, info["keys"], {64: side}, kinds, progress=False, workers=3)
    assert torch.equal(load_file(run / "lesions.safetensors")["lesions_64"], lesions)
    with pytest.raises(ValueError, match="unknown network maps"):
        build_network_maps(data, run, info["keys"], {64: side}, ("vessel",), progress=False)

    # all four weights: 1 + 2 x vessels + 3 x anatomy + 5 x lesions + 7 x dark spots, each mirrored with its latent
    cache["vessels_64"], cache["lesions_64"] = vessels, torch.rand(lesions.shape).round().half()
    cache["anatomy_64"], cache["dark_spots_64"] = torch.rand(lesions.shape).half(), torch.rand(lesions.shape).round().half()
    x0, _, _, weight = make_batch(cache, info, torch.arange(len(lesions)), StageConfig(**stage), 0.0, True,
                                  torch.Generator().manual_seed(2),
                                  {"vessels": 2.0, "anatomy": 3.0, "lesions": 5.0, "dark_spots": 7.0})
    latents = cache["latents_64"].float()
    for b in range(len(x0)):
        i, flipped = next((i, f) for i in range(len(latents)) for f in (False, True)
                          if torch.equal(x0[b], latents[i].flip(-1) if f else latents[i]))
        v, a, les, d = (cache[f"{k}_64"][i].float() for k in ("vessels", "anatomy", "lesions", "dark_spots"))
        if flipped:
            v, a, les, d = v.flip(-1), a.flip(-1), les.flip(-1), d.flip(-1)
        assert torch.allclose(weight[b], 1 + 2 * v + 3 * a + 5 * les + 7 * d)
    negative = _recipe(tmp_path / "n.yaml", data, tmp_path / "n", denoiser={**denoiser, "dark_spot_weight": -1})
    assert main(["train", "--config", str(negative), "--quiet"]) == 2
    assert "dark_spot_weight must be 0 or more" in capsys.readouterr().err

    # lesion_gate dr: the lesion maps kept for the photographs labelled with DR (grade 2 here), zero for
    # the grade-0 ones; the vessel maps untouched; the recipe trains with it, and refuses a value it lacks
    from fundusgen.data.prepare import read_index
    from fundusgen.train.cache import dr_labelled, gate_lesion_maps
    grades = read_index(data).set_index("key")["dr_grade"].reindex(info["keys"])
    gate = dr_labelled(data, info["keys"])
    assert gate.tolist() == [float(g >= 1) for g in grades] and 0 < gate.sum() < len(gate)
    maps = {"lesions_64": lesions.clone(), "dark_spots_64": dark.clone(), "vessels_64": vessels.clone()}
    gate_lesion_maps(maps, gate)
    for i, g in enumerate(gate.tolist()):
        assert torch.equal(maps["lesions_64"][i], lesions[i] if g else torch.zeros_like(lesions[i]))
        assert torch.equal(maps["dark_spots_64"][i], dark[i] if g else torch.zeros_like(dark[i]))
    assert torch.equal(maps["vessels_64"], vessels)
    gated = _recipe(tmp_path / "g.yaml", data, tmp_path / "g", denoiser={**denoiser, "lesion_gate": "dr"})
    assert main(["train", "--config", str(gated), "--quiet"]) == 0
    assert len(json.loads((tmp_path / "g" / "denoiser" / "loss_history.json").read_text())) == 2
    wrong = _recipe(tmp_path / "w.yaml", data, tmp_path / "w", denoiser={**denoiser, "lesion_gate": "grade"})
    assert main(["train", "--config", str(wrong), "--quiet"]) == 2
    assert "lesion_gate must be none or dr" in capsys.readouterr().err


def test_an_empty_purified_subset_is_one_clear_error_naming_the_stage():
    from fundusgen.train.config import StageConfig
    from fundusgen.train.denoiser import subset_indices
    cache = {"caption_ids": torch.zeros(4, 2), "quality": torch.tensor([0.9, 0.9, 0.2, 0.9]),
             "purified": torch.tensor([0, 0, 1, 0], dtype=torch.uint8)}
    stage = StageConfig("polish", 64, "purified", 3)
    with pytest.raises(FundusgenError, match=r"stage 'polish': its 'purified' subset is empty: of the 4 training "
                                             r"images 1 were kept by `fundusgen purify` and 3 have a quality score"):
        subset_indices(cache, stage, 0.5)
    assert subset_indices({**cache, "purified": torch.ones(4)}, stage, 0.5).tolist() == [0, 1, 3]
    assert subset_indices(cache, StageConfig("all", 64, "all", 3), 0.5).tolist() == [0, 1, 2, 3]


def test_each_process_draws_its_own_steps_and_the_first_draws_what_one_process_would():
    from fundusgen.train.checkpoint import step_generator
    draws = {rank: torch.rand(4, generator=step_generator(7, 12, rank)) for rank in range(3)}
    assert torch.equal(draws[0], torch.rand(4, generator=torch.Generator().manual_seed(7 * 1_000_003 + 12)))
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert torch.equal(draws[1], torch.rand(4, generator=step_generator(7, 12, 1)))  # still a pure function


def _autoencoder(prepared: Path, tmp_path: Path, name: str, steps: int, decoder_steps: int, **ae) -> dict:
    from fundusgen.train.autoencoder import train_autoencoder
    tiny = {**TINY, "autoencoder": {**TINY["autoencoder"], "steps": steps, "decoder_steps": decoder_steps, **ae}}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**tiny, "data": str(prepared), "out": str(tmp_path / name)}))
    final = train_autoencoder(load_recipe(tmp_path / f"{name}.yaml"), progress=False)
    return load_file(str(next(final.glob("*.safetensors"))))


def test_decoder_phase_keeps_the_encoder_and_resumes_exactly(prepared, tmp_path):
    plain = _autoencoder(prepared, tmp_path, "plain", 4, 0)
    refined = _autoencoder(prepared, tmp_path, "refined", 4, 4)
    encoder = [k for k in plain if k.startswith(("vae.encoder.", "vae.quant_conv."))]
    decoder = [k for k in plain if k.startswith(("vae.decoder.", "vae.post_quant_conv."))]
    assert encoder and decoder
    assert all(torch.equal(plain[k], refined[k]) for k in encoder), "the decoder phase moved the encoder"
    assert not all(torch.equal(plain[k], refined[k]) for k in decoder), "the decoder phase did not train the decoder"
    # stop inside the decoder phase (checkpoint at step 6 of 8), then carry on: the same weights
    _autoencoder(prepared, tmp_path, "resumed", 4, 2)
    shutil.rmtree(tmp_path / "resumed" / "autoencoder" / "final")
    resumed = _autoencoder(prepared, tmp_path, "resumed", 4, 4)
    assert all(torch.equal(refined[k], resumed[k]) for k in refined), "resuming inside the decoder phase changed the weights"


def test_latent_noise_decodes_perturbed_latents_in_the_decoder_phase_and_resumes_exactly(prepared, tmp_path):
    """``latent_noise``: the decoder learns from latents with Gaussian noise added, scaled by the latents'
    own spread (measured after the first phase, or the init's kept scale); the encoder stays, the decoder
    differs from one trained on the same batches without noise, and a run stopped in the phase ends the same."""
    from fundusgen.model.autoencoder import FundusAutoencoder
    plain = _autoencoder(prepared, tmp_path, "plain", 4, 4)
    noisy = _autoencoder(prepared, tmp_path, "noisy", 4, 4, latent_noise=0.5)
    assert all(torch.equal(plain[k], noisy[k]) for k in plain if k.startswith(("vae.encoder.", "vae.quant_conv.")))
    assert not all(torch.equal(plain[k], noisy[k]) for k in plain if k.startswith("vae.decoder."))
    _autoencoder(prepared, tmp_path, "stopped", 4, 2, latent_noise=0.5)  # checkpoint at step 6 of 8
    shutil.rmtree(tmp_path / "stopped" / "autoencoder" / "final")
    resumed = _autoencoder(prepared, tmp_path, "stopped", 4, 4, latent_noise=0.5)
    assert all(torch.equal(noisy[k], resumed[k]) for k in noisy), "resuming with latent noise changed the weights"
    source = tmp_path / "plain" / "autoencoder" / "final"
    refined = _autoencoder(prepared, tmp_path, "from_init", 0, 2, init=str(source), latent_noise=0.5)
    assert not all(torch.equal(plain[k], refined[k]) for k in plain if k.startswith("vae.decoder."))
    # the forward pass adds the noise to the latent it decodes
    model = FundusAutoencoder.from_pretrained(str(source)).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    n = torch.randn(1, 4, 8, 8) * 0.3
    with torch.no_grad():
        recon, posterior = model(x, sample=False, latent_noise=n)
        assert torch.allclose(recon, model.decode(posterior.mode() + n), atol=1e-6)


def test_a_checkpoint_saved_before_the_discriminator_was_set_resumes_with_a_fresh_one(prepared, tmp_path, capsys):
    _autoencoder(prepared, tmp_path, "run", 4, 2)  # no discriminator; checkpoint at step 6
    shutil.rmtree(tmp_path / "run" / "autoencoder" / "final")
    _autoencoder(prepared, tmp_path, "run", 4, 4, loss={"adversarial": 0.5})
    assert "saved without a discriminator; a fresh one joins from step 6" in capsys.readouterr().err
    state = torch.load(tmp_path / "run" / "autoencoder" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 8 and "disc" in state


def test_decoder_phase_trains_with_the_discriminator_at_the_model_resolution_and_resumes_exactly(prepared, tmp_path):
    """``resolution`` resizes the 64 px training images to 32 px (whole images with ``crop`` 32), the
    patch discriminator joins the decoder phase at its adaptive weight, the encoder stays as it was,
    and a run killed inside that phase ends with the same weights (the discriminator is checkpointed)."""
    from fundusgen.train.autoencoder import resize_uint8, train_autoencoder
    plain = _autoencoder(prepared, tmp_path, "plain", 4, 0)
    source = tmp_path / "plain" / "autoencoder" / "final"
    loss = {"adversarial": 0.5, "adversarial_adaptive": True}
    tiny = {**TINY, "checkpoint_every": 2, "autoencoder": {**TINY["autoencoder"], "steps": 0, "decoder_steps": 4,
                                                          "init": str(source), "resolution": 32, "crop": 32,
                                                          "loss": loss}}

    def run(name, **ae):
        cfg = {**tiny, "autoencoder": {**tiny["autoencoder"], **ae}, "data": str(prepared), "out": str(tmp_path / name)}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        return train_autoencoder(load_recipe(tmp_path / f"{name}.yaml"), progress=False)

    final = run("gan")
    refined = load_file(str(next(final.glob("*.safetensors"))))
    assert all(torch.equal(plain[k], refined[k]) for k in plain if k.startswith(("vae.encoder.", "vae.quant_conv.")))
    assert not all(torch.equal(plain[k], refined[k]) for k in plain if k.startswith("vae.decoder."))
    state = torch.load(tmp_path / "gan" / "autoencoder" / "checkpoint.pt", weights_only=True)
    assert "disc" in state and "optimizer_d" in state
    run("killed", decoder_steps=2)
    shutil.rmtree(tmp_path / "killed" / "autoencoder" / "final")
    resumed = load_file(str(next(run("killed").glob("*.safetensors"))))
    assert all(torch.equal(refined[k], resumed[k]) for k in refined), "resuming with the discriminator changed the weights"
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    small = resize_uint8(images, 32)
    assert small.dtype == torch.uint8 and small.shape == (3, 3, 32, 32)
    assert torch.allclose(small.float(), torch.nn.functional.avg_pool2d(images.float(), 2), atol=0.5 + 1e-4)
    with pytest.raises(FundusgenError, match=r"autoencoder.crop 48 is larger than the training images \(32 px after "
                                             r"autoencoder.resolution\)"):
        run("too_big", crop=48)


def test_decoder_phase_saves_the_moving_average_and_snapshots_and_resumes_exactly(prepared, tmp_path):
    """``ema_decay``: the saved folders hold the moving average of the weights, not the last ones;
    ``snapshot_every``: every N steps a model folder of its own; a run stopped after its first
    snapshot ends with the same weights and snapshots."""
    from fundusgen.model.autoencoder import FundusAutoencoder
    from fundusgen.train.autoencoder import train_autoencoder
    _autoencoder(prepared, tmp_path, "plain", 4, 0)
    source = tmp_path / "plain" / "autoencoder" / "final"
    tiny = {**TINY, "checkpoint_every": 2, "autoencoder": {
        **TINY["autoencoder"], "steps": 0, "decoder_steps": 4, "init": str(source), "ema_decay": 0.9,
        "snapshot_every": 2, "loss": {"adversarial": 0.5, "adversarial_adaptive": True}}}

    def run(name, **ae):
        cfg = {**tiny, "autoencoder": {**tiny["autoencoder"], **ae}, "data": str(prepared), "out": str(tmp_path / name)}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        return train_autoencoder(load_recipe(tmp_path / f"{name}.yaml"), progress=False)

    final = run("ema")
    out = final.parent
    assert sorted(p.name for p in out.glob("step_*")) == ["step_2", "step_4"] and not list(out.glob("*.tmp"))
    weights = load_file(str(next(final.glob("*.safetensors"))))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert "ema" in state and state["step"] == 4
    decoder = [k for k in weights if k.startswith("vae.decoder.")]
    assert not all(torch.equal(weights[k], state["model"][k]) for k in decoder), "final/ holds the last weights, not their average"
    names = [n for n, _ in FundusAutoencoder.from_pretrained(str(final)).named_parameters()]
    shadow = dict(zip(names, state["ema"]["shadow_params"]))
    assert all(torch.allclose(weights[k], shadow[k]) for k in decoder)
    assert FundusAutoencoder.from_pretrained(str(out / "step_2")).config.scaling_factor == \
        FundusAutoencoder.from_pretrained(str(source)).config.scaling_factor
    run("stopped", decoder_steps=2)
    shutil.rmtree(tmp_path / "stopped" / "autoencoder" / "final")
    resumed = run("stopped")
    assert all(torch.equal(weights[k], v) for k, v in load_file(str(next(resumed.glob("*.safetensors")))).items())
    for name in ("step_2", "step_4"):
        snap = load_file(str(next((out / name).glob("*.safetensors"))))
        assert all(torch.equal(snap[k], v) for k, v in
                   load_file(str(next((resumed.parent / name).glob("*.safetensors")))).items()), name
    assert all(torch.equal(weights[k], v) for k, v in snap.items()), "step_4 is not the final weights"


def test_decoder_phase_learns_from_the_discriminator_on_a_models_own_samples_and_resumes_exactly(prepared, tmp_path,
                                                                                                 capsys):
    """``sample_model``: the model draws ``sample_n`` latents once (kept, and read back on resume); the
    discriminator also judges the decoder's drawings of them, so the decoder moves otherwise than on the
    same batches without; the encoder stays; a stopped run ends the same; a model whose encoder is not
    the init's is refused, since its samples are not latents of that decoder."""
    from fundusgen.model.autoencoder import FundusAutoencoder
    from fundusgen.model.dit import DiT
    from fundusgen.model.text_encoder import TextEncoder
    from fundusgen.train.autoencoder import train_autoencoder
    plain = _autoencoder(prepared, tmp_path, "plain", 4, 0)
    source = tmp_path / "plain" / "autoencoder" / "final"
    torch.manual_seed(0)
    FundusGen(FundusAutoencoder.from_pretrained(str(source)), DiT(hidden_size=32, depth=1, num_heads=2, text_dim=384),
              TextEncoder("minilm"), {"name": "tiny", "text_encoder": "minilm", "resolution": 32, "steps": 2,
                                      "guidance": 2.0, "sampler": "euler", "aperture": "circle"}).save_pretrained(tmp_path / "model")
    loss = {"adversarial": 0.5, "adversarial_adaptive": True}
    tiny = {**TINY, "checkpoint_every": 2, "autoencoder": {**TINY["autoencoder"], "steps": 0, "decoder_steps": 4,
                                                          "init": str(source), "loss": loss}}

    def run(name, **ae):
        cfg = {**tiny, "autoencoder": {**tiny["autoencoder"], **ae}, "data": str(prepared), "out": str(tmp_path / name)}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        final = train_autoencoder(load_recipe(tmp_path / f"{name}.yaml"), progress=False)
        return load_file(str(next(final.glob("*.safetensors"))))

    samples = {"sample_model": str(tmp_path / "model"), "sample_n": 3}
    without = run("without")
    refined = run("samples", **samples)
    bank = load_file(str(tmp_path / "samples" / "autoencoder" / "sample_latents.safetensors"))["latents"]
    assert bank.shape == (3, 4, 8, 8) and bank.std() > 0
    assert all(torch.equal(plain[k], refined[k]) for k in plain if k.startswith(("vae.encoder.", "vae.quant_conv.")))
    assert not all(torch.equal(without[k], refined[k]) for k in plain if k.startswith("vae.decoder."))
    run("stopped", decoder_steps=2, **samples)
    drawn = (tmp_path / "stopped" / "autoencoder" / "sample_latents.safetensors").stat().st_mtime_ns
    shutil.rmtree(tmp_path / "stopped" / "autoencoder" / "final")
    resumed = run("stopped", **samples)
    assert (tmp_path / "stopped" / "autoencoder" / "sample_latents.safetensors").stat().st_mtime_ns == drawn
    assert all(torch.equal(refined[k], resumed[k]) for k in refined), "resuming with the samples changed the weights"
    # drawn again once the model's settings change (its weights, the data's captions, count, seed, side alike)
    from fundusgen.train.autoencoder import sample_latents
    from fundusgen.train.data import load_images
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    (tmp_path / "model" / "model_index.json").write_text(json.dumps({**index, "steps": 3}))
    capsys.readouterr()
    again, aperture = sample_latents(load_recipe(tmp_path / "stopped.yaml"), load_images(prepared, "train", False)[1],
                                     "cpu", progress=False)
    assert "sample_latents.safetensors: made from other data, weights or settings" in capsys.readouterr().err
    assert aperture == "circle" and again.shape == bank.shape
    assert (tmp_path / "stopped" / "autoencoder" / "sample_latents.safetensors").stat().st_mtime_ns != drawn
    other = FundusGen.from_pretrained(tmp_path / "model")
    with torch.no_grad():
        other.autoencoder.vae.encoder.conv_in.weight.add_(0.1)  # another encoder: not the init's latents
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(FundusgenError, match=r"sample_model .*other: its encoder or latent scaling differs from "
                                             r"autoencoder.init"):
        run("mismatch", sample_model=str(tmp_path / "other"), sample_n=3)


def test_decoder_of_an_existing_autoencoder_is_refined_from_the_command_line(prepared, tmp_path, capsys):
    """``autoencoder.init`` + ``steps: 0`` + ``decoder_steps``: the encoder, and so the latents and
    their scaling, stay those of the init; only the decoder moves."""
    import json as _json
    from fundusgen.cli import main
    from fundusgen.model.autoencoder import FundusAutoencoder
    plain = _autoencoder(prepared, tmp_path, "plain", 4, 0)
    source = tmp_path / "plain" / "autoencoder" / "final"
    tiny = {**TINY, "autoencoder": {**TINY["autoencoder"], "steps": 0, "decoder_steps": 3, "init": str(source)}}
    recipe = tmp_path / "refine.yaml"
    recipe.write_text(yaml.safe_dump({**tiny, "data": str(prepared), "out": str(tmp_path / "refine")}))
    assert main(["train", "--config", str(recipe), "--only", "autoencoder", "--quiet"]) == 0
    assert "wrote the autoencoder folder" in capsys.readouterr().out
    final = tmp_path / "refine" / "autoencoder" / "final"
    refined = load_file(str(next(final.glob("*.safetensors"))))
    assert all(torch.equal(plain[k], refined[k]) for k in plain if k.startswith(("vae.encoder.", "vae.quant_conv.")))
    assert not all(torch.equal(plain[k], refined[k]) for k in plain if k.startswith("vae.decoder."))
    assert FundusAutoencoder.from_pretrained(final).config.scaling_factor == \
        _json.loads((source / "config.json").read_text())["scaling_factor"]
    wrong = {**tiny, "autoencoder": {**tiny["autoencoder"], "model": {**tiny["autoencoder"]["model"], "latent_channels": 7}}}
    recipe.write_text(yaml.safe_dump({**wrong, "data": str(prepared), "out": str(tmp_path / "wrong")}))
    assert main(["train", "--config", str(recipe), "--only", "autoencoder", "--quiet"]) == 2
    assert "its architecture" in capsys.readouterr().err


def test_datasets_excluded_by_the_recipe_never_reach_training(tmp_path):
    """``exclude_datasets`` holds whole datasets out of training (an external real set for evaluate)."""
    from fundusgen.train.data import load_images
    write_retina_folder(tmp_path / "a", n_per_class=2)
    write_retina_folder(tmp_path / "b" / "img", n_per_class=2)
    rows = [f"{c}/{p.name},{c}" for c in ("0", "2") for p in sorted((tmp_path / "b" / "img" / c).iterdir())]
    (tmp_path / "b" / "labels.csv").write_text("file,grade\n" + "\n".join(rows) + "\n")
    assert main(["prepare", "--source", f"image_folder={tmp_path / 'a'}", "--source",
                 f"csv_folder={tmp_path / 'b'},images=img,image=file,dr_grade=grade,dataset=external",
                 "--out", str(tmp_path / "p"), "--size", "64", "--workers", "1", "--quiet"]) == 0
    _, everything = load_images(tmp_path / "p", "train", progress=False)
    kept_images, kept = load_images(tmp_path / "p", "train", progress=False, exclude_datasets=["external"])
    assert {m["record"]["dataset"] for m in everything} == {"image_folder", "external"}
    assert {m["record"]["dataset"] for m in kept} == {"image_folder"} and len(kept_images) == len(kept)
    assert len(load_images(tmp_path / "p", "train", progress=False, exclude_datasets=["mex_dme_dr"])[1]) == len(everything)
    with pytest.raises(FundusgenError, match=r"exclude_datasets names datasets it does not hold: externl"):
        load_images(tmp_path / "p", "train", progress=False, exclude_datasets=["externl"])
    with pytest.raises(FundusgenError, match=r"no images in split 'train' once exclude_datasets are left out"):
        load_images(tmp_path / "p", "train", progress=False, exclude_datasets=["external", "image_folder"])


def test_a_run_stopped_mid_training_exports_its_latest_ema_denoiser(prepared, tmp_path, capsys):
    """``fundusgen export RUN DST`` on a run whose denoiser has only a checkpoint: the autoencoder,
    the checkpoint's EMA weights, and the highest resolution trained so far."""
    run = tmp_path / "run"
    assert main(["train", "--config", str(_recipe(tmp_path / "r.yaml", prepared, run)), "--quiet"]) == 0
    finished = FundusGen.from_pretrained(run / "model")
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "denoiser" / "final")  # as if stopped after its last checkpoint
    assert main(["export", str(run), str(tmp_path / "all")]) == 0
    exported = FundusGen.from_pretrained(tmp_path / "all")
    assert exported.config["resolution"] == 64
    assert exported.config["checkpoint"] == {"stage": "highres", "stage_index": 2, "step": 4, "of": 4}
    assert "stage 'highres' step 4 of 4" in capsys.readouterr().out
    for name, p in finished.denoiser.state_dict().items():
        assert torch.equal(p.half().float(), exported.denoiser.state_dict()[name]), name
    ckpt = run / "denoiser" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "stage": 1, "step": 0}, ckpt)  # only the 32 px pretraining stage done
    assert main(["export", str(run), str(tmp_path / "low")]) == 0
    low = FundusGen.from_pretrained(tmp_path / "low")
    assert low.config["resolution"] == 32
    assert low.config["checkpoint"] == {"stage": "pretrain", "stage_index": 0, "step": 40, "of": 40}
    torch.save({**state, "stage": 2, "step": 3}, ckpt)  # cut three steps into the 64 px stage
    assert main(["export", str(run), str(tmp_path / "cut")]) == 0
    assert FundusGen.from_pretrained(tmp_path / "cut").config["checkpoint"]["step"] == 3
    assert low("left eye", steps=2).images[0].size == (32, 32)
    shutil.rmtree(run / "autoencoder" / "final")
    assert main(["export", str(run), str(tmp_path / "none")]) == 2


def test_each_stage_keeps_its_model_and_export_takes_one_by_name(prepared, tmp_path, capsys):
    """A later stage (another resolution, or cut short by a deadline) does not take an earlier
    stage's model away: each stage's EMA weights are kept as it ends, and ``export --stage`` gives
    that stage's model at its resolution."""
    run = tmp_path / "run"
    assert main(["train", "--config", str(_recipe(tmp_path / "r.yaml", prepared, run)), "--quiet"]) == 0
    kept = sorted(p.name for p in (run / "denoiser" / "stages").iterdir())
    assert kept == ["1_pretrain", "2_purified", "3_highres"]  # no .tmp left behind
    final = FundusGen.from_pretrained(run / "model").denoiser.state_dict()
    last = DiT.from_pretrained(str(run / "denoiser" / "stages" / "3_highres")).state_dict()
    assert all(torch.equal(final[k], last[k]) for k in final)  # the last stage's is the run's model
    assert main(["export", str(run), str(tmp_path / "low"), "--stage", "purified"]) == 0
    assert "stage 'purified' step 4 of 4" in capsys.readouterr().out
    low = FundusGen.from_pretrained(tmp_path / "low")
    assert low.config["resolution"] == 32 and low.config["time_shift"] == 1.0
    purified = DiT.from_pretrained(str(run / "denoiser" / "stages" / "2_purified")).state_dict()
    assert all(torch.equal(purified[k].half().float(), v) for k, v in low.denoiser.state_dict().items())
    assert any(not torch.equal(purified[k], last[k]) for k in last)
    assert low("left eye", steps=2).images[0].size == (32, 32)
    assert main(["export", str(run), str(tmp_path / "x"), "--stage", "polish"]) == 2
    assert "no stage 'polish' (stages: pretrain, purified, highres)" in capsys.readouterr().err
    shutil.rmtree(run / "denoiser" / "stages" / "2_purified")
    assert main(["export", str(run), str(tmp_path / "x"), "--stage", "purified"]) == 2
    assert "stage 'purified' has not ended yet" in capsys.readouterr().err
    assert main(["export", str(run / "model"), str(tmp_path / "x"), "--stage", "purified"]) == 2
    assert "not a training run folder" in capsys.readouterr().err


def test_training_captions_say_what_was_measured_and_mirror_the_measured_eye():
    from fundusgen.train.cache import captions_for
    from tests.test_caption_measured import MEASURED
    meta = {"key": "k", "record": {"dataset": "x", "id": "1", "dr_grade": 2}, "quality": {"grade": "good"}}
    plain = captions_for(meta, 2)
    measured = captions_for(meta, 2, dict(MEASURED, eye_confidence=0.99))
    assert all("right" not in a and "left" not in a for a, _ in plain)  # no eye label, no measurement
    for (a, mirrored), (p, _) in zip(measured, plain):
        assert "right eye" in a.lower() and "left eye" in mirrored.lower()
        assert "tortuous" in a.lower() and "hazy" in a.lower()
        assert "hard exudates at the macula" in a.lower()  # lesion cues at the calibrated counts
        assert len(a) > len(p)


def test_the_purified_stages_train_only_on_what_purify_kept_and_captions_use_measurements(prepared, tmp_path):
    import pandas as pd
    from fundusgen.data.prepare import read_index
    from fundusgen.model.autoencoder import FundusAutoencoder
    from fundusgen.model.text_encoder import TextEncoder
    from fundusgen.train.cache import build_cache, load_cache
    from fundusgen.train.config import StageConfig
    from fundusgen.train.denoiser import subset_indices
    from tests.test_caption_measured import MEASURED
    data = tmp_path / "prepared"
    shutil.copytree(prepared, data)
    index = read_index(data)
    train = index[index["split"] == "train"]
    kept = list(train["key"][::2])
    pd.DataFrame({"key": kept}).to_parquet(data / "purified.parquet")
    first = train.iloc[0]
    (data / "measure").mkdir()
    (data / "measure" / first["shard"].replace(".tar", ".jsonl")).write_text(
        json.dumps({"key": first["key"], "measurements": MEASURED}) + "\n")
    vae = FundusAutoencoder(block_out_channels=(8, 16), norm_num_groups=4)
    cache, info = load_cache(build_cache(data, tmp_path / "run", vae, TextEncoder(), [32], 2, progress=False))
    assert "text" not in cache and len(cache["text_offsets"]) == len(info["captions"]) + 1  # packed states
    pool = subset_indices(cache, StageConfig(subset="purified"), min_quality=0.0)
    assert sorted(info["keys"][i] for i in pool.tolist()) == sorted(kept)
    assert len(subset_indices(cache, StageConfig(subset="all"), 0.0)) == len(train)
    first_captions = [info["captions"][i] for i in cache["caption_ids"][info["keys"].index(first["key"])].tolist()]
    assert len(first_captions) == 4 and all("vessels" in c.lower() for c in first_captions)


def test_the_latent_cache_is_reused_only_while_its_data_networks_and_settings_are_the_same(prepared, tmp_path, capsys,
                                                                                         monkeypatch):
    from fundusgen.model.autoencoder import FundusAutoencoder
    from fundusgen.model.text_encoder import TextEncoder
    from fundusgen.train.cache import build_cache, load_cache
    data = tmp_path / "prepared"
    shutil.copytree(prepared, data)
    torch.manual_seed(0)
    vae, enc = FundusAutoencoder(block_out_channels=(8, 16), norm_num_groups=4), TextEncoder()
    path = build_cache(data, tmp_path / "run", vae, enc, [32], 2, progress=False)
    made = path.stat().st_mtime_ns
    assert build_cache(data, tmp_path / "run", vae, enc, [32], 2, progress=False).stat().st_mtime_ns == made
    assert capsys.readouterr().err == ""  # the same recipe: read back, not made again
    before = load_cache(path)[0]["latents_32"]
    with torch.no_grad():
        next(vae.parameters()).add_(0.5)  # another autoencoder: its latents would be stale
    build_cache(data, tmp_path / "run", vae, enc, [32], 2, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "making it again" in err[0]
    assert not torch.equal(load_cache(path)[0]["latents_32"], before)
    made = path.stat().st_mtime_ns
    build_cache(data, tmp_path / "run", vae, enc, [32, 64], 2, progress=False)  # a stage at a new resolution
    assert path.stat().st_mtime_ns != made and "latents_64" in load_cache(path)[0]
    made = path.stat().st_mtime_ns
    (data / "measure").mkdir(exist_ok=True)
    (data / "measure" / "train-000000.jsonl").write_text("")  # new measurements change the captions
    build_cache(data, tmp_path / "run", vae, enc, [32, 64], 2, progress=False)
    assert path.stat().st_mtime_ns != made
    made = path.stat().st_mtime_ns
    monkeypatch.setattr("fundusgen.train.cache.caption_code", lambda: "a template that writes other captions")
    build_cache(data, tmp_path / "run", vae, enc, [32, 64], 2, progress=False)
    assert path.stat().st_mtime_ns != made


def test_source_code_stamps_change_with_the_code_not_its_prose(tmp_path):
    """A docstring or comment edit keeps a cache (remaking the lesion maps costs 7 min); a change of a
    constant or an expression makes it again."""
    import importlib.util
    from fundusgen.train.cache import caption_code, source_code

    def module(name: str, text: str):
        (tmp_path / f"{name}.py").write_text(text)
        spec = importlib.util.spec_from_file_location(name, tmp_path / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    base = module("base", '"""Spots."""\nLIMIT = 11\n\ndef count(x):\n    """How many."""\n    return x + LIMIT\n')
    prose = module("prose", '"""Spots, said again\nat length."""\n# a comment\nLIMIT = 11  # why 11\n\n\n'
                            'def count(x):\n    """How many spots."""\n\n    return (x +\n            LIMIT)\n')
    code = module("code", '"""Spots."""\nLIMIT = 12\n\ndef count(x):\n    """How many."""\n    return x + LIMIT\n')
    only_doc = module("only_doc", 'def f():\n    """Nothing else."""\n')
    assert source_code(base) == source_code(prose) != source_code(code)
    assert source_code(base.count) == source_code(prose.count) and "How many" not in source_code(base.count)
    assert source_code(only_doc) == "def f():\n    pass"
    assert "describe" in caption_code() and '"""' not in caption_code()


def test_caption_states_are_cached_without_padding_and_read_back_as_encoded():
    from fundusgen.model.text_encoder import TextEncoder
    from fundusgen.train.cache import caption_states, pack_states
    captions = ["", "Left eye.", "Right eye fundus photograph with moderate non-proliferative diabetic retinopathy, "
                "scattered microaneurysms and hard exudates temporal to the fovea."]
    enc = TextEncoder()
    batches = [enc.encode(captions[:2]), enc.encode(captions[2:])]  # padded to different lengths, as in build_cache
    packed = pack_states([s for s, _ in batches], [m for _, m in batches])
    lengths = [int(m.sum()) for _, mask in batches for m in mask]
    assert packed["text_tokens"].shape == (sum(lengths), enc.dim) and packed["text_offsets"].tolist()[-1] == sum(lengths)
    padded = {"text": torch.cat([torch.nn.functional.pad(batches[0][0], (0, 0, 0, max(lengths) - batches[0][0].shape[1])),
                                 batches[1][0]]),
              "text_mask": torch.cat([torch.nn.functional.pad(batches[0][1], (0, max(lengths) - batches[0][1].shape[1])),
                                      batches[1][1]])}
    for cap in ([0, 1], [1, 2, 0, 2], [0]):  # a batch is padded to its own longest caption
        cap = torch.tensor(cap)
        states, mask = caption_states(packed, cap)
        assert states.shape == (len(cap), max(lengths[i] for i in cap), enc.dim)
        assert mask.sum(1).tolist() == [lengths[i] for i in cap]
        old_states, old_mask = caption_states(padded, cap)  # caches written before packing still read
        width = states.shape[1]
        assert torch.equal(mask, old_mask[:, :width]) and not old_mask[:, width:].any()
        assert torch.allclose(states, old_states[:, :width] * old_mask[:, :width, None])
        assert not states[~mask].any()


def test_a_bf16_denoiser_trains_after_the_fp32_autoencoder_in_one_process(prepared, tmp_path):
    # on a GPU the autoencoder trains in fp32 and the denoiser in bf16, each with its own Accelerator
    short = {**TINY["denoiser"], "stages": [{**TINY["denoiser"]["stages"][0], "steps": 3}]}
    recipe = _recipe(tmp_path / "r.yaml", prepared, tmp_path / "run", mixed_precision="bf16", denoiser=short)
    assert main(["train", "--config", str(recipe), "--quiet"]) == 0
    assert (tmp_path / "run" / "model" / "denoiser" / "config.json").is_file()
