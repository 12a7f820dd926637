"""Stage timings of every editing method on one loaded model: the thesis' Table 4.1 as a command.

Each method runs through the library's own path (an EditRequest and editing.methods.run_edit) on one
model loaded once, so the figures are those of `python -m editing.run` minus model loading. Per method: one
unmeasured warm-up run, then --repeats runs per image (methods interleaved within each repeat, so a
machine that slows down or speeds up affects them alike), CUDA synchronised around each run and its
inversion, fixed seeds. Reported: the median of each stage and of the total, and the peak memory.

Methods (--methods, default all):
  nti-p2p, npi-p2p, direct-p2p, ddim-p2p   Prompt-to-Prompt after null-text, negative-prompt, DirectInversion
                                           or plain DDIM inversion (editing.run --method p2p --inversion ...)
  learned-embedding, null-finetune, imagic editing.run --method ...
  multires                                 Multiresolution Textual Inversion: learning the concept from the
                                           image, then sampling one image with it (editing.multires_ti)
  reference-nti                            the published null-text inversion loop (benchmarks/reference_nti.py),
                                           timed alternately with the project's NTI on the same image: the
                                           speed-up line "project NTI vs reference NTI: ...x" (the
                                           reference always runs an fp32 eager UNet, as published)
  nti-batch                                null-text inversion of --batch-images photos (the --images cycled)
                                           in one batch; the figures are per image
  embedding                                Imagic's embedding optimisation alone (500 steps unless
                                           --embed-steps), the preliminary-training stage of imagic
Stages (the thesis' names): preliminary training = inversion and anything done once per image; editing =
per-edit optimisation; generation = sampling. total = the whole run (stages, prompt checks, writing its
images). Peak memory: CUDA max_memory_allocated per run, or on the CPU the process' peak resident set size
during the run (reset per run through /proc/self/clear_refs), model weights included.

Examples:
  # the embedded default model on a CPU, short settings (about 10 minutes on 2 cores)
  python -m benchmarks.timing --steps 20 --repeats 3 --inner-steps 5 --finetune-inner 5 --embed-steps 50 \\
      --unet-steps 50 --multires-train-steps 50 --out timing-cpu/
  # the SD 1.5 architecture with random weights on a GPU, the methods' default settings
  python -m benchmarks.timing --model sd15-random --device cuda --repeats 3 --out timing-sd15/

Writes into --out: timing.json (every run, the medians, the environment), timing.md (the table) and
timing.png (stacked bars of the three stages per method); each run's edit folder under runs/.
Exit codes: 0 done, 2 bad input or usage (one `error:` line), 1 a failure inside the run.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import diffusers
import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.bar_chart import stacked_bars
from benchmarks.reference_nti import check_model, reference_null_text_inversion
from editing import multires_ti
from editing.cli import EXIT_OK, Parser, run_main
from editing.core.errors import UserError
from editing.core.files import atomic_write, write_json
from editing.core.outputs import OutputFolder, unique_names
from editing.core.image_io import load_image, save_image
from editing.core.loading import load_model
from editing.core.metrics import peak_memory_mb, reset_peak_memory
from editing.core.model import TINY_RANDOM_NAME
from editing.core.sd_random import ARCHITECTURES
from editing.core.sdxl import SDXL_RANDOM_NAME
from editing.core.speed import add_speed_options, apply_speed, speed_options, speed_summary
from editing.methods import default_invert, inversion_config, run_edit
from editing.imagic import DEFAULT_EMBEDDING
from editing.learned_embedding import learn_embedding
from editing.multires_prompt import parse_prompt
from editing.request import EditRequest
from inversion.invert import invert

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO / "examples" / "toy-red-circle.png"
# A caption of the default image and an edit the default (toy-world) model knows; the timings do not depend
# on the words, only on the prompt lengths.
DEFAULT_SOURCE = "a red circle on a gray background"
DEFAULT_TARGET = "a blue circle on a gray background"
STAGES = ("preliminary_training", "editing", "generation")
STAGE_NAMES = ("preliminary training", "editing", "generation")


@dataclass(frozen=True)
class EditMethod:
    label: str  # the table's row name
    request: dict  # what selects it in an EditRequest


EDIT_METHODS = {
    "nti-p2p": EditMethod("NTI+P2P", {"method": "p2p", "inversion": "null-text"}),
    "npi-p2p": EditMethod("NPI+P2P", {"method": "p2p", "inversion": "negative-prompt"}),
    "direct-p2p": EditMethod("Direct+P2P", {"method": "p2p", "inversion": "direct"}),
    "ddim-p2p": EditMethod("DDIM+P2P", {"method": "p2p", "inversion": "ddim"}),
    "learned-embedding": EditMethod("Learned embedding (NTI + interp.)", {"method": "learned-embedding"}),
    "null-finetune": EditMethod("Null-text fine-tuning", {"method": "null-finetune"}),
    "imagic": EditMethod("Imagic", {"method": "imagic"}),
}
MULTIRES, REFERENCE, NTI_BATCH, EMBEDDING = "multires", "reference-nti", "nti-batch", "embedding"
LABELS = {**{name: m.label for name, m in EDIT_METHODS.items()}, MULTIRES: "Multires TI sampling",
          REFERENCE: "Reference NTI (Mokady et al.)", NTI_BATCH: "Batched NTI, per image",
          EMBEDDING: "Embedding optimisation (Imagic)"}
ALL_METHODS = (*EDIT_METHODS, MULTIRES, REFERENCE, NTI_BATCH, EMBEDDING)
BATCH_IMAGES = 16  # nti-batch: images per batch (the GPU target is stated per image at 16)
# timing options that are EditRequest fields of the same name; None (not given) leaves the method's own default
FORWARDED = ("steps", "guidance", "inner_steps", "finetune_steps", "finetune_inner", "embed_steps", "unet_steps",
             "interp_steps")
MULTIRES_CONCEPT = "timing"  # the concept learned from the image for the multires row ...
MULTIRES_INIT_WORD = "object"  # ... starting from this word's embedding (one CLIP token) ...
MULTIRES_PROMPT = "a photo of a <timing>"  # ... and sampled in this prompt (every band of the concept in use)


def build_parser() -> Parser:
    p = Parser(prog="python -m benchmarks.timing", description=__doc__,
               formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=110))
    p.add_argument("--model", default=None,
                   help="default (the embedded model), tiny-random, sd15-random / sd21-random / sdxl-random (the real "
                        "SD / SDXL architectures with random weights: real timings, meaningless pictures), a diffusers "
                        "folder, a .safetensors/.ckpt file or a cached hub id")
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS, metavar="METHOD",
                   help=f"methods to time (default all: {' '.join(ALL_METHODS)})")
    p.add_argument("--images", nargs="+", default=[str(DEFAULT_IMAGE)], metavar="IMG",
                   help="photos to edit, each timed --repeats times (default examples/toy-red-circle.png)")
    p.add_argument("--source-prompt", default=DEFAULT_SOURCE, help=f"caption of the photos ({DEFAULT_SOURCE!r})")
    p.add_argument("--target-prompt", default=DEFAULT_TARGET, help=f"the edit ({DEFAULT_TARGET!r})")
    p.add_argument("--repeats", type=int, default=3, help="measured runs per method and image (default 3)")
    p.add_argument("--batch-images", type=int, default=BATCH_IMAGES,
                   help=f"nti-batch: photos per batch (default {BATCH_IMAGES})")
    g = p.add_argument_group("method options (default: each method's own, as in python -m editing.run)")
    g.add_argument("--steps", type=int, default=None, help="DDIM steps (editing.run's default 50)")
    g.add_argument("--guidance", type=float, default=None, help="guidance scale (editing.run's default 7.5)")
    g.add_argument("--inner-steps", type=int, default=None, help="null-text Adam steps per timestep (10)")
    g.add_argument("--finetune-steps", type=int, default=None, help="null-finetune: fine-tuned steps K")
    g.add_argument("--finetune-inner", type=int, default=None, help="null-finetune: Adam steps per step")
    g.add_argument("--embed-steps", type=int, default=None, help="learned-embedding / imagic: embedding steps")
    g.add_argument("--unet-steps", type=int, default=None, help="imagic: UNet fine-tuning steps")
    g.add_argument("--interp-steps", type=int, default=None, help="learned-embedding: interpolation steps N")
    g.add_argument("--multires-train-steps", type=int, default=None,
                   help="multires: concept training steps (default editing.multires_ti's)")
    g.add_argument("--multires-scales", type=int, default=None, help="multires: number of resolutions n")
    p.add_argument("--seed", type=int, default=0, help="random seed of every run (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="UNet precision (fp32)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--out", default="timing", help="output folder (default timing/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    add_speed_options(p)
    return p


def check_args(args) -> None:
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}")
    if args.batch_images < 1:
        raise UserError(f"--batch-images must be at least 1, got {args.batch_images}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    for name in ("multires_train_steps", "multires_scales"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for path in args.images:
        if not Path(path).is_file():
            raise UserError(f"--images: {path} is not a file")


# ---------------------------------------------------------------- measuring


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_kind(device: torch.device) -> str:
    """What 'peak memory' means on this machine (recorded in timing.json and timing.md)."""
    if device.type == "cuda":
        return "CUDA max_memory_allocated during the run (torch's tensors, model weights included)"
    if reset_peak_memory(device):
        return "peak resident set size of the process during the run (VmHWM, reset per run), model included"
    return ("peak resident set size of the process so far (ru_maxrss: it cannot be reset here, so a row "
            "shows the largest of itself and every run before it), model included")


@dataclass
class Run:
    """One measured run of a method on one image."""

    image: str
    repeat: int
    stages_s: dict  # preliminary_training, editing, generation (None: the method has no such stage)
    total_s: float
    peak_memory_mb: float
    extra: dict = field(default_factory=dict)


# A runner takes (image index, repeat) and returns (stages, extra) for one run; the caller times the total.
Runner = Callable[[int, int], tuple[dict, dict]]


def measure(runner: Runner, device: torch.device, image: int, repeat: int, image_name: str) -> Run:
    synchronise(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    stages, extra = runner(image, repeat)
    synchronise(device)
    total = time.perf_counter() - start
    # a runner that does more than its row (the reference's paired project run) reports the row's own figures
    total = extra.pop("total_s", total)
    peak = extra.pop("peak_memory_mb", None)
    return Run(image_name, repeat, stages, total, peak_memory_mb(device) if peak is None else peak, extra)


# ---------------------------------------------------------------- the runners


def edit_request(method: str, image: str, options) -> EditRequest:
    """The EditRequest of one method's row, checked as any request is."""
    given = {name: getattr(options, name) for name in FORWARDED if getattr(options, name) is not None}
    return EditRequest(target_prompts=(options.target_prompt,), source_prompt=options.source_prompt, image=image,
                       seed=options.seed, quiet=True, **EDIT_METHODS[method].request, **given)


def run_folders(images: list[str], parent: OutputFolder) -> list[OutputFolder]:
    """One run folder per photo, named after it (made safe); photos of the same name in different folders,
    and names that differ only in case, get a short hash of their path (editing.core.outputs.unique_names)."""
    names = unique_names([Path(path).stem for path in images], [os.path.abspath(path) for path in images])
    return [parent.child(name) for name in names]


def synchronised_invert(device: torch.device):
    """editing.run's default inversion, with the GPU synchronised at its end: the preliminary-training stage
    of p2p and null-finetune then holds all of the inversion's work."""
    def invert_source(model, image, prompt, config, disable):
        record = default_invert(model, image, prompt, config, disable)
        synchronise(device)
        return record

    return invert_source


def edit_runner(method: str, model, images, options, out: Path | OutputFolder) -> Runner:
    requests = [edit_request(method, path, options) for path in options.images]
    out = out if isinstance(out, OutputFolder) else OutputFolder.prepare(out, options.images)
    folders = run_folders(options.images, out.child("runs", method))
    invert_source = synchronised_invert(model.device)

    def run(k: int, repeat: int):
        summary = run_edit(model, images[k], requests[k], folders[k], invert_source=invert_source)
        return ({s: summary["timings_s"][s] for s in STAGES},
                {"reconstruction_psnr_db": summary["reconstruction_psnr_db"]})

    return run


def multires_runner(model, images, options, out: Path) -> Runner:
    """Learn a concept from the image (preliminary training), sample one image with it (generation).
    The concept is learned from the image alone, without the CLI's random re-croppings: they enlarge the
    training set, not the cost of a step (a step draws a fixed batch).

    Raises ImportError / AttributeError when editing.multires_ti does not offer train_concept and
    sample_prompts: the row is then listed as not available."""

    train, sample, TrainConfig = multires_ti.train_concept, multires_ti.sample_prompts, multires_ti.TrainConfig
    given = {"steps": options.multires_train_steps, "scales": options.multires_scales}
    config = TrainConfig(seed=options.seed, **{k: v for k, v in given.items() if v is not None})
    pieces = parse_prompt(MULTIRES_PROMPT)
    steps = options.steps if options.steps is not None else _run_default("steps")
    guidance = options.guidance if options.guidance is not None else _run_default("guidance")

    def run(k: int, repeat: int):
        start = time.perf_counter()
        concept, _ = train(model, images[k][None], MULTIRES_CONCEPT, MULTIRES_INIT_WORD, config, disable=True)
        synchronise(model.device)
        trained = time.perf_counter()
        generator = torch.Generator(device=model.device).manual_seed(options.seed)
        sample(model, [pieces], {MULTIRES_CONCEPT: concept}, steps, guidance, generator, disable=True)
        synchronise(model.device)
        return {"preliminary_training": trained - start, "editing": None,
                "generation": time.perf_counter() - trained}, {}

    return run


def fp32_copy(model):
    """The model itself if its UNet is fp32, else the same model with an fp32 copy of the UNet (eager)."""
    if model.dtype == torch.float32:
        return model

    return dataclasses.replace(model, unet=copy.deepcopy(model.unet).float(), dtype=torch.float32, fast_unet=None)


def reference_runner(model, images, options, out: Path) -> Runner:
    """The reference NTI, timed alternately with the project's (editing.run's inversion of nti-p2p)."""
    reference_model = fp32_copy(model)  # the published loop runs in fp32, whatever the project's --dtype
    check_model(reference_model)  # UserError (v-prediction): the row is then listed as not available
    config = inversion_config(edit_request("nti-p2p", options.images[0], options))
    device = model.device

    def project(k):
        default_invert(model, images[k], options.source_prompt, config, True)

    def reference(k):
        reference_null_text_inversion(reference_model, images[k], options.source_prompt, steps=config.steps,
                                      guidance=config.guidance, num_inner_steps=config.null_text.inner_steps,
                                      epsilon=config.null_text.early_stop)

    def timed(fn, k) -> tuple[float, float]:
        synchronise(device)
        reset_peak_memory(device)
        start = time.perf_counter()
        fn(k)
        synchronise(device)
        return time.perf_counter() - start, peak_memory_mb(device)

    def run(k: int, repeat: int):
        # the project's run goes first on odd repeats, the reference's on even ones: order effects cancel
        project_s = timed(project, k)[0] if repeat % 2 else None
        reference_s, peak = timed(reference, k)
        project_s = timed(project, k)[0] if project_s is None else project_s
        return ({"preliminary_training": reference_s, "editing": None, "generation": None},
                {"reference_nti_s": reference_s, "project_nti_s": project_s, "total_s": reference_s,
                 "peak_memory_mb": peak})

    return run


def nti_batch_runner(model, images, options, out: Path) -> Runner:
    """Null-text inversion (editing.run's settings) of --batch-images photos in one batch, per image."""
    config = inversion_config(edit_request("nti-p2p", options.images[0], options))
    n = options.batch_images

    def run(k: int, repeat: int):
        batch = np.stack([images[(k + j) % len(images)] for j in range(n)])
        start = time.perf_counter()
        invert(model, batch, [options.source_prompt] * n, config, disable=True)
        synchronise(model.device)
        per_image = (time.perf_counter() - start) / n
        return ({"preliminary_training": per_image, "editing": None, "generation": None},
                {"batch_images": n, "batch_s": per_image * n, "total_s": per_image})

    return run


def embedding_runner(model, images, options, out: Path) -> Runner:
    """Imagic's embedding optimisation (its default settings, --embed-steps if given) on one photo."""
    config = DEFAULT_EMBEDDING
    if options.embed_steps is not None:
        config = dataclasses.replace(config, steps=options.embed_steps)

    def run(k: int, repeat: int):
        generator = torch.Generator(device=model.device).manual_seed(options.seed)
        start = time.perf_counter()
        learn_embedding(model, images[k], options.target_prompt, config, generator, disable=True)
        synchronise(model.device)
        return ({"preliminary_training": time.perf_counter() - start, "editing": None, "generation": None},
                {"embed_steps": config.steps})

    return run


def _run_default(name: str):
    return next(f.default for f in dataclasses.fields(EditRequest) if f.name == name)


def make_runner(method: str, model, images, options, out: Path) -> tuple[Runner | None, str]:
    """(runner, "") or (None, why it is not available)."""
    if method in EDIT_METHODS:
        return edit_runner(method, model, images, options, out), ""
    if method == NTI_BATCH:
        return nti_batch_runner(model, images, options, out), ""
    if method == EMBEDDING:
        return embedding_runner(model, images, options, out), ""
    if method == MULTIRES:
        try:
            return multires_runner(model, images, options, out), ""
        except (ImportError, AttributeError) as exc:
            return None, f"not available: editing.multires_ti offers no train_concept/sample_prompts yet ({exc})"
    try:
        return reference_runner(model, images, options, out), ""
    except UserError as exc:  # fp16 or v-prediction: not the published algorithm
        return None, f"not available: {exc}"


# ---------------------------------------------------------------- results


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[Run]) -> dict:
    return {"stages_s": {s: median(r.stages_s[s] for r in runs) for s in STAGES},
            "total_s": median(r.total_s for r in runs),
            "peak_memory_mb": max(r.peak_memory_mb for r in runs),
            **({"reconstruction_psnr_db": median(r.extra["reconstruction_psnr_db"] for r in runs)}
               if runs[0].extra.get("reconstruction_psnr_db") is not None else {})}


def reference_ratio(runs: list[Run]) -> dict:
    """The speed-up of the project's NTI over the reference: the median of the paired ratios."""
    ratios = [r.extra["reference_nti_s"] / r.extra["project_nti_s"] for r in runs]
    project = median(r.extra["project_nti_s"] for r in runs)
    reference = median(r.extra["reference_nti_s"] for r in runs)
    ratio = statistics.median(ratios)
    line = (f"project NTI vs reference NTI: {ratio:.2f}x (median of {len(runs)} paired runs; project "
            f"{project:.3g} s, reference {reference:.3g} s; above 1 = the project's is faster)")
    return {"ratio": ratio, "project_nti_s": project, "reference_nti_s": reference, "paired_ratios": ratios,
            "line": line}


def environment(model, options, argv) -> dict:
    device = model.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
            name = found.group(1).strip() if found else name
        except OSError:
            pass
    return {"date": datetime.date.today().isoformat(), "device": str(device), "device_name": name,
            "dtype": options.dtype, "speed": speed_summary(model), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "command": "python -m benchmarks.timing " + " ".join(argv)}


def random_weights(model) -> bool:
    return model.name == TINY_RANDOM_NAME or model.name in ARCHITECTURES or model.name == SDXL_RANDOM_NAME


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def write_markdown(path: Path, report: dict) -> None:
    env, model, settings = report["environment"], report["model"], report["settings"]
    lines = [f"# Stage timings: {model['name']}", "",
             f"Model {model['name']} ({model['resolution']} px, {model['prediction_type']}), device "
             f"{env['device']} ({env['device_name']}), UNet {env['dtype']}, compile {env['speed']['compile']}, "
             f"torch {env['torch']}, diffusers "
             f"{env['diffusers']}, {env['torch_threads']} torch threads, {env['date']}.",
             f"Median of {settings['repeats']} run(s) x {len(settings['images'])} image(s) after one warm-up run "
             f"per method; settings: {', '.join(f'{k} {v}' for k, v in settings['method_options'].items())}.",
             f"Command: `{env['command']}`", "",
             "| method | preliminary training (s) | editing (s) | generation (s) | total (s) | peak memory (MiB) |",
             "|---|---|---|---|---|---|"]
    for name, entry in report["methods"].items():
        if not entry["available"]:
            lines.append(f"| {entry['label']} | {entry['note']} | | | | |")
            continue
        stages = entry["stages_s"]
        lines.append(f"| {entry['label']} | {' | '.join(fmt(stages[s]) for s in STAGES)} | "
                     f"{fmt(entry['total_s'])} | {entry['peak_memory_mb']:.0f} |")
    lines.append("")
    if report.get("reference"):
        lines += [report["reference"]["line"], ""]
    lines += ["Notes:", f"- Peak memory: {report['memory']}.",
              "- Stages per method (preliminary training / editing / generation): *+P2P: inversion / - / sampling "
              "with attention control; learned embedding: embedding optimisation / NTI under it / sampling; "
              "null-text fine-tuning: NTI / re-optimising the first K nulls / sampling; Imagic: embedding "
              "optimisation / UNet fine-tuning / sampling; multires: learning the concept / - / sampling; "
              "reference NTI: its inversion only. total = the whole run, prompt checks and image writing included."]
    if model["random_weights"]:
        lines.append(f"- {model['name']} has random weights: the timings and memory are those of its "
                     "architecture, but its pictures, and any quality figure from them (the reconstruction PSNR in "
                     "timing.json), are meaningless.")
    atomic_write(path, "\n".join(lines) + "\n")


def write_chart(path: Path, report: dict) -> None:
    entries = list(report["methods"].values())
    segments = [[e["stages_s"][s] if e["available"] else None for s in STAGES] for e in entries]
    notes = ["not available" if not e["available"] else "" for e in entries]
    env, settings = report["environment"], report["settings"]
    title = (f"Stage timings, {report['model']['name']} on {env['device']} ({env['dtype']}), "
             f"median of {settings['repeats']} x {len(settings['images'])}")
    save_image(path, stacked_bars([e["label"] for e in entries], segments, list(STAGE_NAMES), title,
                                  "seconds (median per stage)", notes))


# ---------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    options = build_parser().parse_args(argv)
    check_args(options)

    if options.threads is not None:
        torch.set_num_threads(options.threads)
    out = OutputFolder.prepare(options.out, options.images)
    methods = list(dict.fromkeys(options.methods))  # in the order given, each once
    for method in methods:  # bad options fail here, before the model is loaded
        if method in EDIT_METHODS:
            edit_request(method, options.images[0], options)
    model = load_model(options.model, device=options.device, dtype=options.dtype)
    apply_speed(model, speed_options(options))
    device = model.device
    images = [load_image(path, model.resolution) for path in options.images]
    torch.manual_seed(options.seed)

    runners, unavailable = {}, {}
    for method in methods:
        runner, why = make_runner(method, model, images, options, out)
        if runner is None:
            unavailable[method] = why
        else:
            runners[method] = runner
    memory = memory_kind(device)
    runs: dict[str, list[Run]] = {m: [] for m in runners}
    total = len(runners) * (1 + options.repeats * len(images))
    with tqdm(total=total, desc="timing", disable=options.quiet) as bar:
        for method, runner in runners.items():  # warm-up: lazy initialisation, allocator growth, kernel choice
            bar.set_postfix_str(f"{method} warm-up")
            runner(0, 0)
            bar.update()
        for repeat in range(options.repeats):
            for method, runner in runners.items():
                for k, path in enumerate(options.images):
                    bar.set_postfix_str(f"{method} {repeat + 1}/{options.repeats}")
                    runs[method].append(measure(runner, device, k, repeat, path))
                    bar.update()

    report = {
        "environment": environment(model, options, argv),
        "model": {"spec": options.model or "default", "name": model.name, "resolution": model.resolution,
                  "prediction_type": model.prediction_type, "fingerprint": model.fingerprint,
                  "random_weights": random_weights(model)},
        "settings": {"repeats": options.repeats, "images": list(options.images), "source_prompt": options.source_prompt,
                     "target_prompt": options.target_prompt, "seed": options.seed,
                     "method_options": {k: getattr(options, k) for k in (*FORWARDED, "multires_train_steps",
                                                                          "multires_scales")
                                        if getattr(options, k) is not None} or {"all": "the methods' defaults"}},
        "memory": memory,
        "methods": {},
    }
    if report["model"]["random_weights"]:
        report["quality_note"] = "random weights: reconstruction_psnr_db values are meaningless"
    for method in methods:
        entry = {"label": LABELS[method], "available": method in runners}
        if method in runners:
            entry.update(summarise(runs[method]), runs=[vars(r) for r in runs[method]])
        else:
            entry["note"] = unavailable[method]
        report["methods"][method] = entry
    if REFERENCE in runners:
        report["reference"] = reference_ratio(runs[REFERENCE])
    write_json(out.path("timing.json"), report)
    write_markdown(out.path("timing.md"), report)
    write_chart(out.path("timing.png"), report)
    print(f"wrote {out.folder}/timing.json, timing.md, timing.png")
    if report.get("reference"):
        print(report["reference"]["line"])
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main))
