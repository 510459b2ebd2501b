"""User-facing errors.

An :class:`InvismapError` is a problem with the user's input (a file, a config, a flag), not a bug.
The CLI prints its one-line message and exits with status 2, without a traceback (unless ``--debug``).
"""

from __future__ import annotations

from pathlib import Path


class InvismapError(Exception):
    """A user error: bad input file, bad config, missing asset. Message is one line and says the fix."""

    exit_code = 2


def file_error(path: str | Path, problem: str, fix: str = "") -> InvismapError:
    """Build an error that names the file, what is wrong with it and what to do."""
    msg = f"{path}: {problem}"
    if fix:
        msg += f" ({fix})"
    return InvismapError(msg)
