"""Tests for attention.alignment: Prompt-to-Prompt token bookkeeping, with the real CLIP tokenizer."""
from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

from editing.core.prompts import check_prompt_length
from attention.alignment import (
    align_tokens,
    encode_tokens,
    refinement_mapper,
    replacement_mapper,
    reweight_vector,
    word_token_indices,
    words_of,
)
from editing.core.errors import UserError

TOKENIZER_DIR = Path(__file__).parents[1] / "editing" / "assets" / "clip_tokenizer"
L = 77


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


def test_tokenizer_assumptions(tok):
    assert tok.model_max_length == L
    assert len(encode_tokens("photorealistic", tok)) == 2  # photo + realistic</w>
    assert len(encode_tokens("hippopotamus", tok)) == 3  # hippo + potam + us</w>
    assert words_of("a  cat sitting") == ["a", "cat", "sitting"]


# ---------------------------------------------------------------- word_token_indices


def test_single_token_words(tok):
    prompt = "a cat sitting next to a mirror"
    assert word_token_indices(prompt, "cat", tok) == [2]
    assert word_token_indices(prompt, "mirror", tok) == [7]
    assert word_token_indices(prompt, 1, tok) == [2]  # by index in prompt.split(" ")
    assert word_token_indices(prompt, 6, tok) == [7]


def test_multi_token_word(tok):
    prompt = "a photorealistic cat"
    assert word_token_indices(prompt, "photorealistic", tok) == [2, 3]
    assert word_token_indices(prompt, "cat", tok) == [4]  # shifted by the extra token
    assert word_token_indices(prompt, 2, tok) == [4]
    ids = tok(prompt)["input_ids"]
    assert tok.convert_ids_to_tokens(ids[2:4]) == ["photo", "realistic</w>"]


def test_repeated_word(tok):
    assert word_token_indices("a cat next to a cat", "cat", tok) == [2, 6]
    assert word_token_indices("a cat next to a cat", "a", tok) == [1, 5]
    assert word_token_indices("a cat next to a cat", 4, tok) == [5]


def test_case_and_punctuation(tok):
    prompt = "A Cat, sitting (photorealistic)"
    # tokens: a cat , sitting ( photo realistic )
    assert word_token_indices(prompt, "cat", tok) == [2]  # the comma (position 3) is not part of the word
    assert word_token_indices(prompt, "a", tok) == [1]
    assert word_token_indices(prompt, "sitting", tok) == [4]
    assert word_token_indices(prompt, "photorealistic", tok) == [6, 7]
    assert word_token_indices(prompt, "CAT!", tok) == [2]


def test_unknown_word(tok):
    with pytest.raises(UserError, match=r"'dog'.*'a cat sitting'"):
        word_token_indices("a cat sitting", "dog", tok)
    with pytest.raises(UserError):
        word_token_indices("a cat sitting", "cats", tok)
    with pytest.raises(UserError, match="out of range"):
        word_token_indices("a cat sitting", 3, tok)
    with pytest.raises(UserError, match="single word"):
        word_token_indices("a cat sitting", "cat sitting", tok)


# ---------------------------------------------------------------- replacement_mapper


def test_replace_identical_prompts_is_identity(tok):
    mapper = replacement_mapper("a cat sitting next to a mirror", ["a cat sitting next to a mirror"], tok)
    assert mapper.shape == (1, L, L)
    assert torch.equal(mapper[0], torch.eye(L))


def test_replace_single_token_swap(tok):
    mapper = replacement_mapper(
        "a cat sitting next to a mirror", ["a tiger sitting next to a mirror", "a dog sitting next to a mirror"], tok
    )
    assert mapper.shape == (2, L, L)
    # single-token swap: cat (position 2) -> tiger (position 2), identity everywhere
    for k in range(2):
        assert torch.equal(mapper[k], torch.eye(L))


def test_replace_multi_token_swap(tok):
    source = "a cat sitting next to a mirror"
    target = "a hippopotamus sitting next to a mirror"  # cat = 1 token, hippopotamus = 3 tokens
    mapper = replacement_mapper(source, [target], tok)[0]  # (L, L)
    assert torch.allclose(mapper[2, 2:5], torch.full((3,), 1 / 3))  # cat spreads over hippo potam us
    assert mapper[2].sum() == pytest.approx(1.0)
    assert mapper[:, 2:5].sum(dim=0).tolist() == pytest.approx([1 / 3] * 3)
    # the words after the swap are shifted by two tokens
    for j in [0, 1]:
        assert mapper[j, j] == 1 and mapper[j].sum() == 1
    for j in range(3, L - 2):  # sitting ... mirror, end token, padding
        assert mapper[j, j + 2] == 1 and mapper[j].sum() == 1
    assert mapper[L - 2, L - 1] == 1 and mapper[L - 1, L - 1] == 1  # padding beyond the end piles on L - 1
    assert torch.allclose(mapper.sum(dim=1), torch.ones(L))

    # attention mass preserved for every query
    torch.manual_seed(0)
    source_attn = torch.rand(16, L).softmax(dim=-1)  # (queries, L)
    target_attn = source_attn @ mapper
    assert torch.allclose(target_attn.sum(dim=-1), torch.ones(16))
    # the swapped word keeps its total, the shifted words keep their attention
    assert torch.allclose(target_attn[:, 2:5].sum(dim=-1), source_attn[:, 2])
    assert torch.allclose(target_attn[:, 5:10], source_attn[:, 3:8])

    # the reverse swap: 3 source tokens -> 1 target token takes their sum
    back = replacement_mapper(target, [source], tok)[0]
    assert back[2:5, 2].tolist() == [1.0, 1.0, 1.0]
    assert torch.allclose(back.sum(dim=1), torch.ones(L))
    assert torch.allclose((source_attn @ back).sum(dim=-1), torch.ones(16))


def test_replace_keeps_shared_punctuation(tok):
    mapper = replacement_mapper("a cat, sitting", ["a hippopotamus, sitting"], tok)[0]
    assert torch.allclose(mapper[2, 2:5], torch.full((3,), 1 / 3))
    assert mapper[3, 5] == 1  # "," -> ","
    assert mapper[4, 6] == 1  # sitting -> sitting
    assert torch.allclose(mapper.sum(dim=1), torch.ones(L))


def test_replace_unequal_word_counts(tok):
    with pytest.raises(UserError, match=r"have 3 and 4 words.*Refine"):
        replacement_mapper("a cat sitting", ["a fluffy cat sitting"], tok)


# ---------------------------------------------------------------- refinement_mapper


def test_align_tokens():
    assert align_tokens([1, 2, 3], [1, 9, 2, 3]) == [0, None, 1, 2]
    assert align_tokens([1, 9, 2, 3], [1, 2, 3]) == [0, 2, 3]
    assert align_tokens([1, 2, 3], [1, 5, 3]) == [0, 1, 2]  # substitution preferred to delete + insert
    assert align_tokens([], [4, 5]) == [None, None]
    assert align_tokens([4, 5], []) == []


def test_refine_insertion(tok):
    mapper, alphas = refinement_mapper("a cat sitting", ["a fluffy cat sitting"], tok)
    assert mapper.shape == (1, L) and mapper.dtype == torch.long and alphas.shape == (1, L)
    # target: <s> a fluffy cat sitting </s> pad...   source: <s> a cat sitting </s> pad...
    assert mapper[0, :6].tolist() == [0, 1, 2, 2, 3, 4]
    assert alphas[0, 2] == 0  # fluffy is inserted
    assert word_token_indices("a fluffy cat sitting", "fluffy", tok) == [2]
    assert alphas[0].sum() == L - 1
    assert mapper[0, 6:].tolist() == list(range(5, L - 1))  # target padding <- source padding, in order


def test_refine_deletion(tok):
    mapper, alphas = refinement_mapper("a fluffy cat sitting", ["a cat sitting"], tok)
    # target: <s> a cat sitting </s> pad...   source: <s> a fluffy cat sitting </s> pad...
    assert mapper[0, :5].tolist() == [0, 1, 3, 4, 5]
    assert torch.equal(alphas[0], torch.ones(L))
    assert mapper[0, 5:L - 1].tolist() == list(range(6, L))
    assert mapper[0, L - 1] == L - 1  # past the end of the sequence: clamped


def test_refine_identical_and_several_targets(tok):
    mapper, alphas = refinement_mapper(
        "a photorealistic cat", ["a photorealistic cat", "a photorealistic fluffy cat"], tok
    )
    assert mapper[0].tolist() == list(range(L))
    assert torch.equal(alphas[0], torch.ones(L))
    # target: <s> a photo realistic fluffy cat </s>: fluffy keeps its own position, cat <- source cat, </s> <- </s>
    assert mapper[1, :7].tolist() == [0, 1, 2, 3, 4, 4, 5]
    assert alphas[1].tolist().index(0.0) == 4 and alphas[1].sum() == L - 1


# ---------------------------------------------------------------- reweight_vector


def test_reweight_vector(tok):
    prompt = "a photorealistic cat next to a cat"
    vector = reweight_vector(prompt, {"photorealistic": 2.5, "cat": -1.0}, tok)
    expected = torch.ones(L)
    expected[[2, 3]] = 2.5  # both tokens of photorealistic
    expected[[4, 8]] = -1.0  # both occurrences of cat
    assert vector.shape == (L,)
    assert torch.equal(vector, expected)
    assert torch.equal(reweight_vector(prompt, {}, tok), torch.ones(L))


def test_reweight_unknown_word(tok):
    with pytest.raises(UserError, match="'dog'"):
        reweight_vector("a cat sitting", {"cat": 2.0, "dog": 2.0}, tok)


# ---------------------------------------------------------------- prompt length


def test_prompt_length(tok):
    assert check_prompt_length("a cat", tok) == 4
    assert check_prompt_length(" ".join(["cat"] * 75), tok) == L  # exactly fits
    too_long = " ".join(["cat"] * 80)
    with pytest.raises(UserError, match=r"82 tokens.*at most 77"):
        check_prompt_length(too_long, tok)
    for call in (
        lambda: word_token_indices(too_long, "cat", tok),
        lambda: replacement_mapper(too_long, [too_long], tok),
        lambda: refinement_mapper("a cat", [too_long], tok),
        lambda: reweight_vector(too_long, {"cat": 2.0}, tok),
    ):
        with pytest.raises(UserError, match="82 tokens"):
            call()
