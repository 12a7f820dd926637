"""The console scripts that `pip install .` puts on the PATH (pyproject.toml's [project.scripts]).

Each is its `python -m` form, with the same flags and the same exit codes (0 done, 2 bad input or usage with
one `error:` line, 1 a failure inside the run): the installer's wrapper calls `sys.exit(<function>())`.
"""
from __future__ import annotations

from editing import app, batch, multires, run
from editing.cli import run_main


def edit_photo() -> int:
    """`edit-photo` = `python -m editing.run`: edit one photo."""
    return run_main(run.main)


def edit_photos() -> int:
    """`edit-photos` = `python -m editing.batch`: edit a folder of photos."""
    return run_main(batch.main)


def multires_ti() -> int:
    """`multires-ti` = `python -m editing.multires`: learn a concept, sample with it."""
    return run_main(multires.main)


def edit_photo_app() -> int:
    """`edit-photo-app` = `python -m editing.app`: the local web page."""
    return run_main(app.main)
