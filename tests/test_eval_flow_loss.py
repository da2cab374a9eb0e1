"""The held-out flow loss (fundusgen.eval.flow_loss): the training objective on held-out records, with
the same records, noise and times for every model."""
import json

import numpy as np
import pytest
import torch

from fundusgen.errors import FundusgenError
from fundusgen.eval import flow_loss
from fundusgen.model.pipeline import FundusGen
from fundusgen.train.data import resize, to_model_range
from model_fixtures import tiny_model
from test_eval_report import prepared_retinas


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared folder of jittered retinas at 64 px: 4 training and 6 test photographs."""
    return prepared_retinas(tmp_path_factory.mktemp("flow_loss"), {"train": 2, "test": 3}, np.random.default_rng(2))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("flow_loss_model") / "tiny")


class Still(torch.nn.Module):
    """A denoiser that predicts no motion: its loss is || eps - x_0 ||^2, known without it."""

    def __init__(self, dit):
        super().__init__()
        self.config, self.anchor = dit.config, torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t, text, mask):
        return torch.zeros_like(x)


def test_the_same_records_and_noise_give_the_same_loss_and_the_times_differ(prepared, model):
    pipe = FundusGen.from_pretrained(model)
    a = flow_loss.held_out_loss(pipe, prepared, n=4, batch=3, progress=False)
    b = flow_loss.held_out_loss(pipe, prepared, n=4, batch=4, progress=False)
    assert a["n"] == 4 and a["resolution"] == 64 and a["times"] == list(flow_loss.TIMES)
    assert a["loss_by_time"] == pytest.approx(b["loss_by_time"], rel=1e-5)  # batching changes nothing
    assert np.isfinite(a["loss"]) and a["loss"] == pytest.approx(np.mean(a["loss_by_time"]))
    assert len(set(np.round(a["loss_by_time"], 6))) == len(flow_loss.TIMES)
    everything = flow_loss.held_out_loss(pipe, prepared, n=100, progress=False)
    assert everything["n"] == 6  # all the held-out records there are


def test_a_still_denoiser_scores_the_distance_from_noise_to_data(prepared, model):
    """v = 0 gives L(t) = mean (eps - x_0)^2 whatever t: computed here from the same images and noise."""
    pipe = FundusGen.from_pretrained(model)
    pipe.denoiser = Still(pipe.denoiser)
    got = flow_loss.held_out_loss(pipe, prepared, n=6, progress=False)
    from fundusgen.data.shards import iter_samples
    samples = list(iter_samples(prepared, "test"))
    x = resize(to_model_range(torch.stack([torch.from_numpy(s["image"].copy()).permute(2, 0, 1) for s in samples])), 64)
    with torch.no_grad():
        x0 = pipe.autoencoder.normalise(pipe.autoencoder.encode(x).mean)
    for t, loss in zip(flow_loss.TIMES, got["loss_by_time"]):
        eps = torch.stack([flow_loss._noise(s["meta"]["key"], t, x0.shape[1:], 0) for s in samples])
        assert loss == pytest.approx(((eps - x0) ** 2).mean().item(), rel=1e-4)


def test_the_command_compares_models_in_one_table(prepared, model, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert flow_loss.main(["--prepared", str(prepared), "--model", str(model), "--model", str(model),
                           "-n", "2", "--resolution", "32", "--json", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| model | resolution | records | mean | t = 0.1")
    assert len(table) == 4 and table[2].startswith("| tiny | 32 | 2 |") and table[2] == table[3]
    rows = json.loads(out.read_text())
    assert [r["resolution"] for r in rows] == [32, 32] and rows[0]["path"] == str(model)


def test_bad_input_is_one_clear_line(prepared, model, tmp_path, capsys):
    for argv, says in ((["--prepared", str(tmp_path / "nowhere")], "no index"),
                       (["--prepared", str(prepared), "-n", "0"], "at least 1"),
                       (["--prepared", str(prepared), "--split", "val"], "no records in split 'val'"),
                       (["--prepared", str(prepared), "--resolution", "50"], "resolution must be a multiple")):
        assert flow_loss.main([*argv, "--model", str(model), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("flow_loss: error: ") and says in err and "\n" not in err
    assert flow_loss.main(["--prepared", str(prepared), "--model", str(tmp_path / "no_model"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flow_loss: error: ") and "not a fundusgen model folder" in err and "\n" not in err
    with pytest.raises(FundusgenError, match="strictly between 0 and 1"):
        flow_loss.held_out_loss(FundusGen.from_pretrained(model), prepared, times=(0.0, 0.5), progress=False)
