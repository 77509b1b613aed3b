"""The leaderboard's web page: self-contained, and sorting and filtering work in a real browser.

The browser test (slow) drives headless Chromium (Debian's package; .ci/run installs it where
it can) through the page's own controls: the address carries the state (``#sort=none&filter=em``)
and the page applies it by clicking the header and typing into the filter box, then the test
reads the DOM Chromium dumps. It skips with the reason where no Chromium can be found.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_leaderboard import TABLE, _write_fixture
from uebench.site import write_site

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


@pytest.fixture
def page(tmp_path) -> Path:
    _write_fixture(tmp_path / "results")
    return write_site(tmp_path / "results", tmp_path / "site")


def test_the_page_carries_everything_it_shows(page):
    text = page.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', text), "the page must not fetch anything"
    links = re.findall(r'href="([^"]+)"', text)
    assert len(links) == 8 and all((page.parent / link).is_file() for link in links)    # 8 cells with a number
    assert all(link.endswith("/seed0.json") for link in links)                            # the first seed's record
    assert (page.parent / f"heatmap-npz-toy-{TABLE['id']}.png").is_file()
    assert text.count('<tr class="clean"') == 1 and 'class="best"' in text


def browser() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip(f"no headless browser found ({', '.join(BROWSERS)}); .ci/run installs Debian's chromium")


def dump(page: Path, state: str, screenshot: Path | None = None) -> str:
    command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--virtual-time-budget=3000"]
    if screenshot:
        command += [f"--screenshot={screenshot}", "--window-size=1200,900"]
    else:
        command += ["--dump-dom"]
    done = subprocess.run(command + [f"{page.as_uri()}#{state}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def visible(dom: str, tag: str) -> list[str]:
    """The data-name of every ``tag`` element without the hidden attribute, in document order."""
    tags = re.findall(rf"<{tag}\b([^>]*)>", dom)
    return [re.search(r'data-name="([^"]+)"', attrs).group(1) for attrs in tags
            if "data-name" in attrs and not re.search(r"\bhidden\b", attrs)]


def visible_rows(dom: str) -> list[str]:
    return visible(dom, "tr")


def visible_columns(dom: str) -> list[str]:
    return visible(dom, "th")


@pytest.mark.slow
def test_sorting_and_filtering_in_a_real_browser(page, tmp_path):
    assert visible_rows(dump(page, "")) == ["clean", "em", "ops"]
    dom = dump(page, "sort=none")                    # a click on "none": highest first, the clean row on top
    assert visible_rows(dom) == ["clean", "ops", "em"] and 'aria-sort="descending"' in dom
    assert visible_rows(dump(page, "sort=none&order=asc")) == ["clean", "em", "ops"]
    assert visible_rows(dump(page, "sort=mixup")) == ["clean", "ops", "em"]      # em's failed cell sorts last
    dom = dump(page, "filter=em")                    # an attack: its row and the clean row, every column
    assert visible_rows(dom) == ["clean", "em"] and visible_columns(dom)[2:] == ["none", "iss-gray", "mixup"]
    dom = dump(page, "filter=gray")                  # no attack matches: the defenses that do, beside none
    assert visible_rows(dom) == ["clean", "em", "ops"] and visible_columns(dom)[2:] == ["none", "iss-gray"]
    shot = tmp_path / "page.png"
    dump(page, "sort=none", screenshot=shot)
    assert shot.stat().st_size > 10_000
    shutil.copyfile(shot, Path("/tmp/uebench-site-screenshot.png"))             # for a human to look at
