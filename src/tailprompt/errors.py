"""The one error type a user's mistake becomes: printed as one line by the CLI, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (a file, a name, a value): one message, exit code 2, no traceback.

    The library's own bad-input errors (`ConfigError`, `DatasetError`, `ReportError`, `FileReadError`,
    `FileWriteError`, `BackboneError`, `LearnerError`) subclass it, so the CLI's one handler covers them all.
    """


class FileWriteError(UserError, OSError):
    """An output file or folder cannot be written; the message starts with its path and says why.

    Also an `OSError`, so callers that tolerate a failed write (a cache that cannot be stored) keep working;
    `errno` is the underlying error's, while `str()` stays the message alone.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
