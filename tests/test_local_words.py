"""A text encoder whose tokens keep to their own word (toyworld/local_words.py, `toyworld.train --local-words`)."""
import json

import pytest


def _encoder_and_ids():
    import torch
    from transformers import CLIPTokenizer

    from editing.core.model import TOKENIZER_DIR
    from toyworld import train

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    _, text_encoder, _ = train.build_components(train.Config(), tokenizer)
    ids = train.tokenize(tokenizer, ["a red circle on a gray background", "a blue circle on a gray background"])
    return text_encoder.eval(), ids, tokenizer


def _changed_tokens(text_encoder, ids) -> list[int]:
    import torch

    with torch.no_grad():
        out = text_encoder(ids)[0]
    return [i for i in range(out.shape[1]) if not torch.allclose(out[0, i], out[1, i], atol=1e-6)]


def test_a_changed_word_changes_only_its_own_token_once_the_words_are_local():
    from toyworld.local_words import localise_words, words_are_local

    text_encoder, ids, _ = _encoder_and_ids()
    changed = int((ids[0] != ids[1]).nonzero()[0])  # "red" -> "blue": position 2 (after <bos> and "a")
    assert changed == 2
    # the causal encoder as trained so far: every later token (words, end token, padding) sees the change
    assert not words_are_local(text_encoder)
    assert _changed_tokens(text_encoder, ids) == list(range(changed, ids.shape[1]))
    localise_words(text_encoder)
    assert words_are_local(text_encoder)
    assert _changed_tokens(text_encoder, ids) == [changed]
    frozen = [n for n, p in text_encoder.named_parameters() if not p.requires_grad]
    assert frozen and all(".self_attn." in n for n in frozen)
    assert any(p.requires_grad for n, p in text_encoder.named_parameters() if ".mlp." in n)


def test_training_keeps_the_words_local_and_trains_the_rest():
    import torch

    from editing.core.model import ddim_scheduler
    from toyworld import train
    from toyworld.local_words import localise_words, words_are_local

    text_encoder, ids, tokenizer = _encoder_and_ids()
    cfg = train.Config(unet_steps=2, unet_batch=2, local_words=True)
    _, _, unet = train.build_components(cfg, tokenizer)
    localise_words(text_encoder)
    before = {n: p.detach().clone() for n, p in text_encoder.named_parameters()}
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    train.train_unet(unet, text_encoder, latents, ids, train.tokenize(tokenizer, [""])[0], ddim_scheduler(), cfg,
                     torch.Generator().manual_seed(0), disable=True)
    assert words_are_local(text_encoder)  # the EMA weights copied in at the end keep the zero projections
    changed = {n for n, p in text_encoder.named_parameters() if not torch.equal(p, before[n])}
    assert changed and not any(".self_attn." in n for n in changed)


def test_local_words_and_fresh_ema_options(tmp_path, capsys):
    from toyworld import train

    out = ["--out", str(tmp_path / "o")]
    _, cfg = train.parse_args(out)
    assert cfg.local_words is False and cfg.fresh_ema is False  # runs 1-4's recipes are unchanged
    _, cfg = train.parse_args(out + ["--local-words"])
    assert cfg.local_words and cfg.to_json()["local_words"] is True
    _, cfg = train.parse_args(out + ["--init-from", "toyworld/model", "--fresh-ema"])
    assert cfg.fresh_ema
    with pytest.raises(SystemExit):
        train.parse_args(out + ["--fresh-ema"])
    assert "--fresh-ema is for a continuation" in capsys.readouterr().err


def test_a_fresh_ema_leaves_the_parents_weights_behind():
    import torch

    from editing.core.model import ddim_scheduler
    from toyworld import train

    moved = {}
    for fresh in (False, True):
        text_encoder, ids, tokenizer = _encoder_and_ids()
        cfg = train.Config(unet_steps=3, unet_batch=2, init_from="parent", fresh_ema=fresh)
        torch.manual_seed(0)
        _, _, unet = train.build_components(cfg, tokenizer)
        start = [p.detach().clone() for p in unet.parameters()]
        train.train_unet(unet, text_encoder, torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)),
                         ids, train.tokenize(tokenizer, [""])[0], ddim_scheduler(), cfg,
                         torch.Generator().manual_seed(0), disable=True)
        moved[fresh] = sum(float((p.detach() - q).abs().sum()) for p, q in zip(unet.parameters(), start))
    # a plain continuation's EMA (decay 0.999 from the first step) keeps ~99.7 % of the starting weights after
    # 3 steps; a fresh one warms up from decay 0.1 and follows the training
    assert moved[True] > 50 * moved[False] > 0


def test_a_continuation_of_a_local_model_stays_local(tmp_path):
    from toyworld import train
    from toyworld.local_words import localise_words, words_are_local

    text_encoder, _, tokenizer = _encoder_and_ids()
    vae, _, unet = train.build_components(train.Config(), tokenizer)
    localise_words(text_encoder)
    parent = tmp_path / "parent"
    train.save_pipeline(parent, vae, text_encoder, unet, tokenizer)
    (parent / "training.json").write_text(json.dumps({"config": {"local_words": True}, "steps": {"unet": 3}}))
    cfg = train.Config(init_from=str(parent))  # the command did not say --local-words
    _, loaded, _, _ = train.load_parent(cfg)
    assert cfg.local_words and words_are_local(loaded)  # saved as zeros, read back as zeros
