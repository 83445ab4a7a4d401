"""The one error type a user's mistake becomes: printed as one line by the CLI, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (a file, a name, a value): one message, exit code 2, no traceback."""
