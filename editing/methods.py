"""Every editing method behind one call: `edit(model, image, request)` runs the request's method and returns its
images and stage timings; `run_edit` also writes the contract's files (source.png, reconstruction.png,
edit.png ..., grid.png, summary.json) into a folder. The CLIs, the batch runner, the benchmarks and the web
page all come through here, with an `EditRequest`.

Stages (the thesis' Table 4.1): p2p: inversion | - | sampling; null-finetune: inversion | fine-tuning |
sampling; learned-embedding: embedding optimisation | inversion under it | sampling; imagic: embedding
optimisation | UNet fine-tuning | sampling.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from attention.controllers import BlendConfig, P2PConfig, PromptToPrompt
from attention.heatmaps import cross_attention_heatmaps, self_attention_components
from editing.auto_mask import disagreement_masks, mask_picture
from editing.core.files import write_json
from editing.core.image_io import MAX_IMAGE_PIXELS, Crop, image_grid, prepare_image, read_image, save_image
from editing.core.metrics import peak_memory_mb, psnr
from editing.core.outputs import OutputFolder, refuse_input
from editing.core.model import DTYPES
from editing.core.speed import speed_summary, unet_checkpointing
from editing.embedding import EmbeddingConfig
from editing.extent import cross_replace_for, depth_for, guidance_for, layout_guidance_for
from editing.finetune_embedding import DEFAULT_FINETUNE_K, FINETUNE_EMBEDDING, FinetuneEmbeddingConfig, \
    edit_finetune_embedding
from editing.imagic import DEFAULT_EMBEDDING as IMAGIC_EMBEDDING, DEFAULT_ETA as IMAGIC_ETA, \
    DEFAULT_UNET as IMAGIC_UNET, ImagicConfig, edit_imagic
from editing.learned_embedding import DEFAULT_EMBEDDING as LE_EMBEDDING, DEFAULT_ETA as LE_ETA, \
    DEFAULT_INTERP_STEPS as LE_INTERP_STEPS, LearnedEmbeddingConfig, edit_learned_embedding
from editing.null_finetune import DEFAULT_K, NullFinetuneConfig, edit_null_finetune
from editing.p2p import edit_p2p
from editing.request import AUTO_GUIDANCE, AUTO_MASK, SOURCE_METHODS, EditRequest, parse_list
from editing.core.errors import UserError
from inversion.invert import FULL_DEPTH, InversionConfig, invert
from inversion.null_text import NullTextConfig
from inversion.record import Inversion


def load_mask(path: str, crop: Crop, model, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """A mask image -> (h, w) float in {0, 1} at latent size (white = editable)."""
    latent = model.resolution // model.vae_scale_factor
    rgb = prepare_image(read_image(path, max_pixels), latent, crop)
    return torch.from_numpy((rgb.mean(-1) > 127).astype("float32"))


def p2p_config(request: EditRequest, model, crop: Crop, auto_masks: torch.Tensor | None = None) -> P2PConfig:
    """P2P's settings from a request; auto_masks: the (n_targets, h, w) masks of --mask auto, once made."""
    cross = request.cross_replace
    if request.cross_replace_word:
        cross = {"default_": cross, **request.cross_replace_word}
    blend = None
    mask = load_mask(request.mask_file, crop, model, request.max_pixels) if request.mask_file else auto_masks
    if request.blend_words or mask is not None:
        blend = BlendConfig(words=list(request.blend_words or []), threshold=request.blend_threshold,
                            start=request.blend_start, subtract_words=list(request.blend_subtract), mask=mask)
    return P2PConfig(edit=request.edit, cross_replace=cross, self_replace=request.self_replace,
                     reweight=dict(request.reweight), blend=blend, layout_guidance=request.layout_guidance,
                     layout_guidance_until=request.layout_guidance_until, **model.attention_limits())


def embedding_config(request: EditRequest, default: EmbeddingConfig) -> EmbeddingConfig:
    """The method's default embedding optimisation with the user's --embed-* overrides."""
    pick = lambda value, fallback: fallback if value is None else value  # noqa: E731
    return EmbeddingConfig(steps=pick(request.embed_steps, default.steps), lr=pick(request.embed_lr, default.lr),
                           l2=pick(request.embed_lambda, default.l2))


def inversion_config(request: EditRequest, keep_trajectory: bool = False) -> InversionConfig:
    if request.inverts_by_extent:
        raise ValueError("--depth auto and --guidance auto are chosen per edit (editing/extent.py): replace them by "
                         "the values chosen first")
    return InversionConfig(method=request.inversion, steps=request.steps, guidance=request.guidance,
                           null_text=NullTextConfig(inner_steps=request.inner_steps), keep_trajectory=keep_trajectory,
                           depth=request.depth)


def default_invert(model, image, prompt: str, config: InversionConfig, disable: bool) -> Inversion:
    return invert(model, image[None], [prompt], config, disable=disable)[0]


@dataclass
class MethodOutput:
    """What a method hands back to the writer: images, the three stage timings, its own summary entries."""

    reconstruction: np.ndarray
    edits: list[np.ndarray]
    timings_s: dict
    sweeps: list[tuple[np.ndarray, str]] = field(default_factory=list)  # (grid image, caption) per target
    summary: dict = field(default_factory=dict)
    attention: object = None  # p2p's controller, for --attention-maps
    masks: list[np.ndarray] = field(default_factory=list)  # --mask auto's masks, one picture per target


def source_record(model, image, request: EditRequest, invert_source, disable: bool, keep_trajectory: bool = False) -> Inversion:
    """The photo's inversion with the source prompt: from --inversion-file, the caller's cache, or computed."""
    if request.inversion_file:
        record = Inversion.load(request.inversion_file)
        record.verify(image, request.source_prompt, model.inversion_fingerprint)
        return record
    record = invert_source(model, image, request.source_prompt, inversion_config(request, keep_trajectory), disable)
    if request.save_inversion:
        record.save(request.save_inversion)
    return record


def by_extent(request: EditRequest, masks: torch.Tensor) -> EditRequest:
    """The request with its "auto" depth, guidance, layout guidance and cross-attention window chosen by the
    extent of these masks (editing/extent.py): a local edit is inverted part of the way and guided gently, one
    of the whole picture fully and harder."""
    chooser = {"depth": lambda: depth_for(masks), "guidance": lambda: guidance_for(masks, request.inversion),
               "layout_guidance": lambda: layout_guidance_for(masks, request.inversion),
               "cross_replace": lambda: cross_replace_for(masks, request.inversion)}
    return request.replace(**{name: choose() for name, choose in chooser.items()
                              if getattr(request, name) == AUTO_GUIDANCE})  # "auto", the same word for each


def run_p2p(model, image, request: EditRequest, invert_source, disable) -> MethodOutput:
    # check the prompts and edit options (word counts, reweight/blend words, lengths) before the long inversion,
    # an edit by extent as a local one (a mask of nothing) would take them
    early = by_extent(request, torch.zeros(1, 1, 1)).replace(mask=request.mask_file)
    config = p2p_config(early, model, request.crop)
    PromptToPrompt(request.source_prompt, request.target_prompts, model.tokenizer, request.steps, config)
    t0 = time.perf_counter()
    masks, asked, record = None, request, None
    if request.inversion_file:  # a reused record: its own method chooses what follows (not --inversion)
        record = source_record(model, image, request, invert_source, disable)
        request = request.replace(inversion=record.method)
    if request.mask == AUTO_MASK or request.edits_by_extent:
        masks = disagreement_masks(model, image, request.source_prompt, list(request.target_prompts), request.seed)
    if request.edits_by_extent:
        request = by_extent(request, masks)
    if request.mask == AUTO_MASK or asked.edits_by_extent:
        config = p2p_config(request, model, request.crop, masks if request.mask == AUTO_MASK else None)
    if record is None:
        record = source_record(model, image, request, invert_source, disable)
    t1 = time.perf_counter()
    result = edit_p2p(model, record, request.target_prompts, config, store_self=request.attention_maps, disable=disable)
    t2 = time.perf_counter()
    summary = {"inversion": record.method, "steps": record.steps, "guidance": record.guidance,
               "edit": result.controller.mode}
    if record.depth != FULL_DEPTH:  # steps is then the steps run, of the schedule's params["steps"]
        summary["depth"] = record.depth
    if config.layout_guidance:
        summary["layout_guidance"] = config.layout_guidance
    if asked.cross_replace == AUTO_GUIDANCE:  # the window chosen (else the request's, in summary["request"])
        summary["cross_replace"] = request.cross_replace
    if result.controller.mode != config.edit:
        summary["note"] = f"--edit auto chose {result.controller.mode}"
    pictures = []
    if masks is not None:  # the share of the image each edit may change
        summary["auto_mask_share"] = [round(float(m.mean()), 4) for m in masks]
    if request.mask == AUTO_MASK:  # and the masks as --mask pictures
        pictures = [mask_picture(m, image.shape) for m in masks]
    return MethodOutput(result.reconstruction, result.edits, stage_times(t1 - t0, 0.0, t2 - t1), summary=summary,
                        attention=result.controller, masks=pictures)


def run_null_finetune(model, image, request: EditRequest, invert_source, disable) -> MethodOutput:
    k = DEFAULT_K if request.finetune_steps is None else request.finetune_steps
    k = min(k, request.steps)
    config = NullFinetuneConfig(steps=k, null_text=NullTextConfig(inner_steps=request.finetune_inner))
    strip = sweep_values(request.sweep_k, request.steps, "--sweep-k", int) if request.sweep else []
    t0 = time.perf_counter()
    record = source_record(model, image, request, invert_source, disable, keep_trajectory=True)
    preliminary = time.perf_counter() - t0
    edits, editing, generation, sweeps = [], 0.0, 0.0, []
    for target in request.target_prompts:
        result = edit_null_finetune(model, record, image, target, config, strip=strip, disable=disable)
        edits.append(result.edit)
        editing += result.timings_s["editing"]
        generation += result.timings_s["generation"]
        if strip:
            sweeps.append((image_grid(result.strip, [f"K={k}" for k in strip]), target))
    summary = {"inversion": record.method, "steps": record.steps, "guidance": record.guidance,
               "null_finetune": config.to_dict()}
    return MethodOutput(result.reconstruction, edits, stage_times(preliminary, editing, generation), sweeps,
                        summary)


def each_target(request: EditRequest, edit_one, sweep_of, captions: list[str], cols: int | None = None):
    """A method that works per target prompt, run for each: (the first target's reconstruction, every edit, the
    three stage times summed, one (sweep grid, target) per target when there are sweep captions)."""
    edits, times, sweeps, reconstruction = [], stage_times(0.0, 0.0, 0.0), [], None
    for target in request.target_prompts:
        result = edit_one(target)
        reconstruction = result.reconstruction if reconstruction is None else reconstruction
        edits.append(result.edit)
        times = {k: times[k] + result.timings_s[k] for k in times}
        if captions:
            sweeps.append((image_grid(sweep_of(result), captions, cols=cols), target))
    return reconstruction, edits, times, sweeps


def run_learned_embedding(model, image, request: EditRequest, invert_source, disable) -> MethodOutput:
    config = LearnedEmbeddingConfig(
        embedding=embedding_config(request, LE_EMBEDDING), eta=LE_ETA if request.eta is None else request.eta,
        interp_steps=min(LE_INTERP_STEPS, request.steps) if request.interp_steps is None else request.interp_steps)
    settings = []
    if request.sweep:
        etas = sweep_values(request.sweep_eta, 1.0, "--sweep-eta", float)
        ns = sweep_values(request.sweep_interp, request.steps, "--sweep-interp", int)
        settings = [(eta, n) for eta in etas for n in ns]
    captions = [f"eta={e:g} N={n}" for e, n in settings]
    reconstruction, edits, times, sweeps = each_target(
        request, lambda target: edit_learned_embedding(model, image, target, config, inversion_config(request),
                                                       generator=generator(model, request.seed), sweep=settings,
                                                       disable=disable),
        lambda result: result.sweep, captions, cols=len(ns) if settings else None)
    summary = {"inversion": request.inversion, "steps": request.steps, "guidance": request.guidance,
               "learned_embedding": config.to_dict(), "note": "reconstruction: e_opt of the first target alone"}
    return MethodOutput(reconstruction, edits, times, sweeps, summary)


def run_imagic(model, image, request: EditRequest, invert_source, disable) -> MethodOutput:
    config = ImagicConfig(embedding=embedding_config(request, IMAGIC_EMBEDDING),
                          unet=EmbeddingConfig(steps=IMAGIC_UNET.steps if request.unet_steps is None else request.unet_steps,
                                               lr=IMAGIC_UNET.lr if request.unet_lr is None else request.unet_lr, l2=0.0),
                          eta=IMAGIC_ETA if request.eta is None else request.eta,
                          gradient_checkpointing=request.gradient_checkpointing)
    etas = sweep_values(request.sweep_eta, 1.0, "--sweep-eta", float) if request.sweep else []
    reconstruction, edits, times, sweeps = each_target(
        request, lambda target: edit_imagic(model, image, target, config, steps=request.steps,
                                            guidance=request.guidance, generator=generator(model, request.seed),
                                            sweep=etas, disable=disable),
        lambda result: result.sweep, [f"eta={e:g}" for e in etas])
    summary = {"inversion": "none", "steps": request.steps, "guidance": request.guidance, "imagic": config.to_dict(),
               "note": "imagic samples from fresh noise; reconstruction: e_opt of the first target with the "
                       "fine-tuned UNet"}
    return MethodOutput(reconstruction, edits, times, sweeps, summary)


def run_finetune_embedding(model, image, request: EditRequest, invert_source, disable) -> MethodOutput:
    k = min(DEFAULT_FINETUNE_K if request.finetune_steps is None else request.finetune_steps, request.steps)
    config = FinetuneEmbeddingConfig(embedding=embedding_config(request, FINETUNE_EMBEDDING), steps=k,
                                     null_text=NullTextConfig(inner_steps=request.finetune_inner))
    strip = sweep_values(request.sweep_k, request.steps, "--sweep-k", int) if request.sweep else []
    reconstruction, edits, times, sweeps = each_target(
        request, lambda target: edit_finetune_embedding(model, image, target, config, inversion_config(request),
                                                        generator=generator(model, request.seed), strip=strip,
                                                        disable=disable),
        lambda result: result.strip, [f"K={k}" for k in strip])
    summary = {"inversion": request.inversion, "steps": request.steps, "guidance": request.guidance,
               "finetune_embedding": config.to_dict(), "note": "reconstruction: e_opt of the first target alone"}
    return MethodOutput(reconstruction, edits, times, sweeps, summary)


METHODS = {"p2p": run_p2p, "learned-embedding": run_learned_embedding, "null-finetune": run_null_finetune,
           "imagic": run_imagic, "finetune-embedding": run_finetune_embedding}


def stage_times(preliminary: float, editing: float, generation: float) -> dict:
    """The thesis' three stages (Table 4.1)."""
    return {"preliminary_training": preliminary, "editing": editing, "generation": generation}


def sweep_values(text, top, what: str, kind) -> list:
    """A sweep list; "auto" spreads six values over [0, top]."""
    if str(text) == "auto":
        return [kind(top * k / 5) for k in range(6)] if kind is float else [round(top * k / 5) for k in range(6)]
    values = parse_list(text, what, kind)
    if not values or any(not 0 <= v <= top for v in values):
        raise UserError(f"{what} values must lie in [0, {top}], got {text!r}")
    return values


# Request fields that name or report an edit but do not change its pixels.
NOT_IDENTITY = ("image", "quiet", "save_inversion", "inversion_file", "max_pixels")


def edit_identity(request: EditRequest) -> dict:
    """Every request option that changes the edit's pixels, JSON-ready (summary.json's "request")."""
    return {k: v for k, v in request.to_dict().items() if k not in NOT_IDENTITY}


def finished_summary(folder: Path) -> dict | None:
    """The folder's summary.json when its edit finished (every output it lists is there), else None."""
    if Path(folder).is_symlink():  # never read through a link planted in --out (the edit then refuses it)
        return None
    try:
        summary = json.loads((Path(folder) / "summary.json").read_text())
        outputs = [n for v in summary["outputs"].values() for n in (v if isinstance(v, list) else [v])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return summary if all((Path(folder) / str(n)).is_file() for n in outputs) else None


def same_edit(summary: dict, request: EditRequest, model) -> bool:
    """Whether a finished folder holds this edit: the same photo, model, precision and every request option
    that changes the pixels (method, inversion, P2P settings, blend words, method options, ...)."""
    if os.path.abspath(str(summary.get("image"))) != os.path.abspath(request.image):  # the same photo, however named
        return False
    if summary.get("model") != model.name or summary.get("dtype") != dtype_name(model.dtype):
        return False
    if summary.get("model_fingerprint") != model.fingerprint:  # the same name, other weights (a retrained default)
        return False
    return summary.get("request") == edit_identity(request)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bf16' (the --dtype spelling)."""
    return next(name for name, value in DTYPES.items() if value == dtype)


def generator(model, seed: int) -> torch.Generator:
    return torch.Generator(device=model.device).manual_seed(seed)


def edit(model, image: np.ndarray, request: EditRequest, invert_source=default_invert) -> MethodOutput:
    """Edit one preprocessed photo (uint8 (S, S, 3) at the model's resolution) with request.method.

    invert_source(model, image, prompt, InversionConfig, disable) -> Inversion lets a caller (the batch
    runner, the web page) supply cached inversions.
    """
    check_for_model(request, model)
    torch.manual_seed(request.seed)
    with unet_checkpointing(model.unet, request.gradient_checkpointing):
        return METHODS[request.method](model, image, request, invert_source, request.quiet)


def check_for_model(request: EditRequest, model) -> None:
    """The request's limits that depend on the model: DDIM cannot take more steps than it was trained with."""
    trained = int(model.scheduler.config.num_train_timesteps)
    if request.steps > trained:
        raise UserError(f"--steps must be at most {trained} (the model's scheduler was trained with {trained} "
                        f"timesteps), got {request.steps}")


def request_inputs(request: EditRequest) -> list[str | None]:
    """The files a request reads, which its outputs must never replace."""
    return [request.image, request.mask_file, request.inversion_file]


def edit_names(count: int, stem: str = "edit") -> list[str]:
    return [f"{stem}.png"] if count == 1 else [f"{stem}-{k + 1}.png" for k in range(count)]


def run_edit(model, image: np.ndarray, request: EditRequest, out: Path | OutputFolder,
             invert_source=default_invert) -> dict:
    """`edit`, then write the contract's files into out; returns the summary (also written as summary.json).

    out is a folder (checked here) or an OutputFolder a caller checked; the output names and --save-inversion
    are checked against the inputs before the edit starts, so a refused output costs no time."""
    start = time.perf_counter()
    if not isinstance(out, OutputFolder):
        out = OutputFolder.prepare(out)
    out = out.with_inputs(request_inputs(request))
    names = edit_names(len(request.target_prompts))
    masks = edit_names(len(request.target_prompts), "mask") if request.mask == AUTO_MASK else []
    for name in ("source.png", "reconstruction.png", *names, *masks, "grid.png", "summary.json"):
        out.path(name)
    if request.save_inversion:
        refuse_input(request.save_inversion, out.inputs, "--save-inversion")
    result = edit(model, image, request, invert_source)
    names = edit_names(len(result.edits))
    save_image(out.path("source.png"), image)
    save_image(out.path("reconstruction.png"), result.reconstruction)
    for name, edited in zip(names, result.edits):
        save_image(out.path(name), edited)
    captions = ["source", "reconstruction", *request.target_prompts]
    save_image(out.path("grid.png"), image_grid([image, result.reconstruction, *result.edits], captions))
    outputs = {"edit": names, "reconstruction": "reconstruction.png", "grid": "grid.png",
               "source": "source.png"}
    if result.sweeps:
        sweeps = edit_names(len(result.sweeps), "sweep")
        for name, (grid, _) in zip(sweeps, result.sweeps):
            save_image(out.path(name), grid)
        outputs["sweep"] = sweeps
    if result.masks:
        masks = edit_names(len(result.masks), "mask")
        for name, picture in zip(masks, result.masks):
            save_image(out.path(name), picture)
        outputs["mask"] = masks
    if request.attention_maps and result.attention is not None:
        outputs.update(write_attention_maps(out, result.attention, request.source_prompt, model, image))
    timings = {k: round(v, 3) for k, v in result.timings_s.items()}
    timings["total"] = round(time.perf_counter() - start, 3)
    summary = {
        "method": request.method, "model": model.name, "model_fingerprint": model.fingerprint,
        "image": str(request.image), "model_notes": dict(model.notes),  # how the model was loaded: e.g. which prediction type, and why
        "source_prompt": request.source_prompt, "target_prompts": list(request.target_prompts), "seed": request.seed,
        **result.summary, "device": str(model.device), "dtype": dtype_name(model.dtype), "speed": speed_summary(model),
        "timings_s": timings,
        "peak_memory_mb": round(peak_memory_mb(model.device), 1),
        "reconstruction_psnr_db": round(psnr(result.reconstruction, image), 3), "outputs": outputs,
        "request": edit_identity(request),
    }
    write_json(out.path("summary.json"), summary)
    return summary


def write_attention_maps(out: OutputFolder, controller, prompt: str, model, image) -> dict:
    images, captions = cross_attention_heatmaps(controller, 0, prompt, model.tokenizer, image)
    save_image(out.path("attention.png"), image_grid(images, captions))
    images, captions = self_attention_components(controller, 0, image)
    save_image(out.path("self-attention.png"), image_grid(images, captions))
    return {"attention": "attention.png", "self_attention": "self-attention.png"}
