"""Toy world: procedural scenes (coloured shapes on plain or textured backgrounds).

This is the world the project's embedded default model is trained on.  It
provides ground truth for measuring edits:

* :mod:`toyworld.world` -- scene description, renderer, captions, edited twins
  and deterministic datasets.
* :mod:`toyworld.checker` -- reads background, shape colour and shape kind back
  from *pixels only*, so generated / edited images can be scored.
"""

from toyworld.world import (  # noqa: F401
    BACKGROUNDS,
    COLOURS,
    PLAIN_BACKGROUNDS,
    REFERENCE_SIZE,
    SHAPES,
    TEXTURES,
    Scene,
    Shape,
    caption,
    dataset,
    edit_scene,
    parse_caption,
    random_edit,
    random_scene,
    render,
)
