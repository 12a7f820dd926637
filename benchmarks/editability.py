"""Why the default model edits worse than it draws: measurements of the model and its world, before any
retraining (issue: a default model that edits as well as it draws).

- coverage: the training scenes of the model's recipe (toyworld/model/training.json: seed, n_train, share
  of two-shape scenes), re-drawn without rendering: how often each (colour, shape, background) of the main
  shape occurs, the sizes and positions drawn, and what the world cannot draw at all (rotations);
- vae: the autoencoder's round trip of the benchmark's scenes (the quality suite's seed): PSNR, and whether
  the checker still reads every attribute right, per colour. An edit cannot be more right than this;
- attention: one DDIM inversion and one reconstruction of each scene under its caption with the attention
  stored: the share of the colour and shape words' cross-attention that falls on the shape (against the
  shape's share of the image, what uniform attention would give), and the background word's share off it.
  Words that attend where their attribute is are what Prompt-to-Prompt's replace needs;
- identity: a Prompt-to-Prompt replace "edit" of each scene to its own caption (`--identity-inversion`,
  default direct): how far the edit branch moves the shape when no word changes. A DirectInversion record
  holds only the source branch on the inversion trajectory, so the edit branch drifts as a guided DDIM
  sample of an inverted latent does; a move here is one no word caused, and caps the benchmark's "layout
  kept" (with null-text inversion the edit branch is the source branch, exactly);
- mask: `--mask auto`'s mask (editing/auto_mask.py) against the ground truth, for noise levels x thresholds
  around its defaults: per kind of edit, the share of the truly changed latent cells it covers, its
  intersection over union with them, and its share of the image (a mask must cover the change first: P2P keeps
  the source outside it);
- caption: how much the UNet's noise prediction uses the caption: its error on each scene's latent noised to
  t = 200 / 500 / 800 (one seeded draw per scene and t), given the scene's own caption, another scene's and the
  empty prompt. A model that draws its captions pays for a wrong one at every noise level; one that ignores
  them (early in training) predicts as well without them. Cheap: no sampling, three UNet calls per scene and t;
- caption dropout: the share of training steps that saw the empty prompt (the null branch every edit's
  guidance leans on), from the recipe.

Example (the embedded default model; a few minutes on one CPU core):
  python -m benchmarks.editability --n 20 --out out/editability
Writes editability.json, editability.md and attention.png (each scene: the picture, then the colour, shape
and background words' maps). Exit codes: 0 done, 2 bad input or usage (one `error:` line), 1 a failure.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch

from attention.controllers import AttentionStore, P2PConfig
from attention.heatmaps import overlay
from benchmarks.quality import LAYOUT_TOLERANCE_PX, add_scene_options, benchmark_scenes, scenes_name, training_record
from editing.auto_mask import MASK_STRENGTH, MASK_THRESHOLD, disagreement
from editing.cli import EXIT_OK, Parser, run_main
from editing.core.errors import UserError
from editing.core.files import atomic_write, write_json
from editing.core.image_io import image_grid, save_image
from editing.core.loading import load_model
from editing.core.metrics import psnr
from editing.core.sampling import sample
from editing.p2p import edit_p2p
from inversion.invert import DEFAULT_GUIDANCE, DEFAULT_STEPS, InversionConfig, invert, source_conditioning
from inversion.record import METHODS as INVERSIONS
from toyworld.checker import check, read_scene
from toyworld.world import BACKGROUNDS, COLOURS, SHAPES, random_scene, shape_coverage

PARTS = ("coverage", "vae", "attention", "identity", "mask", "caption")
# the caption part's noise levels, of the 1000-step schedule: little, half and mostly noise
CAPTION_TIMESTEPS = (200, 500, 800)
CAPTION_BATCH = 32  # scenes per UNet call in the caption part
MASK_STRENGTHS = (0.2, MASK_STRENGTH, 0.4)  # the mask part's grid, around --mask auto's defaults
MASK_THRESHOLDS = (MASK_THRESHOLD, 0.2, 0.3, 0.5)  # 0.5: DiffEdit's own
EXAMPLE_SCENES = 6  # rows of attention.png


def build_parser() -> Parser:
    p = Parser(prog="python -m benchmarks.editability", description=__doc__,
               formatter_class=lambda prog: __import__("argparse").RawDescriptionHelpFormatter(prog, width=100))
    p.add_argument("--parts", nargs="+", default=None, choices=PARTS,
                   help="what to measure (default all; coverage only for a model with a training record)")
    p.add_argument("--n", type=int, default=20, help="benchmark scenes for vae and attention (default 20)")
    add_scene_options(p)
    p.add_argument("--model", default=None, help="model spec (default: the embedded default model)")
    p.add_argument("--identity-inversion", default="direct", choices=INVERSIONS,
                   help="the inversion of the identity part (default direct)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="out/editability")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def training_recipe(model_spec: str | None) -> dict:
    """The training record of the model (quality.training_record: the default's, or a model folder's)."""
    record = training_record(model_spec)
    if record is None:
        raise UserError(f"coverage needs the model's training record (a toyworld.train folder's training.json; "
                        f"none for {model_spec!r}): leave coverage out of --parts for other models")
    return json.loads(record.read_text())


def coverage(recipe: dict) -> dict:
    """The recipe's training scenes, drawn again from its seed (the same generator as toyworld.train)."""
    config = recipe["config"]
    rng = np.random.default_rng(config["seed"])
    turned_prob = config.get("turned_prob", 0.0)  # a recipe from before angles drew upright shapes only
    scenes = [random_scene(rng, two_shapes_prob=config["two_shapes_prob"], turned_prob=turned_prob)
              for _ in range(config["n_train"])]
    combos = Counter((s.main.colour, s.main.kind, s.background) for s in scenes)
    possible = [(c, k, b) for c in COLOURS for k in SHAPES for b in BACKGROUNDS if c != b]
    counts = [combos.get(c, 0) for c in possible]
    sizes = [s.main.size for s in scenes]
    return {"scenes": len(scenes), "two_shape_scenes": sum(len(s.shapes) == 2 for s in scenes),
            "combinations_possible": len(possible), "combinations_seen": sum(n > 0 for n in counts),
            "scenes_per_combination": {"min": min(counts), "median": float(np.median(counts)), "max": max(counts)},
            "main_shape_size_px": {"min": round(min(sizes), 2), "max": round(max(sizes), 2)},
            "rotated_shapes": sum(sh.angle != 0 and sh.kind != "circle" for sc in scenes for sh in sc.shapes),
            "note": f"squares and triangles turned with probability {turned_prob:g}" if turned_prob else
                    "squares and triangles upright only: a rotated one is outside everything the model saw"}


def vae_round_trip(model, pairs: list[dict]) -> dict:
    images = np.stack([p["image"] for p in pairs])
    with torch.no_grad():
        back = model.decode_latents(model.encode_images(images))
    by_colour: dict[str, list[bool]] = {}
    rows = []
    for pair, image in zip(pairs, back):
        hits = check(image, pair["scene"])
        right = all(hits.values())
        by_colour.setdefault(pair["scene"].main.colour, []).append(right)
        rows.append({"psnr_db": psnr(image, pair["image"]), "read_right": right, **hits})
    return {"psnr_db": float(np.mean([r["psnr_db"] for r in rows])),
            "read_right": float(np.mean([r["read_right"] for r in rows])),
            # which attribute the round trip loses (a colour's row alone cannot say: a blue triangle read as
            # a square counts against blue)
            "read_right_by_attribute": {a: float(np.mean([r[a] for r in rows])) for a in ("background", "colour", "shape")},
            "read_right_by_colour": {c: float(np.mean(v)) for c, v in sorted(by_colour.items())},
            "per_scene": rows}


def word_position(tokenizer, prompt: str, word: str) -> int:
    """The index (start token = 0) of the word's first token in the prompt's ids."""
    ids = tokenizer(prompt).input_ids
    first = tokenizer(word, add_special_tokens=False).input_ids[0]
    if first not in ids:
        raise ValueError(f"{word!r} is not a token of {prompt!r}")
    return ids.index(first)


def attention_shares(model, pairs: list[dict], steps: int, guidance: float, disable: bool) -> tuple[dict, list]:
    """Per word (colour, shape, background): the share of its cross-attention on the shape (off it for the
    background), and the shape's share of the picture (uniform attention's)."""
    images = np.stack([p["image"] for p in pairs])
    prompts = [p["caption"] for p in pairs]
    records = invert(model, images, prompts, InversionConfig(method="ddim", steps=steps, guidance=guidance),
                     disable=disable)
    conditioning, schedule = source_conditioning(model, records)
    store = AttentionStore(len(pairs))
    x_T = torch.stack([r.x_T for r in records]).to(model.device)
    sample(model, x_T, conditioning, schedule, guidance, controller=store, disable=disable, desc="attention")
    maps = store.average("cross")
    side = max(int(round(m.shape[1] ** 0.5)) for m in maps)
    rows, pictures = [], []
    for b, pair in enumerate(pairs):
        scene, prompt = pair["scene"], prompts[b]
        mask = cv2.resize(shape_coverage(scene, scene.main_index, 64), (side, side), interpolation=cv2.INTER_AREA)
        mask = mask.reshape(-1).astype(np.float64)
        area = float(mask.mean())
        same_side = [m[b].double().cpu().numpy() for m in maps if m.shape[1] == side * side]
        average = np.mean(same_side, 0)  # (Q, K)
        words = {"colour": scene.main.colour, "shape": scene.main.kind, "background": BACKGROUNDS[scene.background]}
        row = {"shape_area": area}
        heat = []
        for role, word in words.items():
            column = average[:, word_position(model.tokenizer, prompt, word)]
            on_shape = float((column * mask).sum() / column.sum())
            row[role] = 1.0 - on_shape if role == "background" else on_shape
            heat.append(column.reshape(side, side))
        rows.append(row)
        if b < EXAMPLE_SCENES:
            pictures += [pair["image"]] + [overlay(pair["image"], h) for h in heat]
    summary = {"map_side": side, "shape_area": float(np.mean([r["shape_area"] for r in rows]))}
    for role in ("colour", "shape", "background"):
        summary[role] = float(np.mean([r[role] for r in rows]))
    summary["per_scene"] = rows
    return summary, pictures


def shift_px(image: np.ndarray, reference: dict) -> float | None:
    """How far the checker reads the image's main shape from the reference reading (None: no shape read)."""
    shapes = read_scene(image)["shapes"]
    return None if not shapes else float(np.hypot(shapes[0]["x"] - reference["x"], shapes[0]["y"] - reference["y"]))


def identity_edits(model, pairs: list[dict], steps: int, guidance: float, inversion: str, disable: bool) -> dict:
    """P2P replace (the benchmark's windows) from each scene's caption to itself: the edit branch's and the
    reconstruction's shift from the source, as the quality suite measures a layout."""
    images = np.stack([p["image"] for p in pairs])
    records = invert(model, images, [p["caption"] for p in pairs],
                     InversionConfig(method=inversion, steps=steps, guidance=guidance), disable=disable)
    rows = []
    for pair, record in zip(pairs, records):
        result = edit_p2p(model, record, [record.prompt], P2PConfig(edit="replace"), disable=True)
        source = read_scene(pair["image"])["shapes"][0]
        rows.append({"edit_shift_px": shift_px(result.edits[0], source),
                     "reconstruction_shift_px": shift_px(result.reconstruction, source),
                     "edit_psnr_vs_reconstruction_db": psnr(result.edits[0], result.reconstruction)})

    def kept(key: str) -> float:
        return float(np.mean([r[key] is not None and r[key] <= LAYOUT_TOLERANCE_PX for r in rows]))

    shifts = [r["edit_shift_px"] for r in rows if r["edit_shift_px"] is not None]
    return {"inversion": inversion, "tolerance_px": LAYOUT_TOLERANCE_PX,
            "edit_layout_kept": kept("edit_shift_px"), "reconstruction_layout_kept": kept("reconstruction_shift_px"),
            "edit_shift_px_median": float(np.median(shifts)) if shifts else None,
            "edit_shift_px_max": float(np.max(shifts)) if shifts else None,
            "edit_psnr_vs_reconstruction_db": float(np.mean([r["edit_psnr_vs_reconstruction_db"] for r in rows])),
            "per_scene": rows}


def changed_cells(pair: dict, side: int) -> torch.Tensor:
    """(side, side) bool: the latent cells holding a pixel the ground-truth twin changes."""
    changed = (pair["image"] != pair["edited_image"]).any(-1)
    cell = changed.shape[0] // side
    return torch.from_numpy(changed.reshape(side, cell, side, cell).any(axis=(1, 3)))


def auto_masks(model, pairs: list[dict]) -> dict:
    """--mask auto's masks against the truth: per strength, threshold and kind of edit, the truth's share
    covered, the intersection over union and the mask's share of the image (means over the scenes)."""
    side = model.resolution // model.vae_scale_factor
    truths = [changed_cells(pair, side) for pair in pairs]
    rows = []
    for strength in MASK_STRENGTHS:
        maps = [disagreement(model, p["image"], p["caption"], [p["edited_caption"]], strength=strength)[0]
                for p in pairs]
        for threshold in MASK_THRESHOLDS:
            by_kind: dict[str, list[tuple[float, float, float]]] = {}
            for pair, truth, difference in zip(pairs, truths, maps):
                mask = difference > threshold
                both = float((mask & truth).sum())
                by_kind.setdefault(pair["attribute"], []).append(
                    (both / max(float(truth.sum()), 1.0), both / max(float((mask | truth).sum()), 1.0),
                     float(mask.float().mean())))
            rows.append({"strength": strength, "threshold": threshold, "by_kind": {
                kind: {"covered": float(np.mean([v[0] for v in values])), "iou": float(np.mean([v[1] for v in values])),
                       "share": float(np.mean([v[2] for v in values])), "scenes": len(values)}
                for kind, values in sorted(by_kind.items())}})
    return {"map_side": side, "defaults": {"strength": MASK_STRENGTH, "threshold": MASK_THRESHOLD}, "grid": rows}


def other_captions(captions: list[str]) -> list[str]:
    """For each caption, the next one in the list (cyclically) that differs from it: a wrong caption of the
    same kind. Refused when every caption is the same."""
    if len(set(captions)) < 2:
        raise UserError("the caption part needs at least two scenes with different captions: raise --n")
    n = len(captions)
    return [next(captions[(i + k) % n] for k in range(1, n) if captions[(i + k) % n] != c)
            for i, c in enumerate(captions)]


@torch.no_grad()
def caption_use(model, pairs: list[dict], seed: int = 0) -> dict:
    """The UNet's prediction error (mean square, against the true epsilon or v) on each scene's noisy latent,
    with its own caption, another scene's and the empty prompt, at each of CAPTION_TIMESTEPS; and what the
    wrong and the empty caption cost, as a share of the own caption's error."""
    images = np.stack([p["image"] for p in pairs])
    own = [p["caption"] for p in pairs]
    prompts = {"own": own, "other": other_captions(own), "empty": [""] * len(own)}
    # each batch's latents and its three conditionings, encoded once for every t
    batches = [(model.encode_images(images[start:start + CAPTION_BATCH]),
                {name: model.encode_prompts(texts[start:start + CAPTION_BATCH]) for name, texts in prompts.items()})
               for start in range(0, len(pairs), CAPTION_BATCH)]
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for t in CAPTION_TIMESTEPS:
        a = float(model.scheduler.alphas_cumprod[t])
        errors = {name: [] for name in prompts}
        for latents, conds in batches:
            noise = torch.randn(latents.shape, generator=generator).to(latents.device)
            noisy = a ** 0.5 * latents + (1 - a) ** 0.5 * noise
            target = noise if model.prediction_type == "epsilon" else a ** 0.5 * noise - (1 - a) ** 0.5 * latents
            for name, cond in conds.items():
                out = model.unet_output(noisy, t, cond)
                errors[name] += ((out - target) ** 2).mean(dim=(1, 2, 3)).cpu().tolist()
        mse = {name: float(np.mean(v)) for name, v in errors.items()}
        rows.append({"t": t, **{f"{name}_mse": v for name, v in mse.items()},
                     "other_cost": mse["other"] / mse["own"] - 1, "empty_cost": mse["empty"] / mse["own"] - 1})
    return {"seed": seed, "rows": rows}


def markdown(report: dict) -> str:
    lines = ["# Editability of the model", "", f"model `{report['model']}` ({report['fingerprint']}), {report['date']}"]
    if "coverage" in report:
        c = report["coverage"]
        spc = c["scenes_per_combination"]
        lines += ["", "## What the model was trained on", "",
                  f"{c['scenes']} training scenes ({c['two_shape_scenes']} with two shapes); "
                  f"{c['combinations_seen']} of {c['combinations_possible']} (colour, shape, background) "
                  f"combinations of the main shape occur, {spc['min']} to {spc['max']} times each (median "
                  f"{spc['median']:g}); main-shape size {c['main_shape_size_px']['min']}-"
                  f"{c['main_shape_size_px']['max']} px (of 64); rotated shapes: {c['rotated_shapes']} ({c['note']})."]
        if report.get("caption_dropout") is not None:
            lines += ["", f"Caption dropout (training steps on the empty prompt): {report['caption_dropout']:.0%}."]
    if "vae" in report:
        v = report["vae"]
        colours = ", ".join(f"{c} {r:.2f}" for c, r in v["read_right_by_colour"].items())
        attributes = ", ".join(f"{a} {r:.2f}" for a, r in v["read_right_by_attribute"].items())
        lines += ["", "## The autoencoder's round trip", "",
                  f"PSNR {v['psnr_db']:.2f} dB; the checker reads every attribute right on {v['read_right']:.2f} "
                  f"of the round trips (per attribute: {attributes}; per colour of the main shape: {colours})."]
    if "attention" in report:
        a = report["attention"]
        lines += ["", f"## Where the words attend ({a['map_side']} x {a['map_side']} maps, averaged over layers "
                      "and steps)", "",
                  "| word | share of its attention where its attribute is | uniform attention would give |",
                  "|---|---|---|",
                  f"| colour word | {a['colour']:.3f} (on the shape) | {a['shape_area']:.3f} |",
                  f"| shape word | {a['shape']:.3f} (on the shape) | {a['shape_area']:.3f} |",
                  f"| background word | {a['background']:.3f} (off the shape) | {1 - a['shape_area']:.3f} |"]
    if "identity" in report:
        i = report["identity"]
        lines += ["", f"## An edit that changes no word ({i['inversion']} + P2P replace, the caption to itself)", "",
                  f"Layout kept (within {i['tolerance_px']:g} px): edit branch {i['edit_layout_kept']:.2f}, "
                  f"reconstruction {i['reconstruction_layout_kept']:.2f}; the edit branch's shift median "
                  f"{i['edit_shift_px_median']:.1f} px, at most {i['edit_shift_px_max']:.1f} px; edit against "
                  f"reconstruction {i['edit_psnr_vs_reconstruction_db']:.2f} dB."]
    if "mask" in report:
        m = report["mask"]
        kinds = list(m["grid"][0]["by_kind"])
        lines += ["", f"## --mask auto's mask against the truth ({m['map_side']} x {m['map_side']} cells; covered / "
                      "intersection over union / share of the image)", "",
                  "| noise level t / T | threshold | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
        for row in m["grid"]:
            default = " (default)" if (row["strength"], row["threshold"]) == tuple(m["defaults"].values()) else ""
            cells = [f"{k['covered']:.2f} / {k['iou']:.2f} / {k['share']:.2f}" for k in row["by_kind"].values()]
            lines.append(f"| {row['strength']:g} | {row['threshold']:g}{default} | " + " | ".join(cells) + " |")
    if "caption" in report:
        lines += ["", "## How much the noise prediction uses the caption (mean square error; cost = more error "
                      "than with the scene's own caption)", "",
                  "| t | own caption | another scene's | empty prompt | another's costs | empty costs |",
                  "|---|---|---|---|---|---|"]
        for r in report["caption"]["rows"]:
            lines.append(f"| {r['t']} | {r['own_mse']:.4f} | {r['other_mse']:.4f} | {r['empty_mse']:.4f} | "
                         f"{r['other_cost']:+.0%} | {r['empty_cost']:+.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.n < 1 or args.steps < 1:
        raise UserError("--n and --steps must be at least 1")
    model = load_model(args.model, device=args.device)
    out = Path(args.out)
    report = {"model": model.name, "fingerprint": model.fingerprint, "date": time.strftime("%Y-%m-%d"),
              "command": "python -m benchmarks.editability " + " ".join(argv), "scenes": args.n,
              "scene_set": scenes_name(args)}
    pairs = benchmark_scenes(args, model.resolution)
    parts = args.parts
    if parts is None:  # coverage needs the training record only a toyworld.train model has
        parts = [p for p in PARTS if p != "coverage" or training_record(args.model) is not None]
    if "coverage" in parts:
        recipe = training_recipe(args.model)
        report["coverage"] = coverage(recipe)
        report["caption_dropout"] = recipe["config"].get("caption_dropout")
    if "vae" in parts:
        report["vae"] = vae_round_trip(model, pairs)
    if "attention" in parts:
        report["attention"], pictures = attention_shares(model, pairs, args.steps, args.guidance, args.quiet)
        captions = ["scene", "colour word", "shape word", "background word"] * (len(pictures) // 4)
        save_image(out / "attention.png", image_grid(pictures, captions, cols=4))
    if "identity" in parts:
        report["identity"] = identity_edits(model, pairs, args.steps, args.guidance, args.identity_inversion,
                                            args.quiet)
    if "mask" in parts:
        report["mask"] = auto_masks(model, pairs)
    if "caption" in parts:
        report["caption"] = caption_use(model, pairs)
    write_json(out / "editability.json", report)
    text = markdown(report)
    atomic_write(out / "editability.md", text)
    print(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main))
