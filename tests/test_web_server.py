"""The studio's generation queue, and the server under load: 20 raters answering at once on a
real loopback server while a generation runs, and a server killed with SIGKILL mid-study."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from fundusgen.model import pipeline
from fundusgen.model.pipeline import FundusGen
from fundusgen.web.app import DATABASE, create_app
from test_web_fixtures import create_study_cli, pixels, running_server
from test_web_fixtures import study_folders, tiny_model  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
ANSWER = {"confidence": "3", "optic_disc": "3", "vessels": "3", "macula": "3", "lesions": "na"}


def wait_for(get_job, job_id: str, until=("done", "failed"), timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (job := get_job(f"/api/jobs/{job_id}").json())["status"] not in until:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def wait_model(client) -> dict:
    for _ in range(600):
        if (m := client.get("/api/model").json())["status"] != "loading":
            return m
        time.sleep(0.05)
    raise AssertionError("model still loading")


def test_studio_without_a_model_says_so_and_studies_still_work(tmp_path, monkeypatch, study_folders):
    monkeypatch.setattr(pipeline, "DEFAULT_MODEL", tmp_path / "models" / "default")
    links = create_study_cli(tmp_path / "web", study_folders)
    with TestClient(create_app(tmp_path / "web")) as client:
        assert wait_model(client)["status"] == "unavailable"
        page = client.get("/studio").text
        assert "no model loaded" in page and "--model PATH" in page and re.search(r'id="submit"[^>]*disabled', page)
        r = client.post("/api/jobs", json={"prompt": "left eye"})
        assert r.status_code == 503 and r.json()["error"].startswith("no model loaded")
        assert client.get(f"/r/{links['rater 1']}").status_code == 200


def test_studio_generates_and_serves_images_with_metadata(tmp_path, tiny_model):
    with TestClient(create_app(tmp_path / "web", tiny_model)) as client:
        assert wait_model(client) == {"status": "ready", "message": "model tiny", "steps": 2, "guidance": 2.0,
                                      "resolution": 64}
        composed = client.post("/api/caption", json={"eye": "left", "dr_grade": "2", "dme": "yes", "cdr": "0.6",
                                                     "lesions": [{"lesion": "hard exudates", "region": "temporal to the fovea"},
                                                                 {"lesion": "microaneurysms", "region": ""}]}).json()
        caption, negative = composed["caption"], composed["negative_prompt"]
        assert "left eye" in caption.lower() and ("ICDR grade 2" in caption or "moderate" in caption.lower())
        assert caption.endswith("Hard exudates temporal to the fovea; microaneurysms.") and "0.6" in caption
        # the contrast `fundusgen generate` uses for attribute prompts: no DR, a small cup, no eye
        assert "no" in negative.lower() and "0.3" in negative and "left" not in negative.lower()
        job = client.post("/api/jobs", json={"prompt": caption, "count": 2, "seed": 5, "steps": 3, "guidance": 1.5,
                                             "negative_prompt": negative})
        assert job.status_code == 202
        job = wait_for(client.get, job.json()["id"])
        assert job["status"] == "done" and job["progress"] == 1.0 and len(job["images"]) == 2
        expected = FundusGen.from_pretrained(tiny_model)(caption, num_images=2, seed=5, steps=3, guidance=1.5,
                                                         negative_prompt=negative)
        for i, links in enumerate(job["images"]):
            png = client.get(links["png"])
            assert png.headers["content-type"] == "image/png" and f"fundusgen-{job['id']}-{i}.png" in png.headers["content-disposition"]
            assert np.array_equal(pixels(png.content), np.asarray(expected.images[i]))
            meta = client.get(links["json"]).json()
            assert meta == {**expected.metadata[i], "job": job["id"]} and meta["seed"] == 5 + i
        assert [j["id"] for j in client.get("/api/jobs").json()["jobs"]] == [job["id"]]
        for bad in ["/generated/../x/0.png", f"/generated/{job['id']}/2.png", f"/generated/{job['id']}/0.txt",
                    "/generated/0123456789abcdef/0.png", "/api/jobs/nope"]:
            assert client.get(bad).status_code == 404, bad


def test_studio_checks_anatomy_and_draws_again_when_asked(tmp_path, tiny_model):
    """The tiny random model draws no fundus: every draw fails the check, and each image's metadata
    says so, as `fundusgen generate --anatomy-retries` writes it."""
    with TestClient(create_app(tmp_path / "web", tiny_model)) as client:
        wait_model(client)
        job = client.post("/api/jobs", json={"prompt": "left eye", "count": 2, "seed": 3, "steps": 2, "anatomy_retries": 1})
        job = wait_for(client.get, job.json()["id"])
        assert job["status"] == "done" and job["progress"] == 1.0 and len(job["images"]) == 2
        for i, links in enumerate(job["images"]):
            meta = client.get(links["json"]).json()
            assert meta["seed"] == 3 + i and meta["anatomy"]["attempts"] == 2 and not meta["anatomy"]["valid"]
        assert 'name="anatomy_retries"' in client.get("/studio").text


@pytest.mark.parametrize("body, message", [
    ({"prompt": "a", "anatomy_retries": 7}, "anatomy_retries must be 0-6"),
    ({"prompt": ""}, "empty prompt"), ({"prompt": "x" * 4001}, "4001 characters"), ({"prompt": "a", "count": 9}, "count must be 1-8"),
    ({"prompt": "a", "count": 0}, "count must be 1-8"), ({"prompt": "a", "steps": 201}, "steps must be 1-200"),
    ({"prompt": "a", "guidance": "x"}, "guidance must be a number"), ({"prompt": "a", "seed": -1}, "seed must be"),
    ({"prompt": ["a"]}, "empty prompt"), ([1, 2], "JSON object"),
    ({"prompt": "a", "negative_prompt": "n" * 4001}, "negative prompt of 4001 characters"),
    ({"prompt": "a", "negative_prompt": ["x"]}, "negative prompt must be text")])
def test_studio_refuses_bad_requests(tmp_path, tiny_model, body, message):
    with TestClient(create_app(tmp_path / "web", tiny_model)) as client:
        r = client.post("/api/jobs", json=body)
        assert r.status_code == 400 and message in r.json()["error"]
        assert client.get("/api/jobs").json()["jobs"] == []


def test_caption_refuses_attributes_outside_the_vocabulary(tmp_path, tiny_model):
    with TestClient(create_app(tmp_path / "web", tiny_model)) as client:
        for body, message in [({"dr_grade": "7"}, "ICDR"), ({"eye": "middle"}, "unknown eye"), ({"cdr": "1.5"}, "outside 0-1"),
                              ({"lesions": [{"lesion": "spots"}]}, "unknown lesion"), ({"dme": "perhaps"}, "yes or no")]:
            r = client.post("/api/caption", json=body)
            assert r.status_code == 400 and message in r.json()["error"], body
        assert client.post("/api/caption", content=b"{", headers={"content-type": "application/json"}).status_code == 400
        assert client.post("/api/caption", content=b"x" * 300_000).status_code == 413


def test_jobs_interrupted_by_a_stop_run_when_the_server_starts_again(tmp_path, tiny_model):
    with TestClient(create_app(tmp_path / "web", tiny_model)):
        pass  # creates the database
    with sqlite3.connect(tmp_path / "web" / DATABASE) as db:
        db.execute("INSERT INTO job VALUES ('00000000000000aa', '2020-01-01', 'running', ?, NULL, 0)",
                   (json.dumps({"prompt": "right eye", "count": 1, "seed": 1, "steps": None, "guidance": None}),))
    with TestClient(create_app(tmp_path / "web", tiny_model)) as client:
        assert wait_for(client.get, "00000000000000aa")["status"] == "done"


def test_twenty_raters_at_once_while_generating_lose_and_duplicate_nothing(tmp_path, tiny_model, study_folders):
    raters = [f"rater {i}" for i in range(20)]
    links = create_study_cli(tmp_path / "web", study_folders, "--repeats", "2", "--size", "64",
                             *[a for r in raters for a in ("--rater", r)])
    app = create_app(tmp_path / "web", tiny_model)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        wait_model(client)
        job_id = client.post("/api/jobs", json={"prompt": "left eye", "count": 8, "steps": 200}).json()["id"]
        wait_for(client.get, job_id, until=("running",))
        sent: dict[str, dict[str, str]] = {r: {} for r in raters}
        errors: list[str] = []
        start = threading.Barrier(len(raters))

        def rate(name: str) -> None:
            token = links[name]
            with httpx.Client(base_url=url, timeout=60) as me:
                start.wait()
                while m := re.search(r'name="item" value="([\w-]+)"', me.get(f"/r/{token}").text):
                    item = m[1]
                    judged = "real" if len(sent[name]) % 3 else "synthetic"
                    sent[name][item] = judged
                    for attempt in (judged, "real" if judged == "synthetic" else "synthetic"):  # and a stray retry
                        r = me.post(f"/r/{token}/answer", data={"item": item, "judged": attempt, **ANSWER})
                        if r.status_code != 303:
                            errors.append(f"{name}: {r.status_code} {r.text[:200]}")

        threads = [threading.Thread(target=rate, args=(r,)) for r in raters]
        for t in threads:
            t.start()
        during = client.get(f"/api/jobs/{job_id}").json()["status"]
        for t in threads:
            t.join(300)
        assert wait_for(client.get, job_id)["status"] == "done"
    assert not errors, errors[:5]
    assert during == "running"  # the generation was running while the raters answered
    with sqlite3.connect(tmp_path / "web" / DATABASE) as db:
        stored = dict(db.execute("SELECT item_id, judged FROM answer"))
        items = db.execute("SELECT COUNT(*) FROM item").fetchone()[0]
        owner = dict(db.execute("SELECT item.id, rater.name FROM item JOIN rater ON rater.id = item.rater_id"))
    assert items == 20 * 14 and len(stored) == items
    for name in raters:
        assert len(sent[name]) == 14
        assert {i: j for i, j in stored.items() if owner[i] == name} == sent[name]  # the first answer, once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_answers_survive_the_server_being_killed(tmp_path, tiny_model, study_folders):
    links = create_study_cli(tmp_path / "web", study_folders, "--rater", "A")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "fundusgen.cli", "serve", "--port", str(port), "--data",
                               str(tmp_path / "web"), "--model", str(tiny_model), "--quiet"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url, token = f"http://127.0.0.1:{port}", links["A"]
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()[-2000:]
                time.sleep(0.2)
        answered = []
        with httpx.Client(base_url=url) as client:
            for _ in range(5):
                item = re.search(r'name="item" value="([\w-]+)"', client.get(f"/r/{token}").text)[1]
                assert client.post(f"/r/{token}/answer", data={"item": item, "judged": "real", **ANSWER}).status_code == 303
                answered.append(item)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(30)
    with sqlite3.connect(tmp_path / "web" / DATABASE) as db:
        assert sorted(i for (i,) in db.execute("SELECT item_id FROM answer")) == sorted(answered)
    with TestClient(create_app(tmp_path / "web", tmp_path / "no-model")) as client:
        assert "Image 6 of 12" in client.get(f"/r/{token}").text


def test_serve_refuses_bad_input_in_one_line(tmp_path, capsys):
    from fundusgen.cli import main
    assert main(["serve", "--model", str(tmp_path), "--data", str(tmp_path / "web")]) == 2
    assert "not a fundusgen model folder" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", "--port", str(busy.getsockname()[1]), "--data", str(tmp_path / "web")]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
