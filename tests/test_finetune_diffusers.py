"""Fine-tuning an existing diffusers pipeline with the recipe: tiny random-weight SD, SDXL and SD3
pipelines built here (no downloads) fine-tune on a tiny prepared set, save a pipeline that loads
and generates, resume exactly after SIGKILL, and an unsupported folder is refused in one line."""
import json
import os
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import (AutoencoderKL, DDPMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler,
                       SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from safetensors.torch import load_file
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Config,
                          T5EncoderModel, T5Tokenizer)

from fundusgen.cli import main
from fundusgen.train.cache import load_cache
from fundusgen.train.config import load_recipe
from model_fixtures import torchrun, write_retina_folder

PROMPT = "left eye, moderate non-proliferative diabetic retinopathy"


def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single characters and a few merges (unknown characters -> <|endoftext|>)."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + ".,()-:;'")
    merges = ["t h", "th e</w>", "e y", "ey e</w>"]
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols), "th", "the</w>", "ey", "eye</w>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def tiny_text_encoder(tok: CLIPTokenizer, cls=CLIPTextModel):
    return cls(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                              num_hidden_layers=2, max_position_embeddings=77, projection_dim=32,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))


def tiny_vae(**extra) -> AutoencoderKL:
    """Four blocks: the usual 8x downsampling, so a 64 px image is an 8x8 latent."""
    return AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8,
                         layers_per_block=1, **extra)


def tiny_unet(**extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, norm_num_groups=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), attention_head_dim=8,
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **extra)


def tiny_sd(folder: Path) -> Path:
    torch.manual_seed(0)
    tok = tiny_tokenizer(folder.parent / "tokenizer_files")
    StableDiffusionPipeline(vae=tiny_vae(), text_encoder=tiny_text_encoder(tok), tokenizer=tok,
                            unet=tiny_unet(cross_attention_dim=32),
                            scheduler=DDPMScheduler(steps_offset=1, clip_sample=False),
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False
                            ).save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_sdxl(folder: Path) -> Path:
    torch.manual_seed(0)
    tok = tiny_tokenizer(folder.parent / "tokenizer_files")
    unet = tiny_unet(cross_attention_dim=64, use_linear_projection=True, addition_embed_type="text_time",
                     addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)
    StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=tiny_text_encoder(tok), tokenizer=tok,
                              text_encoder_2=tiny_text_encoder(tok, CLIPTextModelWithProjection), tokenizer_2=tok,
                              unet=unet, scheduler=DDPMScheduler(steps_offset=1, clip_sample=False,
                                                                 prediction_type="v_prediction"),
                              add_watermarker=False).save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_t5(tok_vocab: str = string.ascii_lowercase + string.digits + ".,()-:;'"):
    """A T5 encoder and a Unigram tokenizer over single characters (uppercase -> <unk>)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0), *((c, -3.0) for c in tok_vocab)]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=64, d_kv=8, d_ff=37, num_layers=1, num_heads=4)), tok


def tiny_sd3(folder: Path) -> Path:
    """Two CLIP encoders (pooled 32 + 32) and a T5 (64-d, as wide as the two CLIP states side by side)."""
    torch.manual_seed(0)
    tok = tiny_tokenizer(folder.parent / "tokenizer_files")
    t5, t5_tok = tiny_t5()
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64)
    StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                             vae=tiny_vae(shift_factor=0.1), text_encoder=tiny_text_encoder(tok, CLIPTextModelWithProjection),
                             tokenizer=tok, text_encoder_2=tiny_text_encoder(tok, CLIPTextModelWithProjection),
                             tokenizer_2=tok, text_encoder_3=t5, tokenizer_3=t5_tok
                             ).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    write_retina_folder(root / "raw", n_per_class=4)
    assert main(["prepare", "--source", f"image_folder={root / 'raw'}", "--out", str(root / "prepared"),
                 "--size", "64", "--workers", "1", "--quiet"]) == 0
    return root / "prepared"


def _recipe(path: Path, data: Path, base: Path, out: Path) -> Path:
    stage = {"subset": "all", "batch_size": 4, "lr": 1e-3, "warmup": 2}
    path.write_text(yaml.safe_dump({
        "data": str(data), "out": str(out), "base_pipeline": str(base), "checkpoint_every": 3,
        "denoiser": {"caption_variants": 2, "caption_dropout": 0.2, "ema_decay": 0.9, "stages": [
            {**stage, "name": "pretrain", "resolution": 32, "steps": 8},
            {**stage, "name": "purified", "resolution": 32, "subset": "purified", "steps": 4},
            {**stage, "name": "highres", "resolution": 64, "steps": 6, "batch_size": 2}]}}))
    return path


def _finetune(tmp_path: Path, prepared: Path, base: Path, name: str) -> Path:
    recipe = _recipe(tmp_path / f"{name}.yaml", prepared, base, tmp_path / name)
    assert main(["train", "--config", str(recipe), "--quiet"]) == 0
    return tmp_path / name / "pipeline"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


@pytest.fixture(scope="module")
def sd(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    base = tiny_sd(root / "base")
    return base, _finetune(root, prepared, base, "straight")


def _generates_and_changed(base: Path, tuned: Path, denoiser: str) -> None:
    pipe = DiffusionPipeline.from_pretrained(str(tuned), use_safetensors=True)
    assert type(pipe).__name__ == json.loads((base / "model_index.json").read_text())["_class_name"]
    image = pipe(PROMPT, num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    before, after = _weights(base / denoiser), _weights(tuned / denoiser)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), f"the {denoiser} did not change"
    vae_before, vae_after = _weights(base / "vae"), _weights(tuned / "vae")
    assert all(torch.equal(vae_before[k], vae_after[k]) for k in vae_before), "the frozen VAE changed"


def test_a_fine_tuned_stable_diffusion_pipeline_loads_generates_and_its_unet_changed(sd):
    base, tuned = sd
    _generates_and_changed(base, tuned, "unet")
    run = tuned.parent
    assert len(json.loads((run / "loss_history.json").read_text())) == 18
    assert (run / "logs").is_dir()  # TensorBoard


def test_sdxl_fine_tunes_with_its_pooled_embeddings_and_time_ids(prepared, tmp_path):
    base = tiny_sdxl(tmp_path / "base")
    _generates_and_changed(base, _finetune(tmp_path, prepared, base, "run"), "unet")
    cache, info = load_cache(tmp_path / "run" / "cache.safetensors")
    null = info["null_caption"]  # dropped captions train on SDXL's unconditional input: zeros
    assert not cache["text"][null].any() and not cache["pooled"][null].any() and cache["pooled"].any()


def test_sd3_fine_tunes_with_flow_matching(prepared, tmp_path):
    base = tiny_sd3(tmp_path / "base")
    _generates_and_changed(base, _finetune(tmp_path, prepared, base, "run"), "transformer")


def test_a_fine_tune_killed_with_sigkill_resumes_to_exactly_the_same_weights(sd, prepared, tmp_path):
    base, straight = sd
    recipe = _recipe(tmp_path / "killed.yaml", prepared, base, tmp_path / "killed")
    cmd = [sys.executable, "-m", "fundusgen.cli", "train", "--config", str(recipe), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same arithmetic as in this process
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 900  # generous: a starved CI machine is slow to import torch
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (tmp_path / "killed" / "pipeline").exists(), "the kill came too late to test resuming"
    assert main(["train", "--config", str(recipe), "--quiet"]) == 0
    a, b = _weights(straight / "unet"), _weights(tmp_path / "killed" / "pipeline" / "unet")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "unet weights differ after resuming"


def test_fsdp_fine_tunes_a_pipeline_as_ddp_does(sd, prepared, tmp_path):
    """``parallel: fsdp`` on two CPU processes: the UNet's down, mid and up blocks sharded, the same
    losses as DDP and the same weights to rounding, saved as a whole pipeline that generates."""
    import yaml
    base, _ = sd
    runs = {}
    for parallel in ("ddp", "fsdp"):
        recipe = _recipe(tmp_path / f"{parallel}.yaml", prepared, base, tmp_path / parallel)
        spec = yaml.safe_load(recipe.read_text())
        spec["parallel"] = parallel
        spec["denoiser"]["stages"] = spec["denoiser"]["stages"][:1] + spec["denoiser"]["stages"][2:]
        spec["denoiser"]["stages"][0]["steps"], spec["denoiser"]["stages"][1]["steps"] = 4, 2
        recipe.write_text(yaml.safe_dump(spec))
        done = torchrun(["-m", "fundusgen.cli", "train", "--config", str(recipe), "--quiet"], tmp_path / parallel,
                        timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[parallel] = tmp_path / parallel
    losses = {k: json.loads((run / "loss_history.json").read_text()) for k, run in runs.items()}
    assert len(losses["fsdp"]) == 6 and losses["fsdp"] == pytest.approx(losses["ddp"], rel=1e-4)
    a, b = _weights(runs["ddp"] / "pipeline" / "unet"), _weights(runs["fsdp"] / "pipeline" / "unet")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=5e-4) for k in a)
    _generates_and_changed(base, runs["fsdp"] / "pipeline", "unet")


def test_an_unsupported_folder_is_refused_in_one_line(prepared, tmp_path, capsys):
    other = tmp_path / "kandinsky"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    for base, message in ((other, "KandinskyPipeline cannot be fine-tuned here (supported: StableDiffusionPipeline"),
                          (tmp_path / "missing", "not a diffusers pipeline folder")):
        recipe = _recipe(tmp_path / "bad.yaml", prepared, base, tmp_path / "bad")
        assert main(["train", "--config", str(recipe)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


def test_the_example_fine_tuning_recipe_loads():
    cfg = load_recipe(Path(__file__).parents[1] / "configs" / "finetune_sd.yaml")
    assert cfg.base_pipeline and [s.subset for s in cfg.denoiser.stages] == ["all", "purified", "purified"]


def test_a_stage_time_shift_composes_with_the_flow_scheduler_shift():
    from fundusgen.train.finetune_diffusers import FlowMatching
    seen = []

    def denoise(x, timestep):
        seen.append(timestep.clone())
        return torch.zeros_like(x)
    x0 = torch.zeros(256, 1, 1, 1)
    FlowMatching({"shift": 3.0}, "uniform")(denoise, x0, torch.Generator().manual_seed(0), 2.0)
    FlowMatching({"shift": 6.0}, "uniform")(denoise, x0, torch.Generator().manual_seed(0))
    assert torch.allclose(seen[0], seen[1])  # shifts multiply the odds: 3 then 2 is 6


def test_a_time_shift_on_a_noise_prediction_pipeline_is_refused_in_one_line(sd, prepared, tmp_path, capsys):
    base, _ = sd
    recipe = _recipe(tmp_path / "shifted.yaml", prepared, base, tmp_path / "shifted")
    data = yaml.safe_load(recipe.read_text())
    data["denoiser"]["stages"][2]["time_shift"] = 2.0
    recipe.write_text(yaml.safe_dump(data))
    assert main(["train", "--config", str(recipe), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line]  # diffusers' own loading bars may precede it
    assert len(errors) == 1 and "stage 'highres': time_shift needs a flow-matching pipeline" in err[-1]
    assert not (tmp_path / "shifted" / "cache.safetensors").exists()  # refused before any work
