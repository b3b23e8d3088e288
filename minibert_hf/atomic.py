"""Write files and folders so that nobody ever sees them half-written: under a temporary name, then renamed.

One convention for the whole package: the temporary sibling of ``dir/name`` is ``dir/.tmp-name`` (one writer per
target, e.g. the main process) or ``dir/.tmp-name.pid<pid>`` (several writers may race). A crash leaves only such a
hidden name behind, which no reader takes for the real thing; the next write of the same target clears it, and
:func:`remove_stale_temporaries` clears those of processes that no longer exist.

    with atomic_folder(run / "final") as tmp:      # tmp is an empty folder; on success it becomes run/final
        model.save_pretrained(tmp)
    write_text(run / "stats.json", text)           # a file, the same way
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator


def temporary_name(path, unique: bool = False) -> Path:
    """The hidden sibling a write of ``path`` goes to first (with this process's id when ``unique``)."""
    path = Path(path)
    return path.with_name(f".tmp-{path.name}" + (f".pid{os.getpid()}" if unique else ""))


def remove(path) -> None:
    """Delete a file or a folder if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace(source, target) -> Path:
    """Rename ``source`` (a file or a folder) to ``target``, replacing what is there.

    ``os.replace`` swaps a file in one step; a non-empty folder cannot be renamed over, so the old one is moved
    aside first (to ``.old-<name>``) and deleted afterwards.
    """
    source, target = Path(source), Path(target)
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".old-{target.name}")
        remove(old)
        os.replace(target, old)
        os.replace(source, target)
        remove(old)
    else:
        os.replace(source, target)
    return target


@contextlib.contextmanager
def atomic_path(path, unique: bool = False, folder: bool = False) -> Iterator[Path]:
    """Yield the temporary name of ``path`` (created as an empty folder when ``folder``); when the block ends
    normally it replaces ``path``, when it raises it is deleted and ``path`` stays as it was."""
    tmp = temporary_name(path, unique)
    remove(tmp)  # a crashed writer's leftover
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    replace(tmp, path)


def atomic_folder(path, unique: bool = False):
    """``with atomic_folder(path) as tmp:`` fill the empty folder ``tmp``; it becomes ``path`` when complete."""
    return atomic_path(path, unique=unique, folder=True)


def write_text(path, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path, unique=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path, value) -> Path:
    """Write ``value`` as an indented JSON file (a final newline), atomically."""
    return write_text(path, json.dumps(value, indent=2) + "\n")


def write_bytes(path, data: bytes) -> Path:
    """Write a binary file atomically."""
    with atomic_path(path, unique=True) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def copy_file(source, target) -> Path:
    """Copy a file atomically (the target never holds part of the source)."""
    with atomic_path(target, unique=True) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)


def remove_stale_temporaries(folder) -> None:
    """Delete ``.tmp-<name>.pid<pid>`` entries of ``folder`` whose process no longer exists (killed runs)."""
    for path in Path(folder).glob(".tmp-*.pid*"):
        try:
            pid = int(path.name.rsplit(".pid", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            remove(path)
        except (ValueError, PermissionError, OSError):
            continue
