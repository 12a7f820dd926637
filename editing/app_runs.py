"""The work behind the web page (editing/app.py): photos it uploaded, edit runs done one at a time on the
model, their progress and Stop, and the inversion kept in memory so a new target prompt re-runs only the edit.

A run is `editing.methods.run_edit` on an `EditRequest` into its own folder (`OUT/run-0001/`, ...): the page
shows and zips exactly the files `python -m editing.run` writes. Runs wait in one queue served by one worker
thread, so two browser tabs never share a model at the same moment, and a bad request or a failure inside
a run ends that run only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import queue
import re
import threading
import traceback
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from editing.core.errors import UserError
from editing.core.files import atomic_write
from editing.core.image_io import prepare_image, read_image
from editing.core.model import DTYPES
from editing.core.progress import watch
from editing.inversion_cache import inversion_key
from editing.methods import run_edit
from editing.request import AUTO_MASK, EditRequest, parse_crop
from inversion.invert import InversionConfig, invert
from inversion.record import Inversion

UPLOADS = "uploads"  # inside --out: every photo and mask the page sent, named by its content
# Source inversions kept in memory (a record of the default model is ~100 KB, of SD 1.5 at 50 steps ~40 MB
# with its trajectory): enough to go back and forth between a few photos, the oldest dropped first.
MAX_CACHED_INVERSIONS = 8
MAX_SUFFIX_CHARS = 8  # ".jpeg", ".tiff", ".webp": an upload keeps its suffix, nothing else of its name
UPLOAD_NAME = re.compile(r"^[0-9a-f]{16}(\.[a-z0-9]{1,8})?$")
RUN_NAME = re.compile(r"^run-\d{4,}$")
FINISHED = ("done", "stopped", "error", "failed")
# What summary.json's three stage timings hold for each method (editing/methods.py, the thesis' Table 4.1).
STAGE_NAMES = {
    "p2p": ("inversion", "-", "sampling"),
    "null-finetune": ("inversion", "null fine-tuning", "sampling"),
    "learned-embedding": ("embedding optimisation", "inversion under it", "sampling"),
    "imagic": ("embedding optimisation", "UNet fine-tuning", "sampling"),
}
STAGE_KEYS = ("preliminary_training", "editing", "generation")


class RunStopped(Exception):
    """The page's Stop button: raised from the progress listener between two steps of a loop."""


@dataclass
class Run:
    """One edit run: its request, where it writes, and what the page shows of it."""

    id: str
    request: EditRequest
    image: np.ndarray | None  # the prepared photo (released when the run ends)
    photo_shape: tuple  # the uploaded photo's (H, W, 3): SDXL conditions on it (Model.for_photo)
    dtype: str
    folder: Path
    state: str = "queued"  # queued, running, then done, stopped, error (bad input) or failed (inside)
    message: str = ""
    progress: dict = field(default_factory=dict)  # the loop now running: desc, n, total
    stages: list = field(default_factory=list)  # the loops' descriptions in the order they began
    reused: bool | None = None  # whether the source inversion came from memory (None: the method has none)
    inversion_key: str | None = None
    summary: dict | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def on_progress(self, desc: str, n: int, total: int | None) -> None:
        if self.stop.is_set():
            raise RunStopped()
        self.progress = {"desc": desc, "n": n, "total": total}
        if not self.stages or self.stages[-1] != desc:
            self.stages.append(desc)

    def reuse_message(self) -> str:
        if self.reused is None:
            return ""
        key = (self.inversion_key or "")[:12]
        if self.reused:
            return f"reused the inversion of this photo and source prompt (fingerprint {key}): only the edit ran"
        return f"inverted the photo (fingerprint {key}); the next edit of it with these options reuses this inversion"

    def view(self) -> dict:
        """What the page shows of the run (JSON-ready)."""
        view = {"id": self.id, "state": self.state, "message": self.message, "progress": self.progress,
                "stages": list(self.stages), "reused": self.reused, "reuse_message": self.reuse_message()}
        if self.summary is None:
            return view
        summary, outputs = self.summary, self.summary["outputs"]
        url = lambda name: f"/runs/{self.id}/{name}"  # noqa: E731
        psnr = summary["reconstruction_psnr_db"]
        view["images"] = [{"src": url(outputs["source"]), "caption": "source"},
                          {"src": url(outputs["reconstruction"]), "caption": f"reconstruction, PSNR {psnr} dB"},
                          *[{"src": url(name), "caption": prompt, "edit": True}
                            for name, prompt in zip(outputs["edit"], summary["target_prompts"])],
                          *[{"src": url(name), "caption": f"mask from the captions ({share:.0%} of the image): {prompt}"}
                            for name, share, prompt in zip(outputs.get("mask", []), summary.get("auto_mask_share", []),
                                                           summary["target_prompts"])]]
        view["attention"] = url(outputs["attention"]) if "attention" in outputs else None
        view["sweeps"] = [url(name) for name in outputs.get("sweep", [])]
        view["psnr"] = psnr
        timings = summary["timings_s"]
        view["timings"] = [{"stage": key, "what": what, "seconds": timings[key]}
                           for key, what in zip(STAGE_KEYS, STAGE_NAMES[summary["method"]])]
        view["timings"].append({"stage": "total", "what": "with writing the files", "seconds": timings["total"]})
        view["files"] = sorted(p.name for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))
        view["zip"] = f"/api/zip?id={self.id}"
        return view


class InversionMemory:
    """Source inversions in memory, keyed like the batch runner's disk cache (editing.batch.InversionCache:
    the record fingerprint of photo, prompt, model, inversion method and its parameters). Records keep the
    DDIM trajectory, so one serves p2p and null-finetune alike."""

    def __init__(self, capacity: int = MAX_CACHED_INVERSIONS):
        self.capacity = capacity
        self.records: OrderedDict[str, Inversion] = OrderedDict()
        self.computed = 0  # inversions actually run (the rest were reused)

    key = staticmethod(inversion_key)

    def for_run(self, run: Run) -> Callable:
        """editing.methods' invert_source for one run, noting on the run whether it reused a record."""
        def invert_source(model, image, prompt: str, config: InversionConfig, disable: bool) -> Inversion:
            key = self.key(model, image, prompt, config)
            run.inversion_key, run.reused = key, key in self.records
            if key not in self.records:
                config = dataclasses.replace(config, keep_trajectory=True)
                self.records[key] = invert(model, image[None], [prompt], config, disable=disable)[0]
                self.computed += 1
                while len(self.records) > self.capacity:
                    self.records.popitem(last=False)
            self.records.move_to_end(key)
            return self.records[key]
        return invert_source


class Editor:
    """Uploads, the run queue and its one worker thread, for one model (reloaded when a run asks another dtype)."""

    def __init__(self, model, out: Path, reload: Callable[[str], object]):
        self.model = model
        self.out = Path(out)
        self.reload = reload  # dtype name -> the same model in that precision
        self.inversions = InversionMemory()
        self.runs: dict[str, Run] = {}
        self._queue: queue.Queue[Run | None] = queue.Queue()  # None: the end
        self._lock = threading.Lock()  # guards self.runs and the run numbering
        self._worker = threading.Thread(target=self._work, name="editing-app-runs", daemon=True)
        self._worker.start()

    @property
    def dtype(self) -> str:
        return next(name for name, value in DTYPES.items() if value == self.model.dtype)

    # uploads ------------------------------------------------------------------------------------------------
    def upload(self, data: bytes, filename: str) -> dict:
        """Store a photo or mask the page sent and check it reads as an image; -> its name and size."""
        suffix = Path(filename).suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,%d}" % (MAX_SUFFIX_CHARS - 1), suffix) else ""
        name = hashlib.sha256(data).hexdigest()[:16] + suffix
        path = self.out / UPLOADS / name
        if not path.is_file():
            atomic_write(path, data)
        try:
            rgb = read_image(path)
        except UserError as exc:
            path.unlink(missing_ok=True)
            raise UserError(str(exc).replace(str(path), filename or "the upload")) from None
        return {"upload": name, "width": int(rgb.shape[1]), "height": int(rgb.shape[0])}

    def upload_path(self, name: str) -> Path:
        path = self.out / UPLOADS / str(name)
        if not UPLOAD_NAME.match(str(name)) or not path.is_file():
            raise UserError("that photo is no longer on the server; choose the file again")
        return path

    def prepared(self, name: str, crop) -> np.ndarray:
        """The uploaded photo as the edit sees it: the crop applied, centre square, the model's resolution."""
        return self._photo(name, crop)[1]

    def _photo(self, name: str, crop) -> tuple[tuple, np.ndarray]:
        """(the uploaded photo's shape, the photo prepared as in `prepared`)."""
        photo = read_image(self.upload_path(name))
        return photo.shape, prepare_image(photo, self.model.resolution, parse_crop(crop))

    def preview_png(self, name: str, crop) -> bytes:
        ok, png = cv2.imencode(".png", np.ascontiguousarray(self.prepared(name, crop)[..., ::-1]))
        return png.tobytes()

    # runs ---------------------------------------------------------------------------------------------------
    def submit(self, upload: str, options: dict, dtype: str | None = None, filename: str = "") -> Run:
        """Check a request (UserError, nothing queued) and queue it; -> the queued run."""
        dtype = dtype or self.dtype
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        options = dict(options)
        if options.get("mask") and options["mask"] != AUTO_MASK:
            options["mask"] = str(self.upload_path(options["mask"]))
        request = EditRequest.from_options({**options, "image": filename or upload, "quiet": True,
                                            "attention_maps": options.get("method", "p2p") == "p2p"})
        photo_shape, image = self._photo(upload, request.crop)
        with self._lock:
            number = len(self.runs) + 1
            # skip the folders of an earlier server in this --out, and the runs still queued (no folder yet)
            while (self.out / f"run-{number:04d}").exists() or f"run-{number:04d}" in self.runs:
                number += 1
            folder = self.out / f"run-{number:04d}"  # made by run_edit when the edit has succeeded
            run = Run(id=folder.name, request=request, image=image, photo_shape=photo_shape, dtype=dtype,
                      folder=folder)
            self.runs[run.id] = run
        self._queue.put(run)
        return run

    def stop(self, run_id: str) -> Run:
        run = self.get(run_id)
        run.stop.set()
        return run

    def get(self, run_id: str) -> Run:
        with self._lock:
            if run_id not in self.runs:
                raise UserError(f"no run {run_id!r} on this server")
            return self.runs[run_id]

    def _model_for(self, dtype: str):
        if dtype != self.dtype:
            self.model = self.reload(dtype)
        return self.model

    def close(self) -> None:
        """End the worker after the runs already queued."""
        self._queue.put(None)
        self._worker.join()

    def _work(self) -> None:
        while (run := self._queue.get()) is not None:
            self._run(run)

    def _run(self, run: Run) -> None:
        if run.stop.is_set():
            run.state, run.message, run.image = "stopped", "stopped before it started", None
            return
        run.state = "running"
        try:
            model = self._model_for(run.dtype).for_photo(run.photo_shape, run.request.crop)
            with watch(run.on_progress):
                run.summary = run_edit(model, run.image, run.request, run.folder,
                                       invert_source=self.inversions.for_run(run))
            run.state = "done"
        except RunStopped:
            run.state, run.message = "stopped", "stopped: the run ended at the Stop button, nothing was written"
        except UserError as exc:
            run.state, run.message = "error", one_line(exc)
        except Exception as exc:  # a failure inside the run: this run ends, the server goes on
            traceback.print_exc()
            run.state, run.message = "failed", f"{type(exc).__name__}: {one_line(exc)}"
        finally:
            run.image = None
            if run.state != "done":  # run_edit makes the folder before the edit: an unfinished run leaves none
                try:
                    run.folder.rmdir()  # only when empty: a folder with files in it is never removed
                except OSError:
                    pass

    def zip_bytes(self, run_id: str) -> bytes:
        """The run folder as a zip (made in memory; nothing is written)."""
        run = self.get(run_id)
        if run.state != "done":
            raise UserError(f"{run_id} is {run.state}: only a finished run has files to download")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(run.folder.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    archive.write(path, f"{run.id}/{path.name}")
        return buffer.getvalue()

    def file_path(self, run_id: str, name: str) -> Path:
        """A file of a run folder, refusing any name that is not a plain file name inside it."""
        if not RUN_NAME.match(run_id) or not re.fullmatch(r"[\w-]+\.(png|json)", name):
            raise UserError(f"no file {name!r} in {run_id!r}")
        path = self.out / run_id / name
        if not path.is_file():
            raise UserError(f"no file {name!r} in {run_id!r}")
        return path


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
