"""Edit a dataset in the PIE-Bench layout with any method and measure background preservation.

DATA/mapping_file.json maps an entry id to {"image_path": a path under DATA/annotation_images/,
"original_prompt", "editing_prompt" (edited words in [ ]), "editing_instruction", "blended_word" ("source
target" words, may be empty), "mask": run-length pairs [start, length, ...] over the row-major 512 x 512
mask (1 = the edit may change it), "editing_type_id"}.

For each entry and method (METHOD[:INVERSION] as in `python -m benchmarks.quality`), the photo is
edited by editing.run (run_edit) from the original to the editing prompt, [ ] removed; p2p blends
locally on the words of blended_word. Then, the edit against the source photo:
- unedited region, as PIE-Bench: both images scaled to [0, 1] and multiplied by (1 - mask): PSNR, MSE
  and SSIM (mean SSIM over RGB, Gaussian window 11, sigma 1.5) of the products;
- edited region: the same with the mask itself;
- CLIP score (PIE-Bench's: 100 max(cos, 0)) of the edit with the editing prompt, whole image and
  edited region (image x mask), only with --clip PATH;
- DINO similarity: the cosine of the DINO [CLS] features of source and edit, only with --dino PATH.
--clip and --dino take local folders that transformers loads offline (e.g. a saved
openai/clip-vit-large-patch14, facebook/dino-vitb8); nothing is ever downloaded, and without them those
scores are skipped with a line in pie.md.
Metrics are taken at the model's resolution: the photo and its mask are cropped and resized together
(the mask then thresholded at half coverage). PIE-Bench decodes the mask with its one-pixel image
border marked as edited; so does this runner.

Example (the embedded default model; a folder holding mapping_file.json and annotation_images/):
  python -m benchmarks.quality pie --data PIE-Bench_v1 --methods p2p p2p:direct null-finetune \\
      --limit 20 --out out/pie
  python -m benchmarks.quality pie --data PIE-Bench_v1 --model sd15/ --methods p2p:direct \\
      --clip weights/clip-vit-large-patch14 --dino weights/dino-vitb8 --batch-size 4 --out out/pie-sd15

Writes pie.json (per method averages and per entry rows), pie.md, and edits/<method>/<id>/ (editing.run's
files of every edit). An entry whose edit is refused (e.g. a blended word the prompts lack) is reported
with its error and left out of the averages.
Exit codes: 0 done, 2 bad input or usage (one `error:` line), 1 a failure inside the run.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.edit_runs import BatchedInversions, add_run_options, edit_args, method_label, method_name, parse_method, \
    split_run_args
from benchmarks.metrics import decode_pie_mask, region_metrics
from editing.cli import EXIT_OK, Parser, run_main
from editing.core.files import atomic_write, write_json
from editing.core.errors import UserError
from editing.core.image_io import prepare_image, read_image
from editing.core.loading import _quiet_loading, load_model  # its loaders keep stderr for one-line errors
from editing.dispatch import run_edit
from editing.core.speed import apply_speed, speed_options, speed_summary

MAPPING_FILE = "mapping_file.json"
IMAGE_FOLDER = "annotation_images"
REQUIRED_KEYS = ("image_path", "original_prompt", "editing_prompt", "mask")
MASK_COVERAGE = 0.5  # a resized mask pixel counts as edited when at least half of it was
METRICS = ("psnr_db", "mse", "ssim")


def build_parser() -> Parser:
    p = Parser(prog="python -m benchmarks.quality pie", description=__doc__,
               formatter_class=lambda prog: __import__("argparse").RawDescriptionHelpFormatter(prog, width=100))
    p.add_argument("--data", required=True, metavar="DIR", help=f"folder with {MAPPING_FILE} and {IMAGE_FOLDER}/")
    p.add_argument("--methods", nargs="+", default=["p2p"], metavar="METHOD[:INVERSION]",
                   help="methods to compare (default p2p, i.e. p2p:null-text)")
    p.add_argument("--model", default=None, help="model spec (default: the embedded default model)")
    p.add_argument("--types", nargs="+", default=None, metavar="ID",
                   help="only entries of these editing_type_id values (default all)")
    p.add_argument("--limit", type=int, default=None, help="only the first N entries (after --types)")
    p.add_argument("--clip", default=None, metavar="PATH", help="a local CLIP folder: adds CLIP scores")
    p.add_argument("--dino", default=None, metavar="PATH", help="a local DINO (ViT) folder: adds DINO similarity")
    p.add_argument("--run-args", default="", metavar='"FLAGS"',
                   help='further editing.run options for every method, e.g. --run-args="--cross-replace 0.4"')
    add_run_options(p, batch_size=1, out="out/pie")
    return p


def strip_brackets(prompt: str) -> str:
    return prompt.replace("[", "").replace("]", "")


def load_entries(data: str, types: list[str] | None, limit: int | None) -> list[dict]:
    """The mapping file's entries, checked: each with its id, its photo's path and its decoded mask."""
    root = Path(data)
    mapping = root / MAPPING_FILE
    if not mapping.is_file():
        raise UserError(f"--data {data}: no {MAPPING_FILE} in it; give the PIE-Bench folder that holds "
                        f"{MAPPING_FILE} and {IMAGE_FOLDER}/")
    try:
        items = json.loads(mapping.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{mapping} is not valid JSON: {exc}") from None
    if not isinstance(items, dict) or not items:
        raise UserError(f"{mapping} must map entry ids to entries, got {type(items).__name__} with no entries")
    entries = []
    for key, item in items.items():
        missing = [k for k in REQUIRED_KEYS if not isinstance(item, dict) or k not in item]
        if missing:
            raise UserError(f"{mapping}: entry {key!r} lacks {', '.join(missing)}")
        kind = str(item.get("editing_type_id", ""))
        if types is not None and kind not in types:
            continue
        image = root / IMAGE_FOLDER / item["image_path"]
        if not image.is_file():
            raise UserError(f"{mapping}: entry {key!r}: image {image} not found")
        try:
            mask = decode_pie_mask(item["mask"])
        except (ValueError, TypeError) as exc:
            raise UserError(f"{mapping}: entry {key!r}: bad mask: {exc}") from None
        entries.append({"id": str(key), "type": kind, "image": image, "mask": mask,
                        "source": strip_brackets(item["original_prompt"]),
                        "target": strip_brackets(item["editing_prompt"]),
                        "blend": str(item.get("blended_word") or "").split()})
    if limit is not None:
        entries = entries[:limit]
    if not entries:
        raise UserError(f"{mapping}: no entries left to run (check --types / --limit)")
    return entries


def mask_at(mask: np.ndarray, photo_shape: tuple, size: int) -> np.ndarray:
    """The (512, 512) mask, spanning the whole photo, cropped and resized as the photo -> (size, size) bool."""
    height, width = photo_shape[:2]
    grey = mask.astype(np.uint8) * 255
    if grey.shape != (height, width):
        grey = cv2.resize(grey, (width, height), interpolation=cv2.INTER_NEAREST)
    resized = prepare_image(np.repeat(grey[..., None], 3, -1), size)[..., 0]
    return resized >= MASK_COVERAGE * 255


class ClipScore:
    """PIE-Bench's CLIP score (torchmetrics' CLIPScore): 100 max(cos(image, text), 0), from a local folder."""

    def __init__(self, path: str, device):
        from transformers import CLIPModel, CLIPProcessor

        self.model = load_local(CLIPModel, path, "--clip", device)
        self.processor = load_local(CLIPProcessor, path, "--clip")
        self.device = device

    def __call__(self, image: np.ndarray, text: str) -> float:
        import torch

        inputs = self.processor(text=[text], images=[image], return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            out = self.model(**inputs.to(self.device))
        cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
        return max(100.0 * cos, 0.0)


class DinoSimilarity:
    """Cosine similarity of the [CLS] features of two images under a local DINO (ViT) model."""

    def __init__(self, path: str, device):
        from transformers import AutoImageProcessor, AutoModel

        self.model = load_local(AutoModel, path, "--dino", device)
        self.processor = load_local(AutoImageProcessor, path, "--dino")
        self.device = device

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        import torch

        inputs = self.processor(images=[a, b], return_tensors="pt").to(self.device)
        with torch.no_grad():
            cls = self.model(**inputs).last_hidden_state[:, 0]  # (2, D)
        return torch.nn.functional.cosine_similarity(cls[:1], cls[1:]).item()


def load_local(cls, path: str, flag: str, device=None):
    """cls.from_pretrained(path) offline, or a UserError that says what to give instead."""
    if not Path(path).is_dir():
        raise UserError(f"{flag} {path}: not a folder; give a local folder saved by transformers "
                        "(nothing is downloaded)")
    try:
        with _quiet_loading():
            loaded = cls.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{flag} {path}: cannot load {cls.__name__} from it offline ({first})") from None
    return loaded.to(device).eval() if device is not None else loaded


def score_entry(source: np.ndarray, edit: np.ndarray, mask: np.ndarray, target: str, clip, dino) -> dict:
    row = {"unedited": region_metrics(source, edit, ~mask), "edited": region_metrics(source, edit, mask)}
    if clip is not None:
        row["clip_whole"] = clip(edit, target)
        row["clip_edited"] = clip((edit * mask[..., None]).astype(np.uint8), target) if mask.any() else None
    if dino is not None:
        row["dino_similarity"] = dino(source, edit)
    return row


def averages(rows: list[dict]) -> dict:
    """Per metric mean over the entries that ran and have it."""
    done = [r for r in rows if "error" not in r]
    means = {}
    for region in ("unedited", "edited"):
        for metric in METRICS:
            values = [r[region][metric] for r in done if r[region][metric] is not None]
            means[f"{region}_{metric}"] = float(np.mean(values)) if values else None
    for key in ("clip_whole", "clip_edited", "dino_similarity", "reconstruction_psnr_db", "seconds"):
        values = [r[key] for r in done if r.get(key) is not None]
        means[key] = float(np.mean(values)) if values else None
    return {"entries": len(done), "failed": len(rows) - len(done), **means}


def run_method(model, entries: list[dict], photos: list[np.ndarray], masks: list[np.ndarray], method: str,
               inversion: str | None, options: list[str], batch_size: int, clip, dino, out: Path,
               quiet: bool) -> list[dict]:
    """Edit and score every entry with one method; one row per entry (an error row if the edit is refused)."""
    from tqdm.auto import tqdm

    inverter = BatchedInversions(photos, [e["source"] for e in entries], batch_size)
    folder = out / "edits" / method_name(method, inversion).replace(":", "-")
    rows = []
    for entry, photo, mask in tqdm(list(zip(entries, photos, masks)), desc=method_name(method, inversion),
                                   disable=quiet):
        blend = ["--blend-words", *entry["blend"]] if method == "p2p" and entry["blend"] else []
        row = {"id": entry["id"], "editing_type_id": entry["type"]}
        start = time.perf_counter()
        try:
            args = edit_args(method, inversion, str(entry["image"]), entry["source"], entry["target"],
                             options + blend)
            summary = run_edit(model, photo, args, folder / entry["id"], invert_source=inverter)
        except UserError as exc:
            rows.append({**row, "error": str(exc)})
            continue
        edit = read_image(folder / entry["id"] / summary["outputs"]["edit"][0])
        row.update(score_entry(photo, edit, mask, entry["target"], clip, dino))
        row["reconstruction_psnr_db"] = summary["reconstruction_psnr_db"]
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
    return rows


def fmt(value, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def markdown(header: dict, results: list[dict], notes: list[str]) -> str:
    lines = ["# PIE-Bench layout: background preservation", "",
             f"data `{header['data']}`, {header['entries']} entries; model `{header['model']}` "
             f"({header['fingerprint']}) at {header['resolution']} px, {header['steps']} steps, guidance "
             f"{header['guidance']}, device {header['device']}, {header['date']}", "", *notes, "",
             "| method | entries (failed) | unedited PSNR (dB) | unedited MSE x1e4 | unedited SSIM x100 "
             "| edited-region PSNR (dB) | CLIP whole | CLIP edited | DINO sim | reconstruction PSNR (dB) | s / entry |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        a = r["average"]
        lines.append(f"| {r['method']} | {a['entries']} ({a['failed']}) | {fmt(a['unedited_psnr_db'])} "
                     f"| {fmt(a['unedited_mse'], 1e4)} | {fmt(a['unedited_ssim'], 100)} | {fmt(a['edited_psnr_db'])} "
                     f"| {fmt(a['clip_whole'])} | {fmt(a['clip_edited'])} | {fmt(a['dino_similarity'], 1, 3)} "
                     f"| {fmt(a['reconstruction_psnr_db'])} | {fmt(a['seconds'], 1, 1)} |")
    lines += ["", "## Entries", "",
              "| method | id | type | unedited PSNR / MSE x1e4 / SSIM x100 | edited PSNR | CLIP whole / edited | DINO |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["entries"]:
            if "error" in row:
                lines.append(f"| {r['method']} | {row['id']} | {row['editing_type_id']} | error: {row['error']} | | | |")
                continue
            u = row["unedited"]
            lines.append(f"| {r['method']} | {row['id']} | {row['editing_type_id']} | {fmt(u['psnr_db'])} / "
                         f"{fmt(u['mse'], 1e4)} / {fmt(u['ssim'], 100)} | {fmt(row['edited']['psnr_db'])} "
                         f"| {fmt(row.get('clip_whole'))} / {fmt(row.get('clip_edited'))} "
                         f"| {fmt(row.get('dino_similarity'), 1, 3)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.inner_steps < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise UserError("--steps, --inner-steps, --batch-size and --limit must be at least 1")
    methods = list(dict.fromkeys(parse_method(s) for s in args.methods))
    options = ["--steps", str(args.steps), "--guidance", str(args.guidance), "--inner-steps", str(args.inner_steps),
               "--seed", str(args.seed), "--dtype", args.dtype, *split_run_args(args.run_args)]
    for method, inversion in methods:  # editing.run refuses bad options before any model is loaded
        edit_args(method, inversion, "check", "a cat", "a dog", options)
    entries = load_entries(args.data, args.types, args.limit)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    apply_speed(model, speed_options(args))
    clip = ClipScore(args.clip, model.device) if args.clip else None
    dino = DinoSimilarity(args.dino, model.device) if args.dino else None
    notes = [] if clip else ["CLIP scores skipped: no --clip weights given (a local CLIP folder; nothing is downloaded)."]
    notes += [] if dino else ["DINO similarity skipped: no --dino weights given (a local DINO folder; nothing is "
                              "downloaded)."]
    originals = [read_image(e["image"]) for e in entries]
    photos = [prepare_image(rgb, model.resolution) for rgb in originals]
    masks = [mask_at(e["mask"], rgb.shape, model.resolution) for e, rgb in zip(entries, originals)]
    out = Path(args.out)
    results = []
    for method, inversion in methods:
        rows = run_method(model, entries, photos, masks, method, inversion, options, args.batch_size, clip, dino,
                          out, args.quiet)
        results.append({"method": method_label(method, inversion), "spec": method_name(method, inversion),
                        "average": averages(rows), "entries": rows})
    header = {"data": str(args.data), "entries": len(entries), "model": model.name, "fingerprint": model.fingerprint,
              "resolution": model.resolution, "steps": args.steps, "guidance": args.guidance,
              "device": str(model.device), "dtype": args.dtype, "speed": speed_summary(model),
              "date": time.strftime("%Y-%m-%d"),
              "command": "python -m benchmarks.quality pie " + " ".join(argv),
              "clip": args.clip, "dino": args.dino, "notes": notes}
    write_json(out / "pie.json", {**header, "results": results})
    text = markdown(header, results, notes)
    atomic_write(out / "pie.md", text)
    print(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main))
