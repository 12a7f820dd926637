"""The quality suite: how closely each inversion reconstructs photos, and how well each editing method
edits the toy world, where every edit has a ground truth.

Part "reconstruction" (--parts): each photo (default: scikit-image's chelsea, astronaut, coffee and rocket
with built-in captions; or every photo in --images DIR, captioned by DIR/<name>.txt, else the empty
prompt) is inverted with its caption by each of --recon-inversions (default all four: null-text,
negative-prompt, direct, ddim) and sampled back; PSNR and SSIM against the preprocessed photo. The VAE
round trip (encode, decode) is the ceiling no inversion can pass.

Part "edits": N seeded toy-world scenes, each with a ground-truth edited twin (one attribute changed:
colour, shape or background). Each method of --methods edits the source render towards the twin's
caption through editing.run (run_edit), and is scored by:
- edit accuracy: the share of edits the attribute checker reads as the twin (all three attributes
  right), per kind of edit, and the per-attribute reading;
- edit PSNR / SSIM against the ground-truth edited render: for an edit of kind, the nearest of the twins the
  source's picture allows (its shape turned by each turn that maps it onto itself: a turned square made a
  triangle may point four ways, a circle made a triangle any way, a turned triangle made a circle may be
  centred on three points), since the picture does not say which the scene's hidden angle meant;
- unchanged-region PSNR: over the pixels the ground-truth edit leaves alone (with a 1 px margin), the
  edit against the ground truth (there identical to the source); per kind of edit also split into the
  pixels within 6 px of the change (a shape that grew, or its colour spilling) and the rest (a tint);
- layout: the distance between the centre of the main shape the checker reads in the edit and the one
  it reads in the ground-truth twin (in px of the 64 px reference canvas); "kept" when at most 3 px;
- reconstruction PSNR of the method's reconstruction against the source.
A method is METHOD[:INVERSION]: p2p (Prompt-to-Prompt replace), null-finetune, learned-embedding with
an inversion of null-text (default), negative-prompt, direct or ddim; imagic takes none. --run-args
passes further editing.run options to every method (e.g. fewer optimisation steps for the slow ones).
A killed run resumes: the same command again edits only the scenes without a finished summary.json. --shard
I/N edits only every N-th scene (scenes k with k mod N = I - 1); N of them on one --out share the work
between cores or GPUs, and the same command without --shard then scores all the scenes they finished.

Examples (the embedded default model):
  python -m benchmarks.quality --n 100 --out out/quality
  python -m benchmarks.quality --parts edits --n 20 --methods p2p p2p:negative-prompt p2p:direct \\
      null-finetune --out out/quality-p2p
  python -m benchmarks.quality --parts edits --n 5 --steps 25 --methods learned-embedding imagic \\
      --run-args="--embed-steps 100 --unet-steps 100" --out out/quality-slow
  for i in 1 2; do python -m benchmarks.quality --parts edits --methods null-finetune --shard $i/2 \\
      --out out/q & done; wait; python -m benchmarks.quality --parts edits --methods null-finetune --out out/q
  python -m benchmarks.quality --parts reconstruction --images my-photos/ --out out/recon
  python -m benchmarks.quality pie --help        (the PIE-Bench runner)

Writes quality.json, quality.md, reconstruction.png (photo | VAE | each inversion), examples.png
(source | ground truth | reconstruction | edit, a few scenes per method) and edits/<method>/<scene>/
(editing.run's files of every edit).
Exit codes: 0 done, 2 bad input or usage (one `error:` line), 1 a failure inside the run.
"""
from __future__ import annotations

import json
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from benchmarks.edit_runs import add_run_options, edit_args, method_label, method_name, parse_method, \
    split_run_args
from benchmarks import pie
from benchmarks.metrics import masked_psnr
from editing.cli import EXIT_OK, Parser, run_main
from editing.core.files import atomic_write, write_json
from editing.core.errors import UserError
from editing.core.image_io import image_grid, load_image, prepare_image, read_image, save_image
from editing.core.model import DEFAULT_MODEL_DIR, DEFAULT_NAMES
from editing.core.loading import load_model
from editing.inversion_cache import InversionCache
from editing.methods import finished_summary, run_edit, same_edit
from editing.core.speed import apply_speed, speed_options, speed_summary
from editing.core.metrics import PSNR_CAP_DB, psnr, ssim
from inversion.invert import InversionConfig, invert, reconstruct
from inversion.null_text import NullTextConfig
from inversion.record import METHODS as INVERSIONS
from toyworld.checker import check, read_scene
from toyworld.world import Scene, edit_pairs, edited_twins, render

SEED = 1234  # the scenes of the benchmark: fixed, so figures from different runs compare
TURNED_PROB = 0.5  # share of turned shapes in the scenes: half the shapes at any angle, as users draw them
# (0 gives the upright scenes of the figures before the model trained on turned shapes)
CHANGED_DILATION = 1  # pixels around the ground-truth change that count as changed (antialiased edges)
# the unchanged region splits into "near" (within this many px of the change: where a shape that grew, moved or
# bled its colour lands, 1.5 latent cells of a 16 x 16 model) and "far" (the rest: a tint of the whole picture)
NEAR_PX = 6
LAYOUT_TOLERANCE_PX = 3.0  # reference px (of 64): the checker reads a clean render's centre within ~1 px
EXAMPLES = 8  # scenes per method in examples.png
PARTS = ("reconstruction", "edits")
# Why an edit failed (a scene may have several): the checker's reading against the ground-truth twin.
FAILURE_REASONS = ("wrong colour", "wrong shape", "wrong background", "layout moved")
# The default photos of the reconstruction part: scikit-image's loader name and a caption of the photo.
DEFAULT_PHOTOS = (("chelsea", "a photo of a cat"), ("astronaut", "an astronaut in a white suit"),
                  ("coffee", "a cup of coffee on a saucer"), ("rocket", "a rocket on a launch pad"))
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


def grown(mask: np.ndarray, px: int) -> np.ndarray:
    """(H, W) bool: mask grown by px pixels (a square neighbourhood)."""
    import cv2

    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1,) * 2, np.uint8)) > 0


def unchanged_region(source: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """(H, W) True where the ground-truth edit leaves the pixels alone (with a margin)."""
    return ~grown((source != edited).any(-1), CHANGED_DILATION)


def near_and_far(source: np.ndarray, edited: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The unchanged region split: the pixels within NEAR_PX of the ground-truth change, and the rest."""
    keep = unchanged_region(source, edited)
    near = keep & grown((source != edited).any(-1), NEAR_PX)
    return near, keep & ~near


def build_parser() -> Parser:
    p = Parser(prog="python -m benchmarks.quality", description=__doc__,
               formatter_class=lambda prog: __import__("argparse").RawDescriptionHelpFormatter(prog, width=100))
    p.add_argument("--model", default=None, help="model spec (default: the embedded default model)")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to run (default both)")
    p.add_argument("--n", type=int, default=100, help="edits: number of toy-world scenes (default 100)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD[:INVERSION]",
                   help="edits: methods to compare (default p2p, i.e. p2p:null-text)")
    p.add_argument("--inversion", nargs="+", default=None, choices=INVERSIONS,
                   help="edits: shorthand for --methods p2p:INVERSION ... (the suite's first interface)")
    p.add_argument("--run-args", default="", metavar='"FLAGS"',
                   help='further editing.run options for every method, e.g. --run-args="--embed-steps 100"')
    p.add_argument("--cross-replace", default="0.8", help="P2P cross-attention steps (0.8)")
    p.add_argument("--self-replace", default="0.4", help="P2P self-attention steps (0.4)")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="reconstruction: a folder of photos (captions in NAME.txt); default: "
                        + ", ".join(n for n, _ in DEFAULT_PHOTOS))
    p.add_argument("--recon-inversions", nargs="+", default=list(INVERSIONS), choices=INVERSIONS,
                   help="reconstruction: inversions to compare (default all four)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="edits: edit only the scenes k with k mod N = I - 1 (others are scored if finished)")
    add_scene_options(p)
    add_run_options(p, batch_size=25, out="out/quality")
    return p


def parse_shard(text: str | None, n: int) -> tuple[int, int]:
    """'2/3' -> (1, 3): this process's remainder and the shard count; None -> (0, 1), every scene."""
    if text is None:
        return 0, 1
    index, _, count = str(text).partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        raise UserError(f"--shard takes I/N, e.g. 1/2, got {text!r}") from None
    if not 1 <= index <= count <= n:
        raise UserError(f"--shard {text}: need 1 <= I <= N <= --n ({n})")
    return index - 1, count


def add_scene_options(p) -> None:
    """The options that choose the benchmark's seeded scenes (shared by quality, curves and editability)."""
    p.add_argument("--turned-prob", type=float, default=TURNED_PROB,
                   help=f"share of shapes turned by a random angle (default {TURNED_PROB:g}; 0: upright only, the "
                        "scenes of the earlier figures; scenes of a given value are the same on every run)")
    p.add_argument("--scene-seed", type=int, default=SEED,
                   help=f"the seed the scenes are drawn with (default {SEED}, the benchmark's: every figure in "
                        "RESULTS.md; another seed gives held-out scenes, to check settings chosen on these)")


def benchmark_scenes(args, size: int) -> list[dict]:
    """The first args.n seeded edit pairs (any --n: the first scenes are the same)."""
    if not 0.0 <= args.turned_prob <= 1.0:
        raise UserError(f"--turned-prob must be between 0 and 1, got {args.turned_prob:g}")
    return edit_pairs(args.scene_seed, args.n, size=size, turned_prob=args.turned_prob)


def scene_settings(args) -> dict:
    """What a saved result must match besides its method: {} for the upright scenes (as saved before angles)."""
    held_out = {"scene_seed": args.scene_seed} if args.scene_seed != SEED else {}
    return ({"turned_prob": args.turned_prob} if args.turned_prob else {}) | held_out


def scenes_name(args) -> str:
    """'seed 1234', or 'seed 1234, turned 0.5': names the scene set in reports and in each edit's request,
    so a resumed run never takes an edit of another scene set for its own."""
    return f"seed {args.scene_seed}" + (f", turned {args.turned_prob:g}" if args.turned_prob else "")


def check_args(args) -> list[tuple[str, str | None]]:
    """Validate the options; return the edit methods as (method, inversion) pairs."""
    if args.n < 1 or args.steps < 1 or args.batch_size < 1 or args.inner_steps < 1:
        raise UserError("--n, --steps, --inner-steps and --batch-size must be at least 1")
    parse_shard(args.shard, args.n)
    if args.methods and args.inversion:
        raise UserError("give --methods p2p:INVERSION ... or --inversion INVERSION ..., not both")
    specs = args.methods or [f"p2p:{i}" for i in (args.inversion or ["null-text"])]
    methods = list(dict.fromkeys(parse_method(s) for s in specs))  # in order, without repeats
    for method, inversion in methods:  # editing.run refuses bad options now, not after an hour of edits
        edit_args(method, inversion, "check", "a red circle on a gray background",
                  "a blue circle on a gray background", edit_options(args))
    return methods


def edit_options(args) -> list[str]:
    """The editing.run flags every edit of this run gets."""
    return ["--steps", str(args.steps), "--guidance", str(args.guidance), "--inner-steps", str(args.inner_steps),
            "--seed", str(args.seed), "--dtype", args.dtype, "--edit", "replace",
            "--cross-replace", str(args.cross_replace), "--self-replace", str(args.self_replace),
            *split_run_args(args.run_args)]


def load_photos(folder: str | None, size: int) -> tuple[list[str], np.ndarray, list[str]]:
    """(names, photos (B, size, size, 3) uint8, captions) of the reconstruction part."""
    if folder is None:
        import skimage.data

        photos = [load_photo_array(getattr(skimage.data, name)(), size) for name, _ in DEFAULT_PHOTOS]
        return [n for n, _ in DEFAULT_PHOTOS], np.stack(photos), [c for _, c in DEFAULT_PHOTOS]
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--images {folder}: not a folder; give a folder of photos ({', '.join(PHOTO_SUFFIXES)})")
    files = sorted(f for f in root.iterdir() if f.suffix.lower() in PHOTO_SUFFIXES)
    if not files:
        raise UserError(f"--images {folder}: no photos ({', '.join(PHOTO_SUFFIXES)}) in it")
    captions = [f.with_suffix(".txt").read_text().strip() if f.with_suffix(".txt").is_file() else "" for f in files]
    return [f.name for f in files], np.stack([load_image(f, size) for f in files]), captions


def load_photo_array(rgb: np.ndarray, size: int) -> np.ndarray:
    return prepare_image(rgb if rgb.ndim == 3 else np.repeat(rgb[..., None], 3, -1), size)


def reconstruction_benchmark(model, names, photos, captions, args) -> tuple[list[dict], list[np.ndarray]]:
    """Per inversion: mean and per-photo PSNR / SSIM of the reconstruction, and its time; plus the grid
    rows (photo | VAE round trip | each inversion's reconstruction)."""
    from tqdm.auto import tqdm

    vae = model.decode_latents(model.encode_images(photos))
    outputs = {"vae round trip (ceiling)": (vae, 0.0)}
    for inversion in tqdm(args.recon_inversions, desc="reconstruction", disable=args.quiet):
        config = InversionConfig(method=inversion, steps=args.steps, guidance=args.guidance,
                                 null_text=NullTextConfig(inner_steps=args.inner_steps))
        start, images = time.perf_counter(), []
        for first in range(0, len(photos), args.batch_size):
            records = invert(model, photos[first:first + args.batch_size], captions[first:first + args.batch_size],
                             config, disable=True)
            images.append(reconstruct(model, records, disable=True))
        outputs[inversion] = (np.concatenate(images), time.perf_counter() - start)
    results = []
    for name, (images, seconds) in outputs.items():
        per_photo = {n: {"psnr_db": min(psnr(r, p), PSNR_CAP_DB), "ssim": ssim(r, p)}
                     for n, r, p in zip(names, images, photos)}
        results.append({"inversion": name, "psnr_db": float(np.mean([v["psnr_db"] for v in per_photo.values()])),
                        "ssim": float(np.mean([v["ssim"] for v in per_photo.values()])),
                        "seconds": round(seconds, 1), "per_photo": per_photo})
    rows = [image for b in range(len(photos)) for image in (photos[b], *(o[0][b] for o in outputs.values()))]
    return results, rows


@lru_cache(maxsize=4)  # the scoring of one scene asks again for each point of a curve (benchmarks.curves)
def twin_renders(scene: Scene, attribute: str, value: str, index: int, size: int) -> np.ndarray:
    """(T, size, size, 3) uint8: every twin the source's picture allows (world.edited_twins), rendered."""
    return np.stack([render(twin, size) for twin in edited_twins(scene, attribute, value, index)])


def nearest_twin(pair: dict, edit: np.ndarray) -> np.ndarray:
    """The ground truth an edit is scored against: of the twins the source's picture allows, the one nearest
    the edit in pixels. A colour or background edit has one, pair["edited_image"]. An edit of kind has one per
    lookalike of the source shape the world draws (a turned square made a triangle may point four ways, a circle
    made a triangle any way, a turned triangle made a circle may be centred on three points): the picture does
    not say which the scene's hidden angle meant, and their centres lie up to 17 px apart, more than
    LAYOUT_TOLERANCE_PX."""
    if pair["attribute"] != "shape":
        return pair["edited_image"]
    renders = twin_renders(pair["scene"], pair["attribute"], pair["value"], pair["index"],
                           pair["edited_image"].shape[0])
    errors = ((renders.astype(np.float32) - edit.astype(np.float32)[None]) ** 2).mean(axis=(1, 2, 3))
    return renders[int(np.argmin(errors))]  # the first (pair["edited_image"]) on a tie


def score_edit(pair: dict, edit: np.ndarray, reconstruction: np.ndarray) -> dict:
    """The toy-world metrics of one edit against its ground truth (the nearest twin the source allows)."""
    reading = read_scene(edit)
    hits = check(reading, pair["edited_scene"])  # every twin has the same attributes
    blob = reading["shapes"][0] if reading["shapes"] else None  # one-shape scenes: the main shape
    twin = nearest_twin(pair, edit)
    # the reference is where the checker reads the twin's shape, not the scene's (x, y): a turned triangle
    # turns about (x, y), which is not the centre of its bounding box, the centre the checker reads
    truth = read_scene(twin)["shapes"][0]
    shift = None if blob is None else float(np.hypot(blob["x"] - truth["x"], blob["y"] - truth["y"]))
    near, far = near_and_far(pair["image"], twin)
    keep = near | far  # the whole unchanged region
    return {"attribute": pair["attribute"], "all": all(hits.values()), **hits,
            "edit_psnr": min(psnr(edit, twin), PSNR_CAP_DB),
            "edit_ssim": ssim(edit, twin),
            "unchanged_psnr": min(masked_psnr(edit, twin, keep), PSNR_CAP_DB),
            "unchanged_near_psnr": min(masked_psnr(edit, twin, near), PSNR_CAP_DB),
            "unchanged_far_psnr": min(masked_psnr(edit, twin, far), PSNR_CAP_DB),
            "layout_shift_px": shift,
            "reconstruction_psnr": min(psnr(reconstruction, pair["image"]), PSNR_CAP_DB)}


def failure_reasons(row: dict) -> list[str]:
    """The reasons a scored edit is not right with its layout kept (empty when it is)."""
    moved = row["layout_shift_px"] is None or row["layout_shift_px"] > LAYOUT_TOLERANCE_PX
    found = [not row["colour"], not row["shape"], not row["background"], moved]
    return [reason for reason, failed in zip(FAILURE_REASONS, found) if failed]


def unchanged_by_kind(rows: list[dict]) -> dict:
    """{kind of edit: mean unchanged-region PSNR (dB) over its scenes, all of it, near the change and far}."""
    def mean(values):
        values = [v for v in values if v is not None and not np.isnan(v)]
        return float(np.mean(values)) if values else None
    return {kind: {part: mean(r[key] for r in rows if r["attribute"] == kind)
                   for part, key in (("all", "unchanged_psnr"), ("near", "unchanged_near_psnr"),
                                     ("far", "unchanged_far_psnr"))}
            for kind in sorted({r["attribute"] for r in rows})}


def failures_by_kind(rows: list[dict]) -> dict:
    """{kind of edit: {"scenes": n, "right, layout kept": n, reason: n, ...}}."""
    table = {}
    for kind in sorted({r["attribute"] for r in rows}):
        of_kind = [r for r in rows if r["attribute"] == kind]
        reasons = [failure_reasons(r) for r in of_kind]
        table[kind] = {"scenes": len(of_kind), "right, layout kept": sum(not found for found in reasons),
                       **{reason: sum(reason in found for found in reasons) for reason in FAILURE_REASONS}}
    return table


def evaluate_method(model, pairs: list[dict], method: str, inversion: str | None, args,
                    out: Path) -> tuple[dict, list]:
    """Edit every scene with one method; its summary and the examples' images."""
    from tqdm.auto import tqdm

    label = method_label(method, inversion, p2p_edit="replace")
    inverter = InversionCache()  # in memory: batch_size photos inverted together, each record used once
    folder = out / "edits" / method_name(method, inversion).replace(":", "-")
    requests = [edit_args(method, inversion, f"toyworld scene {k} ({scenes_name(args)})", pair["caption"],
                          pair["edited_caption"], edit_options(args)) for k, pair in enumerate(pairs)]
    remainder, shards = parse_shard(args.shard, len(pairs))

    def finished(k: int) -> dict | None:  # resume: a scene edited before with this request is kept
        found = finished_summary(folder / f"{k:03d}")
        return found if found is not None and same_edit(found, requests[k], model) else None

    done = {k: found for k in range(len(pairs)) if (found := finished(k)) is not None}
    todo = [k for k in range(len(pairs)) if k % shards == remainder and k not in done]
    positions = {k: position for position, k in enumerate(todo)}
    rows, examples, resumed, skipped = [], [], 0, 0
    for k, pair in enumerate(tqdm(pairs, desc=label, disable=args.quiet)):
        summary = done.get(k)
        if summary is not None:
            resumed += 1
        elif k not in positions:
            skipped += 1  # another shard's scene, not finished yet
            continue
        else:
            position = positions[k]
            if position % args.batch_size == 0:  # the next batch_size scenes to edit, inverted together
                ahead = todo[position:position + args.batch_size]
                # with its own bars: a batch's inversion (null-text: minutes) is most of the run's time
                inverter.prefetch(model, [(pairs[j]["image"], requests[j]) for j in ahead], disable=args.quiet)
            summary = run_edit(model, pair["image"], requests[k], folder / f"{k:03d}", invert_source=inverter)
        edit = read_image(folder / f"{k:03d}" / summary["outputs"]["edit"][0])
        reconstruction = read_image(folder / f"{k:03d}" / summary["outputs"]["reconstruction"])
        rows.append({**score_edit(pair, edit, reconstruction), "scene": k, "seconds": summary["timings_s"]["total"]})
        if k < EXAMPLES:
            examples += [pair["image"], nearest_twin(pair, edit), reconstruction, edit]  # the truth it was scored by
    shifts = [r["layout_shift_px"] for r in rows if r["layout_shift_px"] is not None]
    summary = {"method": label, "spec": method_name(method, inversion), "scenes": len(rows),
               "seconds": round(sum(r["seconds"] for r in rows), 1),  # of the runs, also those resumed
               "seconds_per_scene": round(float(np.mean([r["seconds"] for r in rows])), 2), "resumed": resumed,
               "left_to_other_shards": skipped,
               "edit_accuracy": float(np.mean([r["all"] for r in rows])),
               "per_attribute_read": {k: float(np.mean([r[k] for r in rows])) for k in ("background", "colour", "shape")},
               "accuracy_by_edit": {a: float(np.mean([r["all"] for r in rows if r["attribute"] == a]))
                                    for a in sorted({r["attribute"] for r in rows})},
               "edits_by_kind": {a: sum(r["attribute"] == a for r in rows) for a in sorted({r["attribute"] for r in rows})},
               "edit_psnr_db": float(np.mean([r["edit_psnr"] for r in rows])),
               "edit_ssim": float(np.mean([r["edit_ssim"] for r in rows])),
               "unchanged_psnr_db": float(np.nanmean([r["unchanged_psnr"] for r in rows])),
               "unchanged_by_kind": unchanged_by_kind(rows),
               "layout_kept": float(np.mean([s is not None and s <= LAYOUT_TOLERANCE_PX
                                             for s in (r["layout_shift_px"] for r in rows)])),
               "layout_shift_px_median": float(np.median(shifts)) if shifts else None,
               "right_with_layout_kept": float(np.mean([not failure_reasons(r) for r in rows])),
               "failures_by_kind": failures_by_kind(rows),
               "reconstruction_psnr_db": float(np.mean([r["reconstruction_psnr"] for r in rows])),
               "per_scene": rows}
    return summary, examples


def training_record(spec: str | None) -> Path | None:
    """The toyworld.train record of the model `spec` names: the embedded default's for no spec or a default
    name, a model folder's own training.json; None when there is none (any other model)."""
    if spec is None or spec in DEFAULT_NAMES:
        record = DEFAULT_MODEL_DIR / "training.json"
    elif Path(spec).is_dir():
        record = Path(spec) / "training.json"
    else:
        return None
    return record if record.is_file() else None


def model_provenance(spec: str | None) -> dict | None:
    """The training record of the model the figures come from: the embedded default's, or a toyworld.train
    folder's given as --model; None for other models."""
    record = training_record(spec)
    if record is None:
        return None
    shown = "toyworld/model/training.json" if record == DEFAULT_MODEL_DIR / "training.json" else record
    training = json.loads(record.read_text())
    return {"training_record": str(shown), "command": training.get("command"),
            "exported_from": training.get("exported_from"), "checkpoint_step": training.get("checkpoint_step"),
            "steps": training.get("steps"), "attribute_accuracy": training.get("attribute_accuracy"),
            "vae_psnr_db_heldout": training.get("vae_psnr_db_heldout")}


def provenance_line(t: dict) -> str:
    """One line on where the model comes from and how well it draws, from model_provenance's record: a
    finished run's command and held-out accuracy, or a checkpoint's export, whose record has no accuracy."""
    if t.get("exported_from"):
        origin = f"exported from `{t['exported_from']}` at UNet step {t['checkpoint_step']}"
    else:
        origin = f"trained by `{t['command']}`"
    acc = t.get("attribute_accuracy")
    if not acc:
        return (f"model: {t['training_record']}, {origin}; its text-to-image accuracy is not in the record "
                f"(`python -m toyworld.score MODEL` measures it)")
    read = ", ".join(f"{k} {acc[k]:.2f}" for k in ("background", "colour", "shape") if k in acc)
    return f"model: {t['training_record']}, {origin}; text-to-image attribute accuracy {acc['all']:.2f} ({read})"


def markdown(header: dict, reconstruction: list[dict] | None, edits: list[dict] | None) -> str:
    lines = ["# Quality benchmark", "",
             f"model `{header['model']}` ({header['fingerprint']}), {header['steps']} steps, guidance "
             f"{header['guidance']}, NTI inner steps {header['inner_steps']}, P2P cross / self replace "
             f"{header['p2p']['cross_replace']} / {header['p2p']['self_replace']}, device {header['device']}, "
             f"{header['date']}"]
    if header.get("command"):  # --run-args may override the settings above for every edit
        lines += ["", f"command: `{header['command']}`"]
    if header.get("training"):
        lines += ["", provenance_line(header["training"])]
    if reconstruction is not None:
        photos = list(reconstruction[0]["per_photo"])
        lines += ["", f"## Reconstruction ({len(photos)} photos at {header['resolution']} px)", "",
                  "| inversion | PSNR (dB) | SSIM | " + " | ".join(f"{p} PSNR / SSIM" for p in photos) + " | time (s) |",
                  "|---" * (len(photos) + 4) + "|"]
        for r in reconstruction:
            cells = " | ".join(f"{v['psnr_db']:.2f} / {v['ssim']:.3f}" for v in r["per_photo"].values())
            lines.append(f"| {r['inversion']} | {r['psnr_db']:.2f} | {r['ssim']:.3f} | {cells} | {r['seconds']} |")
    if edits is not None:
        lines += ["", f"## Toy-world edits ({header['scenes']} scenes, {header['scene_set']})", "",
                  "| method | edit accuracy | colour / shape / background edits | edit PSNR vs truth (dB) "
                  "| edit SSIM | unchanged region PSNR (dB) | layout kept | reconstruction PSNR (dB) | time per scene (s) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in edits:
            by_edit = " / ".join(f"{r['accuracy_by_edit'][a]:.2f}" if a in r["accuracy_by_edit"] else "-"
                                 for a in ("colour", "shape", "background"))
            lines.append(f"| {r['method']} | {r['edit_accuracy']:.3f} | {by_edit} | {r['edit_psnr_db']:.2f} "
                         f"| {r['edit_ssim']:.3f} | {r['unchanged_psnr_db']:.2f} | {r['layout_kept']:.2f} "
                         f"| {r['reconstruction_psnr_db']:.2f} | {r['seconds_per_scene']} |")
        lines += ["", f"Layout kept: the checker reads the main shape's centre within {LAYOUT_TOLERANCE_PX:g} px "
                      "(of 64) of the ground truth's. The ground truth of an edit of kind is the twin nearest the edit "
                      "of those the source's picture allows (a turned square made a triangle may point four ways). "
                      "PSNRs are capped at 100 dB (identical pixels)."]
        lines += ["", "### Why edits fail (scenes per kind of edit; a failed edit may have several reasons)", "",
                  "| method | kind of edit | scenes | right, layout kept | " + " | ".join(FAILURE_REASONS) + " |",
                  "|---" * (4 + len(FAILURE_REASONS)) + "|"]
        for r in edits:
            for kind, counts in r["failures_by_kind"].items():
                lines.append(f"| {r['method']} | {kind} | {counts['scenes']} | {counts['right, layout kept']} | "
                             + " | ".join(str(counts[reason]) for reason in FAILURE_REASONS) + " |")
        lines += ["", f"### Where the unchanged region differs (mean PSNR in dB per kind of edit: all of it / within "
                      f"{NEAR_PX} px of the change, where a grown shape or its colour lands / farther, a tint)", "",
                  "| method | colour edits | shape edits | background edits |", "|---|---|---|---|"]
        shown = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        for r in edits:
            parts = r["unchanged_by_kind"]
            cells = [" / ".join(shown(parts[k][p]) for p in ("all", "near", "far")) if k in parts else "-"
                     for k in ("colour", "shape", "background")]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["pie"]:
        return pie.main(argv[1:])
    args = build_parser().parse_args(argv)
    methods = check_args(args)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    apply_speed(model, speed_options(args))
    out = Path(args.out)
    header = {"model": model.name, "fingerprint": model.fingerprint, "training": model_provenance(args.model),
              "resolution": model.resolution, "steps": args.steps, "guidance": args.guidance,
              "inner_steps": args.inner_steps, "device": str(model.device), "dtype": args.dtype,
              "p2p": {"cross_replace": args.cross_replace, "self_replace": args.self_replace},
              "speed": speed_summary(model),
              "date": time.strftime("%Y-%m-%d"), "command": "python -m benchmarks.quality " + " ".join(argv)}
    report, reconstruction, edits = dict(header), None, None
    if "reconstruction" in args.parts:
        names, photos, captions = load_photos(args.images, model.resolution)
        reconstruction, rows = reconstruction_benchmark(model, names, photos, captions, args)
        report["reconstruction"] = {"photos": dict(zip(names, captions)), "results": reconstruction}
        columns = 1 + len(reconstruction)
        save_image(out / "reconstruction.png",
                   image_grid(rows, (["photo"] + [r["inversion"].split(" ")[0] for r in reconstruction]) * len(names),
                              cols=columns))
    if "edits" in args.parts:
        pairs = benchmark_scenes(args, model.resolution)
        edits, grid = [], []
        for method, inversion in methods:
            summary, examples = evaluate_method(model, pairs, method, inversion, args, out)
            edits.append(summary)
            grid += examples
        report.update(scenes=args.n, scene_set=scenes_name(args), turned_prob=args.turned_prob, results=edits)
        save_image(out / "examples.png", image_grid(grid, ["source", "truth", "reconstruction", "edit"] * (len(grid) // 4),
                                                    cols=4))
    write_json(out / "quality.json", report)
    text = markdown(header | {"scenes": args.n, "scene_set": scenes_name(args)}, reconstruction, edits)
    atomic_write(out / "quality.md", text)
    print(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main))
