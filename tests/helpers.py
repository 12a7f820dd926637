"""Helpers several test files share (imported as `helpers`: pytest puts tests/ on sys.path)."""
from __future__ import annotations

import shlex

import numpy as np

from attention.controllers import PromptToPrompt


def help_examples(text: str, command: str) -> list[list[str]]:
    """The example invocations of `command` (e.g. "python -m editing.run") in a --help text, each as the
    argument list after the command; lines ending in a backslash continue on the next line."""
    lines, examples, current = text.splitlines(), [], None
    for line in lines:
        stripped = line.strip()
        if current is None and stripped.startswith(command + " "):
            current = stripped
        elif current is not None:
            current += " " + stripped
        else:
            continue
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        examples.append(shlex.split(current)[len(command.split()):])
        current = None
    return examples


def weights_mb(*modules) -> float:
    """The size of the modules' parameters in MiB (a lower bound of any peak memory figure of a run using them)."""
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters()) / 2 ** 20


def assert_peak_memory_is_plausible(peak_mb: float, model) -> None:
    """A run's peak memory (CPU: resident set size) holds at least the model's weights and at most the whole
    test process' peak so far: catches a figure in the wrong unit (KiB, bytes) or a counter never read."""
    import resource
    import sys

    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # never reset (VmHWM may have been)
    high = lifetime / 2 ** 20 if sys.platform == "darwin" else lifetime / 2 ** 10
    low = weights_mb(model.unet, model.vae, model.text_encoder)
    assert np.isfinite(peak_mb) and low <= peak_mb <= high + 1.0, (low, peak_mb, high)


def check_training_option(out_dir, capsys, flag: str, field: str, good: float, bad: tuple[str, ...]) -> None:
    """A float option of toyworld.train: off (0.0) by default, so earlier runs' recipes stay as they were;
    a given value lands in the config and in training.json; each of `bad` is refused by argparse with the
    flag named in its message."""
    import pytest

    from toyworld import train

    out = ["--out", str(out_dir / "o")]
    assert getattr(train.parse_args(out)[1], field) == 0.0
    _, cfg = train.parse_args(out + [flag, str(good)])
    assert getattr(cfg, field) == good and cfg.to_json()[field] == good
    for value in bad:
        with pytest.raises(SystemExit):
            train.parse_args(out + [flag, value])
        assert flag in capsys.readouterr().err


class Checked(PromptToPrompt):
    """A P2P controller that records, for every hooked call, the edited maps next to the source's: the
    source row (`base`), the target rows before and after the edit, and the unconditional rows."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def edit(self, probs, *, is_cross, place, step, heads):
        out = super().edit(probs, is_cross=is_cross, place=place, step=step, heads=heads)
        batch = probs.shape[0] // heads
        view_in = probs.view(batch, heads, *probs.shape[1:])
        view_out = out.view(batch, heads, *out.shape[1:])
        first = batch - self.n_prompts
        self.calls.append(dict(is_cross=is_cross, step=step, base=view_in[first].clone(),
                               targets_in=view_in[first + 1:].clone(), targets_out=view_out[first + 1:].clone(),
                               uncond_in=view_in[:first].clone(), uncond_out=view_out[:first].clone()))
        return out
