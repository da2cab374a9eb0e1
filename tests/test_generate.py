import json

import numpy as np
import pytest
from PIL import Image

from fundusgen.cli import main
from fundusgen.errors import FundusgenError
from fundusgen.model.pipeline import FundusGen
from model_fixtures import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def test_same_seed_same_image_and_another_seed_another_image(model_dir):
    pipe = FundusGen.from_pretrained(model_dir)
    a = pipe("left eye, moderate NPDR", seed=3).images[0]
    b = pipe("left eye, moderate NPDR", seed=3).images[0]
    c = pipe("left eye, moderate NPDR", seed=4).images[0]
    assert a.size == (64, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_circle_aperture_gives_the_round_field_of_view_of_a_prepared_photo(model_dir, tmp_path):
    pipe = FundusGen.from_pretrained(model_dir)
    free = np.asarray(pipe("left eye", seed=1, aperture="none").images[0]).astype(int)
    result = pipe("left eye", seed=1, aperture="circle")
    img = np.asarray(result.images[0]).astype(int)
    assert result.metadata[0]["aperture"] == "circle"
    yy, xx = np.mgrid[:64, :64] + 0.5
    r = np.hypot(xx - 32, yy - 32)
    assert img[r > 33].max() == 0  # black outside the disk, like preprocess's output
    assert free[r > 33].max() > 0  # the random tiny model does not draw it by itself
    assert np.abs(img[r < 28] - free[r < 28]).mean() > 0  # the pinned surround changes what is drawn inside
    out = tmp_path / "ap"
    assert main(["generate", "left eye", "-n", "1", "--aperture", "circle", "-o", str(out), "--model", str(model_dir),
                 "--quiet"]) == 0
    assert json.loads((out / "000_seed0.json").read_text())["aperture"] == "circle"
    with pytest.raises(FundusgenError, match="unknown aperture"):
        pipe("left eye", aperture="oval")


def test_generate_writes_pngs_sidecars_and_a_contact_sheet(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "right eye, glaucoma", "-n", "2", "--seed", "5", "-o", str(out), "--model",
                 str(model_dir), "--quiet"]) == 0
    sidecar = json.loads((out / "001_seed6.json").read_text())
    assert sidecar["prompt"] == "right eye, glaucoma" and sidecar["seed"] == 6 and sidecar["model"] == "tiny"
    assert {"steps", "guidance", "sampler", "resolution"} <= set(sidecar)
    assert Image.open(out / "000_seed5.png").size == (64, 64)
    assert (out / "contact_sheet.png").exists()
    assert str(out) in capsys.readouterr().out


def test_a_sampling_time_shift_changes_the_draw_and_is_recorded(model_dir, tmp_path):
    import torch
    pipe = FundusGen.from_pretrained(model_dir)
    torch.manual_seed(0)  # the tiny model's velocity is zero (adaLN-zero), the same on every schedule
    for p in pipe.denoiser.parameters():
        p.data.add_(0.2 * torch.randn_like(p))
    pipe.save_pretrained(tmp_path / "perturbed")
    default = pipe("left eye", seed=2)
    same = pipe("left eye", seed=2, time_shift=1.0)
    shifted = pipe("left eye", seed=2, time_shift=3.0)
    assert default.metadata[0]["time_shift"] == 1.0 and shifted.metadata[0]["time_shift"] == 3.0
    assert np.array_equal(np.asarray(default.images[0]), np.asarray(same.images[0]))
    assert not np.array_equal(np.asarray(default.images[0]), np.asarray(shifted.images[0]))
    out = tmp_path / "ts"
    assert main(["generate", "left eye", "-n", "1", "--time-shift", "3", "--seed", "2", "-o", str(out),
                 "--model", str(tmp_path / "perturbed"), "--quiet"]) == 0
    assert json.loads((out / "000_seed2.json").read_text())["time_shift"] == 3.0
    assert np.array_equal(np.asarray(Image.open(out / "000_seed2.png").convert("RGB")), np.asarray(shifted.images[0]))


def _perturb(network, seed: int):
    import torch
    torch.manual_seed(seed)
    for p in network.parameters():
        p.data.add_(0.2 * torch.randn_like(p))


@pytest.fixture(scope="module")
def live_model(model_dir, tmp_path_factory):
    """The tiny model with its adaLN-zero weights perturbed, so that the caption changes the velocity."""
    pipe = FundusGen.from_pretrained(model_dir)
    _perturb(pipe.denoiser, 0)
    path = tmp_path_factory.mktemp("models") / "live"
    pipe.save_pretrained(path)
    return path


def test_a_negative_prompt_replaces_the_empty_caption_and_is_recorded(live_model, tmp_path):
    pipe = FundusGen.from_pretrained(live_model)
    plain = pipe("left eye", seed=2)
    empty = pipe("left eye", seed=2, negative_prompt="")
    away = pipe("left eye", seed=2, negative_prompt="dense cataract, hazy media")
    assert plain.metadata[0]["negative_prompt"] == "" and away.metadata[0]["negative_prompt"].startswith("dense")
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(empty.images[0]))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(away.images[0]))
    # one per prompt, batched: each image is the one its own prompt and negative give alone (up to one grey
    # level: captions of other lengths in a batch pad the text differently, and float sums round differently)
    both = pipe(["left eye", "right eye"], seed=2, negative_prompt=["dense cataract, hazy media", ""])
    alone = [away.images[0], pipe("right eye", seed=2).images[0]]
    for batched, single in zip(both.images, alone):
        assert np.abs(np.asarray(batched).astype(int) - np.asarray(single).astype(int)).max() <= 1
    with pytest.raises(FundusgenError, match="2 negative prompts for 1 prompts"):
        pipe("left eye", negative_prompt=["a", "b"])
    out = tmp_path / "neg"
    assert main(["generate", "left eye", "-n", "1", "--seed", "2", "--negative-prompt", "dense cataract, hazy media",
                 "-o", str(out), "--model", str(live_model), "--quiet"]) == 0
    assert json.loads((out / "000_seed2.json").read_text())["negative_prompt"] == "dense cataract, hazy media"
    assert np.array_equal(np.asarray(Image.open(out / "000_seed2.png").convert("RGB")), np.asarray(away.images[0]))


def test_a_guidance_interval_changes_the_draw_and_is_recorded_and_resumes(live_model, tmp_path):
    pipe = FundusGen.from_pretrained(live_model)
    full = pipe("left eye", seed=2)
    also_full = pipe("left eye", seed=2, guidance_interval=(0.0, 1.0))
    inside = pipe("left eye", seed=2, guidance_interval=(0.2, 0.8))
    unguided = pipe("left eye", seed=2, guidance=1.0)
    none = pipe("left eye", seed=2, guidance_interval=(0.0, 0.01))  # no sampled time lies in (0, 0.01]: no guidance
    assert full.metadata[0]["guidance_interval"] == [0.0, 1.0] and inside.metadata[0]["guidance_interval"] == [0.2, 0.8]
    assert np.array_equal(np.asarray(full.images[0]), np.asarray(also_full.images[0]))
    assert not np.array_equal(np.asarray(full.images[0]), np.asarray(inside.images[0]))
    assert np.array_equal(np.asarray(none.images[0]), np.asarray(unguided.images[0]))
    out = tmp_path / "gi"
    args = ["generate", "left eye", "-n", "1", "--seed", "2", "--guidance-interval", "0.2", "0.8", "-o", str(out),
            "--model", str(live_model), "--quiet"]
    assert main(args) == 0
    assert np.array_equal(np.asarray(Image.open(out / "000_seed2.png").convert("RGB")), np.asarray(inside.images[0]))
    stamp = (out / "000_seed2.png").stat().st_mtime_ns
    assert main(args) == 0 and (out / "000_seed2.png").stat().st_mtime_ns == stamp  # a re-run keeps the image


def test_projected_guidance_changes_the_draw_and_is_recorded(live_model, tmp_path):
    pipe = FundusGen.from_pretrained(live_model)
    plain = pipe("left eye", seed=2)
    same = pipe("left eye", seed=2, guidance_eta=1.0, guidance_momentum=0.0, guidance_threshold=0.0)
    apg = pipe("left eye", seed=2, guidance_eta=0.0, guidance_momentum=-0.5)
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(same.images[0]))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(apg.images[0]))
    assert (plain.metadata[0]["guidance_eta"], apg.metadata[0]["guidance_eta"]) == (1.0, 0.0)
    assert apg.metadata[0]["guidance_momentum"] == -0.5 and apg.metadata[0]["guidance_threshold"] == 0.0
    # without classifier-free guidance there is nothing to project: the unguided draw
    unguided = pipe("left eye", seed=2, guidance=1.0)
    assert np.array_equal(np.asarray(pipe("left eye", seed=2, guidance=1.0, guidance_eta=0.0).images[0]),
                          np.asarray(unguided.images[0]))
    out = tmp_path / "apg"
    assert main(["generate", "left eye", "-n", "1", "--seed", "2", "--guidance-eta", "0", "--guidance-momentum", "-0.5",
                 "-o", str(out), "--model", str(live_model), "--quiet"]) == 0
    assert json.loads((out / "000_seed2.json").read_text())["guidance_eta"] == 0.0
    assert np.array_equal(np.asarray(Image.open(out / "000_seed2.png").convert("RGB")), np.asarray(apg.images[0]))
    for bad, match in [(dict(guidance_eta=1.5), "guidance eta must be 0-1"),
                       (dict(guidance_momentum=1.0), "guidance momentum must be between -1 and 1"),
                       (dict(guidance_threshold=-1.0), "guidance threshold must be 0")]:
        with pytest.raises(FundusgenError, match=match):
            pipe("left eye", **bad)


def test_cfg_zero_star_changes_the_draw_and_is_recorded(live_model, tmp_path):
    pipe = FundusGen.from_pretrained(live_model)
    plain = pipe("left eye", seed=2)
    star = pipe("left eye", seed=2, zero_star=True, zero_init_steps=1)
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(star.images[0]))
    assert (plain.metadata[0]["zero_star"], plain.metadata[0]["zero_init_steps"]) == (False, 0)
    assert (star.metadata[0]["zero_star"], star.metadata[0]["zero_init_steps"]) == (True, 1)
    for setting in (dict(zero_star=True), dict(zero_init_steps=1)):  # each half changes the draw by itself
        assert not np.array_equal(np.asarray(pipe("left eye", seed=2, **setting).images[0]), np.asarray(plain.images[0]))
    out = tmp_path / "zstar"
    assert main(["generate", "left eye", "-n", "1", "--seed", "2", "--zero-star", "--zero-init-steps", "1",
                 "-o", str(out), "--model", str(live_model), "--quiet"]) == 0
    assert json.loads((out / "000_seed2.json").read_text())["zero_star"] is True
    assert np.array_equal(np.asarray(Image.open(out / "000_seed2.png").convert("RGB")), np.asarray(star.images[0]))
    with pytest.raises(FundusgenError, match="zero-init steps must be 0"):
        pipe("left eye", steps=4, zero_init_steps=4)


@pytest.fixture(scope="module")
def guided_model(live_model, tmp_path_factory):
    """The live model with a guide network: a copy of its denoiser, perturbed again (another network)."""
    pipe = FundusGen.from_pretrained(live_model)
    pipe.guide = FundusGen.from_pretrained(live_model).denoiser
    _perturb(pipe.guide, 1)
    path = tmp_path_factory.mktemp("models") / "guided"
    pipe.save_pretrained(path)
    return path


def test_autoguidance_guides_away_from_the_guide_network_and_is_recorded(live_model, guided_model, tmp_path):
    import torch
    from fundusgen.model.flow import guided
    pipe = FundusGen.from_pretrained(guided_model)
    assert (guided_model / "guide" / "config.json").is_file() and pipe.guide is not None
    off = pipe("left eye", seed=2)  # the model's default: autoguidance 1, off
    same = FundusGen.from_pretrained(live_model)("left eye", seed=2)  # the model without a guide draws the same
    auto = pipe("left eye", seed=2, autoguidance=2.0)
    only = pipe("left eye", seed=2, autoguidance=2.0, guidance=1.0)
    assert off.metadata[0]["autoguidance"] == 1.0 and auto.metadata[0]["autoguidance"] == 2.0
    assert np.array_equal(np.asarray(off.images[0]), np.asarray(same.images[0]))
    assert not np.array_equal(np.asarray(off.images[0]), np.asarray(auto.images[0]))
    assert not np.array_equal(np.asarray(auto.images[0]), np.asarray(only.images[0]))
    # both terms add: v = v_c + (s - 1)(v_c - v_u) + (w - 1)(v_c - v_g)
    vc, vu, vg = (torch.full((1, 4, 2, 2), x) for x in (2.0, 1.0, 1.5))
    assert torch.allclose(guided(lambda x, t: (vc, vu, vg), (4.0, 3.0))(None, None), torch.full_like(vc, 6.0))
    out = tmp_path / "ag"
    assert main(["generate", "left eye", "-n", "1", "--seed", "2", "--autoguidance", "2", "-o", str(out),
                 "--model", str(guided_model), "--quiet"]) == 0
    assert json.loads((out / "000_seed2.json").read_text())["autoguidance"] == 2.0
    assert np.array_equal(np.asarray(Image.open(out / "000_seed2.png").convert("RGB")), np.asarray(auto.images[0]))
    with pytest.raises(FundusgenError, match="needs a guide network"):
        FundusGen.from_pretrained(live_model)("left eye", autoguidance=2.0)
    with pytest.raises(FundusgenError, match="autoguidance must be"):
        pipe("left eye", autoguidance=-1.0)


def test_export_puts_another_models_denoiser_in_as_the_guide(model_dir, live_model, tmp_path, capsys):
    import torch
    dst = tmp_path / "with_guide"
    assert main(["export", str(live_model), str(dst), "--guide", str(model_dir)]) == 0
    pipe, weak = FundusGen.from_pretrained(dst), FundusGen.from_pretrained(model_dir)
    assert pipe.guide is not None
    for p, q in zip(pipe.guide.parameters(), weak.denoiser.parameters()):
        assert torch.allclose(p, q.half().float())  # float16, like the rest of an export
    assert pipe("left eye", autoguidance=2.0).metadata[0]["autoguidance"] == 2.0
    other = tmp_path / "other"  # a guide of another patch size cannot read the same latents
    from fundusgen.model.dit import DiT
    base = FundusGen.from_pretrained(model_dir)
    base.denoiser = DiT(hidden_size=32, depth=1, num_heads=2, text_dim=384, patch_size=4)
    base.save_pretrained(other)
    assert main(["export", str(live_model), str(tmp_path / "bad"), "--guide", str(other)]) == 2
    assert "does not match the denoiser" in capsys.readouterr().err


def test_export_merges_fine_tunes_of_one_model_by_weight_averaging(model_dir, live_model, tmp_path, capsys):
    import torch
    third = FundusGen.from_pretrained(model_dir)
    _perturb(third.denoiser, 3)
    third.save_pretrained(tmp_path / "third")
    a, b, c = (FundusGen.from_pretrained(p) for p in (model_dir, live_model, tmp_path / "third"))
    for w in (0.0, 0.25, 1.0):  # WiSE-FT: (1 - w) own + w other
        dst = tmp_path / f"w{w}"
        assert main(["export", str(model_dir), str(dst), "--merge", str(live_model), "--weight", str(w)]) == 0
        merged = FundusGen.from_pretrained(dst)
        assert merged.config["merged"] == [{"with": str(live_model), "weight": w}]
        for m, p, q in zip(merged.denoiser.parameters(), a.denoiser.parameters(), b.denoiser.parameters()):
            assert torch.allclose(m, (1 - w) * p + w * q, rtol=1e-3, atol=1e-3)  # float16, like the rest of an export
    assert "0.75 of its own weights + 0.25 of" in capsys.readouterr().out
    # a uniform soup of three by default
    assert main(["export", str(model_dir), str(tmp_path / "soup"), "--merge", str(live_model),
                 "--merge", str(tmp_path / "third")]) == 0
    assert "0.333 of its own weights + 0.333 of" in capsys.readouterr().out
    soup = FundusGen.from_pretrained(tmp_path / "soup")
    for m, p, q, r in zip(soup.denoiser.parameters(), a.denoiser.parameters(), b.denoiser.parameters(),
                          c.denoiser.parameters()):
        assert torch.allclose(m, (p + q + r) / 3, rtol=1e-3, atol=1e-3)
    # half-way draws something else than either end (the same seed)
    assert main(["export", str(model_dir), str(tmp_path / "half"), "--merge", str(live_model)]) == 0
    draw = lambda path: np.asarray(FundusGen.from_pretrained(path)("left eye", seed=1).images[0])
    assert not np.array_equal(draw(tmp_path / "half"), draw(tmp_path / "w0.0"))
    assert not np.array_equal(draw(tmp_path / "half"), draw(tmp_path / "w1.0"))
    capsys.readouterr()
    # one clear line each: weights out of range or miscounted, a weight without a model, another
    # autoencoder or architecture
    merge = lambda *extra: main(["export", str(model_dir), str(tmp_path / "x"), *extra])
    assert merge("--merge", str(live_model), "--weight", "1.5") == 2
    assert "--weight must be 0-1 each" in capsys.readouterr().err
    assert merge("--merge", str(live_model), "--merge", str(live_model), "--weight", "0.6", "--weight", "0.6") == 2
    assert "at most 1 together" in capsys.readouterr().err
    assert merge("--merge", str(live_model), "--merge", str(live_model), "--weight", "0.5") == 2
    assert "one per --merge model (2)" in capsys.readouterr().err
    assert merge("--weight", "0.3") == 2
    assert "give --merge FOLDER too" in capsys.readouterr().err
    other_ae = FundusGen.from_pretrained(live_model)
    _perturb(other_ae.autoencoder, 1)
    other_ae.save_pretrained(tmp_path / "other_ae")
    assert merge("--merge", str(tmp_path / "other_ae")) == 2
    assert "other_ae: its autoencoder differs" in capsys.readouterr().err
    from fundusgen.model.dit import DiT
    other_dit = FundusGen.from_pretrained(model_dir)
    other_dit.denoiser = DiT(hidden_size=32, depth=1, num_heads=2, text_dim=384, patch_size=4)
    other_dit.save_pretrained(tmp_path / "other_dit")
    assert merge("--merge", str(tmp_path / "other_dit")) == 2
    assert "another architecture" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # a merged model exported again, without merging, does not claim a merge it did not make now
    assert main(["export", str(tmp_path / "soup"), str(tmp_path / "again")]) == 0
    assert "of its own weights" not in capsys.readouterr().out


def test_export_swaps_in_a_decoder_refined_on_the_models_encoder(model_dir, tmp_path, capsys):
    """``export --autoencoder``: a decoder refined on the model's own encoder replaces the model's (the
    same latents, other pixels); an autoencoder with another encoder or latent scale is refused."""
    import torch
    refined = FundusGen.from_pretrained(model_dir).autoencoder
    with torch.no_grad():
        for name, p in refined.named_parameters():
            if name.startswith("vae.decoder."):
                p.add_(0.05 * torch.randn_like(p))
    refined.save_pretrained(str(tmp_path / "refined"))
    assert main(["export", str(model_dir), str(tmp_path / "swapped"), "--autoencoder", str(tmp_path / "refined")]) == 0
    assert f"autoencoder: {tmp_path / 'refined'}" in capsys.readouterr().out
    swapped = FundusGen.from_pretrained(tmp_path / "swapped")
    assert swapped.config["autoencoder_from"] == str(tmp_path / "refined")
    for (name, p), q in zip(swapped.autoencoder.named_parameters(), refined.parameters()):
        assert torch.allclose(p.float(), q.half().float()), name
    assert main(["export", str(model_dir), str(tmp_path / "plain")]) == 0  # float16 too: the same encoder to the bit
    plain = FundusGen.from_pretrained(tmp_path / "plain")
    for p, q in zip(swapped.denoiser.parameters(), plain.denoiser.parameters()):
        assert torch.equal(p, q)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = plain.autoencoder.encode(x).mean
        assert torch.equal(swapped.autoencoder.encode(x).mean, z)
        assert not torch.allclose(swapped.autoencoder.decode(z), plain.autoencoder.decode(z), atol=1e-3)
    draw = lambda path: np.asarray(FundusGen.from_pretrained(path)("left eye", seed=1).images[0])
    assert not np.array_equal(draw(tmp_path / "swapped"), draw(tmp_path / "plain"))
    # another encoder, another latent scale, another architecture, no autoencoder at all: one line each
    with torch.no_grad():
        next(p for n, p in refined.named_parameters() if n.startswith("vae.encoder.")).add_(0.1)
    refined.save_pretrained(str(tmp_path / "other_encoder"))
    rescaled = FundusGen.from_pretrained(model_dir).autoencoder
    rescaled.register_to_config(scaling_factor=2 * rescaled.config.scaling_factor)
    rescaled.save_pretrained(str(tmp_path / "rescaled"))
    from fundusgen.model.autoencoder import FundusAutoencoder
    FundusAutoencoder(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=8).save_pretrained(str(tmp_path / "small"))
    for folder, why in (("other_encoder", "its encoder or latent scaling differs"),
                        ("rescaled", "its encoder or latent scaling differs"),
                        ("small", "its architecture differs"), ("nowhere", "not an autoencoder folder")):
        assert main(["export", str(model_dir), str(tmp_path / "x"), "--autoencoder", str(tmp_path / folder)]) == 2
        assert f"--autoencoder {tmp_path / folder}: {why}" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_attributes_become_a_caption(model_dir, tmp_path):
    out = tmp_path / "attrs"
    assert main(["generate", "--eye", "left", "--dr-grade", "2", "-n", "1", "-o", str(out), "--model",
                 str(model_dir), "--quiet"]) == 0
    sidecar = json.loads((out / "000_seed0.json").read_text())
    prompt = sidecar["prompt"].lower()
    assert "left" in prompt and ("moderate" in prompt)
    assert sidecar["attributes"] == {"eye": "left", "dr_grade": 2}  # the image's labels, for downstream training


def test_attribute_prompts_are_guided_away_from_their_reversed_findings_unless_told_otherwise(live_model, tmp_path):
    from fundusgen.caption.template import contrast_caption
    run = lambda name, *extra: main(["generate", "--eye", "left", "--dr-grade", "3", "-n", "1", "-o",
                                     str(tmp_path / name), "--model", str(live_model), "--quiet", *extra])
    side = lambda name: json.loads((tmp_path / name / "000_seed0.json").read_text())
    pixels = lambda name: np.asarray(Image.open(tmp_path / name / "000_seed0.png").convert("RGB"))
    assert run("contrast") == 0 and run("plain", "--no-contrast") == 0
    assert run("own", "--negative-prompt", "hazy media") == 0
    assert side("contrast")["negative_prompt"] == contrast_caption({"eye": "left", "dr_grade": 3})
    assert "diabetic retinopathy" in side("contrast")["negative_prompt"]
    assert side("plain")["negative_prompt"] == "" and side("own")["negative_prompt"] == "hazy media"
    assert not np.array_equal(pixels("contrast"), pixels("plain"))
    # the same image from the Python API, given the same negative prompt
    api = FundusGen.from_pretrained(live_model)(side("contrast")["prompt"], seed=0,
                                                negative_prompt=side("contrast")["negative_prompt"])
    assert np.array_equal(pixels("contrast"), np.asarray(api.images[0]))


def test_prompts_file_generates_for_every_line(model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\nleft eye\n\nright eye, cataract\n")
    out = tmp_path / "batch"
    assert main(["generate", "--prompts-file", str(prompts), "-n", "1", "-o", str(out), "--model", str(model_dir),
                 "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["000_000_seed0.png", "001_000_seed0.png", "contact_sheet.png"]


def test_an_overlong_line_of_a_prompts_file_is_named_before_any_image_is_drawn(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("left eye\n# a comment\n" + "a" * 5000 + "\n")
    out = tmp_path / "batch"
    assert main(["generate", "--prompts-file", str(prompts), "-n", "1", "-o", str(out), "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fundusgen generate: error: {prompts}:3: prompt of 5000 characters is longer than the 4000 accepted"]
    assert not out.exists()  # nothing drawn, no folder made


def test_seed_per_prompt_gives_every_prompt_its_own_seeds(model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("left eye\nright eye, cataract\n")
    out = tmp_path / "dataset"
    assert main(["generate", "--prompts-file", str(prompts), "-n", "2", "--seed", "10", "--seed-per-prompt",
                 "-o", str(out), "--model", str(model_dir), "--quiet"]) == 0
    stems = sorted(p.stem for p in out.glob("0*.png"))
    assert stems == ["000_000_seed10", "000_001_seed11", "001_000_seed12", "001_001_seed13"]
    sidecar = json.loads((out / "001_000_seed12.json").read_text())
    assert sidecar["prompt"] == "right eye, cataract" and sidecar["seed"] == 12
    alone = FundusGen.from_pretrained(model_dir)("right eye, cataract", seed=12).images[0]
    assert np.array_equal(np.asarray(Image.open(out / "001_000_seed12.png").convert("RGB")), np.asarray(alone))


def test_latent_output_and_a_seed_per_prompt_give_the_latents_the_images_decode_from(model_dir):
    """``output_type="latent"``: the sampled latents (raw units), which ``decode`` turns into the very
    images; a list of seeds gives each prompt its own, as a call of its own would."""
    pipe = FundusGen.from_pretrained(model_dir)
    prompts = ["left eye", "right eye, cataract"]
    out = pipe(prompts, seed=[5, 9], output_type="latent", aperture="circle")
    assert out.images == [] and out.latents.shape == (2, 4, 16, 16) and [m["seed"] for m in out.metadata] == [5, 9]
    images = pipe._to_pil(pipe.decode(pipe.autoencoder.normalise(out.latents), "circle"))
    for prompt, seed, image in zip(prompts, (5, 9), images):
        alone = pipe(prompt, seed=seed, aperture="circle").images[0]
        assert np.abs(np.asarray(image).astype(int) - np.asarray(alone).astype(int)).max() <= 1
    with pytest.raises(FundusgenError, match="1 seeds for 2 prompts"):
        pipe(prompts, seed=[5])
    with pytest.raises(FundusgenError, match="output_type 'np': pil or latent"):
        pipe(prompts, output_type="np")


@pytest.mark.parametrize("args,message", [
    (["   "], "empty prompt"),
    (["a" * 10000], "10000 characters"),
    (["x", "-n", "0"], "at least 1"),
    (["--dr-grade", "9"], "outside the ICDR"),
    (["--eye", "centre"], "unknown eye"),
    (["x", "--steps", "0"], "steps"),
    (["x", "--sampler", "rk45"], "unknown sampler"),
    (["x", "--time-shift", "0"], "time shift"),
    (["x", "--guidance-interval", "0.8", "0.2"], "guidance interval"),
    (["x", "--negative-prompt", "b" * 10000], "negative prompt of 10000 characters"),
    ([], "nothing to generate"),
])
def test_bad_input_is_one_clear_line_without_traceback(model_dir, tmp_path, capsys, args, message):
    assert main(["generate", *args, "-o", str(tmp_path / "o"), "--model", str(model_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_missing_or_corrupted_model_is_a_clear_error(model_dir, tmp_path, capsys):
    assert main(["generate", "x", "--model", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")]) == 2
    assert "not a fundusgen model folder" in capsys.readouterr().err
    broken = tmp_path / "broken"
    tiny_model(broken)
    weights = next((broken / "denoiser").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(FundusgenError, match="cannot load weights"):
        FundusGen.from_pretrained(broken)


def test_an_interrupted_generation_keeps_what_it_wrote(model_dir, tmp_path):
    out = tmp_path / "resume"
    main(["generate", "left eye", "-n", "1", "-o", str(out), "--model", str(model_dir), "--quiet"])
    first = (out / "000_seed0.png").stat().st_mtime_ns
    main(["generate", "left eye", "-n", "2", "-o", str(out), "--model", str(model_dir), "--quiet"])
    assert (out / "000_seed0.png").stat().st_mtime_ns == first
    assert (out / "001_seed1.png").exists()


def test_anatomy_retries_draw_an_invalid_image_again_and_say_so(model_dir, tmp_path, capsys):
    """The tiny random model draws no fundus: the real check rejects every draw, and the sidecar says
    how many were drawn; the same seed still gives the same image; a re-run keeps what it wrote."""
    out = tmp_path / "checked"
    assert main(["generate", "left eye", "-n", "2", "-o", str(out), "--model", str(model_dir), "--anatomy-retries",
                 "2", "--quiet"]) == 0
    meta = json.loads((out / "000_seed0.json").read_text())
    assert meta["seed"] == 0 and meta["anatomy"]["valid"] is False and meta["anatomy"]["attempts"] == 3
    assert meta["anatomy"]["reasons"] and meta["anatomy"]["retries"] == 2
    assert "anatomy: 0 of 2 images valid, 2 drawn again (up to 2 retries each)" in capsys.readouterr().out
    kept = (out / "000_seed0.png").read_bytes()
    again = tmp_path / "again"
    main(["generate", "left eye", "-n", "1", "-o", str(again), "--model", str(model_dir), "--anatomy-retries", "2",
          "--quiet"])
    assert (again / "000_seed0.png").read_bytes() == kept
    stamp = (out / "000_seed0.png").stat().st_mtime_ns
    main(["generate", "left eye", "-n", "2", "-o", str(out), "--model", str(model_dir), "--anatomy-retries", "2",
          "--quiet"])
    assert (out / "000_seed0.png").stat().st_mtime_ns == stamp
    assert main(["generate", "x", "-o", str(out), "--model", str(model_dir), "--anatomy-retries", "-1"]) == 2
    main(["generate", "left eye", "-n", "2", "-o", str(out), "--model", str(model_dir), "--quiet"])
    assert (out / "000_seed0.png").stat().st_mtime_ns != stamp  # unchecked now: drawn once, as asked
    assert "anatomy" not in json.loads((out / "000_seed0.json").read_text())


def test_a_valid_image_is_kept_when_more_retries_are_asked():
    from fundusgen.generate import _same_draw
    assert _same_draw(None, 0) and not _same_draw(None, 3)
    assert not _same_draw({"valid": True, "attempts": 1, "retries": 3}, 0)
    assert _same_draw({"valid": True, "attempts": 2, "retries": 3}, 6) and _same_draw({"valid": True, "attempts": 2, "retries": 3}, 1)
    assert not _same_draw({"valid": True, "attempts": 3, "retries": 3}, 1)  # the third draw is out of reach
    assert not _same_draw({"valid": False, "attempts": 4, "retries": 3}, 6)  # three more draws may find one


def test_a_valid_draw_ends_the_retries_and_its_seed_is_recorded(model_dir, monkeypatch):
    """The retry logic alone, with a check that accepts only the second retry's seed."""
    from fundusgen import generate
    from fundusgen.eval import anatomy
    pipe = FundusGen.from_pretrained(model_dir)
    wanted = np.asarray(pipe("left eye", seed=7 + 2 * generate.RETRY_STRIDE).images[0])

    def check(rgb):
        return anatomy.AnatomyCheck(1.0, 1.0, "good", 1, reasons=[] if np.array_equal(rgb, wanted) else ["no fovea found"])
    monkeypatch.setattr(anatomy, "check_image", check)
    image, meta = generate.sample_checked(pipe, "left eye", 7, retries=5)
    assert np.array_equal(np.asarray(image), wanted)
    assert meta["anatomy"] == {"valid": True, "reasons": [], "attempts": 3, "retries": 5}
    assert meta["seed"] == 7 and meta["sampled_seed"] == 7 + 2 * generate.RETRY_STRIDE
    image, meta = generate.sample_checked(pipe, "left eye", 7, retries=0)
    assert "anatomy" not in meta and meta["seed"] == 7
