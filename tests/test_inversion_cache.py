"""editing.inversion_cache: photos inverted together ahead of their edits, each inverted once."""
from __future__ import annotations

import numpy as np

from editing import inversion_cache as cache_module
from editing.methods import inversion_config
from editing.inversion_cache import InversionCache
from editing.request import EditRequest


def requests_for(prompts):
    return [EditRequest(source_prompt=p, target_prompts=["a photo of a dog"], inversion="ddim", steps=2)
            for p in prompts]


def counting_invert(monkeypatch) -> list[int]:
    """Patch the cache's invert to record the batch size of every call."""
    calls, invert = [], cache_module.invert
    monkeypatch.setattr(cache_module, "invert", lambda model, images, *a, **k: calls.append(len(images))
                        or invert(model, images, *a, **k))
    return calls


def test_in_memory_cache_inverts_ahead_in_one_call_and_hands_each_record_out_once(tiny_model, photos,
                                                                                  photo_prompts, monkeypatch):
    calls = counting_invert(monkeypatch)
    cache, requests = InversionCache(), requests_for(photo_prompts[:2])
    cache.prefetch(tiny_model, list(zip(photos[:2], requests)), disable=True)
    assert calls == [2]
    configs = [inversion_config(r) for r in requests]
    records = [cache(tiny_model, photo, r.source_prompt, c, True) for photo, r, c in zip(photos[:2], requests, configs)]
    assert calls == [2] and not cache.held  # both served from the batched call, then forgotten
    assert [r.prompt for r in records] == photo_prompts[:2] and all(r.trajectory is not None for r in records)
    cache(tiny_model, photos[0], requests[0].source_prompt, configs[0], True)
    assert calls == [2, 1]  # handed out once: asked again, the photo is inverted again (alone)


def test_folder_cache_keeps_records_for_later_runs(tiny_model, photos, photo_prompts, tmp_path, monkeypatch):
    calls = counting_invert(monkeypatch)
    requests = requests_for(photo_prompts[:2])
    first = InversionCache(tmp_path)
    first.prefetch(tiny_model, list(zip(photos[:2], requests)), disable=True)
    assert calls == [2] and len(list(tmp_path.glob("*.safetensors"))) == 2
    later = InversionCache(tmp_path)  # another run into the same folder
    later.prefetch(tiny_model, list(zip(photos[:2], requests)), disable=True)
    config = inversion_config(requests[1])
    record = later(tiny_model, photos[1], requests[1].source_prompt, config, True)
    again = later(tiny_model, photos[1], requests[1].source_prompt, config, True)
    assert calls == [2] and np.array_equal(record.x_T.numpy(), again.x_T.numpy())
    (tmp_path / f"{later.key(tiny_model, photos[1], requests[1].source_prompt, config)}.safetensors").write_bytes(b"x")
    later(tiny_model, photos[1], requests[1].source_prompt, config, True)  # a damaged file is inverted again
    assert calls == [2, 1]
