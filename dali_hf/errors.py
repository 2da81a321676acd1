"""`InputError`: what the `dali-hf` command reports as a one-line error (exit 1) instead of a traceback."""

__all__ = ["InputError"]


class InputError(ValueError):
    """Input a user gave that cannot be used as it is; the message names the input and the fix."""
