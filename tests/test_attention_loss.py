"""The trainer's cross-attention localisation loss (toyworld/attention_loss.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import check_training_option
from toyworld import attention_loss as al
from toyworld.world import BACKGROUNDS, Scene, Shape, caption, iter_dataset, shape_coverage


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    from editing.core.model import TOKENIZER_DIR

    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def _scenes(n=60):
    return [scene for scene, _, _ in iter_dataset(3, n, two_shapes_prob=0.5, turned_prob=0.5)]


def test_caption_words_are_the_captions_words_with_their_regions():
    scenes = _scenes()
    assert any(len(s.shapes) == 2 for s in scenes) and any(len(s.shapes) == 1 for s in scenes)
    for scene in scenes:
        words = al.caption_words(scene)
        assert " ".join(w for w, _ in words) == caption(scene)
        background = len(scene.shapes)
        for i, shape in enumerate(scene.shapes):
            assert [w for w, r in words if r == i] == [shape.colour, shape.kind]
        assert [w for w, r in words if r == background] == [BACKGROUNDS[scene.background], "background"]
        assert {w for w, r in words if r == al.UNSUPERVISED} <= {"a", "an", "and", "on"}


def test_token_regions_mark_the_tokens_the_pipeline_gives_each_word(tokenizer):
    for scene in _scenes():
        regions = al.token_regions(scene, tokenizer)
        ids = tokenizer(caption(scene), padding="max_length", max_length=tokenizer.model_max_length).input_ids
        assert regions.shape == (tokenizer.model_max_length,) and regions[0] == al.UNSUPERVISED  # BOS
        for region, words in [(r, [w for w, g in al.caption_words(scene) if g == r])
                              for r in range(len(scene.shapes) + 1)]:
            positions = np.nonzero(regions == region)[0]
            assert tokenizer.decode([ids[p] for p in positions]).split() == words
        assert (regions[ids.index(tokenizer.eos_token_id):] == al.UNSUPERVISED).all()  # EOS and padding


def test_scene_regions_are_the_shapes_coverage_and_the_rest():
    one = Scene((Shape("circle", "red", 10, 20, 30),), "gray")
    two = Scene((Shape("square", "blue", 9, 16, 16), Shape("triangle", "green", 8, 46, 44, angle=30.0)), "checkerboard")
    for scene in (one, two):
        regions = al.scene_regions(scene).astype(np.float32)
        assert regions.shape == (3, 16, 16)
        for i in range(len(scene.shapes)):
            area = shape_coverage(scene, i, 64).sum() / 16  # one latent cell is 4 x 4 px
            assert regions[i].sum() == pytest.approx(area, rel=1e-3)
        background = regions[len(scene.shapes)]
        assert np.allclose(background + regions[:len(scene.shapes)].sum(0), 1.0, atol=2e-3)
        assert 0 < background.sum() < 256
    assert al.scene_regions(one)[2].max() == 0  # the unused shape row stays empty


def _maps(inside: float, side: int = 16, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token 1 supervised on the left half of the picture, with `inside` of its attention there."""
    regions = torch.zeros(batch, 3, 16, 16)
    regions[:, 0, :, :8] = 1.0
    probs = torch.full((batch, side * side, 77), 1.0 / 77)
    left = torch.zeros(side, side, dtype=torch.bool)
    left[:, :side // 2] = True
    column = torch.where(left.flatten(), inside / left.sum(), (1 - inside) / (~left).sum())
    probs[:, :, 1] = column * 0.5  # the token's mass over the queries: only its shape matters
    tokens = torch.full((batch, 77), al.UNSUPERVISED, dtype=torch.long)
    tokens[:, 1] = 0
    return probs, tokens, regions


@pytest.mark.parametrize("side", [16, 8, 4])
def test_the_loss_is_minus_log_the_share_of_attention_inside_the_region(side):
    for inside in (0.5, 0.9, 0.999):
        probs, tokens, regions = _maps(inside, side)
        loss = al.localisation_loss([probs], tokens, regions, torch.ones(1, dtype=torch.bool))
        assert float(loss) == pytest.approx(-math.log(inside), rel=1e-4, abs=1e-6)
    probs, tokens, regions = _maps(0.9)
    high = al.localisation_loss([probs], tokens, regions, torch.ones(1, dtype=torch.bool))
    low = al.localisation_loss([_maps(0.2)[0]], tokens, regions, torch.ones(1, dtype=torch.bool))
    assert float(low) > float(high) > 0


def test_dropped_captions_and_unsupervised_tokens_do_not_count():
    probs, tokens, regions = _maps(0.9, batch=2)
    probs[1, :, 1] = _maps(0.1)[0][0, :, 1]  # the second caption is badly placed ...
    keep = torch.tensor([True, False])  # ... but was dropped to "": not supervised
    assert float(al.localisation_loss([probs], tokens, regions, keep)) == pytest.approx(-math.log(0.9), rel=1e-4)
    probs[0, :, 2] = 0.0  # an unsupervised token's map changes nothing
    assert float(al.localisation_loss([probs], tokens, regions, keep)) == pytest.approx(-math.log(0.9), rel=1e-4)
    assert float(al.localisation_loss([probs], tokens, regions, torch.zeros(2, dtype=torch.bool))) == 0.0


def test_recorded_forward_is_the_plain_forward_and_its_maps_carry_gradients(tokenizer):
    from toyworld import train

    torch.manual_seed(0)
    cfg = train.Config()
    _, text_encoder, unet = train.build_components(cfg, tokenizer)
    scenes = _scenes(2)
    ids = train.tokenize(tokenizer, [caption(s) for s in scenes])
    cond = text_encoder(ids)[0]
    zt, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 700])
    with torch.no_grad():
        plain = unet(zt, t, encoder_hidden_states=cond).sample
    pred, maps = al.recorded_forward(unet, zt, t, cond)
    assert torch.allclose(pred, plain, atol=1e-5)
    crossing = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    assert len(maps) == len(crossing) and {m.shape[1] for m in maps} == {256, 64, 16}
    assert all(torch.allclose(m.sum(-1), torch.ones(())) for m in maps)  # probabilities over the tokens
    tokens = torch.from_numpy(np.stack([al.token_regions(s, tokenizer) for s in scenes])).long()
    regions = torch.from_numpy(np.stack([al.scene_regions(s) for s in scenes]))
    loss = al.localisation_loss(maps, tokens, regions, torch.ones(2, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    query = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_q.weight
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in text_encoder.parameters())
    assert not unet.attn_processors[crossing[0]].__class__.__name__.startswith("Controlled")  # restored


def test_training_with_the_loss_moves_attention_into_its_regions(tokenizer):
    """A few steps on one scene with a large weight: the recorded share inside the regions goes up."""
    from editing.core.model import ddim_scheduler
    from toyworld import train

    torch.manual_seed(0)
    cfg = train.Config(unet_steps=12, unet_batch=4, attention_loss=1.0, caption_dropout=0.0, warmup_frac=0.0,
                       unet_lr=3e-3)
    _, text_encoder, unet = train.build_components(cfg, tokenizer)
    scenes = _scenes(4)
    ids = train.tokenize(tokenizer, [caption(s) for s in scenes])
    where = (torch.from_numpy(np.stack([al.token_regions(s, tokenizer) for s in scenes])),
             torch.from_numpy(np.stack([al.scene_regions(s) for s in scenes])))
    latents = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(1))

    def measured() -> float:
        with torch.no_grad():
            _, maps = al.recorded_forward(unet, latents, torch.full((4,), 300), text_encoder(ids)[0])
            return float(al.localisation_loss(maps, where[0].long(), where[1], torch.ones(4, dtype=torch.bool)))

    before = measured()
    stats = train.train_unet(unet, text_encoder, latents, ids, train.tokenize(tokenizer, [""])[0], ddim_scheduler(),
                             cfg, torch.Generator().manual_seed(0), True, where=where)
    assert np.isfinite(stats["attention_loss"]) and np.isfinite(stats["eps_mse"])
    assert measured() < 0.8 * before


def test_the_attention_loss_option(tmp_path, capsys):
    check_training_option(tmp_path, capsys, "--attention-loss", "attention_loss", 0.05, ("-1", "nan", "inf"))
