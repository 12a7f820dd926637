"""Source inversions shared by the edits of a run: each photo inverted once, several photos per inversion call.

An `InversionCache` is an `invert_source` for `editing.methods.run_edit` (and `edit`). `prefetch` inverts the
photos of the coming edits together (one batched call per inversion config: on a GPU one call for 4 photos
keeps the UNet busy); an edit then takes its photo's record, or inverts the photo alone if it is missing.
Records are keyed by their fingerprint (photo, prompt, model, inversion method and settings) and keep the DDIM
trajectory, so one record serves p2p and null-finetune alike.

Two homes for the records:
- a folder (editing.batch): one safetensors file per fingerprint, for every edit of the photo and every later
  run into that folder; a damaged or foreign file is inverted again and replaced;
- memory (the quality benchmarks): each record is handed out once and then forgotten, so a run over a
  thousand photos holds only the inversions of the photos ahead of it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from editing.core.errors import UserError
from editing.core.outputs import OutputFolder
from editing.methods import inversion_config
from editing.request import EditRequest
from inversion.invert import InversionConfig, invert
from inversion.record import Inversion, combine, fingerprint_parts



def inversion_key(model, image: np.ndarray, prompt: str, config: InversionConfig) -> str:
    """The fingerprint the record of this photo, prompt, model and inversion will carry (`Inversion.fingerprint`)."""
    return combine(fingerprint_parts(image, prompt, model.inversion_fingerprint, config.method, config.params()))

class InversionCache:
    """Inversions by fingerprint, on disk in `folder` (kept, with trajectories) or, without one, in memory
    (each record handed out once)."""

    def __init__(self, folder: OutputFolder | Path | None = None):
        # an OutputFolder (the batch's --out or --cache) names its files safely: no link followed, no input replaced
        self.folder = folder if folder is None or isinstance(folder, OutputFolder) else Path(folder)
        self.held: dict[str, Inversion] = {}  # the in-memory records not handed out yet
        # fingerprint -> seconds spent inverting it in this run, until the first edit that uses it claims it
        self.computed: dict[str, float] = {}

    @staticmethod
    def key(model, image: np.ndarray, prompt: str, config: InversionConfig) -> str:
        return inversion_key(model, image, prompt, config)

    def path(self, key: str) -> Path:
        if self.folder is None:
            raise ValueError("an in-memory inversion cache has no files")
        name = f"{key}.safetensors"
        return self.folder.path(name) if isinstance(self.folder, OutputFolder) else self.folder / name

    def has(self, key: str) -> bool:
        return key in self.held if self.folder is None else self.path(key).is_file()

    def fill(self, model, images: Sequence[np.ndarray], prompts: Sequence[str], config: InversionConfig,
             disable: bool) -> None:
        """Invert several photos in one call (one config for all, early stop per photo) and keep them."""
        # a kept record serves every method: with the DDIM trajectory that null-finetune needs
        records = invert(model, np.stack(images), list(prompts), replace(config, keep_trajectory=True),
                         disable=disable)
        for record in records:
            if self.folder is None:
                self.held[record.fingerprint] = record
            else:
                record.save(self.path(record.fingerprint))
            self.computed[record.fingerprint] = record.timings_s["inversion"]

    def prefetch(self, model, edits: Sequence[tuple[np.ndarray, EditRequest]], disable: bool) -> None:
        """Invert, batched, the photos of these edits whose source inversion is not kept yet (one call per
        inversion config). A failed call is passed over: each photo is inverted alone when it is edited, so only
        the culprit fails."""
        groups: dict[InversionConfig, dict[str, tuple[np.ndarray, str]]] = {}
        for image, request in edits:
            # --depth/--guidance auto are chosen when the edit runs (its mask): that photo is inverted then, alone
            if request.uses_source and not request.inversion_file and not request.inverts_by_extent:
                config = inversion_config(request)
                key = self.key(model, image, request.source_prompt, config)
                if not self.has(key):
                    groups.setdefault(config, {})[key] = (image, request.source_prompt)
        for config, todo in groups.items():
            images, prompts = zip(*todo.values())
            try:
                self.fill(model, images, prompts, config, disable)
            except Exception:  # noqa: BLE001  (see the docstring)
                continue

    def take(self, model, image: np.ndarray, prompt: str, config: InversionConfig) -> Inversion | None:
        """The kept record of this photo and config (an in-memory one is forgotten), or None."""
        key = self.key(model, image, prompt, config)
        if self.folder is None:
            record = self.held.pop(key, None)
        elif not self.path(key).is_file():
            return None
        else:
            try:
                record = Inversion.load(self.path(key))
                record.verify(image, prompt, model.inversion_fingerprint)
            except UserError:  # damaged or made for something else: invert again, replacing it
                return None
        if record is None or record.fingerprint != key:
            return None
        return None if record.trajectory is None else record

    def __call__(self, model, image: np.ndarray, prompt: str, config: InversionConfig, disable: bool) -> Inversion:
        record = self.take(model, image, prompt, config)
        if record is None:
            self.fill(model, [image], [prompt], config, disable)
            record = self.take(model, image, prompt, config)
        return record  # on disk: always the stored record, so a resumed batch edits exactly as an uninterrupted one
