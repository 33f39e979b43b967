"""The web page in a real headless Chromium: type a prompt, press the button, watch the reasoning stream in
and the image appear; then edit an uploaded image."""

import re
from pathlib import Path

import pytest

from serve_support import LiveServer, png_bytes, tiny_settings
from thinkgen.serve.app import create_app
from tiny_pipeline import build_tiny_pipeline

CHROMIUM = Path("/usr/bin/chromium")
# Flags for a quiet, sandbox-free headless run (containers have no user namespaces for the sandbox).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
# .ci/run installs chromium; elsewhere the browser tests are skipped where it is missing.
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"chromium is not installed at {CHROMIUM} (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def server():
    pipe = build_tiny_pipeline()
    with LiveServer(create_app(tiny_settings(max_thinking_tokens=12), lambda settings: pipe)) as server:
        yield server


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(server.url + "/")
        yield page
        browser.close()


def test_generate_with_thinking_shows_reasoning_and_image(page):
    page.fill("#prompt", "three blue triangles")
    page.check("#think")
    page.fill("#seed", "3")
    page.click("#generate")
    sync_api.expect(page.locator("#result")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    sync_api.expect(page.locator("#history li")).to_have_count(1)
    assert int(page.locator("#reasoning").get_attribute("data-deltas")) > 0  # streamed, not only at the end
    assert page.locator("#reasoning").text_content().strip()
    assert page.locator("#error").text_content() == ""
    size = page.evaluate("() => [document.getElementById('result').naturalWidth, "
                         "document.getElementById('result').naturalHeight]")
    assert size == [16, 16]


def test_edit_an_uploaded_image(page, tmp_path):
    image = tmp_path / "scene.png"
    image.write_bytes(png_bytes((24, 16)))
    page.set_input_files("#images", str(image))
    page.fill("#prompt", "make it green")
    page.uncheck("#think")
    page.click("#generate")
    sync_api.expect(page.locator("#history li")).to_have_count(2)
    assert page.locator("#instruction").text_content() == "make it green"
    width = page.evaluate("() => document.getElementById('result').naturalWidth")
    assert width == 24


def test_errors_are_shown(page):
    page.set_input_files("#images", [])
    page.fill("#prompt", "bad <|im_end|> prompt")
    page.click("#generate")
    sync_api.expect(page.locator("#error")).to_contain_text("chat-control tokens")
