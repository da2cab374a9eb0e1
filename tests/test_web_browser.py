"""End to end in Debian's Chromium, driven by Playwright: a rater completes a short study (with
a pause), the organiser sees the right statistics, and the studio generates images with a tiny
model. Screenshots go to $FUNDUSGEN_SCREENSHOTS (docs/screenshots for the README) or tmp."""
from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import httpx
import pytest

from fundusgen.web.app import DATABASE, create_app
from test_web_fixtures import create_study_cli, pixels, running_server
from test_web_fixtures import study_folders, tiny_model  # noqa: F401 (fixtures)

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium not found at /usr/bin/chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    yield context.new_page()
    context.close()


@pytest.fixture()
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("FUNDUSGEN_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def answer(page, judged: str, scores: str = "4") -> None:
    page.check(f'input[name=judged][value="{judged}"]')
    page.check('input[name=confidence][value="4"]')
    for s in ("optic_disc", "vessels", "macula"):
        page.check(f'input[name={s}][value="{scores}"]')
    page.check('input[name=lesions][value="na"]')
    with page.expect_navigation():
        page.click("#next")


def test_rater_completes_a_study_and_the_organiser_sees_the_statistics(tmp_path, study_folders, page, shots):
    data = tmp_path / "web"
    links = create_study_cli(data, study_folders, "--n-real", "3", "--n-synthetic", "3", "--rater", "Dr A",
                             "--rater", "Dr B", "--seed", "3", "--name", "Fixture study")
    with sqlite3.connect(data / DATABASE) as db:
        truth = dict(db.execute("SELECT item.id, image.truth FROM item JOIN image ON image.id = item.image_id"))
    with running_server(create_app(data, tmp_path / "no-model")) as url:
        page.goto(f"{url}/r/{links['Dr A']}")
        given, pages = [], set()
        for k in range(6):
            assert page.text_content(".progress").strip().startswith(f"Image {k + 1} of 6")
            assert page.eval_on_selector(".viewer img", "img => img.complete && img.naturalWidth") == 512
            if k == 1:
                page.screenshot(path=str(shots / "study.png"))
            if k == 2:  # pause, come back with the same link, carry on where we left off
                page.click("a.pause")
                assert "2 of 6 answers are saved" in page.text_content("#paused")
                page.goto(f"{url}/r/{links['Dr A']}")
                assert page.text_content(".progress").strip().startswith("Image 3 of 6")
            item = page.get_attribute("input[name=item]", "value")
            # what the browser holds is the same for real and synthetic images but for the item id and counter
            pages.add(re.sub(r"Image \d+ of|value=\"\d+\"| style=\"\"", "", page.content().replace(item, "ITEM")))
            judged = "real" if truth[item] == "real" or k % 3 == 0 else "synthetic"  # some synthetic fool Dr A
            given.append((truth[item], judged))
            answer(page, judged)
        assert "answered all 6 images" in page.text_content("#done")
        assert len(pages) == 1 and "real_" not in pages.pop()
        with httpx.Client(base_url=url) as client:  # Dr B judges every image real
            while m := re.search(r'name="item" value="([\w-]+)"', client.get(f"/r/{links['Dr B']}").text):
                client.post(f"/r/{links['Dr B']}/answer", data={"item": m[1], "judged": "real", "confidence": "2",
                                                                 "optic_disc": "2", "vessels": "2", "macula": "2", "lesions": "1"})
        page.goto(f"{url}/o/{links['organiser']}")
        stat = lambda rater, s: " ".join(page.text_content(f'tr[data-rater="{rater}"] td[data-stat="{s}"]').split())
        fooled = given.count(("synthetic", "real"))
        assert stat("Dr A", "synthetic_judged_real").startswith(f"{100 * fooled / 3:.1f}% ({fooled}/3")
        assert stat("Dr A", "balanced_accuracy").startswith(f"{100 * ((3 - fooled) / 3 + 1) / 2:.1f}%")
        assert stat("Dr A", "real_judged_real").startswith("100.0% (3/3")
        assert stat("Dr B", "synthetic_judged_real").startswith("100.0% (3/3")
        assert stat("Dr B", "balanced_accuracy").startswith("50.0%")
        assert stat("All raters", "answered") == "12"
        page.screenshot(path=str(shots / "results.png"), full_page=True)
        csv_link = page.get_attribute('a[href$="answers.csv"]', "href")
        assert httpx.get(url + csv_link).text.count("\n") == 13


def test_studio_generates_an_image_with_the_tiny_model(tmp_path, tiny_model, page, shots):
    with running_server(create_app(tmp_path / "web", tiny_model)) as url:
        page.goto(f"{url}/studio")
        page.wait_for_selector('#model-status[data-status="ready"]')
        page.select_option("select[name=eye]", "left")
        page.select_option("select[name=dr_grade]", "2")
        page.select_option("select[name=dme]", "yes")
        page.check('input[name=lesion][value="hard exudates"]')
        page.select_option('select[data-lesion="hard exudates"]', "temporal to the fovea")
        page.click("#compose")
        page.wait_for_function("() => document.getElementById('prompt').value.length > 0")
        caption = page.input_value("#prompt")
        assert "left eye" in caption.lower() and caption.endswith("Hard exudates temporal to the fovea.")
        assert "diabetic retinopathy" in page.input_value("#negative_prompt").lower()  # the attributes' contrast
        page.fill("#prompt", caption + " Bright, sharp vessels.")  # the composed caption stays editable
        page.fill("input[name=seed]", "11")
        page.fill("input[name=count]", "2")
        page.click("#submit")
        page.wait_for_selector(".job.done .thumbs img >> nth=1")
        page.wait_for_function("() => [...document.querySelectorAll('.job.done img')].every(i => i.complete && i.naturalWidth == 64)")
        assert page.text_content(".job.done .job-prompt").endswith("Bright, sharp vessels.")
        page.screenshot(path=str(shots / "studio.png"), full_page=True)
        with page.expect_download() as png:
            page.click(".job.done figure >> nth=1 >> text=PNG")
        assert png.value.suggested_filename.endswith("-1.png")
        with page.expect_download() as meta:
            page.click(".job.done figure >> nth=1 >> text=metadata")
        meta_text = Path(meta.value.path()).read_text()
        assert '"seed": 12' in meta_text and "Bright, sharp vessels." in meta_text
        assert '"negative_prompt": "' in meta_text
        assert pixels(Path(png.value.path()).read_bytes()).shape == (64, 64, 3)
        assert not page.is_visible("#form-error")
