"""The thesis' trade-off curves, measured on the toy world's ground truth instead of read off pictures.

- null-finetune against K: one null-text inversion and one fine-tuning of max(K) per scene serve the whole
  K strip (the first K fine-tuned nulls do not depend on later ones), so every K is scored on the same run.
- learned-embedding against eta, for N in --interp (steps, steps/2, a few), with lambda = 0 and lambda = the
  thesis' 1e-3: one e_opt and one inversion per (scene, lambda) serve the eta x N grid (one sampling batch).
  The thesis says the method is unstable in eta without the L2 term: measured here as the spread (standard
  deviation over eta) of the edit PSNR against the truth, per scene, averaged over the scenes.
- finetune-embedding (the thesis' future work) against K, the same way as null-finetune.

Each scene's scores are saved as they finish (curves/<curve>/<scene>.json), so a killed run resumes
without redoing them. Scores are those of the quality suite (`benchmarks.quality.score_edit`).

Example (the embedded default model; ~1 h on one CPU core for 20 scenes):
  python -m benchmarks.curves --n 20 --out out/curves
Writes curves.json, curves.md and one PNG per curve (accuracy and unchanged-region PSNR).
Exit codes: 0 done, 2 bad input or usage (one `error:` line), 1 a failure inside the run.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.line_chart import line_chart
from benchmarks.quality import add_scene_options, benchmark_scenes, scene_settings, scenes_name, score_edit
from editing.cli import EXIT_OK, Parser, run_main
from editing.core.errors import UserError
from editing.core.files import atomic_write, write_json
from editing.core.image_io import image_grid, save_image
from editing.core.loading import load_model
from editing.finetune_embedding import FINETUNE_EMBEDDING, FinetuneEmbeddingConfig, edit_finetune_embedding
from editing.learned_embedding import DEFAULT_EMBEDDING, THESIS_L2, LearnedEmbeddingConfig, edit_learned_embedding
from editing.null_finetune import NullFinetuneConfig, edit_null_finetune
from inversion.invert import DEFAULT_GUIDANCE, DEFAULT_STEPS, InversionConfig, invert
from inversion.null_text import NullTextConfig

CURVES = ("null-finetune", "learned-embedding", "finetune-embedding")
DEFAULT_ETAS = "0,0.2,0.4,0.6,0.8,1"  # the thesis' sweep of eta over [0, 1] (its Fig. 4.5-4.8)
SMALL_N = 5  # "a few" interpolation steps: the late, detail-only part of the trajectory
K_POINTS = 6  # K from 0 to steps in this many points


def build_parser() -> Parser:
    p = Parser(prog="python -m benchmarks.curves", description=__doc__,
               formatter_class=lambda prog: __import__("argparse").RawDescriptionHelpFormatter(prog, width=100))
    p.add_argument("--curves", nargs="+", default=list(CURVES), choices=CURVES, help="which curves (default all)")
    p.add_argument("--n", type=int, default=20, help="toy-world scenes (default 20; the quality suite's seed)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"DDIM steps (default {DEFAULT_STEPS})")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--inner-steps", type=int, default=NullTextConfig.inner_steps, help="NTI inner steps (10)")
    p.add_argument("--ks", default=None, help="K values (default 0..steps in 6 points)")
    p.add_argument("--etas", default=DEFAULT_ETAS, help=f"eta values (default {DEFAULT_ETAS})")
    p.add_argument("--interp", default=None, help=f"N values (default steps, steps/2, {SMALL_N})")
    p.add_argument("--embed-steps", type=int, default=DEFAULT_EMBEDDING.steps,
                   help=f"embedding optimisation steps (default {DEFAULT_EMBEDDING.steps}, the method's)")
    add_scene_options(p)
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/curves")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def int_list(text: str | None, default: list[int], what: str, top: int) -> list[int]:
    if text is None:
        return default
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} takes comma-separated whole numbers, got {text!r}") from None
    if not values or any(not 0 <= v <= top for v in values):
        raise UserError(f"{what} values must lie in [0, {top}], got {text!r}")
    return values


def settings(args) -> dict:
    """What every curve's points are, checked; also what a resumed scene must match."""
    if args.n < 1 or args.steps < 1:
        raise UserError("--n and --steps must be at least 1")
    ks = int_list(args.ks, sorted({round(args.steps * k / (K_POINTS - 1)) for k in range(K_POINTS)}), "--ks",
                  args.steps)
    ns = int_list(args.interp, sorted({args.steps, args.steps // 2, min(SMALL_N, args.steps)}, reverse=True),
                  "--interp", args.steps)
    try:
        etas = [float(v) for v in args.etas.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--etas takes comma-separated numbers, got {args.etas!r}") from None
    return {"steps": args.steps, "guidance": args.guidance, "inner_steps": args.inner_steps, "ks": ks,
            "etas": etas, "ns": ns, "lambdas": [0.0, THESIS_L2], "embed_steps": args.embed_steps,
            "seed": args.seed, **scene_settings(args)}


def scene_scores(model, pair: dict, curve: str, s: dict, disable: bool) -> dict:
    """Every point of one curve on one scene: {point name: score_edit(...)}."""
    image, target = pair["image"], pair["edited_caption"]
    nti = InversionConfig(method="null-text", steps=s["steps"], guidance=s["guidance"],
                          null_text=NullTextConfig(inner_steps=s["inner_steps"]))
    generator = lambda: torch.Generator(device=model.device).manual_seed(s["seed"])  # noqa: E731
    embedding = dataclasses.replace(DEFAULT_EMBEDDING, steps=s["embed_steps"])
    points = {}
    if curve == "null-finetune":
        record = invert(model, image[None], [pair["caption"]], dataclasses.replace(nti, keep_trajectory=True),
                        disable=disable)[0]
        result = edit_null_finetune(model, record, image, target, NullFinetuneConfig(steps=s["ks"][0]),
                                    strip=s["ks"], disable=disable)
        points = {f"K={k}": score_edit(pair, edit, result.reconstruction) for k, edit in zip(s["ks"], result.strip)}
    elif curve == "finetune-embedding":
        config = FinetuneEmbeddingConfig(embedding=dataclasses.replace(FINETUNE_EMBEDDING, steps=s["embed_steps"]),
                                         steps=s["ks"][0])
        result = edit_finetune_embedding(model, image, target, config, nti, generator(), strip=s["ks"],
                                         disable=disable)
        points = {f"K={k}": score_edit(pair, edit, result.reconstruction) for k, edit in zip(s["ks"], result.strip)}
    else:
        grid = [(eta, n) for n in s["ns"] for eta in s["etas"]]
        for lam in s["lambdas"]:
            config = LearnedEmbeddingConfig(embedding=dataclasses.replace(embedding, l2=lam), interp_steps=s["ns"][0])
            result = edit_learned_embedding(model, image, target, config, nti, generator(), sweep=grid,
                                            disable=disable)
            points.update({f"lambda={lam:g} N={n} eta={eta:g}": score_edit(pair, edit, result.reconstruction)
                           for (eta, n), edit in zip(grid, result.sweep)})
    return points


def mean_of(rows: list[dict], key: str) -> float:
    values = [float(r[key]) for r in rows if r[key] is not None and np.isfinite(float(r[key]))]
    return float(np.mean(values)) if values else float("nan")


def summarise(point_rows: dict[str, list[dict]]) -> dict:
    """Per point: edit accuracy (all and per kind), edit PSNR, unchanged-region PSNR, layout kept."""
    out = {}
    for name, rows in point_rows.items():
        kinds = sorted({r["attribute"] for r in rows})
        out[name] = {"scenes": len(rows), "edit_accuracy": mean_of(rows, "all"),
                     "accuracy_by_edit": {a: mean_of([r for r in rows if r["attribute"] == a], "all") for a in kinds},
                     "edit_psnr_db": mean_of(rows, "edit_psnr"), "unchanged_psnr_db": mean_of(rows, "unchanged_psnr"),
                     "layout_kept": float(np.mean([r["layout_shift_px"] is not None and r["layout_shift_px"] <= 3.0
                                                   for r in rows]))}
    return out


def eta_spread(per_scene: list[dict], s: dict) -> dict:
    """The thesis' instability in eta: per (lambda, N), the standard deviation over eta of each scene's edit
    PSNR against the truth, averaged over scenes (and of the accuracy: how often the outcome flips)."""
    out = {}
    for lam in s["lambdas"]:
        for n in s["ns"]:
            names = [f"lambda={lam:g} N={n} eta={eta:g}" for eta in s["etas"]]
            psnrs = [np.std([scene[m]["edit_psnr"] for m in names]) for scene in per_scene]
            flips = [sum(scene[a]["all"] != scene[b]["all"] for a, b in zip(names, names[1:])) for scene in per_scene]
            out[f"lambda={lam:g} N={n}"] = {"edit_psnr_std_over_eta_db": float(np.mean(psnrs)),
                                            "outcome_flips_over_eta": float(np.mean(flips))}
    return out


def plots(curve: str, summary: dict, s: dict, out: Path) -> list[str]:
    names = []
    if curve in ("null-finetune", "finetune-embedding"):
        ks = s["ks"]
        for key, label in (("edit_accuracy", "edit accuracy"), ("unchanged_psnr_db", "unchanged-region PSNR (dB)")):
            image = line_chart(ks, {curve: [summary[f"K={k}"][key] for k in ks]}, f"{curve}: {label} against K",
                               "K (fine-tuned steps)", label, (0.0, 1.0) if key == "edit_accuracy" else None)
            names.append(f"{curve}-{key}.png")
            save_image(out / names[-1], image)
        return names
    panels = []
    for key, label in (("edit_accuracy", "edit accuracy"), ("unchanged_psnr_db", "unchanged-region PSNR (dB)")):
        for lam in s["lambdas"]:
            series = {f"N={n}": [summary[f"lambda={lam:g} N={n} eta={eta:g}"][key] for eta in s["etas"]]
                      for n in s["ns"]}
            panels.append(line_chart(s["etas"], series, f"lambda={lam:g}: {label}", "eta", label,
                                     (0.0, 1.0) if key == "edit_accuracy" else None))
    names.append(f"{curve}-eta.png")
    save_image(out / names[-1], image_grid(panels, [""] * len(panels), cols=2))
    return names


def markdown(header: dict, results: dict) -> str:
    lines = ["# Trade-off curves", "", f"model `{header['model']}`, {header['scenes']} toy-world scenes ({header['scene_set']}), "
             f"{header['settings']['steps']} steps, guidance {header['settings']['guidance']}, {header['date']}",
             "", f"`{header['command']}`"]
    for curve, r in results.items():
        lines += ["", f"## {curve}", "", "| point | edit accuracy | colour / shape / background | edit PSNR (dB) "
                  "| unchanged PSNR (dB) | layout kept |", "|---|---|---|---|---|---|"]
        for name, p in r["points"].items():
            kinds = " / ".join(f"{p['accuracy_by_edit'][a]:.2f}" if a in p["accuracy_by_edit"] else "-"
                               for a in ("colour", "shape", "background"))
            lines.append(f"| {name} | {p['edit_accuracy']:.2f} | {kinds} | {p['edit_psnr_db']:.2f} "
                         f"| {p['unchanged_psnr_db']:.2f} | {p['layout_kept']:.2f} |")
        if "eta_spread" in r:
            lines += ["", "| lambda, N | std of edit PSNR over eta (dB, mean of scenes) | outcome flips along eta |",
                      "|---|---|---|"]
            lines += [f"| {k} | {v['edit_psnr_std_over_eta_db']:.2f} | {v['outcome_flips_over_eta']:.2f} |"
                      for k, v in r["eta_spread"].items()]
        lines.append(f"\nplots: {', '.join(r['plots'])}; {r['seconds_per_scene']:.1f} s per scene")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    s = settings(args)
    model = load_model(args.model, device=args.device)
    out = Path(args.out)
    pairs = benchmark_scenes(args, model.resolution)
    results = {}
    for curve in args.curves:
        folder, per_scene, seconds = out / "scenes" / curve, [], []
        for k, pair in enumerate(tqdm(pairs, desc=curve, disable=args.quiet)):
            path = folder / f"{k:03d}.json"
            saved = json.loads(path.read_text()) if path.is_file() else None
            if saved is None or saved.get("settings") != s or saved.get("model") != model.fingerprint:
                start = time.perf_counter()
                points = scene_scores(model, pair, curve, s, disable=True)
                saved = {"settings": s, "model": model.fingerprint, "seconds": time.perf_counter() - start,
                         "points": points}
                write_json(path, saved)
            per_scene.append(saved["points"])
            seconds.append(saved["seconds"])
        summary = summarise({name: [scene[name] for scene in per_scene] for name in per_scene[0]})
        results[curve] = {"points": summary, "seconds_per_scene": float(np.mean(seconds)),
                          "plots": plots(curve, summary, s, out)}
        if curve == "learned-embedding":
            results[curve]["eta_spread"] = eta_spread(per_scene, s)
    header = {"model": model.name, "fingerprint": model.fingerprint, "scenes": args.n,
              "scene_set": scenes_name(args), "settings": s,
              "date": time.strftime("%Y-%m-%d"), "command": "python -m benchmarks.curves " + " ".join(argv)}
    write_json(out / "curves.json", {**header, "results": results})
    text = markdown(header, results)
    atomic_write(out / "curves.md", text)
    print(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main))
