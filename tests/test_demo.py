import io
import json
import shutil
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

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


def _raw(server, request: bytes) -> bytes:
    """A hand-written HTTP request on a fresh connection, and the first line of the answer."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(request)
        return conn.recv(65536).split(b"\r\n", 1)[0]


def test_malformed_requests_get_one_line_answers_and_bodies_are_bounded(server):
    assert b" 400 " in _raw(server, b"POST /predict HTTP/1.1\r\nContent-Length: -1\r\n\r\n" + b"x" * 1000)
    assert b" 400 " in _raw(server, b"POST /predict HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}")
    assert b" 411 " in _raw(server, b"POST /predict HTTP/1.1\r\n\r\n")
    assert b" 413 " in _raw(server, b"POST /upload HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n")
    for body, needle in ((b"[" * 100_000, "nested deeper"),
                         (json.dumps({"image": "astronaut", "clicks": [[10, 10, True]] * 65}).encode(), "at most 64"),
                         (b'{"image": "astronaut", "clicks": [[1e999, 1, true]]}', "out of range")):
        status, result = _post(f"{server}/predict", body)
        assert status == 400 and needle in result["error"] and "\n" not in result["error"]


def test_uploads_are_bounded_in_pixels_and_in_the_store(server):
    from nas.deploy import demo

    bomb = io.BytesIO()
    Image.new("L", (9000, 9000)).save(bomb, format="PNG")  # 81 MP from a few hundred KB
    status, result = _post(f"{server}/upload", bomb.getvalue(), "application/octet-stream")
    assert status == 400 and "the limit is" in result["error"]
    app = DemoApp(Segmenter(TraceNetStudent(ArchConfig.smallest("tracenet_tiny"))), store_pixels=3 * 40 * 60)
    ids = [app.upload(_png_bytes(np.zeros((40, 60, 3), np.uint8)))["id"] for _ in range(5)]
    assert list(app.uploads) == ids[-3:]  # the oldest went first
    with pytest.raises(demo.InvalidValueError, match="unknown image"):
        app.image(ids[0])


def test_fifty_simultaneous_predictions_all_get_the_right_answer(server):
    request = json.dumps({"image": "astronaut", "clicks": [[200, 150, True]]}).encode()
    _, expected = _post(f"{server}/predict", request)
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda _: _post(f"{server}/predict", request), range(50)))
    assert [status for status, _ in answers] == [200] * 50
    assert all(result["mask"] == expected["mask"] for _, result in answers)


def test_sixteen_bit_uploads_are_scaled_not_clipped():
    from search_spaces.common.limits import read_image

    buffer = io.BytesIO()
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(buffer, format="PNG")
    assert read_image(buffer.getvalue())[0, :, 0].tolist() == [0, 128, 255]


def _png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
