"""The web page in a real browser: headless Debian Chromium (driven by Playwright) against a live loopback
server; picks and drops images, reads the predicted label, sees the heat map (when /explain works) and an
error message for a non-image. Saves screenshots (to $RESNETLAB_SCREENSHOTS when set)."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

import resnetlab
from resnetlab.serve import create_app
from serving import running_server, train_tiny

# Debian's build (apt-get install chromium; `make browser`); Playwright's own browser download is never used.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                reason="Debian's chromium is not installed and could not be (`make browser` "
                                       "installs it with apt-get when root or passwordless sudo is available)")

DROP_FILE = """async ([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type: "image/png" }));
  document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true,
                                                                       cancelable: true }));
}"""


RESET = "document.body.dataset.state = 'idle'"  # so each wait below sees this upload finish, not the last one


def explain_works(url: str) -> bool:
    import httpx

    return httpx.get(f"{url}/health").json()["explain"]


def test_page_predicts_and_shows_the_heat_map(tmp_path: Path):
    from playwright.sync_api import sync_playwright

    checkpoint, data = train_tiny(tmp_path)
    classifier = resnetlab.load(checkpoint, device="cpu")
    picked = sorted((data / "Val" / "red").glob("*.png"))[0]
    dropped = sorted((data / "Val" / "blue sky").glob("*.png"))[0]
    expected = classifier.predict([str(picked), str(dropped)])
    shots = Path(os.environ.get("RESNETLAB_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)

    with running_server(create_app(classifier)) as url, sync_playwright() as playwright:
        with_heat_map = explain_works(url)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model-info').textContent.includes('resnet18')")

            page.set_input_files("#file-input", str(picked))  # the file picker
            page.wait_for_function("document.body.dataset.state === 'done'")
            assert page.text_content("#error") == ""
            assert page.text_content("#top-label").startswith(expected[0].label + " (")
            assert page.locator("#bars .row").count() == 3  # top-5 of a 3-class model
            bar_labels = page.locator("#bars .row .name").all_text_contents()
            assert bar_labels == [label for label, _ in expected[0].top]
            assert page.is_visible("#preview")
            if with_heat_map:
                page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0")
                assert page.is_visible("#heatmap")
            else:  # /explain answers 501 here: the page hides the heat map instead of showing an error
                assert page.is_hidden("#heatmap-panel")
            page.screenshot(path=str(shots / "serve_page.png"), full_page=True)

            page.evaluate(RESET)
            page.evaluate(DROP_FILE, [base64.b64encode(dropped.read_bytes()).decode(), dropped.name])  # drag & drop
            page.wait_for_function("document.body.dataset.state === 'done'")
            assert page.text_content("#top-label").startswith(expected[1].label + " (")

            bad = tmp_path / "notes.png"
            bad.write_text("this is not an image")
            page.evaluate(RESET)
            page.set_input_files("#file-input", str(bad))
            page.wait_for_function("document.body.dataset.state === 'done'")
            assert "notes.png: not an image" in page.text_content("#error")
            page.screenshot(path=str(shots / "serve_page_error.png"), full_page=True)
        finally:
            browser.close()
    assert (shots / "serve_page.png").stat().st_size > 1000
