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
