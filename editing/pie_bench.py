"""PIE-Bench's mapping_file.json (Ju et al. 2023, "Direct Inversion"), read once for the batch runner and the
PIE-Bench benchmark.

The file maps an entry id to {"image_path": a path under annotation_images/, "original_prompt",
"editing_prompt" (the edited words in [ ]), "editing_instruction", "blended_word" ("source target" words, may
be empty), "mask": run-length pairs over the 512 x 512 mask (decoded by benchmarks.metrics), "editing_type_id"}.
"""
from __future__ import annotations

from dataclasses import dataclass

from editing.core.errors import UserError

MAPPING_FILE = "mapping_file.json"
IMAGE_FOLDER = "annotation_images"
ENTRY_KEYS = ("image_path", "original_prompt", "editing_prompt")  # what every use needs


def is_pie_entry(item) -> bool:
    """Whether a manifest entry is in PIE-Bench's layout (it names its photo `image_path`)."""
    return isinstance(item, dict) and "image_path" in item


def strip_marks(prompt: str) -> str:
    """PIE-Bench's 'a [cat] sitting' -> 'a cat sitting' (its own code removes the brackets; runs of spaces
    are folded)."""
    return " ".join(str(prompt).replace("[", "").replace("]", "").split())


@dataclass(frozen=True)
class PieEntry:
    id: str
    image_path: str  # relative to the data's annotation_images/
    source: str  # original_prompt, marks removed
    target: str  # editing_prompt, marks removed
    blend_words: tuple[str, ...]  # blended_word split: the source and target words of the edit
    editing_type: str  # editing_type_id
    mask: list | None  # the run-length mask as stored (None: the entry has none)


def read_entry(key, item, where: str) -> PieEntry:
    """One entry of the mapping, checked: a UserError naming `where` and what is missing."""
    missing = [k for k in ENTRY_KEYS if not isinstance(item, dict) or k not in item]
    if missing:
        raise UserError(f"{where}: a PIE-Bench entry needs {', '.join(ENTRY_KEYS)}; {', '.join(missing)} missing")
    return PieEntry(id=str(key), image_path=str(item["image_path"]), source=strip_marks(item["original_prompt"]),
                    target=strip_marks(item["editing_prompt"]),
                    blend_words=tuple(str(item.get("blended_word") or "").split()),
                    editing_type=str(item.get("editing_type_id", "")), mask=item.get("mask"))
