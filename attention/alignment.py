"""Token bookkeeping for Prompt-to-Prompt (Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention
Control"): which token positions a word occupies, and how the cross-attention maps of a source prompt are carried
over to the token positions of edited (target) prompts.

Everything here is pure bookkeeping on token ids: no model, no images.  All tensors are laid out for the text
encoder's fixed sequence length ``L = tokenizer.model_max_length`` (77 for CLIP):

    position 0            the start token (<|startoftext|>)
    positions 1 .. n      the prompt's n tokens
    position n + 1        the end token (<|endoftext|>)
    positions n + 2 ..    padding, up to L - 1

Words
-----
A prompt's words are ``prompt.split()``: the pieces between runs of whitespace.  For a normally written prompt this
is exactly ``prompt.split(" ")``; unlike that, doubled spaces do not create empty words (the tokenizer collapses
whitespace too, so an empty "word" would own no tokens).  Every token belongs to exactly one word: the CLIP
tokenizer never merges characters across whitespace, so encoding the words one by one gives the same ids as
encoding the whole prompt (this is checked).

Word matching (``word_token_indices``, ``reweight_vector``) compares words after lowercasing (as the tokenizer does)
and stripping punctuation from both ends, so the query ``"cat"`` (or ``"Cat"``) matches the prompt words
``"cat"``, ``"Cat,"`` and ``"(cat)"``, but not ``"cats"`` or ``"cat's"``.  The positions returned for a match are
those of the word itself: punctuation that the tokenizer splits into tokens of its own (the ``","`` of ``"cat,"``)
is left out, so reweighting "cat" does not also reweight the comma.  Punctuation inside a word (``"don't"``,
``"well-known"``) is part of the word.

The tokenizer interface used is small: ``encode(text, add_special_tokens=False)``, ``model_max_length``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from editing.core.errors import UserError
from editing.core.prompts import check_prompt_length


# --------------------------------------------------------------------------------------------------------------
# Prompts as words and tokens
# --------------------------------------------------------------------------------------------------------------


def words_of(prompt: str) -> list[str]:
    """The words of a prompt: ``prompt.split()`` (see the module docstring)."""
    return prompt.split()


def normalize_word(word: str) -> str:
    """A word as compared when matching: lowercased, punctuation stripped from both ends ("Cat," -> "cat")."""
    return _strip_punctuation(word.lower())[1]


def encode_tokens(prompt: str, tokenizer) -> list[int]:
    """The prompt's token ids without the start and end tokens (and without truncation or padding)."""
    # verbose=False: an over-long prompt is reported by check_prompt_length, not by a tokenizer log warning.
    return list(tokenizer.encode(prompt, add_special_tokens=False, verbose=False))


@dataclass(frozen=True)
class PromptTokens:
    """A prompt split into words, with the token positions of each word in the L-long sequence."""

    prompt: str
    words: tuple[str, ...]
    ids: tuple[int, ...]  # (n,) the prompt's token ids, no start/end token
    spans: tuple[tuple[int, int], ...]  # per word, [start, stop) positions; position 0 is the start token
    cores: tuple[tuple[int, int], ...]  # per word, [start, stop) of the word without its own punctuation tokens
    word_ids: tuple[tuple[int, ...], ...]  # per word, its token ids

    @property
    def end(self) -> int:
        """Position of the end token (= number of prompt tokens + 1)."""
        return len(self.ids) + 1


def tokenize_words(prompt: str, tokenizer, max_len: int | None = None) -> PromptTokens:
    """Tokenize a prompt word by word, recording which positions each word occupies.

    Raises UserError (via ``check_prompt_length``) if the prompt is too long for the text encoder.
    """
    check_prompt_length(prompt, tokenizer, max_len)
    words = words_of(prompt)
    spans, cores, word_ids, ids = [], [], [], []
    position = 1  # position 0 is the start token
    for word in words:
        tokens = encode_tokens(word, tokenizer)
        start, stop = position, position + len(tokens)
        spans.append((start, stop))
        cores.append(_core_span(word, tokens, start, tokenizer))
        word_ids.append(tuple(tokens))
        ids.extend(tokens)
        position = stop
    if ids != encode_tokens(prompt, tokenizer):  # cannot happen with CLIP's tokenizer (see module docstring)
        raise RuntimeError(
            f"tokenizing {prompt!r} word by word gives other tokens than tokenizing it whole; "
            "this tokenizer merges text across spaces, so words cannot be mapped to token positions"
        )
    return PromptTokens(prompt, tuple(words), tuple(ids), tuple(spans), tuple(cores), tuple(word_ids))


def _sequence_length(tokenizer, max_len: int | None) -> int:
    return int(tokenizer.model_max_length if max_len is None else max_len)


def _strip_punctuation(word: str) -> tuple[str, str, str]:
    """Split a word into (leading punctuation, core, trailing punctuation); punctuation = not alphanumeric."""
    start, stop = 0, len(word)
    while start < stop and not word[start].isalnum():
        start += 1
    while stop > start and not word[stop - 1].isalnum():
        stop -= 1
    return word[:start], word[start:stop], word[stop:]


def _core_span(word: str, tokens: list[int], start: int, tokenizer) -> tuple[int, int]:
    """Positions of the word without the tokens of its leading/trailing punctuation.

    If the punctuation does not tokenize separately (the split pieces do not re-encode to the word's tokens), or
    the word is all punctuation, the whole word is its core.
    """
    lead, core, trail = _strip_punctuation(word)
    whole = (start, start + len(tokens))
    if not core or (not lead and not trail):
        return whole
    lead_ids = encode_tokens(lead, tokenizer) if lead else []
    core_ids = encode_tokens(core, tokenizer)
    trail_ids = encode_tokens(trail, tokenizer) if trail else []
    if lead_ids + core_ids + trail_ids != tokens or not core_ids:
        return whole
    return (start + len(lead_ids), start + len(lead_ids) + len(core_ids))


# --------------------------------------------------------------------------------------------------------------
# Words -> token positions
# --------------------------------------------------------------------------------------------------------------


def word_token_indices(prompt: str, word: str | int, tokenizer) -> list[int]:
    """Token positions (position 0 = start token) of every occurrence of ``word`` in ``prompt``, ascending.

    ``word`` is either one word (matched as described in the module docstring: case and surrounding punctuation
    ignored) or the index of a word in ``words_of(prompt)`` (``prompt.split(" ")`` for single-spaced prompts).  A
    word that the tokenizer splits into several tokens gives all of them ("photorealistic" -> 2 positions).

    Raises UserError if the word is not in the prompt, the index is out of range, or ``word`` is not one word.
    """
    tokens = tokenize_words(prompt, tokenizer)
    if isinstance(word, bool) or not isinstance(word, (str, int)):
        raise TypeError(f"word must be a str or an int word index, not {type(word).__name__}")

    if isinstance(word, int):
        if not 0 <= word < len(tokens.words):
            raise UserError(
                f"word index {word} is out of range for the prompt {prompt!r}, which has {len(tokens.words)} "
                f"words (indices 0 to {len(tokens.words) - 1}); give a valid index or the word itself"
            )
        start, stop = tokens.cores[word]
        return list(range(start, stop))

    if len(word.split()) != 1:
        raise UserError(f"{word!r} is not a single word; give one word of the prompt (no spaces)")
    query = normalize_word(word)
    if not query:
        raise UserError(f"{word!r} has no letters or digits to look for; give a word of the prompt {prompt!r}")
    positions = []
    for candidate, (start, stop) in zip(tokens.words, tokens.cores):
        if normalize_word(candidate) == query:
            positions.extend(range(start, stop))
    if not positions:
        raise UserError(
            f"the word {word!r} is not in the prompt {prompt!r}; its words are {list(tokens.words)} "
            "(matching ignores case and surrounding punctuation) - use one of them"
        )
    return positions


def reweight_vector(
    prompt: str, weights: dict[str, float], tokenizer, max_len: int | None = None
) -> torch.Tensor:
    """Per-token attention weights (L,): 1 everywhere except the tokens of the given words.

    Every token of every occurrence of each word in ``weights`` gets that word's value (any float, negative values
    included).  Raises UserError for a word that is not in the prompt.
    """
    length = _sequence_length(tokenizer, max_len)
    check_prompt_length(prompt, tokenizer, length)
    vector = torch.ones(length)  # (L,)
    for word, value in weights.items():
        vector[word_token_indices(prompt, word, tokenizer)] = float(value)
    return vector


# --------------------------------------------------------------------------------------------------------------
# Replace (word swap): target_attn = source_attn @ M
# --------------------------------------------------------------------------------------------------------------


def replacement_mapper(
    source: str, targets: list[str], tokenizer, max_len: int | None = None
) -> torch.Tensor:
    """Word-swap mappers M, shape (n_targets, L, L), such that ``target_attn = source_attn @ M[k]``.

    ``M[k, j, i]`` is the share of source token j's attention that goes to token i of target k.  Every prompt must
    have the same number of words as the source (UserError otherwise, pointing to Refine).  Word by word:

    * words with the same tokens map one to one;
    * a swapped word (different tokens) of n source tokens and m target tokens: tokens that both words share at
      their start or end (the "," of "cat," -> "tiger,") still map one to one; of the rest, if n == m the tokens
      map one to one in order, otherwise every source token sends 1/m of its attention to each of the m target
      tokens (``M[src_span, tgt_span] = 1/m``, as the reference implementation does).  So each target token of
      the swap receives the mean of the source span's attention, and the span's total attention is kept;
    * the start token maps to the start token; the end token and padding map to the target's end token and
      padding in order (identity when the prompts have equal token counts).  Source padding that falls off the
      end of the sequence (the target is longer) goes to the last position, L - 1.

    Every row of M therefore sums to 1, so each query's attention keeps its total (row-stochastic stays
    row-stochastic); the one exception is a word that encodes to no tokens at all, which has nothing to map.
    """
    targets = _check_targets(targets)
    length = _sequence_length(tokenizer, max_len)
    src = tokenize_words(source, tokenizer, length)
    mappers = torch.zeros(len(targets), length, length)  # (n_targets, L source, L target)
    for k, target in enumerate(targets):
        tgt = tokenize_words(target, tokenizer, length)
        if len(tgt.words) != len(src.words):
            raise UserError(
                f"the source prompt {source!r} and the target prompt {target!r} have {len(src.words)} and "
                f"{len(tgt.words)} words; Replace needs equal word counts (one word swapped for another) - use "
                "Refine (--edit refine) for prompts of different lengths"
            )
        _fill_replacement(mappers[k], src, tgt)  # (L, L)
    return mappers


def _fill_replacement(mapper: torch.Tensor, src: PromptTokens, tgt: PromptTokens) -> None:
    """Write one (L, L) word-swap mapper in place."""
    length = mapper.shape[0]
    mapper[0, 0] = 1.0  # start token
    for src_ids, (s0, s1), tgt_ids, (t0, t1) in zip(src.word_ids, src.spans, tgt.word_ids, tgt.spans):
        if src_ids == tgt_ids:
            _one_to_one(mapper, range(s0, s1), range(t0, t1))
            continue
        # Tokens shared at the start / end of the two words map one to one, if something different is left over.
        head = _common_prefix(src_ids, tgt_ids)
        tail = _common_prefix(src_ids[head:][::-1], tgt_ids[head:][::-1])
        if head + tail == len(src_ids) or head + tail == len(tgt_ids):
            head = tail = 0  # e.g. "cat" -> "cat,": swap the whole words instead of leaving a token unmapped
        _one_to_one(mapper, range(s0, s0 + head), range(t0, t0 + head))
        _one_to_one(mapper, range(s1 - tail, s1), range(t1 - tail, t1))
        src_swap, tgt_swap = range(s0 + head, s1 - tail), range(t0 + head, t1 - tail)
        if len(src_swap) == len(tgt_swap):
            _one_to_one(mapper, src_swap, tgt_swap)
        elif len(tgt_swap) > 0:
            mapper[src_swap.start : src_swap.stop, tgt_swap.start : tgt_swap.stop] = 1.0 / len(tgt_swap)
    # End token and padding, in order; source positions with no target position left go to the last one.
    for offset, j in enumerate(range(src.end, length)):
        mapper[j, min(tgt.end + offset, length - 1)] = 1.0


def _one_to_one(mapper: torch.Tensor, src_positions: range, tgt_positions: range) -> None:
    for j, i in zip(src_positions, tgt_positions, strict=True):
        mapper[j, i] = 1.0


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    count = 0
    while count < min(len(a), len(b)) and a[count] == b[count]:
        count += 1
    return count


def _check_targets(targets: list[str]) -> list[str]:
    if isinstance(targets, str):
        raise TypeError("targets must be a list of prompts, not a single string; wrap it: [target]")
    return list(targets)


# --------------------------------------------------------------------------------------------------------------
# Refine (added / removed words): global alignment of token sequences
# --------------------------------------------------------------------------------------------------------------

# Needleman-Wunsch scores, as in the reference implementation.
MATCH_SCORE = 1
MISMATCH_SCORE = -1
GAP_SCORE = -1


def align_tokens(source_ids: list[int], target_ids: list[int]) -> list[int | None]:
    """Global alignment (Needleman-Wunsch) of two token sequences.

    Scores: match +1, mismatch -1, gap -1 (so a substitution, -1, is preferred to a deletion plus an insertion,
    -2).  Returns, for each target token i, the index of the source token aligned to it (matched or substituted),
    or None if target token i is inserted.  Indices are into the given lists (0-based, no start token).  Among
    equally good alignments the traceback prefers, from the end, a match/substitution, then a deletion, then an
    insertion.
    """
    n, m = len(source_ids), len(target_ids)
    # score[a][b]: best score aligning source_ids[:a] with target_ids[:b].    (n + 1, m + 1)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    for a in range(1, n + 1):
        score[a][0] = a * GAP_SCORE
    for b in range(1, m + 1):
        score[0][b] = b * GAP_SCORE
    for a in range(1, n + 1):
        for b in range(1, m + 1):
            pair = MATCH_SCORE if source_ids[a - 1] == target_ids[b - 1] else MISMATCH_SCORE
            score[a][b] = max(
                score[a - 1][b - 1] + pair,  # align source a-1 with target b-1
                score[a - 1][b] + GAP_SCORE,  # source a-1 deleted
                score[a][b - 1] + GAP_SCORE,  # target b-1 inserted
            )

    aligned: list[int | None] = [None] * m
    a, b = n, m
    while a > 0 or b > 0:
        if a > 0 and b > 0:
            pair = MATCH_SCORE if source_ids[a - 1] == target_ids[b - 1] else MISMATCH_SCORE
            if score[a][b] == score[a - 1][b - 1] + pair:
                aligned[b - 1] = a - 1
                a, b = a - 1, b - 1
                continue
        if a > 0 and score[a][b] == score[a - 1][b] + GAP_SCORE:
            a -= 1  # deletion: the source token has no target token
        else:
            b -= 1  # insertion: aligned[b] stays None
    return aligned


def refinement_mapper(
    source: str, targets: list[str], tokenizer, max_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index mappers and blend weights for Refine: ``(mapper (n_targets, L) int64, alphas (n_targets, L) float)``.

    For target k and target position i, the target takes the attention of source position ``mapper[k, i]``
    (``target_attn[..., i] = source_attn[..., mapper[k, i]]``) where ``alphas[k, i] == 1``, and keeps its own
    attention where ``alphas[k, i] == 0``.  The prompt tokens are aligned with ``align_tokens``:

    * a target token aligned to a source token (equal, or substituted for a different one, as in the reference)
      maps to that source token, alpha 1;
    * an inserted target token has alpha 0; its mapper entry is its own position i (any valid index would do);
    * the start token maps to the start token and the end token to the end token, alpha 1;
    * target padding maps in order to source padding (end + 1, end + 2, ...), alpha 1; where that would run past
      L - 1 (the source has more tokens than the target) it maps to L - 1.
    """
    targets = _check_targets(targets)
    length = _sequence_length(tokenizer, max_len)
    src = tokenize_words(source, tokenizer, length)
    mappers = torch.zeros(len(targets), length, dtype=torch.long)  # (n_targets, L)
    alphas = torch.ones(len(targets), length)  # (n_targets, L)
    for k, target in enumerate(targets):
        tgt = tokenize_words(target, tokenizer, length)
        mappers[k, 0] = 0  # start token
        for i, j in enumerate(align_tokens(list(src.ids), list(tgt.ids)), start=1):  # prompt positions are 1-based
            if j is None:
                mappers[k, i] = i
                alphas[k, i] = 0.0
            else:
                mappers[k, i] = j + 1
        for offset, i in enumerate(range(tgt.end, length)):  # end token, then padding
            mappers[k, i] = min(src.end + offset, length - 1)
    return mappers, alphas
