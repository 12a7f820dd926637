"""The README's main command, run exactly as written (from a copy of what it reads), edits the toy scene:
the toy-world checker reads the target in `out/edit.png`, at the circle's place."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from editing.core.image_io import read_image
from toyworld.checker import check, read_scene
from toyworld.world import parse_caption

REPO = Path(__file__).resolve().parents[1]
SETUP = "pip install -r requirements.txt && "
LAYOUT_TOLERANCE_PX = 3  # the quality suite's "layout kept" (px of the 64 px canvas)


def main_command() -> list[str]:
    """The set-up section's first command, without its install step."""
    text = (REPO / "README.md").read_text().split("## Set up on a fresh machine", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith(SETUP)]
    assert len(lines) == 2, "the README keeps exactly two set-up commands"
    command = shlex.split(lines[0][len(SETUP):])
    assert command[:3] == ["python", "-m", "editing.run"], command
    return command


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.slow
def test_the_readme_main_command_edits_the_toy_scene(tmp_path):
    command = main_command()
    image = option(command, "--image")
    (tmp_path / Path(image).parent).mkdir(parents=True)
    shutil.copy(REPO / image, tmp_path / image)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / option(command, "--out")
    source, target = (parse_caption(option(command, flag)) for flag in ("--source-prompt", "--target-prompt"))
    photo = read_image(tmp_path / image)
    assert read_scene(photo)["shape"] == source["shapes"][0][1]  # the premise: the picture shows the source
    edit = read_image(out / "edit.png")
    expected = {"background": target["background"], "colour": target["shapes"][0][0], "shape": target["shapes"][0][1]}
    assert check(edit, expected) == {"background": True, "colour": True, "shape": True}, read_scene(edit)
    before, after = read_scene(photo)["shapes"][0], read_scene(edit)["shapes"][0]
    shift = ((before["x"] - after["x"]) ** 2 + (before["y"] - after["y"]) ** 2) ** 0.5
    assert shift <= LAYOUT_TOLERANCE_PX, (before, after)
