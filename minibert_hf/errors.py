"""User-facing errors: bad input that a CLI reports in one line (exit code 2), never as a traceback."""

from __future__ import annotations

import os


class UserError(ValueError):
    """A problem with what the user gave us (a file, a row, an option), not a bug in the program.

    ``str(error)`` is one line, prefixed with where the problem is, e.g.
    ``train.csv, row 7, column 'BERT Input': not a JSON list of integers``.
    ``row`` is the 1-based number of the data row (the header is not counted).
    """

    def __init__(self, message: str, *, file=None, row: int | None = None, column: str | None = None):
        self.message = " ".join(str(message).split())  # always one line
        self.file = os.fspath(file) if file is not None else None
        self.row = row
        self.column = column
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self):  # picklable across worker processes (datasets.map with num_proc)
        return (_rebuild, (type(self), self.message, self.file, self.row, self.column))


def _rebuild(cls, message, file, row, column):
    return cls(message, file=file, row=row, column=column)


class MiniBertInputError(UserError):
    """Bad input data: a CSV, text file, corpus, tokenizer folder or model folder we cannot use."""


class HubError(RuntimeError):
    """The Hub could not be reached or refused the request (CLI exit code 1)."""


class TrainingDiverged(RuntimeError):
    """The loss stayed NaN/inf for several steps in a row; training stops with a one-line message (exit 1)."""


# Modules whose exceptions mean "the remote side failed" (whatever HTTP library huggingface_hub uses).
_REMOTE_MODULES = {"huggingface_hub", "httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3", "h11", "ssl"}


def is_remote_failure(error: BaseException) -> bool:
    """True for errors of the HTTP stack or the Hub client: the network or the Hub failed, not the user's input."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    for cls in type(error).__mro__:
        if cls.__module__.split(".")[0] in _REMOTE_MODULES:
            return True
    return isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, PermissionError))
