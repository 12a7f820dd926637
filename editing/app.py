"""A local web page for editing: upload a photo, write prompts, see the reconstruction, the edits, the
attention maps and the sweeps.

    python -m editing.app [--model SPEC] [--device auto] [--dtype fp32] [--host 127.0.0.1] [--port 7860]
        [--out out-app] [--compile ...] [--attention-slicing] [--vae-tiling]

then open http://127.0.0.1:7860/ in a browser. Each run is `editing.methods.run_edit` on an `EditRequest`,
the code path of `python -m editing.run`, into its own folder (OUT/run-0001/, ...; uploads in OUT/uploads/):
the page shows those files and offers the folder as a zip. The source inversion of a photo is kept in
memory by its record fingerprint, so a new target prompt or P2P setting re-runs only the edit. Runs wait in
one queue (one at a time on the model); Stop ends the running one between two steps of its loop.

Why the standard library's http.server and a page of our own, not Gradio: measured on 2026-12-01,
`pip install --dry-run gradio` (6.31.0, the newest) would install 19 packages, one of them a downgrade of
pillow 13.0.0 -> 12.3.0 (gradio requires pillow<13; requirements.txt pins 13.0.0), the others fastapi,
starlette, uvicorn, pandas, opentelemetry-api, pydub, ... (the gradio wheel alone is 31 MB); it would not
touch torch or numpy, but the pillow conflict rules it out. Starlette + uvicorn would add two packages for
what http.server already does for one local user. The page here (editing/assets/app/: one HTML, one
script, one style sheet, no framework) needs no new package at all, makes no request to any outside host
(its Content-Security-Policy forbids them), sends no analytics and has no share links. It listens on
127.0.0.1 unless --host says otherwise.
Exit codes: 0 after Ctrl-C, 2 with one `error:` line for bad options (an unknown model, fp16 on the CPU).
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from attention.controllers import EDIT_MODES
from editing.app_runs import Editor, one_line
from editing.cli import EXIT_OK, Parser, run_main
from editing.core.errors import UserError
from editing.core.image_io import Crop
from editing.core.loading import load_model
from editing.core.model import DTYPES
from editing.core.speed import add_speed_options, apply_speed, speed_options
from editing.imagic import DEFAULT_EMBEDDING as IMAGIC_EMBEDDING, DEFAULT_ETA as IMAGIC_ETA, \
    DEFAULT_UNET as IMAGIC_UNET
from editing.learned_embedding import DEFAULT_EMBEDDING as LE_EMBEDDING, DEFAULT_ETA as LE_ETA, \
    DEFAULT_INTERP_STEPS as LE_INTERP_STEPS
from editing.finetune_embedding import DEFAULT_FINETUNE_K
from editing.null_finetune import DEFAULT_K
from editing.request import EDIT_METHODS, EditRequest
from inversion.record import METHODS as INVERSIONS

DEFAULT_HOST = "127.0.0.1"  # this machine only: the page runs models and writes files for whoever reaches it
DEFAULT_PORT = 7860  # the port the field's demo pages use, so muscle memory finds it
MAX_PORT = 65535
LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")  # the Host a browser on this machine sends to a loopback server
ASSETS = Path(__file__).resolve().parent / "assets" / "app"
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}
MAX_UPLOAD_BYTES = 64 * 2 ** 20  # a 100-megapixel JPEG is ~30 MB; refuse more before reading it
MAX_JSON_BYTES = 2 ** 20  # a run request is a few hundred bytes of options
# Everything from this server only: no outside fonts, scripts, images or connections, whatever the page says.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# The request fields the page offers, with EditRequest's own defaults (never restated here).
PAGE_FIELDS = ("source_prompt", "target_prompts", "method", "inversion", "steps", "guidance", "inner_steps",
               "seed", "edit", "cross_replace", "self_replace", "reweight", "blend_words", "blend_threshold",
               "blend_start", "layout_guidance", "depth", "finetune_steps", "finetune_inner", "eta", "interp_steps", "embed_steps",
               "unet_steps", "sweep", "crop")


def build_parser() -> Parser:
    p = Parser(prog="python -m editing.app", description=__doc__,
               formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100))
    p.add_argument("--model", default=None, help="diffusers folder, .safetensors/.ckpt, cached hub id; "
                                                 "default: the embedded default model")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), help="UNet precision (default fp32)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--out", default="out-app", help="folder of the runs and uploads (default out-app/)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    add_speed_options(p)
    return p


def field_default(f: dataclasses.Field):
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(value, Crop):
        return ",".join(str(v) for v in dataclasses.astuple(value))
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, tuple):
        return list(value)
    return None if value is dataclasses.MISSING else value


def page_defaults(editor: Editor) -> dict:
    """What the page's form starts from: EditRequest's defaults, the choices, the methods' own defaults."""
    fields = {f.name: f for f in dataclasses.fields(EditRequest)}
    method_defaults = {  # shown beside the options whose request default is "the method's own"
        "finetune_steps": f"{DEFAULT_K} null-finetune, {DEFAULT_FINETUNE_K} finetune-embedding", "interp_steps": f"{LE_INTERP_STEPS}",
        "eta": f"{LE_ETA} learned-embedding, {IMAGIC_ETA} imagic",
        "embed_steps": f"{LE_EMBEDDING.steps} learned-embedding, {IMAGIC_EMBEDDING.steps} imagic",
        "unet_steps": f"{IMAGIC_UNET.steps}",
    }
    return {"defaults": {name: field_default(fields[name]) for name in PAGE_FIELDS},
            "method_defaults": method_defaults,
            "choices": {"method": list(EDIT_METHODS), "inversion": list(INVERSIONS), "edit": list(EDIT_MODES),
                        "dtype": list(DTYPES)},
            "dtype": editor.dtype, "model": editor.model.name, "resolution": editor.model.resolution,
            "inversions_cached": len(editor.inversions.records), "inversions_computed": editor.inversions.computed}


class AppServer(ThreadingHTTPServer):
    """The HTTP server; each request gets a thread, and the editor runs the edits on its own worker."""

    daemon_threads = True

    def __init__(self, address, editor: Editor):
        super().__init__(address, Handler)
        self.editor = editor

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class Handler(BaseHTTPRequestHandler):
    server: AppServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # the page polls several times a second; log failures only
        pass

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _foreign(self) -> str | None:
        """Why a request that another web site made through the user's browser is refused, or None: on
        loopback the Host must name this machine (DNS rebinding), and a POST's Origin must be this page."""
        host = self.headers.get("Host") or ""
        if ipaddress.ip_address(self.server.server_address[0]).is_loopback and \
                urlsplit("//" + host).hostname not in LOCAL_NAMES:
            return f"this server answers to {', '.join(LOCAL_NAMES)} only, not {host!r}"
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin and urlsplit(origin).netloc != host:
            return f"requests from {origin} are refused: use the page this server serves"
        return None

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        editor = self.server.editor
        if (refused := self._foreign()) is not None:
            self.close_connection = True  # the body, if any, is not read
            return self._json({"error": refused}, HTTPStatus.FORBIDDEN)
        try:
            if method == "GET" and url.path in STATIC:
                name, kind = STATIC[url.path]
                return self._send(HTTPStatus.OK, (ASSETS / name).read_bytes(), kind)
            if method == "GET" and url.path == "/api/defaults":
                return self._json(page_defaults(editor))
            if method == "POST" and url.path == "/api/upload":
                return self._json(editor.upload(self._body(MAX_UPLOAD_BYTES), query.get("name", "")))
            if method == "GET" and url.path == "/api/preview":
                return self._send(HTTPStatus.OK, editor.preview_png(query.get("upload", ""), query.get("crop", "")
                                                                    or "0,0,0,0"), "image/png")
            if method == "POST" and url.path == "/api/run":
                form = self._json_body()
                run = editor.submit(form.get("upload", ""), form.get("options") or {}, form.get("dtype"),
                                    str(form.get("filename") or ""))
                return self._json(run.view())
            if method == "GET" and url.path == "/api/run":
                view = editor.get(query.get("id", "")).view()
                view["inversions_computed"] = editor.inversions.computed
                return self._json(view)
            if method == "POST" and url.path == "/api/stop":
                return self._json(editor.stop(query.get("id", "")).view())
            if method == "GET" and url.path == "/api/zip":
                run_id = query.get("id", "")
                return self._send(HTTPStatus.OK, editor.zip_bytes(run_id), "application/zip",
                                  {"Content-Disposition": f'attachment; filename="{editor.get(run_id).id}.zip"'})
            parts = url.path.split("/")
            if method == "GET" and len(parts) == 4 and parts[1] == "runs":
                path = editor.file_path(parts[2], parts[3])
                kind = "image/png" if path.suffix == ".png" else "application/json"
                return self._send(HTTPStatus.OK, path.read_bytes(), kind)
            return self._json({"error": f"no page {url.path}"}, HTTPStatus.NOT_FOUND)
        except UserError as exc:  # the toolkit's one-line message, shown on the page
            return self._json({"error": one_line(exc)}, HTTPStatus.BAD_REQUEST)
        except Exception as exc:  # a failure inside: this request fails, the server goes on
            traceback.print_exc()
            return self._json({"error": f"{type(exc).__name__}: {one_line(exc)}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _body(self, limit: int) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            self.close_connection = True  # the unread body must not be taken for the next request
            raise UserError(f"the upload is {length / 2 ** 20:.0f} MB; the limit is {limit / 2 ** 20:.0f} MB")
        return self.rfile.read(length)

    def _json_body(self) -> dict:
        try:
            form = json.loads(self._body(MAX_JSON_BYTES) or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"the request is not JSON: {exc}") from None
        if not isinstance(form, dict):
            raise UserError("the request must be a JSON object")
        return form

    def _json(self, value, status=HTTPStatus.OK) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status, body: bytes, kind: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def make_server(editor: Editor, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> AppServer:
    if not 0 <= port <= MAX_PORT:
        raise UserError(f"--port must be between 0 and {MAX_PORT}, got {port}")
    try:
        return AppServer((host, port), editor)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    speed = speed_options(args)

    def load(dtype: str):
        model = load_model(args.model, device=args.device, dtype=dtype)
        apply_speed(model, speed)
        return model

    editor = Editor(load(args.dtype), Path(args.out), reload=load)
    server = make_server(editor, args.host, args.port)
    print(f"editing page on {server.url} (model {editor.model.name}, runs in {args.out}/); Ctrl-C stops it",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main))
