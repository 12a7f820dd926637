"""The README's "Use it from Python" example runs as it is written and edits a toy scene; the public API resolves
lazily."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import editing
from toyworld.checker import check, read_scene
from toyworld.world import parse_caption

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Use it from Python"


def readme_example() -> str:
    """The one python code block of the README's section."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    assert len(blocks) == 1, f"expected one python block in {SECTION!r}, found {len(blocks)}"
    return blocks[0]


def test_the_readme_example_edits_the_toy_scene(tmp_path, monkeypatch):
    (tmp_path / "examples").mkdir()  # the example runs from the repository root; here a copy of what it reads
    shutil.copy(REPO / "examples" / "toy-red-circle.png", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(readme_example(), "README.md (Use it from Python)", "exec"), names)

    photo, back, blue, request = names["photo"], names["back"], names["blue"], names["request"]
    source = parse_caption(request.source_prompt)
    target = parse_caption(request.target_prompts[0])
    assert read_scene(photo)["colour"] == source["shapes"][0][0]  # the premise: the photo shows the source
    assert blue.shape == photo.shape and blue.dtype == np.uint8
    expected = {"background": target["background"], "colour": target["shapes"][0][0], "shape": target["shapes"][0][1]}
    assert check(blue, expected) == {"background": True, "colour": True, "shape": True}, read_scene(blue)
    assert check(back, {**expected, "colour": source["shapes"][0][0]}) == {"background": True, "colour": True,
                                                                           "shape": True}, read_scene(back)
    # the files are what the example says
    saved = names["editing"].Inversion.load(tmp_path / "red-circle.inversion.safetensors")
    assert torch.equal(saved.x_T, names["record"].x_T.cpu())
    written = names["editing"].load_image(tmp_path / "blue-circle.png", blue.shape[0])
    assert np.array_equal(written, blue)


def test_importing_editing_loads_no_method_until_a_name_is_used():
    code = ("import sys, editing; before = sorted(m for m in sys.modules if m.startswith(('editing.', 'inversion')));"
            "editing.EditRequest; after = 'editing.request' in sys.modules; print(before, after)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "True"]


def test_public_names_stay_what_they_are_after_every_module_is_loaded():
    """Loading a submodule sets the package attribute of its name: a module editing/edit.py made `editing.edit`
    the module instead of the function once anything had imported it (editing.run does), or at the second use."""
    code = ("import importlib, pkgutil, editing; first = editing.edit;"
            "[importlib.import_module(f'editing.{m.name}') for m in pkgutil.iter_modules(editing.__path__)];"
            "from editing.methods import edit, run_edit;"
            "print(first is edit, editing.edit is edit, editing.run_edit is run_edit)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "True"]
    submodules = {p.stem for p in (REPO / "editing").glob("*.py")} | {p.name for p in (REPO / "editing").iterdir()
                                                                       if p.is_dir()}
    assert not set(editing.__all__) & submodules
