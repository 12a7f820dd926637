"""The pseudo-word syntax of Multiresolution Textual Inversion prompts (Daras & Dimakis, sec. 3).

A prompt is plain text with pseudo-words in angle brackets; the bracket inside says how the concept's
time-indexed embeddings are used along sampling (t in [0, 1] is the resolution, 0 = finest detail):

    <name|t|>   fixed resolution: emb_t at every sampling step
    <name(t)>   semi resolution-dependent: emb_s at sampling time s >= t; below t the word is dropped
    <name[t]>   fully resolution-dependent: emb_s for s >= t, emb_t below
    <name>      the same as <name[0]>: emb_s at every step, each band's embedding where it was trained

"a painting of <jane(0.5)> next to <tom|0|>" mixes concepts, methods and resolutions freely. The prompt
is parsed once, here, into text pieces and PseudoWords; editing.multires_ti turns them into the per-step
conditioning. Every error names the offending token and its character position in the prompt.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterable

from editing.core.errors import UserError

METHODS = ("fixed", "semi", "fully")
# opening bracket -> (closing bracket, method)
BRACKETS = {"|": ("|", "fixed"), "(": (")", "semi"), "[": ("]", "fully")}
SYNTAX_HELP = "write <name|t|> (fixed), <name(t)> (semi), <name[t]> (fully resolution-dependent) or <name>"
# A concept name: letters, digits, '_' and '-' (no spaces or brackets, so every pseudo-word reads back unambiguously).
NAME = re.compile(r"[A-Za-z0-9_\-]+")
# Inside the angle brackets: a name, optionally followed by one bracketed value (checked in detail afterwards).
WORD = re.compile(r"(?P<name>[^|()\[\]]*)(?:(?P<open>[|(\[])(?P<value>[^|()\[\]]*)(?P<close>[|)\]]))?")


@dataclass(frozen=True)
class PseudoWord:
    """One pseudo-word as written in the prompt."""

    name: str  # the concept's name
    method: str  # "fixed", "semi" or "fully"
    t_fixed: float  # the resolution t in [0, 1] written in the brackets
    text: str  # the token as written, e.g. "<jane(0.5)>"
    position: int  # its character offset in the prompt

    def as_method(self, method: str, t_fixed: float) -> "PseudoWord":
        """The same concept with another method and resolution (the grid's cells)."""
        return replace(self, method=method, t_fixed=t_fixed, text=format_word(self.name, method, t_fixed))


Piece = str | PseudoWord


def format_word(name: str, method: str, t_fixed: float) -> str:
    """The syntax of a pseudo-word: format_word("jane", "semi", 0.5) == "<jane(0.5)>"."""
    open_, close = {m: (o, c) for o, (c, m) in BRACKETS.items()}[method]
    return f"<{name}{open_}{t_fixed:g}{close}>"


def _error(why: str, token: str, position: int) -> UserError:
    return UserError(f"{why} in {token!r} at character {position} of the prompt ({SYNTAX_HELP}, t in [0, 1])")


def parse_word(token: str, position: int) -> PseudoWord:
    """'<jane(0.5)>' found at `position` -> PseudoWord; UserError for anything else."""
    match = WORD.fullmatch(token[1:-1])
    if match is None or (match["open"] and BRACKETS[match["open"]][0] != match["close"]):
        raise _error("unbalanced or misplaced brackets", token, position)
    name = match["name"]
    if not name:
        raise _error("no concept name", token, position)
    if not NAME.fullmatch(name):
        raise _error(f"the concept name {name!r} may only hold letters, digits, '_' and '-'", token, position)
    if not match["open"]:
        return PseudoWord(name, "fully", 0.0, token, position)
    try:
        t = float(match["value"])
    except ValueError:
        raise _error(f"the resolution {match['value']!r} is not a number", token, position) from None
    if not 0.0 <= t <= 1.0:  # also refuses nan
        raise _error(f"the resolution {match['value']} is outside [0, 1]", token, position)
    return PseudoWord(name, BRACKETS[match["open"]][1], t, token, position)


def parse_prompt(prompt: str) -> list[Piece]:
    """Split a prompt into text pieces and PseudoWords, in order. Text outside <...> is kept as written."""
    pieces: list[Piece] = []
    start = i = 0
    while i < len(prompt):
        if prompt[i] == ">":
            raise UserError(f"the '>' at character {i} of the prompt closes no '<', in {prompt[start:i + 1]!r} "
                            f"({SYNTAX_HELP}, t in [0, 1])")
        if prompt[i] != "<":
            i += 1
            continue
        end, reopen = prompt.find(">", i + 1), prompt.find("<", i + 1)
        if end == -1 or -1 < reopen < end:
            stop = len(prompt) if end == -1 else reopen
            raise _error("a '<' that is never closed by '>'", prompt[i:stop], i)
        if prompt[start:i]:
            pieces.append(prompt[start:i])
        pieces.append(parse_word(prompt[i:end + 1], i))
        start = i = end + 1
    if prompt[start:]:
        pieces.append(prompt[start:])
    return pieces


def words(pieces: Iterable[Piece]) -> list[PseudoWord]:
    return [p for p in pieces if isinstance(p, PseudoWord)]


def check_names(pieces: Iterable[Piece], known: Iterable[str]) -> None:
    """UserError for the first pseudo-word whose concept is not loaded."""
    known = sorted(known)
    for word in words(pieces):
        if word.name not in known:
            raise UserError(f"unknown concept {word.name!r} in {word.text!r} at character {word.position} of the "
                            f"prompt; loaded concepts: {', '.join(known) or 'none'} (add its .safetensors file or "
                            "folder to --concepts)")


def with_method(pieces: Iterable[Piece], method: str, t_fixed: float) -> list[Piece]:
    """Every pseudo-word of the prompt switched to one method and resolution."""
    return [p.as_method(method, t_fixed) if isinstance(p, PseudoWord) else p for p in pieces]


def render(pieces: Iterable[Piece]) -> str:
    """The prompt text back from its pieces."""
    return "".join(p.text if isinstance(p, PseudoWord) else p for p in pieces)
