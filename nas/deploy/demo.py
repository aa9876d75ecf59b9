"""`nas demo`: a local page to try a student: pick or upload an image, click, see the mask.

Left click adds a positive click, right click (or shift-click) a negative one; Undo removes the
last click. The server keeps images in memory and answers JSON: `POST /upload` (image bytes) ->
`{"id", "width", "height"}`, `POST /predict` `{"image": id, "clicks": [[x, y, positive], ...]}`
-> `{"mask": PNG data URL, "iou", "pixels", "ms"}`. Bad input (an unreadable or oversized image,
a click off the image, no positive click, too many clicks, a malformed body or header) is a 400
(411, 413) answer with one-line `{"error": ...}`; bodies over 32 MiB are refused before they are read.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from distill.data.photos import PHOTOS, sample_photos
from search_spaces.common.errors import InvalidValueError, TraceNASError
from search_spaces.common.limits import MAX_CLICKS, MAX_IMAGE_PIXELS, parse_json, read_image
from search_spaces.students.segmenter import Segmenter

MASK_RGBA = (30, 144, 255, 120)
MAX_UPLOAD_BYTES = 32 * 2**20

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>TraceNAS demo</title>
<style>
 body { font-family: sans-serif; margin: 16px; }
 #bar > * { margin-right: 8px; }
 canvas { border: 1px solid #888; cursor: crosshair; margin-top: 8px; max-width: 100%; }
</style></head>
<body>
<div id="bar">
 <select id="sample"></select>
 <input type="file" id="file" accept="image/*">
 <button id="undo">Undo</button><button id="clear">Clear</button>
 <span id="status">left click: object, right click or shift-click: background</span>
</div>
<canvas id="view"></canvas>
<script>
const canvas = document.getElementById("view"), ctx = canvas.getContext("2d");
const status = document.getElementById("status");
let imageId = null, picture = new Image(), mask = null, clicks = [];
function draw() {
  ctx.drawImage(picture, 0, 0);
  if (mask) ctx.drawImage(mask, 0, 0);
  for (const [x, y, positive] of clicks) {
    ctx.beginPath(); ctx.arc(x, y, 6, 0, 2 * Math.PI);
    ctx.fillStyle = positive ? "#00e000" : "#e00000"; ctx.fill();
    ctx.lineWidth = 2; ctx.strokeStyle = "white"; ctx.stroke();
  }
}
async function predict() {
  mask = null;
  if (!clicks.some(c => c[2])) { draw(); status.textContent = "add a positive click"; return; }
  const answer = await fetch("/predict", {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify({image: imageId, clicks: clicks})});
  const result = await answer.json();
  if (!answer.ok) { status.textContent = "error: " + result.error; draw(); return; }
  const overlay = new Image();
  overlay.onload = () => { mask = overlay; draw();
    status.textContent =
      `mask: ${result.pixels} px, predicted IoU ${result.iou.toFixed(2)}, ${result.ms.toFixed(0)} ms`;
    document.body.dataset.ready = String(clicks.length); };
  overlay.src = result.mask;
}
function show(id, url) {
  imageId = id; clicks = []; mask = null;
  picture = new Image();
  picture.onload = () => { canvas.width = picture.width; canvas.height = picture.height; draw();
                           document.body.dataset.loaded = id; };
  picture.src = url;
}
function addClick(event, positive) {
  const box = canvas.getBoundingClientRect();
  const x = (event.clientX - box.left) * canvas.width / box.width;
  const y = (event.clientY - box.top) * canvas.height / box.height;
  clicks.push([x, y, positive]); predict();
}
canvas.addEventListener("click", e => addClick(e, !e.shiftKey));
canvas.addEventListener("contextmenu", e => { e.preventDefault(); addClick(e, false); });
document.getElementById("undo").onclick = () => { clicks.pop(); predict(); };
document.getElementById("clear").onclick = () => { clicks = []; predict(); };
document.getElementById("sample").onchange = e => show(e.target.value, "/image/" + e.target.value);
document.getElementById("file").onchange = async e => {
  const file = e.target.files[0]; if (!file) return;
  const answer = await fetch("/upload", {method: "POST", body: file});
  const result = await answer.json();
  if (!answer.ok) { status.textContent = "error: " + result.error; return; }
  show(result.id, URL.createObjectURL(file));
};
fetch("/images").then(r => r.json()).then(names => {
  const select = document.getElementById("sample");
  for (const name of names) select.add(new Option(name, name));
  show(names[0], "/image/" + names[0]);
});
</script></body></html>
"""


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class DemoApp:
    """Images and the segmenter; thread-safe predictions for the HTTP handler. Uploads are kept in a
    store bounded by total pixels (the least recently used go first); the bundled photos stay."""

    def __init__(self, segmenter: Segmenter, store_pixels: int = 2 * MAX_IMAGE_PIXELS):
        self.segmenter = segmenter
        self.photos: dict[str, np.ndarray] = dict(zip(PHOTOS, sample_photos(), strict=True))
        self.uploads: OrderedDict[str, np.ndarray] = OrderedDict()
        self.store_pixels = store_pixels
        self.lock = threading.Lock()

    def image(self, image_id: object) -> np.ndarray:
        with self.lock:
            if isinstance(image_id, str) and image_id in self.uploads:
                self.uploads.move_to_end(image_id)
                return self.uploads[image_id]
        if isinstance(image_id, str) and image_id in self.photos:
            return self.photos[image_id]
        raise InvalidValueError(f"unknown image {str(image_id)[:40]!r} (uploads are kept while they fit the store)")

    def upload(self, data: bytes) -> dict:
        image = read_image(data)
        image_id = uuid.uuid4().hex[:12]
        with self.lock:
            self.uploads[image_id] = image
            while sum(a.shape[0] * a.shape[1] for a in self.uploads.values()) > self.store_pixels:
                self.uploads.popitem(last=False)
        return {"id": image_id, "width": image.shape[1], "height": image.shape[0]}

    def predict(self, request: object) -> dict:
        if not isinstance(request, dict):
            raise InvalidValueError("the request must be a JSON object {image, clicks}")
        image = self.image(request.get("image"))
        clicks = request.get("clicks")
        if not isinstance(clicks, list) or not all(isinstance(c, list) and len(c) == 3 for c in clicks):
            raise InvalidValueError("clicks must be a list of [x, y, positive]")
        if len(clicks) > MAX_CLICKS:
            raise InvalidValueError(f"{len(clicks)} clicks; at most {MAX_CLICKS} per request")
        start = time.perf_counter()
        with self.lock:  # one prediction at a time: the segmenter's buffers are shared
            mask, iou = self.segmenter.predict(image, [tuple(c) for c in clicks])
        rgba = np.zeros((*mask.shape, 4), np.uint8)
        rgba[mask] = MASK_RGBA
        return {"mask": "data:image/png;base64," + base64.b64encode(_png(rgba)).decode(), "iou": iou,
                "pixels": int(mask.sum()), "ms": (time.perf_counter() - start) * 1e3}


class DemoServer(ThreadingHTTPServer):
    request_queue_size = 128  # simultaneous connections waiting to be accepted (the default is 5)
    daemon_threads = True


def make_server(app: DemoApp, host: str = "127.0.0.1", port: int = 8000) -> DemoServer:
    class Handler(BaseHTTPRequestHandler):
        timeout = 30  # seconds a client may take to send its request

        def log_message(self, *args: object) -> None:  # quiet: the page reports errors itself
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: object) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def do_GET(self) -> None:
            if self.path in ("/", "/index.html"):
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif self.path == "/images":
                self._json(200, list(PHOTOS))
            elif self.path.startswith("/image/") and self.path[7:] in PHOTOS:
                self._send(200, _png(app.photos[self.path[7:]]), "image/png")
            else:
                self._json(404, {"error": f"no such page {self.path[:80]}"})

        def _body(self) -> bytes | None:
            """The request body, at most MAX_UPLOAD_BYTES of it; None once an error is answered."""
            length = self.headers.get("Content-Length")
            if length is None:
                self._json(411, {"error": "a Content-Length header is required"})
            elif not length.strip().isdigit():
                self._json(400, {"error": "Content-Length must be a non-negative integer"})
            elif int(length) > MAX_UPLOAD_BYTES:
                self._json(413, {"error": f"body larger than {MAX_UPLOAD_BYTES // 2**20} MiB"})
            else:
                return self.rfile.read(int(length))
            self.close_connection = True  # the unread body must not be taken for the next request
            return None

        def do_POST(self) -> None:
            body = self._body()
            if body is None:
                return
            try:
                if self.path == "/upload":
                    self._json(200, app.upload(body))
                elif self.path == "/predict":
                    self._json(200, app.predict(parse_json(body or b"null", "request")))
                else:
                    self._json(404, {"error": f"no such endpoint {self.path[:80]}"})
            except TraceNASError as err:  # bad input: one line for the page
                self._json(400, {"error": str(err).splitlines()[0]})
            except Exception:  # a bug: the client still gets an answer, the log the traceback
                traceback.print_exc()
                self._json(500, {"error": "internal error (see the server's log)"})

    return DemoServer((host, port), Handler)
