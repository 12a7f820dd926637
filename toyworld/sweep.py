"""Train one or more recipes on a GPU inside a fixed time, each to the UNet steps that fit.

    python -m toyworld.sweep --out /tmp/sweep --seconds 480 --device cuda \\
        --run a="--seed 5 --latent-size 32 --unet-batch 256" --run b="--seed 5 --latent-size 32 --unet-batch 512"

A lent GPU comes for minutes, and how fast a step of these small networks runs there is not known until it
runs. So the sweep first measures it, with every run's own settings and all of them at once (they share the
GPU as they will): each run renders a few scenes and takes a few VAE and UNet training steps through
`toyworld.train`'s own functions. From those rates it gives each run the UNet steps that end inside
`--seconds` (rendering, the VAE, saving and scoring counted), then starts them all as ordinary
`python -m toyworld.train ... --unet-steps N` commands, so each model's training.json holds the command that
reproduces it. A run still going at the deadline is stopped and its last checkpoint exported
(`toyworld.export`), so the time ends with a model either way. `--pack DIR` writes each model, without its
tokenizer (the project's own, in every model), as one DIR/NAME.tar to carry back.

Several runs share the GPU by taking turns, and with these small networks each then takes far fewer steps: on
an H200 three runs side by side took 2.6-4.6 times as long a step as one run alone, 0.87 times one run's
steps in all (toyworld/TRAINING.md, "On a lent GPU"). Where steps matter more than samples, give one run for
the most steps; several only to compare recipes under equal conditions.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

PROBE_VAE_STEPS = 20  # timed VAE steps (after 3 untimed: kernels chosen, memory allocated)
PROBE_UNET_STEPS = 30  # timed UNet steps (after 5 untimed)
PROBE_SCENES = 600  # rendered to time the renderer (and to give the probe real captions)
# what a run spends outside its timed stages: imports and model builds, the held-out renders, encoding the
# training set, saving the pipeline twice-checked and scoring 100 captions (DDIM 50 with guidance)
FIXED_SECONDS = 60.0
SAFETY = 0.85  # share of the measured budget given to UNet steps: rates drift when runs overlap other stages
CHECKPOINT_EVERY = 200  # UNet steps between checkpoints: what a run stopped at the deadline keeps


def fitted_steps(budget_s: float, n_train: int, vae_steps: int, rates: dict, round_to: int = 100,
                 safety: float = SAFETY) -> int:
    """UNet steps that fit in budget_s after rendering, the VAE and the fixed costs, at the measured rates
    (seconds per scene, per VAE step, per UNet step); 0 when nothing fits."""
    left = budget_s - FIXED_SECONDS - n_train * rates["render_s"] - vae_steps * rates["vae_step_s"]
    steps = int(safety * max(left, 0.0) / rates["unet_step_s"])
    return steps // round_to * round_to


def probe(train_args: list[str]) -> dict:
    """Rates of this run's stages on its device: seconds per rendered scene, VAE step and UNet step; with the
    latent size and UNet channels they were timed at (a continuation's are its --init-from parent's)."""
    import numpy as np
    import torch
    from transformers import CLIPTokenizer

    from editing.core.model import TOKENIZER_DIR, ddim_scheduler
    from toyworld.train import (EMPTY_PROMPT, configure_torch, parse_args, render_set, starting_networks, tokenize,
                                train_unet, train_vae, vae_factor)

    _, cfg = parse_args(train_args + ["--out", "/nonexistent/probe"])
    configure_torch(cfg)
    t = time.perf_counter()
    data = render_set(cfg.seed, PROBE_SCENES, cfg.two_shapes_prob, "", True, cfg.turned_prob)
    render_s = (time.perf_counter() - t) / PROBE_SCENES
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    # a continuation's networks are its parent's (--init-from), whatever the recipe's own architecture says
    vae, text_encoder, unet, _ = starting_networks(cfg, tokenizer)
    vae, text_encoder, unet = (m.to(cfg.device) for m in (vae, text_encoder, unet))
    rng = np.random.default_rng(0)

    def timed(run, steps: int) -> float:
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(steps)
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps

    def vae_run(steps: int) -> None:
        cfg.vae_steps = steps
        train_vae(vae, data, cfg, rng, True)

    side = 64 // vae_factor(cfg)
    latents = torch.randn(2048, 4, side, side).to(cfg.device)
    ids = tokenize(tokenizer, [data.captions[i % len(data.captions)] for i in range(2048)])
    empty = tokenize(tokenizer, [EMPTY_PROMPT])[0]
    gen = torch.Generator().manual_seed(0)

    def unet_run(steps: int) -> None:
        cfg.unet_steps = steps
        train_unet(unet, text_encoder, latents, ids, empty, ddim_scheduler(), cfg, gen, True)

    timed(vae_run, 3)
    vae_s = timed(vae_run, PROBE_VAE_STEPS)
    timed(unet_run, 5)
    unet_s = timed(unet_run, PROBE_UNET_STEPS)
    return {"render_s": render_s, "vae_step_s": vae_s, "unet_step_s": unet_s,  # and what was timed:
            "latent_size": side, "unet_channels": list(unet.config.block_out_channels)}


def run_args(spec: str) -> tuple[str, list[str]]:
    name, sep, args = spec.partition("=")
    if not sep or not name.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"--run {spec!r}: write NAME=\"TRAIN ARGS\" (NAME in letters, digits, - _)")
    return name, shlex.split(args)


def share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: give a share of the time, above 0 and at most 1")
    return value


def option(args: list[str], name: str, default: int) -> int:
    return int(args[args.index(name) + 1]) if name in args else default


def export_latest(folder: Path, log) -> bool:
    """A stopped run's last checkpoint as its model folder; False when it left none."""
    checkpoint = folder / "model.checkpoint"
    if not (checkpoint / "state.json").is_file():
        return False
    done = subprocess.run([sys.executable, "-m", "toyworld.export", str(checkpoint), str(folder / "model")],
                          stdout=log, stderr=subprocess.STDOUT)
    return done.returncode == 0


def pack(model: Path, tar_path: Path) -> None:
    """model (without tokenizer/) -> tar_path, written whole or not at all."""
    tmp = tar_path.with_name(tar_path.name + ".part")
    with tarfile.open(tmp, "w") as tar:
        for f in sorted(model.rglob("*")):
            if f.is_file() and "tokenizer" not in f.relative_to(model).parts:
                tar.add(f, arcname=str(Path(model.name) / f.relative_to(model)))
    os.replace(tmp, tar_path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toyworld.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", required=True, help="folder for the runs: OUT/NAME/model, OUT/NAME/train.log")
    p.add_argument("--run", action="append", type=run_args, default=[], metavar='NAME="ARGS"',
                   help="a toyworld.train run (its options, without --out, --unet-steps, --device)")
    p.add_argument("--seconds", type=float, default=None, help="wall time from now until every model is saved")
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=4, help="CPU threads per run")
    p.add_argument("--safety", type=share, default=SAFETY, metavar="SHARE",
                   help="share of the time left after the fixed costs given to UNet steps (default %(default)s; "
                        "one run alone drifts less than several side by side)")
    p.add_argument("--pack", default=None, metavar="DIR", help="write DIR/NAME.tar per model (no tokenizer)")
    # internal: one run's rates as a JSON line, its toyworld.train options given as a JSON list
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.probe is not None:
        print(json.dumps(probe(json.loads(a.probe))), flush=True)
        return 0
    if not a.run or a.seconds is None:
        p.error("give at least one --run and --seconds")
    t0 = time.monotonic()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = ["--device", a.device, "--threads", str(a.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONUNBUFFERED": "1"}
    record = {"seconds": a.seconds, "device": a.device, "safety": a.safety, "runs": {}}

    # 1. rates, all runs measured at once
    probes = {name: subprocess.Popen([sys.executable, "-m", "toyworld.sweep", "--out", str(out),
                                      "--probe", json.dumps(args + common)], stdout=subprocess.PIPE, env=env, text=True)
              for name, args in a.run}
    for name, args in a.run:
        stdout, _ = probes[name].communicate()
        if probes[name].returncode != 0:
            print(f"error: the probe of run {name} failed (its traceback is above)", file=sys.stderr)
            return 2
        rates = json.loads(stdout.strip().splitlines()[-1])
        record["runs"][name] = {"rates": rates}
    probe_s = time.monotonic() - t0
    print(f"probes took {probe_s:.0f} s", flush=True)

    # 2. steps that fit (all decided before any starts), and the runs
    budget = a.seconds - (time.monotonic() - t0)
    for name, args in a.run:
        rates = record["runs"][name]["rates"]
        steps = fitted_steps(budget, option(args, "--n-train", 30_000), option(args, "--vae-steps", 1500), rates,
                             safety=a.safety)
        if steps == 0:
            print(f"error: run {name}: no UNet steps fit in the {budget:.0f} s left at {rates}", file=sys.stderr)
            return 2
        record["runs"][name]["steps"] = steps
    procs = {}
    for name, args in a.run:
        entry = record["runs"][name]
        rates = entry["rates"]
        folder = out / name
        folder.mkdir(exist_ok=True)
        command = ["--out", str(folder / "model"), *args, "--unet-steps", str(entry["steps"]), *common,
                   "--checkpoint-every", str(CHECKPOINT_EVERY), "--quiet"]
        entry["command"] = "python -m toyworld.train " + shlex.join(command)
        print(f"{name}: {entry['steps']} UNet steps ({rates['unet_step_s'] * 1000:.0f} ms each at "
              f"{rates['latent_size']} x {rates['latent_size']} latents, VAE step "
              f"{rates['vae_step_s'] * 1000:.0f} ms, render {rates['render_s'] * 1000:.1f} ms/scene)", flush=True)
        log = open(folder / "train.log", "w")
        procs[name] = (subprocess.Popen([sys.executable, "-m", "toyworld.train", *command], stdout=log,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True), log)

    # 3. wait; at the deadline, stop what still runs and keep its last checkpoint
    while any(proc.poll() is None for proc, _ in procs.values()) and time.monotonic() - t0 < a.seconds:
        time.sleep(2)
    for name, (proc, log) in procs.items():
        entry = record["runs"][name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            entry["outcome"] = "stopped at the deadline; " + (
                "its last checkpoint exported" if export_latest(out / name, log) else "no checkpoint to export")
        else:
            entry["outcome"] = f"finished (exit {proc.returncode})"
        log.close()
        entry["wall_s"] = round(time.monotonic() - t0, 1)
        print(f"{name}: {entry['outcome']}", flush=True)
        if a.pack and (out / name / "model" / "unet").is_dir():
            Path(a.pack).mkdir(parents=True, exist_ok=True)
            pack(out / name / "model", Path(a.pack) / f"{name}.tar")
    (out / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
