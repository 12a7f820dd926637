"""The one check that a prompt fits the text encoder: every tool refuses an over-long prompt with the same
teaching error, and none truncates it silently (a truncated prompt would edit towards words the user did not
write, or drop the ones they did)."""
from __future__ import annotations

from editing.core.errors import UserError


def prompt_token_count(prompt: str, tokenizer) -> int:
    """The prompt's token count with the start and end tokens, untruncated."""
    # verbose=False: an over-long prompt is reported by check_prompt_length, not by a tokenizer log warning
    return len(tokenizer.encode(prompt, add_special_tokens=False, verbose=False)) + 2


def check_prompt_length(prompt: str, tokenizer, max_len: int | None = None, count: int | None = None) -> int:
    """Raise UserError if the prompt does not fit the text encoder; return its token count (start and end included).

    max_len defaults to `tokenizer.model_max_length` (77 for CLIP). count: the caller's own count (a prompt
    with pseudo-word slots, tokenized piece by piece); default: the tokenizer's count of `prompt`.
    """
    limit = int(tokenizer.model_max_length if max_len is None else max_len)
    count = prompt_token_count(prompt, tokenizer) if count is None else count
    if count > limit:
        raise UserError(f"the prompt {prompt[:60]!r}{'...' if len(prompt) > 60 else ''} is {count} tokens long "
                        f"(counting the start and end tokens) but the text encoder takes at most {limit}; shorten "
                        f"the prompt by at least {count - limit} token(s)")
    return count
