"""How fast null-text inversion runs, and how well it reconstructs compared with plain DDIM.

Inverts a few real photos (scikit-image's chelsea, astronaut, coffee, rocket, cycled) with null-text
inversion after a small warm-up run, and prints: the NTI wall time (DDIM inversion + null optimisation,
warm-up excluded, CUDA synchronised), the number of UNet calls and the time per call, the time of one plain
UNet forward call, the reconstruction PSNR against the VAE round trip of each photo for NTI and for DDIM
inversion (both sampled with the same guidance), and the peak memory (CUDA: torch.cuda.max_memory_allocated
over the timed run; CPU: the process's peak resident set size, model loading included).

Example:
    python -m benchmarks.nti_speed --steps 10 --inner 5
    python -m benchmarks.nti_speed --model path/to/sd15-diffusers --device cuda --dtype fp16 --images 4

Exit codes: 0 done, 2 bad input or usage (one `error: ...` line), 1 a failure inside the run.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
import torch

from editing.core.errors import UserError
from editing.core.image_io import prepare_image
from editing.core.loading import load_model
from editing.core.metrics import peak_memory_mb, psnr, reset_peak_memory
from editing.core.model import Model
from inversion.invert import InversionConfig, invert, reconstruct
from inversion.null_text import NullTextConfig

SD15_RANDOM = "sd15-random"  # the real SD 1.5 architecture, random weights
# (scikit-image loader, a source prompt that describes the photo)
PHOTOS = (("chelsea", "a photo of a cat"), ("astronaut", "an astronaut in a white suit"),
          ("coffee", "a cup of coffee on a saucer"), ("rocket", "a rocket on a launch pad"))
WARMUP_STEPS = 2  # the warm-up inversion: every code path (forward, backward, Adam, sampling) once
FORWARD_REPEATS = 5  # plain UNet forward calls averaged for the per-call figure


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nti_speed", description=__doc__.split("\n\n")[0],
        epilog="example: python -m benchmarks.nti_speed --steps 10 --inner 5",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default",
                        help="model spec for load_model: default, tiny-random, a diffusers folder, a .safetensors "
                             f"file, a cached hub id, or {SD15_RANDOM} / sd21-random (the SD architectures "
                             "with random weights: timings only)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, the reference's)")
    parser.add_argument("--inner", type=int, default=10, help="null-text Adam steps per DDIM step at most (default 10)")
    parser.add_argument("--images", type=int, default=1, help="photos inverted together as one batch (default 1)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--dtype", default="fp32", help="UNet precision: fp32, fp16 or bf16 (default fp32)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own choice)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    return parser.parse_args(argv)


def check_args(args) -> None:
    for name in ("steps", "inner", "images"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")


def counting(model):
    """The model as a subclass that counts UNet calls (the library's Model is not changed)."""
    @dataclasses.dataclass
    class CountingModel(Model):
        unet_calls: int = 0

        def unet_output(self, x, t, cond, attention_kwargs=None):
            self.unet_calls += 1
            return super().unet_output(x, t, cond, attention_kwargs)

    return CountingModel(**{f.name: getattr(model, f.name) for f in dataclasses.fields(Model)})


def photos(count: int, size: int) -> tuple[np.ndarray, list[str]]:
    import skimage.data

    chosen = [PHOTOS[i % len(PHOTOS)] for i in range(count)]
    images = np.stack([prepare_image(getattr(skimage.data, name)(), size) for name, _ in chosen])
    return images, [prompt for _, prompt in chosen]


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{peak_memory_mb(device):.0f} MiB CUDA (max_memory_allocated, timed run)"
    return f"{peak_memory_mb(device):.0f} MiB RSS (whole process, model loading included)"


def run(args) -> int:
    check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = counting(load_model(args.model, device=args.device, dtype=args.dtype))
    device = model.device
    images, prompts = photos(args.images, model.resolution)
    config = InversionConfig(method="null-text", steps=args.steps, guidance=args.guidance,
                             null_text=NullTextConfig(inner_steps=args.inner))
    print(f"model: {model.name} (fingerprint {model.fingerprint}), {model.resolution} px, {model.prediction_type}; "
          f"device {device}, UNet {str(model.dtype).removeprefix('torch.')}, torch threads {torch.get_num_threads()}")
    print(f"settings: {args.images} image(s) in one batch, {args.steps} DDIM steps, at most {args.inner} inner steps, "
          f"guidance {args.guidance}")

    # warm-up: lazy initialisation, kernel selection and allocator growth stay out of the timing
    invert(model, images[:1], prompts[:1], dataclasses.replace(
        config, steps=min(WARMUP_STEPS, args.steps), null_text=NullTextConfig(inner_steps=1)), disable=True)
    synchronise(device)

    if device.type == "cuda":  # the CPU figure stays the whole process' (its model loading included)
        reset_peak_memory(device)
    model.unet_calls = 0
    start = time.perf_counter()
    records = invert(model, images, prompts, config, disable=True)
    synchronise(device)
    wall = time.perf_counter() - start
    calls = model.unet_calls
    memory = peak_memory(device)

    with torch.no_grad():  # one plain forward call at the batch size of the inversion's calls
        latents = torch.randn(len(images), 4, model.resolution // model.vae_scale_factor,
                              model.resolution // model.vae_scale_factor, device=device)
        cond = model.encode_prompts(prompts)
        t = 501  # a mid-schedule level (the cost does not depend on it)
        model.unet_output(latents, t, cond)
        synchronise(device)
        start = time.perf_counter()
        for _ in range(FORWARD_REPEATS):
            model.unet_output(latents, t, cond)
        synchronise(device)
        forward = (time.perf_counter() - start) / FORWARD_REPEATS

    vae_round_trip = model.decode_latents(model.encode_images(images))
    nti_psnr = [psnr(a, b) for a, b in zip(reconstruct(model, records, disable=True), vae_round_trip)]
    ddim_records = invert(model, images, prompts, dataclasses.replace(config, method="ddim"), disable=True)
    ddim_psnr = [psnr(a, b) for a, b in zip(reconstruct(model, ddim_records, disable=True), vae_round_trip)]

    print(f"NTI wall time: {wall:.2f} s for {args.images} image(s) ({wall / args.images:.2f} s per image; "
          f"warm-up excluded)")
    print(f"UNet calls: {calls}, {1000 * wall / calls:.1f} ms per call (the inner calls include the backward "
          f"pass); one forward call alone (batch {len(images)}): {1000 * forward:.1f} ms")
    print(f"reconstruction PSNR vs the VAE round trip: NTI {np.mean(nti_psnr):.2f} dB, "
          f"DDIM {np.mean(ddim_psnr):.2f} dB (guidance {args.guidance}, mean over images)")
    print(f"peak memory: {memory}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001  a failure inside the run: exit 1, traceback on --debug
        if args.debug:
            raise
        print(f"error: {type(error).__name__}: {error} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
