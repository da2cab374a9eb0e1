import base64
import html
import io
import json
import re

import pytest
from PIL import Image

from fundusgen.cli import main
from tests.model_fixtures import write_retina_folder


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    write_retina_folder(root / "raw", n_per_class=4)
    prepared = root / "prepared"
    assert main(["prepare", "--source", f"image_folder={root / 'raw'}", "--out", str(prepared), "--size", "128",
                 "--workers", "1", "--quiet"]) == 0
    assert main(["measure", str(prepared), "--workers", "1", "--quiet"]) == 0
    return prepared


def _captions(folder):
    rows = {}
    for path in (folder / "captions" / "template").glob("fundus-*.jsonl"):
        rows.update({r["key"]: r["caption"] for r in map(json.loads, path.read_text().splitlines())})
    return rows


def _items(page: str) -> list[tuple[str, str, str]]:
    """(thumbnail data URI, caption, key) of each image on the page."""
    return re.findall(r'<img src="([^"]+)" alt="([^"]+)">\s*<div><div class="caption">([^<]*)</div>', page)


def test_the_page_shows_seeded_random_images_beside_their_own_captions_and_measurements(captioned, tmp_path, capsys):
    page = tmp_path / "out" / "captions.html"
    assert main(["caption", str(captioned), "--quiet", "--no-token-check", "--page", str(page),
                 "--page-images", "5", "--seed", "3"]) == 0
    assert f"wrote {page}" in capsys.readouterr().out
    text = page.read_text()
    items = _items(text)
    captions = _captions(captioned)
    assert len(items) == 5 and len({key for _, key, _ in items}) == 5
    for uri, key, caption in items:
        assert html.unescape(caption) == captions[key]
        image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert image.format == "JPEG" and image.width > 64
    assert text.count("measured:") == 5 and "disc at (" in text and "eye " in text
    assert "src=\"http" not in text and "<script" not in text  # self-contained


def test_the_same_seed_draws_the_same_images_and_another_seed_other_ones(captioned, tmp_path):
    def keys(seed, name):
        assert main(["caption", str(captioned), "--quiet", "--no-token-check", "--page", str(tmp_path / name),
                     "--page-images", "4", "--seed", str(seed)]) == 0
        return [key for _, key, _ in _items((tmp_path / name).read_text())]
    assert keys(0, "a.html") == keys(0, "b.html")
    assert keys(0, "a.html") != keys(1, "c.html")


def test_asking_for_more_images_than_captioned_shows_them_all(captioned, tmp_path):
    page = tmp_path / "all.html"
    assert main(["caption", str(captioned), "--quiet", "--no-token-check", "--page", str(page)]) == 0
    assert len(_items(page.read_text())) == len(_captions(captioned)) == 8


def test_a_page_of_no_images_is_one_clear_error(captioned, tmp_path, capsys):
    assert main(["caption", str(captioned), "--quiet", "--no-token-check", "--page", str(tmp_path / "p.html"),
                 "--page-images", "0"]) == 2
    assert "--page-images 0" in capsys.readouterr().err
