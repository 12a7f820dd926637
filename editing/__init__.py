"""Editing real photos with text-to-image diffusion models.

The public API (names resolve on first use, so `import editing.core` stays light):

    import editing
    model = editing.load_model()                      # the embedded default, a folder, a file, a cached hub id
    photo = editing.load_image("examples/toy-red-circle.png", model.resolution)
    request = editing.EditRequest(source_prompt="a red circle on a gray background",
                                  target_prompts=["a blue circle on a gray background"], steps=20)
    result = editing.edit(model, photo, request)      # result.edits[0]: the edited photo (uint8 RGB)
    editing.save_image("edit.png", result.edits[0])
    records = editing.invert(model, photo[None], [request.source_prompt])   # one Inversion per photo
    records[0].save("photo.inversion.safetensors"); editing.Inversion.load("photo.inversion.safetensors")
    again = editing.reconstruct(model, records)       # (1, S, S, 3)

Floors, bottom-up (imports only go down): `editing.core` (model, DDIM math, the sampling loop, image IO,
metrics, files, errors) <- `inversion`, `attention` <- the methods in `editing` (`editing.dispatch` dispatches
an `EditRequest`) <- the interfaces (`editing.run`, `editing.batch`, `editing.multires`, `editing.app`)
<- `benchmarks`.
"""
from __future__ import annotations

import importlib

_PUBLIC = {  # name -> the module that defines it
    "load_model": "editing.core.loading",
    "load_image": "editing.core.image_io",
    "save_image": "editing.core.image_io",
    "UserError": "editing.core.errors",
    "EditRequest": "editing.request",
    "edit": "editing.dispatch",  # not editing/edit.py: loading a submodule sets the package attribute of its name
    "run_edit": "editing.dispatch",
    "invert": "inversion.invert",
    "InversionConfig": "inversion.invert",
    "reconstruct": "inversion.invert",
    "Inversion": "inversion.record",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):  # PEP 562: import the defining module only when a public name is used
    if name not in _PUBLIC:
        raise AttributeError(f"module 'editing' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return __all__
