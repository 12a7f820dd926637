"""Checkpoints of toyworld.train's UNet stage: a killed run continues where it stopped, bit for bit.

A long training run on a CPU takes hours, longer than a working session; without checkpoints a crash or a
closed terminal loses all of it. Every `every` UNet steps the whole state of the stage is written to
`OUT.checkpoint/` (next to the output folder): the VAE (frozen in this stage, so a from-scratch run does not
train it again), UNet and text-encoder weights in fp32, the EMA's shadow weights, AdamW's moments, the
learning-rate schedule's position, the sample generator's state and the step reached. Tensors go in
safetensors files under `step-NNNNNN/`, everything else in state.json (no pickle), which names that folder and
is replaced atomically once the folder is complete: whenever the process dies, state.json names a whole
checkpoint. Running the same command again loads it and continues from that step; the weights at the end are
then the same bits as those of an uninterrupted run with the same thread count and device
(`tests/test_toyworld.py` checks it). The folder is removed when the model is saved. A checkpoint written by
another recipe is refused, never silently mixed in; the thread count and the device are how a run computes, not
what it learns, so a run may go on with more threads or on a GPU (its weights then differ from an
uninterrupted run's by rounding only).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DEFAULT_EVERY = 250  # UNet steps between checkpoints: ~8 min on 2 CPU threads; a save takes ~1 s
FORMAT = 1
# recipe fields a continuation may change: they decide how fast the steps run, not which steps are taken (every
# sample is drawn from a CPU generator, so the same batches come on any device)
HOW_NOT_WHAT = ("threads", "device", "mixed_precision")


class UNetCheckpoint:
    """The UNet stage's state under `folder`, saved every `every` steps; `recipe` is what it must match;
    `command` (the run's command line) is kept with it, so a model exported from it names how it was made."""

    def __init__(self, folder: Path, recipe: dict, every: int = DEFAULT_EVERY, command: str | None = None):
        if every < 1:
            raise ValueError(f"checkpoints every {every} steps: give 1 or more")
        self.folder, self.recipe, self.every, self.command = Path(folder), recipe, every, command

    def exists(self) -> bool:
        return (self.folder / "state.json").is_file()

    def state(self) -> dict:
        """state.json, checked against this run's recipe."""
        state = json.loads((self.folder / "state.json").read_text())
        differ = [(k, was, now) for k, (was, now) in self._differences(state).items() if k not in HOW_NOT_WHAT]
        if state.get("format") != FORMAT or differ:
            shown = "; ".join(f"{k} {was!r} there, {now!r} here" for k, was, now in differ[:4])
            raise ValueError(f"{self.folder} holds a checkpoint of another training recipe"
                             f"{f' ({shown})' if shown else ''}: continue it with the command that wrote it, "
                             "or remove the folder to start afresh")
        return state

    def changed_settings(self) -> dict:
        """{field: (checkpoint's, this run's)} for the HOW_NOT_WHAT fields this continuation changes."""
        return {k: v for k, v in self._differences(self.state()).items() if k in HOW_NOT_WHAT}

    def _differences(self, state: dict) -> dict:
        """{field: (checkpoint's, this run's)} for every recipe field the two disagree on, in name order."""
        saved = state.get("recipe") or {}
        return {k: (saved.get(k), self.recipe.get(k)) for k in sorted(set(saved) | set(self.recipe))
                if saved.get(k) != self.recipe.get(k)}

    def due(self, step: int, total: int) -> bool:
        """Save after `step` steps? (not after the last one: the model itself is saved then)"""
        return step % self.every == 0 and step < total

    def files(self, state: dict) -> Path:
        """The folder of the tensors `state` (state.json, as read) names."""
        return self.folder / state["files"]

    def save(self, step: int, vae, networks: dict, optimiser, schedule, ema, generator, extra: dict) -> None:
        files = f"step-{step:06d}"
        tmp = self.folder / files
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().float().contiguous().cpu() for k, v in vae.state_dict().items()},
                  str(tmp / "vae.safetensors"))
        for part, module in networks.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
                      str(tmp / f"{part}.safetensors"))
        ema_state = ema.state_dict()
        save_file({f"{i}": p.detach().contiguous().cpu() for i, p in enumerate(ema_state.pop("shadow_params"))},
                  str(tmp / "ema.safetensors"))
        opt_state = optimiser.state_dict()
        tensors, scalars = {}, {}
        for index, slots in opt_state["state"].items():
            for slot, value in slots.items():
                if torch.is_tensor(value):
                    tensors[f"{index}.{slot}"] = value.detach().contiguous().cpu()
                else:
                    scalars[f"{index}.{slot}"] = value
        save_file(tensors, str(tmp / "optimiser.safetensors"))
        save_file({"state": generator.get_state()}, str(tmp / "generator.safetensors"))
        state = {"format": FORMAT, "recipe": self.recipe, "command": self.command, "step": step, "files": files,
                 "ema": ema_state,
                 "optimiser": {"param_groups": [{k: v for k, v in g.items()} for g in opt_state["param_groups"]],
                               "scalars": scalars},
                 "schedule": {k: v for k, v in schedule.state_dict().items() if k != "lr_lambdas"},
                 "scaling_factor": float(vae.config.scaling_factor), **extra}
        partial = self.folder / f"state.json.tmp-{os.getpid()}"
        partial.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(partial, self.folder / "state.json")  # from here on this checkpoint is the one a restart finds
        for older in self.folder.glob("step-*"):
            if older.name != files:
                shutil.rmtree(older)

    def load_vae(self, vae) -> float:
        """The VAE weights the checkpoint was written with; returns its scaling factor."""
        state = self.state()
        vae.load_state_dict(load_file(str(self.files(state) / "vae.safetensors")))
        return float(state["scaling_factor"])

    def restore(self, networks: dict, optimiser, schedule, ema, generator) -> dict:
        """Load everything back into the live objects (the same parameters the optimiser holds); returns
        state.json (its "step" is where to go on)."""
        state = self.state()
        files = self.files(state)
        for name, module in networks.items():
            module.load_state_dict(load_file(str(files / f"{name}.safetensors")))
        shadow = load_file(str(files / "ema.safetensors"))
        device = next(iter(networks.values())).device
        ema.load_state_dict({**state["ema"], "shadow_params": [shadow[f"{i}"].to(device) for i in range(len(shadow))]})
        tensors = load_file(str(files / "optimiser.safetensors"))
        slots: dict[int, dict] = {}
        for key, value in list(tensors.items()) + list(state["optimiser"]["scalars"].items()):
            index, slot = key.split(".", 1)
            slots.setdefault(int(index), {})[slot] = value.to(device) if torch.is_tensor(value) and slot != "step" \
                else value
        optimiser.load_state_dict({"state": slots, "param_groups": state["optimiser"]["param_groups"]})
        schedule.load_state_dict({**schedule.state_dict(), **state["schedule"]})
        generator.set_state(load_file(str(files / "generator.safetensors"))["state"])
        return state

    def remove(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)
