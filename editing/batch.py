"""Edit a folder of photos, or a manifest of photos with their own prompts: invert once, edit many.

Every option of `python -m editing.run` (see its --help) applies to every image, except --image, --out,
--save-inversion and --inversion-file: the batch names the output folders and caches the inversions itself.

Examples (run on the embedded default model):
  python -m editing.batch --images photos/ --source-prompt "a cat sitting on a blanket" \\
      --target-prompt "a tiger sitting on a blanket" --out out-batch/
  python -m editing.batch --manifest edits.yaml --images photos/ --steps 50 --out out-batch/
  python -m editing.batch --manifest PIE-Bench_v1/mapping_file.json --images PIE-Bench_v1/annotation_images \\
      --out out-pie/
  accelerate launch --multi_gpu --num_processes 4 -m editing.batch --images photos/ ... --out out-batch/

A manifest (YAML, or JSON when it ends in .json) is a list of entries, {"images": [entries]}, or a
mapping of names to entries. An entry gives `image` (relative paths start from --images, else from the
manifest's folder), optionally `name` (its output folder) and any editing.run option by its long name,
e.g. source_prompt, target_prompt (a string or a list), method, steps, blend_words. A PIE-Bench
mapping_file.json entry (image_path, original_prompt, editing_prompt with [ ] marks, blended_word) is read
as image, source_prompt, target_prompt and blend_words; its mask and editing_type_id are for evaluation
and are not used.

Writes into --out one folder per image with editing.run's files (source.png, reconstruction.png, edit.png,
grid.png, summary.json), report.json and report.md, and the inversion cache (.cache/inversions/, or
--cache). A finished image (its summary.json and every output it lists present) is skipped when the
batch runs again (--no-resume to refuse that, --overwrite to redo it). Every file is written under a
temporary name and renamed, so a run killed at any moment leaves no half-written file.
One batch at a time writes into an --out folder (a lock on OUT/.lock): a second one (or a second
multi-process launch) started on the same folder stops with an error naming the first one's process.
Nothing is written outside --out (or --cache): a link planted inside it is refused, not followed, and no
output may replace an input file.
Under `accelerate launch` each process edits a disjoint share of the images and the main process merges
the reports. Exit codes: 0 all done, 1 some image failed (see the report), 2 bad input or usage (one
`error:` line).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from editing import run
from editing.inversion_cache import InversionCache
from editing.methods import check_for_model, finished_summary, inversion_config, run_edit, same_edit
from editing.pie_bench import is_pie_entry, read_entry
from editing.request import EditRequest
from editing.cli import EXIT_FAILURE, EXIT_OK, Parser, apply_config_file, run_main
from editing.core.files import atomic_write, write_json
from editing.core.errors import UserError
from inversion.invert import FULL_DEPTH
from editing.core.image_io import prepare_image, read_image
from editing.core.outputs import OutputFolder, unique_names
from editing.core.loading import load_model
from editing.core.speed import apply_speed, speed_options

# On a GPU one inversion call for 4 photos keeps the UNet busy (one batched call per step); on a CPU a batch
# gains nothing and only delays the first finished image.
GPU_BATCH_SIZE = 4
CPU_BATCH_SIZE = 1
CACHE_SUBDIR = Path(".cache") / "inversions"  # inside --out, so a later run into the same folder finds it
PARTIAL_REPORTS = ".reports"  # each process's own report, merged by the main process
LOCK_FILE = ".lock"  # held (flock) for the whole run: one batch at a time per --out
RESERVED_NAMES = ("report.json", "report.md")  # files the batch writes beside the image folders
# The main process waits at the end for the slowest process; torch's default (10 to 30 minutes) would
# abort a long run whose shards finish far apart.
SHARD_WAIT_TIMEOUT = timedelta(hours=48)
# Options that hold for the whole batch: one model for all images, outputs and inversions named by the batch.
BATCH_LEVEL = ("image", "out", "model", "device", "dtype", "save_inversion", "inversion_file", "config",
               "quiet", "debug", "prediction_type", "download")


def build_parser() -> Parser:
    p = Parser(prog="python -m editing.batch", description=__doc__, allow_abbrev=False,
               formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100))
    p.add_argument("--images", default=None, metavar="DIR",
                   help="a folder of photos (every visible file in it; subfolders are not read), or the folder "
                        "that a manifest's relative image paths start from")
    p.add_argument("--manifest", default=None, metavar="FILE",
                   help="YAML or JSON list of images with their own prompts and options, or PIE-Bench's "
                        "mapping_file.json")
    p.add_argument("--out", default="out-batch", help="output folder (default out-batch/)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"photos inverted together (default {GPU_BATCH_SIZE} on CUDA, "
                        f"{CPU_BATCH_SIZE} otherwise)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help=f"inversion cache, shareable between batches (default OUT/{CACHE_SUBDIR})")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="skip images whose outputs are finished (default); --no-resume reports them as failed "
                        "instead, unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="edit finished images again, replacing their outputs")
    p.add_argument("--verbose", action="store_true", help="also show the per-step progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


@dataclass
class Spec:
    """One image as the input names it, before its options are parsed."""

    key: str  # what identifies it in the input: its file name or its manifest entry
    image: str  # the photo's path
    name: str  # the wanted output folder name (made safe and unique later)
    options: dict = field(default_factory=dict)  # editing.run options by long name, from a manifest


@dataclass
class Job:
    """One image to edit: its photo, its output folder name, its editing options, or why it cannot be edited."""

    index: int  # position in the whole batch (every process numbers the images the same way)
    name: str
    image: str
    request: EditRequest | None
    error: str | None = None


def shared_options(rest: list[str], has_manifest: bool) -> argparse.Namespace:
    """The editing.run options given on the command line (or in its --config file), checked."""
    parser = run.build_parser()
    for action in parser._actions:
        if action.dest in ("image", "target_prompt"):
            action.required = False  # the batch gives the images; a manifest may give the targets
    args = apply_config_file(parser, rest)
    if args.image:
        raise UserError("--image edits one photo (python -m editing.run); give --images DIR or --manifest FILE")
    if args.save_inversion or args.inversion_file:
        raise UserError("the batch caches every inversion itself (see --cache); --save-inversion and "
                        "--inversion-file belong to python -m editing.run")
    if not has_manifest:
        if not args.target_prompt:
            raise UserError("give --target-prompt (repeatable), or a --manifest with prompts per image")
        EditRequest.from_options(vars(args))  # checked now: a bad shared option stops the batch before any work
    return args


def entry_options(shared: argparse.Namespace, options: dict, where: str) -> argparse.Namespace:
    """The shared options with one manifest entry's options on top: the entry wins, and its lists replace."""
    for key in options:
        if str(key).replace("-", "_") in BATCH_LEVEL:
            raise UserError(f"{where}: {key!r} holds for the whole batch; give it on the command line")
    return run.options_to_args(options, base=shared, where=where)


def pie_bench_options(key, entry: dict, where: str) -> dict:
    """A PIE-Bench mapping entry as editing.run options (its mask and editing type are for evaluation)."""
    pie = read_entry(key, entry, where)
    options = {"image": pie.image_path, "source_prompt": pie.source, "target_prompt": [pie.target]}
    if pie.blend_words:
        options["blend_words"] = list(pie.blend_words)
    return options


def read_manifest(path: Path, base: Path | None) -> list[Spec]:
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read manifest {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        data = data["images"]
    if isinstance(data, dict):  # name -> entry, as PIE-Bench's mapping_file.json
        items = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, list):
        items = [(None, v) for v in data]
    else:
        raise UserError(f"manifest {path} must hold a list of entries or a mapping of names to entries")
    base = base or path.parent
    specs = []
    for number, (name, entry) in enumerate(items, 1):
        where = f"{path} entry {name or number}"
        if not isinstance(entry, dict):
            raise UserError(f"{where} must be a mapping with at least `image` and prompts")
        options = pie_bench_options(name or number, entry, where) if is_pie_entry(entry) else dict(entry)
        image = options.pop("image", None)
        if not image:
            raise UserError(f"{where} has no `image` (the photo's path)")
        image = Path(str(image)).expanduser()
        label = str(options.pop("name", None) or name or image.stem)
        specs.append(Spec(key=f"{number}:{label}:{image}", image=str(image if image.is_absolute() else base / image),
                          name=label, options=options))
    if not specs:
        raise UserError(f"manifest {path} lists no images")
    return specs


def folder_specs(folder: Path) -> list[Spec]:
    if not folder.is_dir():
        raise UserError(f"--images {folder} is not a folder; give a folder of photos, or --manifest FILE")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    if not files:
        raise UserError(f"no files in {folder}: put photos (PNG, JPEG, ...) there, or give --manifest FILE")
    return [Spec(key=p.name, image=str(p), name=p.stem) for p in files]


def output_names(specs: list[Spec]) -> list[str]:
    """Safe names (editing.core.outputs.safe_name), unique even where file systems ignore case."""
    return unique_names([s.name for s in specs], [s.key for s in specs], RESERVED_NAMES)


def find_jobs(batch: argparse.Namespace, shared: argparse.Namespace) -> list[Job]:
    """Every image of the batch with its options, in input order. A manifest that cannot be read is a usage
    error; an image whose prompts the editor refuses becomes a failed job (the others still run)."""
    if batch.manifest:
        specs = read_manifest(Path(batch.manifest), Path(batch.images) if batch.images else None)
    else:
        specs = folder_specs(Path(batch.images))
    jobs = []
    for index, (spec, name) in enumerate(zip(specs, output_names(specs))):
        args = entry_options(shared, spec.options, f"{batch.manifest} entry {spec.name}") if spec.options \
            else argparse.Namespace(**vars(shared))
        args.image, args.quiet = spec.image, not batch.verbose
        request, error = None, None
        try:
            if not args.target_prompt:
                raise UserError("no target prompt: give --target-prompt or target_prompt in the manifest")
            request = EditRequest.from_options(vars(args))
        except UserError as exc:
            error = str(exc)
        jobs.append(Job(index, name, spec.image, request, error))
    return jobs


def entry(job: Job, status: str, error: str | None = None, summary: dict | None = None, **extra) -> dict:
    """One image's line of the report."""
    summary = summary or {}
    return {"index": job.index, "name": job.name, "image": job.image, "status": status, "error": error,
            "method": None if job.request is None else job.request.method,
            "timings_s": summary.get("timings_s", {}), "reconstruction_psnr_db": summary.get("reconstruction_psnr_db"),
            "folder": job.name if summary else None, "inversion": None, **extra}


def triage(job: Job, out: Path, model, batch) -> dict | None:
    """The report entry of an image that needs no editing (refused, or finished before), else None."""
    if job.error:
        return entry(job, "failed", job.error)
    summary = finished_summary(out / job.name)
    if summary is None or batch.overwrite:
        return None
    if not same_edit(summary, job.request, model):
        return entry(job, "failed", f"{out / job.name} holds a finished edit with other settings (image, prompts, "
                                    "model or any editing option); pass --overwrite to replace it, or another --out")
    if not batch.resume:
        return entry(job, "failed", f"{out / job.name} is finished and --no-resume was given; pass --overwrite "
                                    "to edit it again")
    return entry(job, "skipped", summary=summary)


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"


def edit_job(job: Job, image: np.ndarray, load_s: float, model, cache: InversionCache, out: OutputFolder,
             debug: bool) -> dict:
    folder = out.child(job.name)

    def inversion_key(request) -> str:
        return cache.key(model, image, request.source_prompt, inversion_config(request))

    key = None
    if job.request.uses_source and not job.request.inverts_by_extent:
        key = inversion_key(job.request)
    summary = None
    try:
        folder.path("summary.json").unlink(missing_ok=True)  # else old outputs beside new ones would look finished
        for stale in folder.folder.glob(".*.tmp"):  # what a killed run was writing when it died (the lock: no other)
            stale.unlink()
        summary = run_edit(model, image, job.request, folder, invert_source=cache)
    except Exception as exc:  # this image fails; the batch goes on
        if debug:
            traceback.print_exc()
        return entry(job, "failed", describe(exc))
    finally:  # the first image to use a fresh inversion is charged with it; later ones reuse it
        if job.request.inverts_by_extent and summary is not None:  # the depth and guidance its mask chose
            key = inversion_key(job.request.replace(depth=summary.get("depth", FULL_DEPTH),
                                                    guidance=summary["guidance"]))
        inversion_s = cache.computed.pop(key, None)
    timings = {"load": round(load_s, 3), "inversion": round(inversion_s or 0.0, 3), **summary["timings_s"]}
    inversion = "not needed" if key is None else "reused" if inversion_s is None else "computed"
    return {**entry(job, "done", summary=summary, inversion=inversion), "timings_s": timings}


def run_shard(jobs: list[Job], model, cache: InversionCache, out: OutputFolder, batch, entries: dict,
              show_bar: bool) -> None:
    """Edit this process' images, filling entries (index -> report entry) as each finishes."""
    todo = []
    for job in jobs:
        found = triage(job, out.folder, model, batch)
        if found is None:
            todo.append(job)
        else:
            entries[job.index] = found
    batch_size = batch.batch_size or (GPU_BATCH_SIZE if model.device.type == "cuda" else CPU_BATCH_SIZE)
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="images", unit="image",
              disable=not show_bar) as bar:
        for start in range(0, len(todo), batch_size):
            loaded = []
            for job in todo[start:start + batch_size]:
                t0 = time.perf_counter()
                try:
                    photo = read_image(job.image, job.request.max_pixels)
                    image = prepare_image(photo, model.resolution, job.request.crop)
                    loaded.append((job, model.for_photo(photo.shape, job.request.crop), image,
                                   time.perf_counter() - t0))
                except Exception as exc:
                    entries[job.index] = entry(job, "failed", describe(exc))
                    bar.update()
            # one inversion batch per conditioning (SD: one; SDXL: photos of one size and crop share time ids)
            groups: dict[str, tuple] = {}
            for job, photo_model, image, _ in loaded:
                groups.setdefault(photo_model.conditioning_key(), (photo_model, []))[1].append((image, job.request))
            for photo_model, items in groups.values():
                cache.prefetch(photo_model, items, disable=not batch.verbose)
            for job, photo_model, image, load_s in loaded:
                entries[job.index] = edit_job(job, image, load_s, photo_model, cache, out, batch.debug)
                bar.update()
    for job in jobs:
        if entries[job.index]["status"] == "failed":
            print(f"failed: {job.name}: {entries[job.index]['error']}", file=sys.stderr)


def totals(entries: list[dict], wall_s: float, processes: int) -> dict:
    count = lambda key, value: sum(e.get(key) == value for e in entries)  # noqa: E731
    psnrs = [e["reconstruction_psnr_db"] for e in entries if e["reconstruction_psnr_db"] is not None]
    return {"images": len(entries), "done": count("status", "done"), "skipped": count("status", "skipped"),
            "failed": count("status", "failed"), "inversions_computed": count("inversion", "computed"),
            "inversions_reused": count("inversion", "reused"),
            "editing_time_s": round(sum(e["timings_s"].get("total", 0.0) for e in entries
                                        if e["status"] == "done"), 3),
            "mean_reconstruction_psnr_db": round(float(np.mean(psnrs)), 3) if psnrs else None,
            "wall_s": round(wall_s, 3), "processes": processes}


def write_report(out: OutputFolder, entries: list[dict], wall_s: float, processes: int, model) -> dict:
    """report.json and report.md (both atomic)."""
    report = {"command": "python -m editing.batch", "model": model.name, "device": str(model.device),
              "totals": totals(entries, wall_s, processes), "images": entries}
    write_json(out.path("report.json"), report)
    t = report["totals"]
    lines = ["# Batch edit report", "",
             f"{t['images']} images: {t['done']} done, {t['skipped']} skipped, {t['failed']} failed; "
             f"{t['inversions_computed']} inversions computed, {t['inversions_reused']} reused from the cache; "
             f"wall time {t['wall_s']} s on {processes} process(es); model {model.name}.", "",
             "| image | status | inversion | load s | inversion s | preliminary s | editing s | generation s "
             "| total s | PSNR dB | error |", "|" + "---|" * 11]
    for e in entries:
        times = [e["timings_s"].get(k, "") for k in ("load", "inversion", "preliminary_training", "editing",
                                                     "generation", "total")]
        cells = [e["name"], e["status"], e.get("inversion") or "", *times, e["reconstruction_psnr_db"] or "",
                 (e["error"] or "").replace("|", "/").replace("\n", " ")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    atomic_write(out.path("report.md"), "\n".join(lines) + "\n")
    return report


@contextmanager
def batch_lock(out: OutputFolder, state, launch: str | None = None):
    """Hold OUT/.lock for the whole run, so two batches never write into one folder at once.

    The main process takes it, exclusively, and writes its launch's identity into it; under `accelerate
    launch` the other processes of the launch wait for it at a barrier, then check the identity is their
    launch's. A second batch (one process or a whole launch) stops with a UserError naming the holder.
    launch: this launch's identity (default `launch_identity(state)`)."""
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no lock
        yield
        return
    path = out.path(LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
    launch = launch_identity(state) if launch is None else launch
    try:
        refused = None
        if state.is_main_process:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{launch}\n".encode(), 0)
            except BlockingIOError:
                refused = _holder(fd)
        if state.num_processes > 1:
            state.wait_for_everyone()  # every process passes here, also a refused main process
            if not state.is_main_process and _holder(fd) != launch:
                refused = _holder(fd)
        if refused is not None:
            raise UserError(f"another editing.batch (process {refused}) is writing into {out.folder}; wait for it "
                            "to finish, or give another --out")
        yield
    finally:
        os.close(fd)  # releases the lock


def launch_identity(state) -> str:
    """Who holds the lock: this process, or (under `accelerate launch`) the launcher every process of the
    launch is a child of, with the launch's rendezvous port."""
    if state.num_processes == 1:
        return str(os.getpid())
    return f"{os.getppid()} (launch on port {os.environ.get('MASTER_PORT', '?')})"


def _holder(fd: int) -> str:
    return os.pread(fd, 128, 0).decode(errors="replace").strip() or "unknown"


def batch_inputs(batch, shared, jobs: list[Job]) -> list:
    """Every file the batch reads, which no output may replace."""
    masks = [job.request.mask_file for job in jobs if job.request is not None]
    return [batch.manifest, shared.config, *(job.image for job in jobs), *masks]


def distributed_state(device: str):
    """Accelerate's process state: one process unless started by `accelerate launch` (or torchrun)."""
    from accelerate import PartialState

    # Accelerate picks gloo on the CPU only when told to; without CUDA the processes must use the CPU.
    cpu = device == "cpu" or not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() \
        in ("1", "true", "yes")
    return PartialState(cpu=cpu, timeout=SHARD_WAIT_TIMEOUT)


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    batch, rest = build_parser().parse_known_args(argv)
    if not (batch.images or batch.manifest):
        raise UserError("give --images DIR (one edit for every photo in it) or --manifest FILE (see --help)")
    if batch.batch_size is not None and batch.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch.batch_size}")
    shared = shared_options(rest, has_manifest=bool(batch.manifest))
    jobs = find_jobs(batch, shared)
    inputs = batch_inputs(batch, shared, jobs)
    out = OutputFolder.prepare(batch.out, inputs)
    cache_folder = OutputFolder.prepare(batch.cache, inputs, "--cache") if batch.cache \
        else out.child(*CACHE_SUBDIR.parts)
    state = distributed_state(shared.device)
    with batch_lock(out, state):
        return run_batch(batch, shared, jobs, state, out, InversionCache(cache_folder), start)


def run_batch(batch, shared, jobs: list[Job], state, out: OutputFolder, cache: InversionCache, start: float) -> int:
    device = str(state.device) if state.num_processes > 1 and state.device.type == "cuda" else shared.device
    model = load_model(shared.model, device=device, dtype=shared.dtype, prediction_type=shared.prediction_type,
                       download=shared.download, debug=batch.debug)
    apply_speed(model, speed_options(shared))
    for job in jobs:  # the limits that need the model (--steps): a shared option stops the batch, an entry fails
        if job.request is not None and not job.error:
            try:
                check_for_model(job.request, model)
            except UserError as exc:
                if not batch.manifest:
                    raise
                job.error = str(exc)
    mine = jobs[state.process_index::state.num_processes]
    entries: dict[int, dict] = {}
    partial = out.path(PARTIAL_REPORTS, f"process-{state.process_index}-of-{state.num_processes}.json")
    try:
        run_shard(mine, model, cache, out, batch, entries, show_bar=state.is_local_main_process)
    finally:  # also when interrupted: what finished is reported, the rest as not run
        for job in mine:
            entries.setdefault(job.index, entry(job, "failed", "interrupted before this image was edited"))
            entries[job.index]["process"] = state.process_index
        write_json(partial, {"images": [entries[job.index] for job in mine]})
        if state.num_processes == 1:
            report = write_report(out, [entries[job.index] for job in mine], time.perf_counter() - start, 1, model)
    if state.num_processes > 1:
        state.wait_for_everyone()
        if not state.is_main_process:
            return EXIT_FAILURE if any(e["status"] == "failed" for e in entries.values()) else EXIT_OK
        merged = []
        for k in range(state.num_processes):
            merged += json.loads(out.path(PARTIAL_REPORTS, f"process-{k}-of-{state.num_processes}.json")
                                 .read_text())["images"]
        report = write_report(out, sorted(merged, key=lambda e: e["index"]), time.perf_counter() - start,
                              state.num_processes, model)
    t = report["totals"]
    print(f"{t['done']} edited, {t['skipped']} skipped (finished before), {t['failed']} failed of {t['images']} "
          f"images; report: {out.folder / 'report.md'}")
    return EXIT_FAILURE if t["failed"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main))
