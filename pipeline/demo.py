"""`make demo MODEL=models/<run>`: a local web page that classifies a photo with an exported model.

A person picks or drops a photo; the page sends its bytes to this server, which answers with
the top 5 classes, drawn as bars. The server is the standard library's `http.server`, bound to
127.0.0.1 only (nothing outside this machine can reach it), and reads nothing but the exported
SavedModel. The photo is decoded by the bytes, as the data stage decodes files (JPEG, PNG,
GIF, BMP or WebP, decided by content).

    python -m pipeline demo --model models/photos --port 8000
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pipeline.data.images import ImageDecodeError, decode_image_bytes
from pipeline.errors import MissingInputError, UnavailableError

TOP_K = 5
HOST = "127.0.0.1"
# Larger than any photo a camera writes, small enough that a stray upload cannot fill memory.
MAX_UPLOAD_BYTES = 50 * 1024 * 1024

Classify = Callable[[bytes], list[dict]]


def load_demo_model(model_dir: Path) -> Classify:
    """The one place the demo loads a model: encoded image bytes in, the top-5
    [{"class", "probability"}] out, best first.

    The model is the export's `saved_model/` alone (what TensorFlow Serving would load), through
    its `classify_pixels` signature, which resizes and normalises inside. The bytes are decoded
    by the data stage's decoder, as training's were: it turns phone photos upright by their
    EXIF orientation (the SavedModel's own bytes signature cannot) and names what is wrong
    with a file that is not an image.

    Raises:
        MissingInputError: no exported SavedModel in `model_dir`.
    """
    import tensorflow as tf

    saved_model = Path(model_dir) / "saved_model"
    if not (saved_model / "saved_model.pb").is_file():
        raise MissingInputError(
            f"No exported SavedModel in '{model_dir}' (expected {saved_model}/saved_model.pb). "
            f"Export one with saved_model in export.formats (the default): make export.")
    signature = tf.saved_model.load(str(saved_model)).signatures["classify_pixels"]
    signature(pixels=tf.zeros((1, 8, 8, 3), tf.uint8))  # the first call is slow; not on a photo
    lock = threading.Lock()  # one forward pass at a time: requests come on several threads

    def classify(data: bytes) -> list[dict]:
        pixels = decode_image_bytes(data)
        with lock:
            result = signature(pixels=tf.constant(pixels[None]))
        names = [name.decode("utf-8") for name in result["classes"].numpy()[0][:TOP_K]]
        scores = result["scores"].numpy()[0][:TOP_K]
        return [{"class": name, "probability": float(score)}
                for name, score in zip(names, scores, strict=True)]

    return classify


class _DemoHandler(BaseHTTPRequestHandler):
    """The page at `/`, and `POST /classify`: the body is an image file's bytes, the answer
    {"predictions": [...]} or {"error": "..."} as JSON."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?")[0] != "/":
            self._send(HTTPStatus.NOT_FOUND, b"Not found", "text/plain")
            return
        self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/classify":
            self._send(HTTPStatus.NOT_FOUND, b"Not found", "text/plain")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_UPLOAD_BYTES:
            status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length else HTTPStatus.BAD_REQUEST
            self._json(status, {"error": f"the file is {length:,} bytes; the demo takes 1 byte "
                                         f"to {MAX_UPLOAD_BYTES / 1e6:.0f} MB"})
            return
        try:
            answer = {"predictions": self.server.classify(self.rfile.read(length))}
        except ImageDecodeError as error:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            return
        self._json(HTTPStatus.OK, answer)

    def _json(self, status: HTTPStatus, answer: dict) -> None:
        self._send(status, json.dumps(answer).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass  # one line per request would bury the address printed at the start


def make_server(classify: Classify, title: str, *, port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:`port` (0 picks a free port) serving the page at `/` and
    answering `POST /classify` with `classify`'s top classes, as JSON.

    Raises:
        UnavailableError: the port is taken.
    """
    try:
        server = ThreadingHTTPServer((HOST, port), _DemoHandler)
    except OSError as error:
        raise UnavailableError(f"Cannot serve the demo on {HOST}:{port} ({error.strerror}). "
                               f"Pick another port: make demo PORT=8001.") from None
    server.classify = classify
    server.page = _PAGE.replace("{title}", html.escape(title)).encode()
    return server


def serve_demo(model_dir: Path, *, port: int = 8000) -> None:
    """Serves the demo until Ctrl+C; prints the address to open."""
    server = make_server(load_demo_model(model_dir), Path(model_dir).name, port=port)
    host, bound_port = server.server_address[:2]
    print(f"Demo of {model_dir}: open http://{host}:{bound_port}/ (Ctrl+C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nDemo stopped.")
    finally:
        server.server_close()


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}: classify a photo</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto;
         padding: 0 1rem; color: #1d2430; }
  h1 { font-size: 1.4rem; margin-bottom: 0.2rem; }
  .hint { color: #5a6475; margin-top: 0; }
  #drop { display: block; border: 2px dashed #9aa5b8; border-radius: 10px; padding: 1.5rem;
          text-align: center; cursor: pointer; background: #f7f9fc; }
  #drop.over { border-color: #2f6fde; background: #eaf1ff; }
  #file { display: none; }
  .result { display: flex; gap: 1.5rem; margin-top: 1.5rem; align-items: flex-start; }
  #preview { max-width: 14rem; max-height: 14rem; border-radius: 8px; display: none; }
  #predictions { list-style: none; padding: 0; margin: 0; flex: 1; }
  .prediction { margin-bottom: 0.7rem; }
  .label { display: flex; justify-content: space-between; font-weight: 600; }
  .track { background: #e4e8ef; border-radius: 4px; height: 14px; overflow: hidden; }
  .bar { background: #2f6fde; height: 100%; }
  #status { color: #5a6475; min-height: 1.4em; }
  #status.error { color: #b3261e; }
</style>
</head>
<body>
<h1>Classify a photo with <code>{title}</code></h1>
<p class="hint">Runs on this computer only: the photo goes to the local server, nowhere else.</p>
<label id="drop" for="file">Drop a photo here, or click to pick one (JPEG, PNG, GIF, BMP, WebP)
  <input id="file" type="file" accept="image/*">
</label>
<p id="status"></p>
<div class="result">
  <img id="preview" alt="the photo">
  <ol id="predictions"></ol>
</div>
<script>
const drop = document.getElementById("drop");
const input = document.getElementById("file");
const statusLine = document.getElementById("status");
const preview = document.getElementById("preview");
const list = document.getElementById("predictions");

drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
});
input.addEventListener("change", () => { if (input.files.length) classify(input.files[0]); });

function row(prediction) {
  // Built node by node: class names are shown as text, never parsed as HTML.
  const item = document.createElement("li");
  item.className = "prediction";
  const label = document.createElement("div");
  label.className = "label";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = prediction.class;
  const percent = document.createElement("span");
  percent.textContent = (100 * prediction.probability).toFixed(1) + " %";
  label.append(name, percent);
  const track = document.createElement("div");
  track.className = "track";
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.style.width = (100 * prediction.probability).toFixed(1) + "%";
  track.append(bar);
  item.append(label, track);
  return item;
}

async function classify(file) {
  preview.src = URL.createObjectURL(file);
  preview.style.display = "block";
  list.replaceChildren();
  statusLine.className = "";
  statusLine.textContent = "Classifying " + file.name + "...";
  try {
    const response = await fetch("/classify", { method: "POST", body: file });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error);
    list.replaceChildren(...answer.predictions.map(row));
    statusLine.textContent = file.name + ": top " + answer.predictions.length + " classes";
    document.body.dataset.state = "done";
  } catch (error) {
    statusLine.className = "error";
    statusLine.textContent = file.name + ": " + error.message;
    document.body.dataset.state = "error";
  }
}
</script>
</body>
</html>
"""
