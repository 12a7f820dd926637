"""A training run's checkpoint as a model folder, to measure a long run mid-way.

    python -m toyworld.export runs/tw32/model.checkpoint runs/tw32-step2000

`python -m toyworld.train --checkpoint-every N` keeps the UNet stage's state in `OUT.checkpoint/`; this writes
the EMA weights of that state (what the run would save if it ended at the step reached) with the checkpoint's
VAE and scaling factor as a diffusers folder, in the format the trainer saves. `benchmarks.quality --model`
and `toyworld.score` then measure it like any saved model. Its `training.json` names the checkpoint, the step
and the run's recipe; it holds no held-out scores (`toyworld.score` gives them). The checkpoint is only read:
the run goes on from it when its command is given again.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from editing.core.offline import quiet_libraries
from toyworld.local_words import localise_words
from toyworld.train import (Config, descent_fields, replace_folder, save_pipeline, starting_networks,
                            trained_parameters)


def recipe_config(recipe: dict) -> Config:
    """The run's Config from a checkpoint's recipe (training.json's `config`, lists for tuples)."""
    known = Config.__dataclass_fields__
    unknown = sorted(set(recipe) - set(known))
    if unknown:
        raise ValueError(f"the checkpoint's recipe has settings this trainer does not know: {', '.join(unknown)}")
    return Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()})


def export_checkpoint(checkpoint: Path, out: Path) -> dict:
    """Write checkpoint's EMA model to out (atomically; an older out is replaced); -> the training.json written."""
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    from editing.core.model import TOKENIZER_DIR

    state_file = Path(checkpoint) / "state.json"
    if not state_file.is_file():
        raise ValueError(f"{checkpoint} is not a training checkpoint (no state.json): give the OUT.checkpoint "
                         "folder of a toyworld.train run started with --checkpoint-every")
    state = json.loads(state_file.read_text())
    cfg = recipe_config(state["recipe"])
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    # the run's architecture, its parent's when it was continued (the weights are replaced below)
    vae, text_encoder, unet, parent = starting_networks(cfg, tokenizer)
    if cfg.local_words:
        localise_words(text_encoder)
    files = Path(checkpoint) / state["files"]
    for name, module in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
        module.load_state_dict(load_file(str(files / f"{name}.safetensors")))
    vae.register_to_config(scaling_factor=state["scaling_factor"])
    params = trained_parameters(unet, text_encoder)  # the EMA's shadow weights are numbered in this order
    shadow = load_file(str(files / "ema.safetensors"))
    if len(shadow) != len(params):
        raise ValueError(f"the checkpoint's EMA holds {len(shadow)} tensors for {len(params)} trained parameters")
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(shadow[str(i)])
    out = Path(out).resolve()
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    size_mb = save_pipeline(tmp, vae, text_encoder, unet, tokenizer)
    command = state.get("command")  # None in checkpoints written before commands were kept
    done = f"{command}  # stopped at UNet step {state['step']} of {cfg.unet_steps}, exported" if command else None
    record = {"exported_from": str(Path(checkpoint).resolve()), "checkpoint_step": state["step"],
              "command": command,
              # every command from scratch to this model, in order, as the trainer's own training.json has it
              **descent_fields(parent, done, cfg.vae_steps, state["step"]),
              "steps": {"vae": cfg.vae_steps, "unet": state["step"]},
              "lineage": parent, "config": cfg.to_json(),
              "folder_mb": round(size_mb, 2), "weights_dtype_on_disk": "float16"}
    (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    replace_folder(tmp, out)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toyworld.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a run's OUT.checkpoint folder")
    p.add_argument("out", help="the model folder to write (an older one is replaced)")
    args = p.parse_args(argv)
    try:
        with quiet_libraries():  # no library warnings on stderr: our line, or one error: line
            record = export_checkpoint(Path(args.checkpoint), Path(args.out))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported step {record['checkpoint_step']} of {args.checkpoint} to {args.out} "
          f"({record['folder_mb']:.1f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
