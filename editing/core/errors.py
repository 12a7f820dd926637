"""Errors the user can fix. The command-line tools turn them into exit code 2 and one `error: ...` line."""


class UserError(ValueError):
    """Bad input or usage: a missing file, an unknown option, a prompt the method cannot use.

    The message is shown to the user as it is, so it says what was wrong and how to fix it.
    """


class NonFiniteError(RuntimeError):
    """A loss or a latent became NaN or infinite (usually fp16 overflow); raised instead of a black image."""
