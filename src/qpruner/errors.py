"""User-facing errors.

Every failure a user can cause (bad path, bad ratio, unsupported model, corrupt files)
raises :class:`QPrunerError` with a one-line message. The CLI prints that line and exits
non-zero; anything else escaping is a bug in qpruner and keeps its traceback.
"""

from __future__ import annotations


class QPrunerError(Exception):
    """An error caused by the user's input, reported as a single line."""

    def __init__(self, message: str) -> None:
        # Collapse whitespace so a message never spans lines in a terminal or log.
        super().__init__(" ".join(str(message).split()))


class UnsupportedModelError(QPrunerError):
    """The model is not a LLaMA-layout decoder we know how to prune."""


class CheckpointError(QPrunerError):
    """A saved model directory is missing, incomplete or inconsistent."""
