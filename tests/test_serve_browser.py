"""The page in a real browser: headless Chromium (Debian's chromium and chromium-driver, which .ci/run
installs) driven by Selenium opens serve.py's page, uploads two images, and finds both verdicts,
the same as the API's, and both Grad-CAM overlays; a screenshot goes to the test's folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers.models import make_checkpoint
from tests.helpers.runner import load_test_module

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver")


def browser() -> tuple[str, str]:
    """Chromium and its driver, or skip saying what to install."""
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[dev]'")
    binary = next((found for name in CHROMIUM if (found := shutil.which(name))), None)
    driver = next((found for name in DRIVERS if (found := shutil.which(name))), None)
    if binary is None or driver is None:
        pytest.skip("headless Chromium is not installed: apt-get install chromium chromium-driver (.ci/run "
                    "installs them when apt-get can)")
    return binary, driver


def two_images(folder: Path) -> list[Path]:
    """A landscape-like image and a small dusk sky, generated (no dataset image); the tiny model of the
    tests calls the first REAL and the second FAKE."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:150, 0:200]
    sky = np.stack([60 + yy // 3, 120 + yy // 4, 200 - yy // 2], -1) + rng.normal(0, 6, (150, 200, 3))
    grass = np.stack([40 + xx[100:] % 50, 110 + 0 * xx[100:], 40 + 0 * xx[100:]], -1)
    sky[100:] = grass + rng.normal(0, 14, (50, 200, 3))
    photo = folder / "landscape.png"
    Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8)).save(photo)
    y = np.mgrid[0:32, 0:32][0]
    dusk = np.stack([20 + y * 25 // 32 // 6 * 6, 20 + y * 30 // 32, 60 + y * 50 // 32], -1)
    night = folder / "night.jpg"
    Image.fromarray(np.clip(dusk + rng.normal(0, 6, (32, 32, 3)), 0, 255).astype(np.uint8)).save(night, quality=90)
    return [photo, night]


def test_the_page_judges_two_images_in_headless_chromium(tmp_path) -> None:
    binary, driver_path = browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    lt = load_test_module()
    ckpt = make_checkpoint(tmp_path / "tiny.ckpt")
    images = two_images(tmp_path / "images")
    overrides = ["device=cpu", "max_batch_size=4", "log_level=warning"]
    with lt.running_server(ckpt, overrides) as server:
        expected, scores = {}, {}
        for path in images:
            answer = httpx.post(f"{server.url}/predict", files={"file": (path.name, path.read_bytes())}, timeout=60)
            assert answer.status_code == 200, answer.text
            expected[path.name] = answer.json()["images"][0]["label"]
            scores[path.name] = (answer.json()["images"][0]["p_real"], answer.json()["images"][0]["threshold"])

        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1100,1000", "--hide-scrollbars"):
            options.add_argument(flag)
        chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
        try:
            chrome.get(f"{server.url}/")
            wait = WebDriverWait(chrome, 90)
            wait.until(lambda d: "tiny.ckpt" in d.find_element(By.ID, "model").text)  # /info answered
            assert chrome.find_element(By.ID, "gradcam").is_selected()  # on, as the checkpoint can explain
            chrome.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in images))
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card[data-state=done]")) == 2)
            wait.until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('img.overlay')].filter(i => i.complete && i.naturalWidth)"
                ".length") == 2)
            cards = chrome.find_elements(By.CSS_SELECTOR, ".card")
            found = {card.get_attribute("data-name"): card.find_element(By.CSS_SELECTOR, ".verdict").text
                     for card in cards}
            assert found == expected
            widths = chrome.execute_script(
                "return [...document.querySelectorAll('img.overlay')].map(i => i.naturalWidth)")
            assert widths == [512, 512]  # 32 px image + heat map, enlarged 8 times
            assert "200x150" in chrome.page_source  # the input's size, shown with its resizing
            # Each gauge fills from the threshold to p(REAL): the surer the verdict, the longer its bar.
            spans = chrome.execute_script(
                "return Object.fromEntries([...document.querySelectorAll('.card')].map(c => {"
                "const f = c.querySelector('.bar .fill'), w = c.querySelector('.bar').clientWidth;"
                "return [c.dataset.name, [f.offsetLeft / w, (f.offsetLeft + f.offsetWidth) / w]];}))")
            for name, (p_real, threshold) in scores.items():
                low, high = sorted((p_real, threshold))
                assert spans[name] == pytest.approx([low, high], abs=0.02), (name, spans[name], p_real)
            shot = tmp_path / "page.png"
            assert chrome.save_screenshot(str(shot))
        finally:
            chrome.quit()
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size[0] >= 1000


def test_serve_without_arguments_pages_the_bundled_model(tmp_path) -> None:
    """``serve.py`` with no ckpt_path: the bundled model answers, the page's header names it, and an
    upload on the page gets the API's verdict."""
    binary, driver_path = browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    lt = load_test_module()
    photo = two_images(tmp_path / "images")[0]
    with lt.running_server(None, ["device=cpu", "log_level=warning"]) as server:
        info = httpx.get(f"{server.url}/info", timeout=30).json()["model"]["model"]
        assert info["bundled"] is True and info["kind"] == "safetensors"
        answer = httpx.post(f"{server.url}/predict", files={"file": (photo.name, photo.read_bytes())}, timeout=60)
        assert answer.status_code == 200, answer.text
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
            options.add_argument(flag)
        chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
        try:
            chrome.get(f"{server.url}/")
            wait = WebDriverWait(chrome, 90)
            wait.until(lambda d: "The bundled model" in d.find_element(By.ID, "model").text)
            chrome.find_element(By.ID, "files").send_keys(str(photo))
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card[data-state=done]")) == 1)
            verdict = chrome.find_element(By.CSS_SELECTOR, ".card .verdict").text
            assert verdict == answer.json()["images"][0]["label"]
        finally:
            chrome.quit()
