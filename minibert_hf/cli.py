"""Small helpers shared by the command-line scripts.

``fail(message)`` prints ``error: message`` on stderr and exits (code 2 = bad input).
``ArgumentParser`` is argparse's with that one-line error; ``dataclass_parser(*types)`` builds one from option
dataclasses (``transformers.HfArgumentParser``: a flag per field, help from the field's metadata).
``run_cli(main)`` runs a script's ``main`` and turns a :class:`~minibert_hf.errors.UserError` (or a plain
``FileNotFoundError``/``IsADirectoryError``/``PermissionError`` about a user path, or a full / read-only disk) into
that one line, with no traceback. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable, NoReturn

from .errors import UserError

# A full or read-only disk while writing (outputs, checkpoints, caches): one line, not a traceback.
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line ``error: <message>`` to stderr and exit with ``code``."""
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (``error: prog: ... (see --help)``), exit 2."""

    def error(self, message: str) -> NoReturn:  # noqa: D401 - argparse API
        fail(f"{self.prog}: {message} (see --help)", code=2)


def dataclass_parser(*dataclass_types, **kwargs):
    """An ``HfArgumentParser`` over ``dataclass_types`` whose usage errors are one line, exit 2.
    ``parser.parse_args_into_dataclasses(argv)`` returns one instance per type."""
    from transformers import HfArgumentParser

    class OneLineHfArgumentParser(ArgumentParser, HfArgumentParser):
        pass

    kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
    return OneLineHfArgumentParser(dataclass_types, **kwargs)


def run_cli(main: Callable[..., object], *args, **kwargs) -> object:
    """Call ``main(*args, **kwargs)``; bad input ends the process with one line on stderr and exit code 2.

    If ``main`` returns an int, it becomes the exit code.
    """
    try:
        result = main(*args, **kwargs)
    except UserError as error:
        fail(str(error), code=2)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as error:
        path = getattr(error, "filename", None)
        reason = error.strerror or error.__class__.__name__
        fail(f"{path}: {reason}" if path else str(error), code=2)
    except OSError as error:
        if error.errno not in DISK_ERRNOS:
            raise
        path = getattr(error, "filename", None)
        reason = error.strerror or errno.errorcode.get(error.errno, "disk error")
        fail(f"{path}: {reason}" if path else f"cannot write: {reason}", code=2)
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    if isinstance(result, int) and not isinstance(result, bool):
        raise SystemExit(result)
    return result
