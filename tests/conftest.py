"""Shared fixtures: the seeded tiny models (epsilon and v-prediction) and a few real photos.

The tests never touch the network: the hub is switched offline before anything imports huggingface_hub.
Torch runs on one thread unless OMP_NUM_THREADS says otherwise: the tiny model's layers are far too small
to gain from a second thread, and on the shared 2-core test machines two threads measured ~10x slower per
UNet call (they wait for each other whenever another process holds a core).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # plain `pytest` (not `python -m pytest`) from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)

PHOTO_SIZE = 64  # the tiny models' resolution
# (skimage.data loader, a source prompt that describes it)
PHOTOS = (("chelsea", "a photo of a cat"), ("astronaut", "an astronaut in a white suit"),
          ("coffee", "a cup of coffee on a saucer"))


@pytest.fixture(scope="session")
def tiny_model():
    """load_model("tiny-random"): the seeded random SD-shaped model, epsilon prediction, fp32 on the CPU."""
    from editing.core.loading import load_model

    return load_model("tiny-random", device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def default_model():
    """load_model(None): the embedded toy-world model, fp32 on the CPU (tests that change it restore it)."""
    from editing.core.loading import load_model

    return load_model(None, device="cpu")


@pytest.fixture(scope="session")
def tiny_v_model():
    """The same architecture and seed with a v-prediction scheduler, fp32 on the CPU."""
    from editing.core.model import _place, build_tiny_model

    return _place(build_tiny_model(prediction_type="v_prediction"), "tiny-v", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def session_photos() -> np.ndarray:
    """The photos of `photos`, shared by the whole session (for module-scoped fixtures): never modify it."""
    import skimage.data

    from editing.core.image_io import prepare_image

    return np.stack([prepare_image(getattr(skimage.data, name)(), PHOTO_SIZE) for name, _ in PHOTOS])


@pytest.fixture
def photos(session_photos) -> np.ndarray:
    """chelsea, astronaut, coffee: uint8 (3, 64, 64, 3), a fresh copy per test (tests may not share edits)."""
    return session_photos.copy()


@pytest.fixture(scope="session")
def photo_prompts() -> list[str]:
    """One source prompt per photo of `photos`, in the same order."""
    return [prompt for _, prompt in PHOTOS]
