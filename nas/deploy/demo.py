"""`nas demo`: a local page to try a student: pick or upload an image, click, see the mask.

Left click adds a positive click, right click (or shift-click) a negative one; Undo removes the
last click. The server keeps images in memory and answers JSON: `POST /upload` (image bytes) ->
`{"id", "width", "height"}`, `POST /predict` `{"image": id, "clicks": [[x, y, positive], ...]}`
-> `{"mask": PNG data URL, "iou", "pixels", "ms"}`. Bad input (an unreadable image, a click off
the image, no positive click) is a 400 answer with one-line `{"error": ...}`.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from distill.data.photos import PHOTOS, sample_photos
from search_spaces.common.errors import InvalidValueError
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
    """Images and the segmenter; thread-safe predictions for the HTTP handler."""

    def __init__(self, segmenter: Segmenter):
        self.segmenter = segmenter
        self.images: dict[str, np.ndarray] = dict(zip(PHOTOS, sample_photos(), strict=True))
        self.lock = threading.Lock()

    def upload(self, data: bytes) -> dict:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as im:
                image = np.array(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise InvalidValueError(f"not a readable image ({type(err).__name__})") from None
        image_id = uuid.uuid4().hex[:12]
        self.images[image_id] = image
        return {"id": image_id, "width": image.shape[1], "height": image.shape[0]}

    def predict(self, request: dict) -> dict:
        if not isinstance(request, dict) or request.get("image") not in self.images:
            raise InvalidValueError(f"unknown image {request.get('image') if isinstance(request, dict) else request!r}")
        clicks = request.get("clicks")
        if not isinstance(clicks, list) or not all(isinstance(c, list) and len(c) == 3 for c in clicks):
            raise InvalidValueError("clicks must be a list of [x, y, positive]")
        start = time.perf_counter()
        with self.lock:
            mask, iou = self.segmenter.predict(self.images[request["image"]], [tuple(c) for c in clicks])
        rgba = np.zeros((*mask.shape, 4), np.uint8)
        rgba[mask] = MASK_RGBA
        return {"mask": "data:image/png;base64," + base64.b64encode(_png(rgba)).decode(), "iou": iou,
                "pixels": int(mask.sum()), "ms": (time.perf_counter() - start) * 1e3}


def make_server(app: DemoApp, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
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
                self._send(200, _png(app.images[self.path[7:]]), "image/png")
            else:
                self._json(404, {"error": f"no such page {self.path}"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_UPLOAD_BYTES:
                self._json(413, {"error": f"upload larger than {MAX_UPLOAD_BYTES // 2**20} MiB"})
                return
            body = self.rfile.read(length)
            try:
                if self.path == "/upload":
                    self._json(200, app.upload(body))
                elif self.path == "/predict":
                    self._json(200, app.predict(json.loads(body or b"null")))
                else:
                    self._json(404, {"error": f"no such endpoint {self.path}"})
            except (ValueError, TypeError) as err:  # bad input: one line for the page
                self._json(400, {"error": str(err).splitlines()[0]})

    return ThreadingHTTPServer((host, port), Handler)
