"""The trainer's edit pairs (toyworld/edit_pairs.py): a scene's noisy latent under its twin's caption."""
from __future__ import annotations

import pytest
import torch

from helpers import check_training_option
from toyworld import edit_pairs as ep
from toyworld.world import caption, iter_dataset


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    from editing.core.model import TOKENIZER_DIR

    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def _scenes(n=80):
    return [scene for scene, _, _ in iter_dataset(5, n, two_shapes_prob=0.5, turned_prob=0.5)]


def _layout(scene):
    return [(s.size, s.x, s.y, s.angle) for s in scene.shapes]


def test_a_twin_keeps_the_layout_and_changes_one_attribute_of_the_main_shape():
    scenes = _scenes()
    twins = ep.twin_scenes(scenes, seed=2)
    assert twins == ep.twin_scenes(scenes, seed=2)  # seeded
    assert twins != ep.twin_scenes(scenes, seed=3)
    kinds = set()
    for scene, twin in zip(scenes, twins):
        assert _layout(twin) == _layout(scene)
        changed = [(i, a) for i, (s, t) in enumerate(zip(scene.shapes, twin.shapes))
                   for a in ("colour", "kind") if getattr(s, a) != getattr(t, a)]
        changed += [("scene", "background")] * (twin.background != scene.background)
        assert len(changed) == 1 and changed[0][0] in (scene.main_index, "scene")
        assert caption(twin) != caption(scene)
        kinds.add(changed[0][1])
    assert kinds == {"colour", "kind", "background"}


def test_the_target_is_the_epsilon_whose_implied_x0_is_the_twin():
    g = torch.Generator().manual_seed(0)
    z0, twin, eps = (torch.randn(3, 4, 16, 16, generator=g) for _ in range(3))
    alpha_bar = torch.tensor([0.999, 0.5, 0.01]).view(-1, 1, 1, 1)
    zt = alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * eps
    target = ep.pair_target(eps, z0, twin, alpha_bar)
    implied = (zt - (1 - alpha_bar).sqrt() * target) / alpha_bar.sqrt()
    torch.testing.assert_close(implied, twin, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ep.pair_target(eps, z0, z0, alpha_bar), eps)  # an identity pair: plain training


def test_pair_rows_draw_their_share():
    rows = ep.pair_rows(20_000, 0.25, torch.Generator().manual_seed(0))
    assert rows.dtype == torch.bool and abs(rows.float().mean().item() - 0.25) < 0.01
    assert not ep.pair_rows(64, 0.0, torch.Generator().manual_seed(0)).any()


def test_training_on_pairs_teaches_the_twin(tokenizer):
    """A few steps on pairs only: the model's x0 under the twin's caption, from the scene's noisy latent,
    comes closer to the twin's latent."""
    from editing.core.model import ddim_scheduler
    from toyworld import train

    torch.manual_seed(0)
    cfg = train.Config(unet_steps=15, unet_batch=4, edit_pairs=1.0, caption_dropout=0.5, warmup_frac=0.0,
                       unet_lr=3e-3)
    _, text_encoder, unet = train.build_components(cfg, tokenizer)
    scenes = _scenes(4)
    twins = ep.twin_scenes(scenes, seed=0)
    g = torch.Generator().manual_seed(1)
    latents, twin_latents = torch.randn(4, 4, 16, 16, generator=g), torch.randn(4, 4, 16, 16, generator=g)
    ids = train.tokenize(tokenizer, [caption(s) for s in scenes])
    twin_ids = train.tokenize(tokenizer, [caption(s) for s in twins])
    scheduler = ddim_scheduler()
    t = torch.full((4,), 600)
    alpha_bar = scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    eps = torch.randn(latents.shape, generator=g)
    zt = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * eps

    def error() -> float:
        with torch.no_grad():
            pred = unet(zt, t, encoder_hidden_states=text_encoder(twin_ids)[0]).sample
        x0 = (zt - (1 - alpha_bar).sqrt() * pred) / alpha_bar.sqrt()
        return float(((x0 - twin_latents) ** 2).mean())

    before = error()
    stats = train.train_unet(unet, text_encoder, latents, ids, train.tokenize(tokenizer, [""])[0], scheduler, cfg,
                             torch.Generator().manual_seed(0), True, twins=(twin_latents, twin_ids))
    assert torch.isfinite(torch.tensor(stats["eps_mse"]))
    assert error() < 0.8 * before


def test_the_edit_pairs_option(tmp_path, capsys):
    check_training_option(tmp_path, capsys, "--edit-pairs", "edit_pairs", 0.25, ("-0.1", "1.5", "nan"))
