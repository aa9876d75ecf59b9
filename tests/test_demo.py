import io
import json
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from nas.deploy.demo import DemoApp, make_server
from search_spaces import ArchConfig, Segmenter, TraceNetStudent


@pytest.fixture(scope="module")
def server():
    """A demo server on a free port, with a student whose masks fill the output window (visible in tests)."""
    model = TraceNetStudent(ArchConfig.smallest("tracenet_tiny"))
    with torch.no_grad():
        model.head.bias_bias[-1].fill_(10.0)
        model.head.bias_gen[-1].zero_()
    server = make_server(DemoApp(Segmenter(model)), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _post(url, body, content_type="application/json"):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_predict_upload_and_bad_input(server):
    request = {"image": "astronaut", "clicks": [[200, 150, True]]}
    status, result = _post(f"{server}/predict", json.dumps(request).encode())
    assert status == 200 and result["pixels"] > 0 and result["mask"].startswith("data:image/png;base64,")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(buffer, format="PNG")
    status, uploaded = _post(f"{server}/upload", buffer.getvalue(), "application/octet-stream")
    assert status == 200 and (uploaded["width"], uploaded["height"]) == (60, 40)
    for body, needle in ((b"\x89PNG broken", "not a readable image"),):
        status, result = _post(f"{server}/upload", body, "application/octet-stream")
        assert status == 400 and needle in result["error"]
    for request, needle in (({"image": uploaded["id"], "clicks": [[70, 10, True]]}, "off the 60x40 image"),
                            ({"image": uploaded["id"], "clicks": [[10, 10, False]]}, "positive click"),
                            ({"image": "nope", "clicks": []}, "unknown image"),
                            ({"image": "astronaut", "clicks": "x"}, "list of [x, y, positive]")):
        status, result = _post(f"{server}/predict", json.dumps(request).encode())
        assert status == 400 and needle in result["error"] and "\n" not in result["error"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt install chromium)")
def test_page_in_headless_chromium(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page.goto(server)
        page.wait_for_selector("body[data-loaded='astronaut']")
        canvas = page.locator("canvas")
        before = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), dtype=int)
        canvas.click(position={"x": 200, "y": 150})
        page.wait_for_selector("body[data-ready='1']")
        canvas.screenshot(path=str(tmp_path / "one_click.png"))
        after = np.asarray(Image.open(tmp_path / "one_click.png").convert("RGB"), dtype=int)
        assert after[150, 200, 1] > 180 and after[150, 200, 0] < 100  # the green positive marker
        tinted = (after[..., 2] - before[..., 2] > 20).mean()
        assert tinted > 0.05  # the blue mask overlay covers the output window
        assert "mask:" in page.inner_text("#status")
        canvas.click(position={"x": 60, "y": 60}, button="right")
        page.wait_for_selector("body[data-ready='2']")
        marked = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), dtype=int)
        assert marked[60, 60, 0] > 180 and marked[60, 60, 1] < 100  # the red negative marker
        page.click("#undo")
        page.wait_for_selector("body[data-ready='1']")
        browser.close()
